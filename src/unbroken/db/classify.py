"""Is this database error worth retrying on a fresh connection?

Transient errors come from the connection or from concurrency and go away on their own
(a restart, a failover, a conflict); permanent errors come from the statement or the data
and would fail the same way again. The split is by SQLSTATE class where the server sent
one, and by exception type where it could not (a connection that just died has none).
"""

from __future__ import annotations

import enum

import psycopg
from psycopg_pool import PoolTimeout

from unbroken.errors import StatementDeadline


class ErrorKind(enum.Enum):
    CONNECTION = "connection"  # the session is gone: flush the pool, retry on a new one
    CONFLICT = "conflict"  # the session is fine, the transaction lost a race: retry
    PERMANENT = "permanent"  # the statement or the data is wrong: do not retry


# SQLSTATE classes and codes that mean "this session or server is going away".
_CONNECTION_CLASSES = ("08",)  # connection exception
_CONNECTION_CODES = frozenset(
    {
        "57P01",  # admin_shutdown (restart, pg_terminate_backend)
        "57P02",  # crash_shutdown
        "57P03",  # cannot_connect_now (starting up, crash recovery in progress)
        "57P05",  # idle_session_timeout
        "25P03",  # idle_in_transaction_session_timeout (the server closed the session)
        "53300",  # too_many_connections
        "58000",  # system_error
        "58030",  # io_error
    }
)
# Lost a race with another transaction; the same work will succeed when retried.
_CONFLICT_CODES = frozenset(
    {
        "40001",  # serialization_failure
        "40P01",  # deadlock_detected
        "55P03",  # lock_not_available (lock_timeout)
        "57014",  # query_canceled (statement_timeout, pg_cancel_backend): load, not a bug
        "53200",  # out_of_memory (pressure, not a bad statement)
        "53400",  # configuration_limit_exceeded
    }
)


def classify(exc: BaseException) -> ErrorKind:
    """Sort an exception into connection / conflict / permanent."""
    if isinstance(exc, PoolTimeout | StatementDeadline):
        return ErrorKind.CONNECTION
    if not isinstance(exc, psycopg.Error):
        return ErrorKind.PERMANENT
    code = exc.sqlstate
    if code:
        if code in _CONNECTION_CODES or code.startswith(_CONNECTION_CLASSES):
            return ErrorKind.CONNECTION
        if code in _CONFLICT_CODES:
            return ErrorKind.CONFLICT
        return ErrorKind.PERMANENT
    # No SQLSTATE: the client lost the connection (server closed it, socket reset,
    # connect refused) or the connection object is already closed.
    if isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError):
        return ErrorKind.CONNECTION
    return ErrorKind.PERMANENT


def is_transient(exc: BaseException) -> bool:
    """True when running the same work again, on a fresh connection, may succeed."""
    return classify(exc) is not ErrorKind.PERMANENT


def is_connection_error(exc: BaseException) -> bool:
    """True when the session (and likely every idle one in the pool) is gone."""
    return classify(exc) is ErrorKind.CONNECTION
