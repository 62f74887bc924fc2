"""Configuration: every knob is an `UNBROKEN_*` environment variable with a reasoned default.

Each field's description is its one-line reason; the README's configuration table is
generated from these descriptions (`unbroken config --markdown`), so the two cannot drift.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

import platformdirs
from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from unbroken.errors import ConfigError

# libpq reads these itself; any of them set means "the user configured a database".
LIBPQ_ENV_VARS = ("PGHOST", "PGHOSTADDR", "PGPORT", "PGDATABASE", "PGUSER", "PGSERVICE")


# Upper bounds: a number nothing downstream can use is refused when it is read, in one line
# naming the variable, not met later as an OverflowError or as a server error on every
# connection. Infinities and NaN are refused for every field (allow_inf_nan below).
MAX_SECONDS = 10 * 365 * 24 * 3600.0  # any duration: ten years
MAX_SERVER_TIMEOUT = (2**31 - 1) / 1000  # the server keeps its timeouts in int milliseconds
MAX_JSONB_BYTES = 2**28 - 1  # the largest jsonb value PostgreSQL stores


class SecretURL(SecretStr):
    """The database URL or conninfo, which may hold a password.

    Printed (repr, str, `unbroken config`) with the password hidden and the rest shown; in
    JSON dumps as asterisks; its text only through `get_secret_value()`."""

    def _display(self) -> str:
        from unbroken.db.conninfo import redact

        return redact(self.get_secret_value())


def default_data_dir() -> Path:
    return Path(platformdirs.user_data_dir("unbroken", appauthor=False)) / "postgres"


class Settings(BaseSettings):
    """All of unbroken's settings. Read from `UNBROKEN_*` variables, or passed in code."""

    model_config = SettingsConfigDict(
        env_prefix="UNBROKEN_",
        extra="forbid",
        validate_default=True,
        frozen=True,
        allow_inf_nan=False,
    )

    # --- where the database is -------------------------------------------------------------
    database_url: SecretURL | None = Field(
        None,
        description="PostgreSQL URL or conninfo; else DATABASE_URL, else libpq PG* variables, "
        "else the embedded server.",
    )
    schema_name: str = Field(
        "unbroken",
        pattern=r"^[a-z_][a-z0-9_]{0,62}$",
        description="Postgres schema holding unbroken's tables, so they never mix with yours.",
    )
    data_dir: Path = Field(
        default_factory=default_data_dir,
        description="Embedded server's data directory; kept between runs so jobs survive.",
    )
    embedded_port: int = Field(
        0,
        ge=0,
        le=65535,
        description="Embedded server's TCP port on 127.0.0.1; 0 picks a free one once and "
        "keeps it.",
    )

    # --- the pools ---------------------------------------------------------------------------
    pool_min_size: int = Field(
        1,
        ge=0,
        le=1000,
        description="Connections kept open per pool, so the first job waits for no handshake.",
    )
    pool_max_size: int = Field(
        4,
        ge=1,
        le=1000,
        description="Hard cap per pool: a worker's connections stay bounded whatever its job "
        "count.",
    )
    pool_acquire_timeout: float = Field(
        10.0,
        gt=0,
        le=3600,
        description="Seconds to wait for a free connection before failing loudly instead of "
        "hanging.",
    )
    pool_max_lifetime: float = Field(
        900.0,
        ge=60,
        le=MAX_SECONDS,
        description="Seconds before a connection is recycled, so no session lives long enough "
        "to be cut by a proxy or firewall.",
    )
    pool_check_after: float = Field(
        1.0,
        ge=0,
        le=3600,
        description="Seconds a connection may sit idle in the pool and still be handed out "
        "after a look at its socket; one idle longer is proven alive by a round trip (0: "
        "always).",
    )
    pool_max_idle: float = Field(
        120.0,
        ge=10,
        le=MAX_SECONDS,
        description="Seconds an extra idle connection is kept before closing it.",
    )
    connect_timeout: int = Field(
        5, ge=1, le=300, description="Seconds for one connection attempt; a dead host fails fast."
    )

    # --- noticing a dead network -------------------------------------------------------------
    keepalives_idle: int = Field(
        30, ge=1, le=32767, description="Seconds of silence before TCP probes a connection."
    )
    keepalives_interval: int = Field(10, ge=1, le=32767, description="Seconds between TCP probes.")
    keepalives_count: int = Field(
        3, ge=1, le=127, description="Unanswered probes before the kernel drops the connection."
    )
    tcp_user_timeout: int = Field(
        30_000,
        ge=0,
        le=2**31 - 1,
        description="Milliseconds unacknowledged data may wait before the kernel drops the "
        "connection (0: OS default).",
    )
    statement_timeout: float = Field(
        60.0,
        ge=0,
        le=MAX_SERVER_TIMEOUT,
        description="Seconds a runtime statement may run on the server (0: off); ours take "
        "milliseconds.",
    )
    idle_in_transaction_timeout: float = Field(
        60.0,
        ge=0,
        le=MAX_SERVER_TIMEOUT,
        description="Seconds a session may idle inside a transaction before the server ends "
        "it (0: off).",
    )
    statement_deadline: float = Field(
        0.0,
        ge=0,
        le=MAX_SECONDS,
        description="Client-side deadline per runtime statement (0: statement_timeout + 10 s); "
        "catches half-open connections.",
    )
    application_name: str = Field(
        "unbroken",
        max_length=63,
        description="Shown in pg_stat_activity, so an operator can tell our sessions apart.",
    )

    # --- start-up --------------------------------------------------------------------------
    startup_wait: float = Field(
        30.0,
        ge=0,
        le=MAX_SECONDS,
        description="Seconds a worker (or an App's first use) keeps retrying an unreachable "
        "server at start-up before failing; other CLI commands try once.",
    )
    startup_backoff_base: float = Field(
        0.5,
        gt=0,
        le=MAX_SECONDS,
        description="First start-up retry delay in seconds; doubles each attempt.",
    )
    startup_backoff_cap: float = Field(
        5.0, gt=0, le=MAX_SECONDS, description="Longest start-up retry delay in seconds."
    )

    # --- units of work -----------------------------------------------------------------------
    retry_attempts: int = Field(
        5,
        ge=1,
        le=100,
        description="Tries of a unit of work on transient errors before its error is raised.",
    )
    retry_backoff_base: float = Field(
        0.1,
        gt=0,
        le=MAX_SECONDS,
        description="First unit-of-work retry delay in seconds; doubles each try.",
    )
    retry_backoff_cap: float = Field(
        5.0, gt=0, le=MAX_SECONDS, description="Longest unit-of-work retry delay in seconds."
    )

    # --- workers -----------------------------------------------------------------------------
    concurrency: int = Field(
        100,
        ge=1,
        le=10_000,
        description="Jobs one worker runs at once; fetches never claim more than the free slots.",
    )
    queues: str = Field(
        "default", description="Comma-separated queues a worker fetches from (UNBROKEN_QUEUES)."
    )
    shutdown_timeout: float = Field(
        30.0,
        ge=0,
        le=MAX_SECONDS,
        description="Seconds running jobs get after SIGTERM before they are handed back "
        "unfinished.",
    )
    memory_soft_mb: int = Field(
        0,
        ge=0,
        le=10_000_000,
        description="Resident memory (MiB) above which a worker stops fetching jobs until it "
        "is below again (0: off).",
    )
    memory_hard_mb: int = Field(
        0,
        ge=0,
        le=10_000_000,
        description="Resident memory (MiB) above which a worker hands its running jobs back "
        "unspent and exits with code 75, to be restarted (0: off).",
    )
    lease_seconds: float = Field(
        30.0,
        ge=1,
        le=MAX_SECONDS,
        description="How long a running job's lease lasts; a dead worker's jobs are rescued "
        "after this.",
    )
    heartbeat_interval: float = Field(
        0.0,
        ge=0,
        le=MAX_SECONDS,
        description="Seconds between lease renewals, one statement for all jobs (0: a third "
        "of the lease).",
    )
    rescue_interval: float = Field(
        5.0,
        gt=0,
        le=MAX_SECONDS,
        description="Seconds between the leader's sweeps for jobs with expired leases.",
    )
    promote_interval: float = Field(
        0.5,
        gt=0,
        le=MAX_SECONDS,
        description="Seconds between the leader's promotions of due scheduled and retryable jobs.",
    )
    poll_interval: float = Field(
        2.0,
        gt=0,
        le=MAX_SECONDS,
        description="Seconds between fetches when no notification arrives (the safety net "
        "behind LISTEN).",
    )
    listen: bool = Field(
        True,
        description="Wake idle workers with LISTEN/NOTIFY; off means polling only "
        "(forced off with pgbouncer=transaction unless listen_url is set).",
    )
    batch_size: int = Field(
        1000,
        ge=1,
        le=50_000,
        description="Most job outcomes or lease renewals written in one statement.",
    )
    batch_interval: float = Field(
        0.02,
        gt=0,
        le=10,
        description="Longest seconds an outcome waits in the buffer before its batch is written.",
    )
    batch_buffer_max: int = Field(
        20_000,
        ge=1,
        le=10_000_000,
        description="Outcomes held while the database is away; beyond it, jobs wait to "
        "report (backpressure).",
    )
    retention_seconds: float = Field(
        7 * 24 * 3600.0,
        ge=60,
        le=MAX_SECONDS,
        description="Finished jobs older than this are deleted by the leader (docs/retention.md).",
    )
    prune_interval: float = Field(
        10.0,
        gt=0,
        le=MAX_SECONDS,
        description="Seconds between the leader's prunes once caught up; behind, it prunes at "
        "every maintenance tick until caught up.",
    )
    prune_batch: int = Field(
        5000,
        ge=1,
        le=50_000,
        description="Finished jobs deleted per statement: short transactions that skip "
        "locked rows, repeated until a batch comes back short.",
    )
    max_payload_bytes: int = Field(
        1_000_000,
        ge=100,
        le=MAX_JSONB_BYTES,
        description="Largest serialised job arguments accepted at enqueue; bigger data "
        "belongs in a table.",
    )
    unknown_task_delay: float = Field(
        60.0,
        gt=0,
        le=3600,
        description="Seconds before a job whose task the worker does not know is offered "
        "again (no attempt spent); doubles per repeat, up to an hour.",
    )

    metrics_port: int = Field(
        0,
        ge=0,
        le=65535,
        description="Port for a worker's Prometheus /metrics on 127.0.0.1 (0: off, and no "
        "telemetry cost per job).",
    )
    log_format: Literal["plain", "json"] = Field(
        "plain",
        description="The CLI's log lines: 'plain' text, or 'json', one object per line with "
        "fixed keys (`unbroken worker --log-format`).",
    )

    # --- PgBouncer ---------------------------------------------------------------------------
    pgbouncer: Literal["off", "session", "transaction"] = Field(
        "off",
        description="PgBouncer's pool_mode in front of the server: server timeouts are then set "
        "per session or per transaction; 'transaction' also turns off prepared statements and "
        "LISTEN (polling only, unless listen_url is set).",
    )
    listen_url: SecretURL | None = Field(
        None,
        description="A direct URL to the same database, bypassing PgBouncer, for the listener "
        "alone: LISTEN wake-ups and the session lock that marks a live leader "
        "(docs/pgbouncer.md).",
    )

    @field_validator("database_url", "listen_url", mode="before")
    @classmethod
    def _url_parses(cls, value: Any) -> Any:
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        if value is None or value == "":
            return None
        if isinstance(value, str):
            _parse_url(value)
        return value

    @field_validator("application_name")
    @classmethod
    def _name_sendable(cls, value: str) -> str:
        if "\x00" in value:  # libpq takes C strings (a lone surrogate pydantic refuses)
            raise ValueError("must not hold a NUL character")
        return value

    @field_validator("queues")
    @classmethod
    def _queue_names(cls, value: str) -> str:
        from unbroken.enqueue import name_problem

        names = [q.strip() for q in value.split(",") if q.strip()]
        if not names:
            raise ValueError("names no queue (a comma-separated list of queue names)")
        for name in names:
            problem = name_problem("queue name", name, 128)
            if problem is not None:
                raise ValueError(problem)
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        if self.pool_min_size > self.pool_max_size:
            raise ValueError(
                f"pool_min_size ({self.pool_min_size}) is larger than pool_max_size "
                f"({self.pool_max_size})"
            )
        if self.startup_backoff_base > self.startup_backoff_cap:
            raise ValueError("startup_backoff_base is larger than startup_backoff_cap")
        if 0 < self.memory_hard_mb <= self.memory_soft_mb:
            raise ValueError(
                f"memory_soft_mb ({self.memory_soft_mb}) must be below memory_hard_mb "
                f"({self.memory_hard_mb})"
            )
        return self

    # --- derived ---------------------------------------------------------------------------
    def configured_url(self) -> str | None:
        """The database the user asked for, or None to use the embedded server.

        "" means "libpq decides from the PG* environment".
        """
        if self.database_url:
            return self.database_url.get_secret_value()
        env_url = os.environ.get("DATABASE_URL")
        if env_url:
            return _check_url("DATABASE_URL", env_url)
        if any(os.environ.get(name) for name in LIBPQ_ENV_VARS):
            return ""
        return None

    def heartbeat_every(self) -> float:
        return self.heartbeat_interval or self.lease_seconds / 3

    def queue_list(self) -> list[str]:
        return [q.strip() for q in self.queues.split(",") if q.strip()]

    def uses_listen(self) -> bool:
        """LISTEN needs a session of its own: not through PgBouncer in transaction mode,
        unless the listener has a direct URL."""
        return self.listen and (self.pgbouncer != "transaction" or self.listen_url is not None)

    def deadline(self) -> float:
        """Client-side deadline for one runtime statement, in seconds."""
        if self.statement_deadline > 0:
            return self.statement_deadline
        if self.statement_timeout > 0:
            return self.statement_timeout + 10.0
        return 300.0


