"""Worker subprocesses: start them, wait for them, and read what they used."""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.common import ROOT

_log_dir: Path | None = None
_keep_logs = False


def log_dir() -> Path:
    """The workers' log files: a temporary folder, removed at exit unless a run failed."""
    global _log_dir
    if _log_dir is None:
        _log_dir = Path(tempfile.mkdtemp(prefix="unbroken-bench-logs-"))
        atexit.register(_cleanup)
    return _log_dir


def keep_logs() -> None:
    global _keep_logs
    _keep_logs = True


def _cleanup() -> None:
    if _log_dir is not None and not _keep_logs:
        shutil.rmtree(_log_dir, ignore_errors=True)


def with_app_name(url: str, name: str) -> str:
    """url with a default application_name (the runtime's pools set their own per role)."""
    sep = "&" if "?" in url else "?"
    return f"{url}{sep}application_name={name}"


@dataclass
class Proc:
    """A child process whose CPU time we read when it exits (os.wait4)."""

    name: str
    popen: subprocess.Popen[str]
    log: Path
    cpu_seconds: float | None = None
    returncode: int | None = None

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Block until the child printed READY (our workers do once started)."""
        assert self.popen.stdout is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.popen.stdout.readline()
            if line.strip() == "READY":
                return
            if not line and self.popen.poll() is not None:
                break
        keep_logs()
        raise RuntimeError(f"{self.name} did not start; log: {self.log}\n{self.log_tail()}")

    def wait(self, timeout: float) -> int:
        """Wait for exit (killing it after timeout); record its CPU seconds."""
        deadline = time.monotonic() + timeout
        while True:
            pid, status, usage = os.wait4(self.popen.pid, os.WNOHANG)
            if pid:
                self.cpu_seconds = usage.ru_utime + usage.ru_stime
                self.returncode = os.waitstatus_to_exitcode(status)
                self.popen.returncode = self.returncode
                if self.returncode != 0:
                    keep_logs()
                return self.returncode
            if time.monotonic() > deadline:
                self.popen.send_signal(signal.SIGKILL)
                timeout = float("inf")
                deadline = float("inf")
            time.sleep(0.005)

    def stop(self, timeout: float = 30.0) -> int:
        if self.returncode is None and self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
        if self.returncode is None:
            return self.wait(timeout)
        return self.returncode

    def stdout_rest(self) -> str:
        return self.popen.stdout.read() if self.popen.stdout is not None else ""

    def log_tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


def _pythonpath() -> str:
    return os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH", "")]))


def spawn(
    name: str,
    argv: Sequence[str],
    *,
    env: dict[str, str] | None = None,
    python: str | None = None,
    capture_stdout: bool = True,
) -> Proc:
    log = log_dir() / f"{name}-{time.monotonic_ns()}.log"
    handle = open(log, "w")  # noqa: SIM115 - the child owns it; closed below after fork
    try:
        popen = subprocess.Popen(
            [python or sys.executable, *argv],
            cwd=ROOT,
            # The caller's PYTHONPATH after the repository: a worktree's src/ (or another
            # revision's) stays what the children import, not the installed package.
            env={**os.environ, "PYTHONPATH": _pythonpath(), **(env or {})},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE if capture_stdout else handle,
            stderr=handle,
            text=True,
        )
    finally:
        handle.close()
    return Proc(name, popen, log)


def worker_env(url: str, name: str) -> dict[str, str]:
    """The environment of a bench worker named `name` (its sessions' application_name)."""
    return {
        "UNBROKEN_DATABASE_URL": with_app_name(url, f"{name}:migrate"),
        "UNBROKEN_APPLICATION_NAME": name,
    }


def start_worker(
    url: str,
    name: str,
    concurrency: int,
    *,
    burst: bool,
    cprofile: str | None = None,
) -> Proc:
    argv = ["-m", "bench.worker", "--concurrency", str(concurrency)]
    if burst:
        argv.append("--burst")
    if cprofile:
        argv += ["--cprofile", cprofile]
    return spawn(name, argv, env=worker_env(url, name))
