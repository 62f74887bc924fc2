"""One benchmark worker process: `app.worker(...).run()` on the bench app.

    python -m bench.worker --concurrency 200 --burst

Prints READY on stdout once the worker has started (its pools are open and it listens),
and, at exit, one JSON line with what the worker itself counted, and its wall and CPU
seconds (all threads) from READY to exit. `--cprofile FILE` writes a
cProfile of the whole run (see docs/benchmarks.md for py-spy).
"""

from __future__ import annotations

import argparse
import cProfile
import json
import logging
import sys
import threading
import time
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.worker")
    parser.add_argument("--concurrency", type=int, required=True)
    parser.add_argument("--burst", action="store_true", help="exit when no job is left")
    parser.add_argument("--cprofile", metavar="FILE", help="write a cProfile of the run")
    parser.add_argument("--log-level", default="WARNING")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )

    from bench.app import app

    worker = app.worker(concurrency=args.concurrency, burst=args.burst)

    ready: dict[str, float] = {}

    def announce() -> None:
        if worker.started.wait(120):
            ready["wall"] = time.monotonic()
            ready["cpu"] = time.process_time()
            print("READY", flush=True)

    threading.Thread(target=announce, name="announce", daemon=True).start()
    started = time.monotonic()
    if args.cprofile:
        profile = cProfile.Profile()
        profile.runcall(worker.run)
        profile.dump_stats(args.cprofile)
    else:
        worker.run()
    completer = worker.completer
    now, cpu = time.monotonic(), time.process_time()
    print(
        json.dumps(
            {
                "seconds": now - started,
                # from "started" to exit: the processing window (plus the shutdown)
                "run_seconds": now - ready.get("wall", started),
                "run_cpu_seconds": cpu - ready.get("cpu", 0.0),
                "written": completer.written if completer else None,
                "fenced": completer.fenced if completer else None,
            }
        ),
        flush=True,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
