"""Running `unbroken` as a user does: a subprocess against one database, no terminal."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

UNBROKEN = str(Path(sys.executable).parent / "unbroken")


def cli(url: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """`unbroken *args` against `url` only (no PG* or DATABASE_URL from outside), 200 columns
    wide, stdin closed: a command that would ask for confirmation has nobody to ask."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "DATABASE_URL"))}
    env.update(UNBROKEN_DATABASE_URL=url, COLUMNS="200", UNBROKEN_STARTUP_WAIT="2")
    return subprocess.run(
        [UNBROKEN, *args],
        env=env,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=timeout,
        check=False,
    )


def cli_json(url: str, *args: str) -> Any:
    """`unbroken *args --json`, which must succeed, parsed."""
    result = cli(url, *args, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)
