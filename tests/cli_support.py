"""Running `unbroken` as a user does: a subprocess against one database, no terminal."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pty
import re
import struct
import subprocess
import sys
import termios
from pathlib import Path
from typing import Any

UNBROKEN = str(Path(sys.executable).parent / "unbroken")


def _env(url: str, columns: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "DATABASE_URL"))}
    env.update(UNBROKEN_DATABASE_URL=url, COLUMNS=str(columns), UNBROKEN_STARTUP_WAIT="2")
    return env


def cli(
    url: str, *args: str, timeout: float = 60, columns: int = 200
) -> subprocess.CompletedProcess[str]:
    """`unbroken *args` against `url` only (no PG* or DATABASE_URL from outside), `columns`
    wide, stdout piped, stdin closed: a command that would ask for confirmation has nobody
    to ask."""
    env = _env(url, columns)
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


def cli_tty(url: str, *args: str, columns: int, timeout: float = 60) -> str:
    """What `unbroken *args` prints to a terminal `columns` wide (a pseudo-terminal as its
    stdout, NO_COLOR; stderr apart), as text without escape sequences."""
    env = {**_env(url, columns), "NO_COLOR": "1", "TERM": "xterm"}
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 50, columns, 0, 0))
    proc = subprocess.Popen(
        [UNBROKEN, *args],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=follower,
        stderr=subprocess.PIPE,
    )
    os.close(follower)
    out = bytearray()
    with contextlib.suppress(OSError):  # EIO once the process closed its side
        while chunk := os.read(leader, 65536):
            out += chunk
    os.close(leader)
    _, stderr = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, (out.decode(errors="replace"), stderr.decode(errors="replace"))
    text = out.decode(errors="replace").replace("\r\n", "\n")
    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07", "", text)