def _parse_url(value: str) -> None:
    """Raise ValueError with a short reason if libpq would refuse `value`."""
    from psycopg.conninfo import conninfo_to_dict

    try:
        params = conninfo_to_dict(value)
    except Exception as exc:
        raise ValueError(f"not a valid PostgreSQL URL or conninfo ({_parse_reason(exc)})") from None
    if "@" in str(params.get("host") or ""):  # the rest of a password with an @ in it
        raise ValueError(
            "not a valid PostgreSQL URL or conninfo (an @ in the host: write an @ in a "
            "user name or password as %40)"
        )
    ports = str(params.get("port") or "5432").split(",")
    if not all(p.strip().isdigit() and 0 < int(p) < 65536 for p in ports):
        raise ValueError(f"not a valid PostgreSQL URL or conninfo (bad port {params['port']!r})")


def _parse_reason(exc: BaseException) -> str:
    """libpq's reason, without the piece of the URL it quotes: that piece can be the
    password (an unencoded % in it makes the URL unparseable, and libpq quotes the token)."""
    reason = _first_line(exc)
    if "percent-encoded" in reason:
        return "a % not followed by two hex digits; write a % in a password as %25"
    return re.sub(r'"[^"=]+"', '"…"', reason)


def _check_url(name: str, value: str) -> str:
    try:
        _parse_url(value)
    except ValueError as exc:
        raise ConfigError(f"{name}: {exc}") from None
    return value


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def load_settings(**overrides: Any) -> Settings:
    """Build settings from the environment plus `overrides`; bad input is one ConfigError line.

    The line names the setting as the user wrote it (the environment variable, or the
    keyword) and what is wrong with it.
    """
    unknown = unknown_env_vars()
    if unknown:
        name = unknown[0]
        field = name.removeprefix("UNBROKEN_").lower()
        raise ConfigError(f"{name}: unknown setting{_suggest(field)}")
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc, overrides)) from None


