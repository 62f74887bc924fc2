"""Run a worker for `module:attribute` (default tests.apps.fault_app:app) until SIGTERM.

The fallback for tests when `python -m unbroken.cli worker` is not there: settings come
from the UNBROKEN_* environment like the CLI's, logs go to stderr at UNBROKEN_LOG_LEVEL.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
from pathlib import Path


def main(argv: list[str]) -> None:
    ref = argv[1] if len(argv) > 1 else "tests.apps.fault_app:app"
    repo = str(Path(__file__).resolve().parents[2])
    if repo not in sys.path:
        sys.path.insert(0, repo)
    logging.basicConfig(
        level=os.environ.get("UNBROKEN_LOG_LEVEL", "INFO").upper(),
        format="%(asctime)s %(process)d %(name)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("psycopg.pool").setLevel(logging.ERROR)
    module_name, _, attr = ref.partition(":")
    app = getattr(importlib.import_module(module_name), attr or "app")
    app.worker(burst="--burst" in argv[2:]).run()


if __name__ == "__main__":
    main(sys.argv)
