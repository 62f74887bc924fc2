"""`unbroken worker --restart-on-memory`: a small parent that runs the worker as a child
process and starts a fresh one each time a child exits for its hard memory limit.

The child is the same command without the flag. It runs in its own process group, so a
Ctrl-C in a terminal reaches it once, through this parent (a second SIGINT straight from
the terminal would make it exit at once instead of finishing its jobs). SIGTERM and SIGINT
are passed on; the parent then exits with the child's code. A child that exits with any
code other than MEMORY_EXIT_CODE ends the loop with that code. Restarts that come quickly
one after another (a limit set below what the app needs to start) wait longer each time,
up to RESTART_DELAY_CAP seconds.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import threading
import time
from types import FrameType

from unbroken.db.backoff import Backoff, BackoffPolicy
from unbroken.runtime.memory import MEMORY_EXIT_CODE

logger = logging.getLogger("unbroken.worker")
FLAG = "--restart-on-memory"
STEADY_SECONDS = 60.0  # a child that lived this long restarts at once
RESTART_DELAY_CAP = 30.0


def supervise(argv: list[str]) -> int:
    """Run `unbroken <argv without FLAG>` until it exits for another reason than memory."""
    command = [sys.executable, "-m", "unbroken", *(a for a in argv if a != FLAG)]
    backoff = Backoff(BackoffPolicy(0.5, RESTART_DELAY_CAP))
    stopping = threading.Event()
    child: subprocess.Popen[bytes] | None = None

    def forward(sig: int, _frame: FrameType | None) -> None:
        stopping.set()
        if child is not None and child.poll() is None:
            child.send_signal(sig)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        while True:
            started = time.monotonic()
            child = subprocess.Popen(command, process_group=0)
            code = child.wait()
            if code != MEMORY_EXIT_CODE or stopping.is_set():
                return code
            if time.monotonic() - started >= STEADY_SECONDS:
                backoff.reset()
            delay = backoff.failed() or RESTART_DELAY_CAP
            logger.warning(
                "worker pid %d exited for its memory limit; starting a new one in %.1f s",
                child.pid,
                delay,
            )
            if stopping.wait(delay):
                return code
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