# UNBROKEN_* variables read by other parts (the CLI, the dashboard, the test suite).
_OTHER_VARS = (
    "UNBROKEN_LOG_LEVEL",
    "UNBROKEN_APP",
    "UNBROKEN_BURST",
    "UNBROKEN_DASHBOARD_",
    "UNBROKEN_TEST_",
)


def unknown_env_vars() -> list[str]:
    """UNBROKEN_* variables that name no setting: almost always a typo worth stopping for."""
    known = {f"UNBROKEN_{name.upper()}" for name in Settings.model_fields}
    return sorted(
        name
        for name in os.environ
        if name.startswith("UNBROKEN_") and name not in known and not name.startswith(_OTHER_VARS)
    )


def describe_validation_error(exc: ValidationError, overrides: dict[str, Any]) -> str:
    problems = []
    for err in exc.errors():
        loc = err.get("loc") or ()
        field = str(loc[0]) if loc else ""
        name = field if field in overrides else f"UNBROKEN_{field.upper()}" if field else "settings"
        message = err.get("msg", "invalid").removeprefix("Value error, ")
        if err.get("type") == "extra_forbidden":
            message = f"unknown setting{_suggest(field)}"
        value = err.get("input")
        shown = (
            ""
            if err.get("type") == "extra_forbidden" or isinstance(value, dict)
            else (f" (got {value!r})")
        )
        if "password" in str(value).lower() or field in ("database_url", "listen_url"):
            shown = ""
        problems.append(f"{name}: {message}{shown}")
    return "; ".join(problems)


def _suggest(field: str) -> str:
    import difflib

    names = [n for n in Settings.model_fields if n != field]
    close = difflib.get_close_matches(field.lower(), names, n=1)
    return f" (did you mean {close[0]}?)" if close else ""


def settings_table() -> str:
    """The README's configuration table, straight from the field definitions."""
    lines = ["| variable | default | why |", "|---|---|---|"]
    for name, field in Settings.model_fields.items():
        if name == "data_dir":
            default = "per-user data dir (`~/.local/share/unbroken/postgres`)"
        else:
            default = f"`{field.get_default(call_default_factory=True)}`"
        lines.append(f"| `UNBROKEN_{name.upper()}` | {default} | {field.description} |")
    return "\n".join(lines)
