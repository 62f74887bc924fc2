"""Turning a task call into a job row: validation, serialisation, and the insert itself.

Everything that can be wrong with a job is caught here, before a byte is written: an
argument that does not fit the task's signature, one that JSON cannot hold, a payload
over the size limit, arguments nested deeper than `MAX_ARGS_DEPTH`, text PostgreSQL cannot
store (a NUL character, a lone surrogate) in the arguments, a name or a unique key, options
of the wrong type or beyond what a column holds. A refused job raises `EnqueueError` with
one line naming the task and the problem (never the data); a batch is refused whole.
Options are checked once per task and options (`JobMaker`), arguments once per call.

`decode_payload` is the way back, for a worker: a row's args text to the payload, or a
ValueError saying why it cannot be one (a row another client wrote).
"""

from __future__ import annotations

import hashlib
import inspect
import json
import operator
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from json.encoder import c_make_encoder, encode_basestring_ascii  # type: ignore[attr-defined]
from typing import Any

from psycopg.types.json import Jsonb

from unbroken.errors import EnqueueError

# Queue and task names go into COPY text unescaped: no tabs, newlines or backslashes. NUL
# and lone surrogates (a Python str may hold one; UTF-8 cannot) no text column can store.
_UNSAFE_NAME = re.compile("[\x00\t\n\r\\\\\ud800-\udfff]")
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
# An escape in the encoder's output (ASCII, lower-case hex): backslash-uXXXX, or a backslash
# and one character.
_ESCAPE = re.compile(r"\\(?:u([0-9a-f]{4})|.)")
INT4_MAX = 2**31 - 1  # max_attempts and chunk_size are integer columns
# The unique index takes entries up to ~2,700 bytes (after compression, which random text
# does not get). A longer explicit key is refused; unique=True's own key (the task and its
# arguments) is a digest of them past this length.
MAX_UNIQUE_KEY_BYTES = 2500

# How deep an argument may nest ([[...]] and {"a": {...}} count a level each). JSON
# decoders recurse once per level, and a worker decodes on a deeper stack than the caller
# encoded on: ~1,000 levels got in and no worker could read them. 64 is far beyond what
# real arguments need and far below any decoder's limit.
MAX_ARGS_DEPTH = 64
# The same bound on a whole payload: {"args": [...], "kwargs": {...}} adds two levels.
MAX_PAYLOAD_DEPTH = MAX_ARGS_DEPTH + 2


@dataclass(frozen=True)
class EnqueueOptions:
    """Per-call options; None means "the task's default"."""

    queue: str | None = None
    priority: int | None = None
    run_at: datetime | None = None
    delay: float | timedelta | None = None
    unique_key: str | None = None
    max_attempts: int | None = None
    limit_key: str | None = None


@dataclass(slots=True)
class JobSpec:
    """A validated job, ready to insert: made by `task.job(...)` for `App.enqueue_many`.

    One built by hand is checked as a task's call is (`spec_problem`), when it is built and
    again by `enqueue_many` (it may have changed since), with the app's payload limit: a
    problem is one `EnqueueError` line; its args are re-encoded as enqueue encodes them.
    (Not frozen: a frozen dataclass took task.job() from 1.7 to 2.5 us.)"""

    queue: str
    task: str
    args: str  # JSON text: {"args": [...], "kwargs": {...}}
    priority: int
    run_at: datetime | None
    max_attempts: int
    unique_key: str | None
    limit_key: str | None = None  # flow control: unbroken.limits

    def __post_init__(self) -> None:
        problem, self.args = spec_problem(self)
        if problem is not None:
            raise EnqueueError(problem)

    def params(self) -> dict[str, Any]:
        return {
            "queue": self.queue,
            "task": self.task,
            "args": Jsonb(self.args, dumps=_identity),
            "priority": self.priority,
            "run_at": self.run_at,
            "max_attempts": self.max_attempts,
            "unique_key": self.unique_key,
            "limit_key": self.limit_key,
        }


class _Checked(JobSpec):
    """A JobSpec that JobMaker made: everything in it was checked as it was made."""

    __slots__ = ()

    def __post_init__(self) -> None:
        pass


def spec_problem(spec: JobSpec) -> tuple[str | None, str]:
    """What enqueue would refuse in a hand-built JobSpec (one line, or None), and its args
    as enqueue encodes them."""
    task, args = spec.task, spec.args
    problem = name_problem("task name", task, 255)
    if problem is not None:
        return f"task {task!r}: {problem}", args
    problem = name_problem("queue name", spec.queue, 128)
    if problem is None:
        problem = _number_problem("priority", spec.priority, -32768, 32767)
    if problem is None:
        problem = _number_problem("max_attempts", spec.max_attempts, 1, INT4_MAX)
    if problem is None and spec.run_at is not None:
        if not isinstance(spec.run_at, datetime):
            problem = f"run_at must be a datetime, got {type(spec.run_at).__name__}"
        elif spec.run_at.tzinfo is None:
            problem = f"run_at must be timezone-aware, got {spec.run_at}"
    if problem is None and spec.unique_key is not None:
        if not isinstance(spec.unique_key, str):
            problem = f"unique_key must be a string, got {type(spec.unique_key).__name__}"
        else:
            problem = unique_key_problem(spec.unique_key)
    if problem is None and spec.limit_key is not None:
        problem = _limit_key_problem(spec.limit_key)
    if problem is None:
        problem, args = _args_problem(args)
    return (None if problem is None else f"task {task}: {problem}"), args


def _limit_key_problem(key: object) -> str | None:
    """The database's own bounds on a limit key (which limit governs it is the app's to say)."""
    if not isinstance(key, str):
        return f"limit_key must be a string, got {type(key).__name__}"
    return name_problem("limit key", key, 255)


def _number_problem(what: str, value: object, low: int, high: int) -> str | None:
    number = as_int(value)
    if number is None:
        return f"{what} must be an integer, got {value!r}"
    if what == "priority" and not low <= number <= high:
        return f"priority {number} is outside {low}..{high}"
    if number < low:
        return f"{what} must be >= {low}, got {number}"
    if number > high:
        return f"{what} must be {low} to {high}, got {number}"
    return None


def _args_problem(args: object) -> tuple[str | None, str]:
    """Hand-built args: JSON text of a payload, re-encoded as enqueue encodes a call's."""
    if not isinstance(args, str):
        return f"args must be JSON text, got {type(args).__name__}", ""
    try:
        payload = decode_payload(args)
        encoded = _encode(payload)
    except (ValueError, RecursionError) as exc:
        reason = str(exc) if isinstance(exc, ValueError) else "nested too deeply"
        if isinstance(exc, json.JSONDecodeError) or "JSON compliant" in reason:
            reason = "not JSON"
        return f'args: {reason} (want the JSON text of {{"args": [...], "kwargs": {{...}}}})', args
    bad = unstorable_in(encoded)
    if bad is not None:
        return f"arguments hold {bad}, which PostgreSQL cannot store as text", encoded
    if len(encoded) > 2 * MAX_PAYLOAD_DEPTH and nested_deeper_than(encoded, MAX_PAYLOAD_DEPTH):
        return f"arguments are nested more than {MAX_ARGS_DEPTH} levels deep", encoded
    return None, encoded


def too_big(task: str, size: int, limit: int) -> str:
    return (
        f"task {task}: arguments are {size:,} bytes, over the limit of {limit:,} "
        "(UNBROKEN_MAX_PAYLOAD_BYTES); store big data in a table and pass its key"
    )


def checked_rows(rows: Iterable[JobSpec], limit: int) -> list[JobSpec]:
    """`rows` as a list, each one's args within `limit` bytes (the app's) and each one not
    made by a task checked again (it may have changed since it was built); else an
    EnqueueError, for the whole batch."""
    listed = list(rows)
    for row in listed:
        if type(row) is not _Checked:
            row.__post_init__()
        if len(row.args) > limit:
            raise EnqueueError(too_big(row.task, len(row.args), limit))
    return listed


def _identity(text: str) -> str:
    return text


def _unencodable(obj: object) -> Any:
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")


# The C encoder json.dumps() uses, made once: JSONEncoder.encode() builds a new one on every
# call, which was half the cost of task.job(). Compact, ASCII, no NaN; no circular-reference
# bookkeeping (a cycle ends in RecursionError, caught below).
_encode_chunks = c_make_encoder(
    None, _unencodable, encode_basestring_ascii, None, ":", ",", False, False, False
)


def _encode(obj: Any) -> str:
    return "".join(_encode_chunks(obj, 0))


_AS_PARENS = bytes.maketrans(b"[]{}", b"()()")
_NOT_BRACKETS = bytes(c for c in range(256) if c not in b"[]{}")
_NOT_BRACKETS_OR_QUOTES = bytes(c for c in range(256) if c not in b'[]{}"')


def nested_deeper_than(text: str, limit: int) -> bool:
    """Whether JSON `text` nests more than `limit` levels (each [...] and {...} is one).

    The count of opening brackets bounds the depth, and is all most texts cost. Past it,
    all in C: the strings are taken out (their brackets do not count), the brackets left
    become parentheses, and each `replace(b"()", b"")` removes exactly one level (it
    never matches across what it removed): deeper than `limit` if any is left after
    `limit` passes. Strings go by keeping only brackets and quotes and dropping `""`
    pairs; a quote left means a string held a bracket, and then they go by splitting on
    quotes. Escaped quotes go first (escaped backslashes before them, so a string that
    ends in a backslash still ends).
    """
    if text.count("[") + text.count("{") <= limit:
        return False
    if "\\" in text:
        text = text.replace("\\\\", "").replace('\\"', "")
    parens = text.encode().translate(_AS_PARENS, _NOT_BRACKETS_OR_QUOTES).replace(b'""', b"")
    if b'"' in parens:
        outside = "".join(text.split('"')[::2])
        parens = outside.encode().translate(_AS_PARENS, _NOT_BRACKETS)
    for _ in range(limit):
        if not parens:
            return False
        parens = parens.replace(b"()", b"")
    return bool(parens)


_JSON_KIND = {dict: "an object", list: "an array", str: "a string", bool: "a boolean"}


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    return _JSON_KIND.get(type(value), "a number")


def decode_payload(text: str) -> dict[str, Any]:
    """A job row's args (JSON text) as its {"args": [...], "kwargs": {...}} payload.

    Raises ValueError with the reason when the text cannot be one: too deep for the
    decoder, not an object, "args" not a list, "kwargs" not an object (missing ones are
    empty). Enqueue never writes such a row; another client's SQL or an older version can.
    """
    try:
        payload = json.loads(text)
    except RecursionError:
        raise ValueError("nested too deeply for the JSON decoder") from None
    if not isinstance(payload, dict):
        raise ValueError(f'{_kind(payload)}, not an object with "args" and "kwargs"')
    args = payload.get("args", [])
    if not isinstance(args, list):
        raise ValueError(f'"args" is {_kind(args)}, not a list')
    kwargs = payload.get("kwargs", {})
    if not isinstance(kwargs, dict):
        raise ValueError(f'"kwargs" is {_kind(kwargs)}, not an object')
    return payload


def argument_checker(
    signature: inspect.Signature | None,
) -> Callable[[tuple[Any, ...], dict[str, Any]], None]:
    """A fast check that arguments fit `signature` (raises TypeError like bind() does).

    Plain signatures (named parameters, no defaults, no *args/**kwargs) are checked by
    counting; anything else falls back to `Signature.bind`.
    """
    if signature is None:
        return lambda args, kwargs: None
    params = list(signature.parameters.values())
    plain = all(p.kind is p.POSITIONAL_OR_KEYWORD and p.default is p.empty for p in params)
    if not plain:

        def bind(args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            signature.bind(*args, **kwargs)

        return bind
    names = [p.name for p in params]
    count = len(names)

    def check(args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        if len(args) + len(kwargs) != count or (
            kwargs and not all(k in names[len(args) :] for k in kwargs)
        ):
            signature.bind(*args, **kwargs)  # raises the precise TypeError

    return check


def name_problem(what: str, name: object, longest: int) -> str | None:
    """Why `name` cannot be a queue or task name; None when it can."""
    if isinstance(name, str) and 1 <= len(name) <= longest and not _UNSAFE_NAME.search(name):
        return None
    return (
        f"{what} {name!r} must be 1 to {longest} characters without tabs, newlines, "
        "backslashes, NUL or lone surrogates"
    )


def unique_key_problem(key: str) -> str | None:
    """Why `key` cannot be a unique key (None when it can)."""
    if _UNSTORABLE.search(key):
        return "unique key holds a NUL character or a lone surrogate"
    size = len(key.encode())
    if size > MAX_UNIQUE_KEY_BYTES:
        return (
            f"unique key is {size:,} bytes, over the limit of {MAX_UNIQUE_KEY_BYTES:,} (the "
            "unique index's); pass a digest of what makes the job unique"
        )
    return None


def as_int(value: object) -> int | None:
    """`value` as an int if it is an integer (not a bool, float or string), else None."""
    if isinstance(value, bool):
        return None
    try:
        return operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        return None


def unstorable_in(payload: str) -> str | None:
    """What PostgreSQL could not store in this encoder output: "a NUL character" or "a lone
    surrogate" (escaped, as the ASCII encoder writes them), or None.

    Two substring searches in C decide for almost every payload; only one that holds a
    `\\u0000` or `\\udXXX` escape (an emoji is a surrogate pair) is walked escape by escape,
    so that an escaped backslash followed by "u0000" is text, and a pair is a pair.
    """
    if "\\u0000" not in payload and "\\ud" not in payload:
        return None
    high_ends = -1  # where a high surrogate's escape ended, while its low half is due
    for match in _ESCAPE.finditer(payload):
        code = match[1]
        if high_ends >= 0:
            if match.start() != high_ends or code is None or not "dc00" <= code <= "dfff":
                return "a lone surrogate"
            high_ends = -1
        elif code is None:
            continue
        elif code == "0000":
            return "a NUL character"
        elif "d800" <= code <= "dbff":
            high_ends = match.end()
        elif "dc00" <= code <= "dfff":
            return "a lone surrogate"
    return "a lone surrogate" if high_ends >= 0 else None


class JobMaker:
    """Turns one task's calls, under one set of options, into `JobSpec`s.

    The options are checked once, when the maker is built; a problem with them is kept and
    raised on every call, so it surfaces where the job is made. Per call only the arguments
    are checked and serialised, and the values that depend on them (a priority or unique
    key function) or on the clock (a delay) are computed.
    """

    __slots__ = (
        "attempts",
        "check",
        "delay",
        "key_problem",
        "limit_key",
        "limit_key_fn",
        "max_payload_bytes",
        "now",
        "priority",
        "priority_fn",
        "problem",
        "queue",
        "run_at",
        "task",
        "unique",
        "unique_key",
    )

    def __init__(
        self,
        *,
        task: str,
        check: Callable[[tuple[Any, ...], dict[str, Any]], None],
        queue: str,
        priority: int | Callable[..., int],
        max_attempts: int,
        unique: bool | Callable[..., str] | None,
        options: EnqueueOptions,
        max_payload_bytes: int,
        now: Callable[[], datetime],
        limit_key: Callable[..., str] | None = None,
        key_problem: Callable[[object], str | None] = lambda key: None,
    ) -> None:
        self.task = task
        self.limit_key = options.limit_key
        self.limit_key_fn = limit_key if options.limit_key is None else None
        self.key_problem = key_problem
        self.check = check
        self.max_payload_bytes = max_payload_bytes
        self.now = now
        self.unique = unique
        self.unique_key = options.unique_key
        self.priority_fn: Callable[..., int] | None = None
        given_priority: object = 0
        if options.priority is not None:
            given_priority = options.priority
        elif callable(priority):
            self.priority_fn = priority
        else:
            given_priority = priority
        self.priority = as_int(given_priority) or 0
        given_attempts = options.max_attempts if options.max_attempts is not None else max_attempts
        self.attempts = as_int(given_attempts) or 0
        self.queue = queue if options.queue is None else options.queue  # "" is refused below
        self.run_at = options.run_at
        self.delay: timedelta | None = None
        self.problem = self._problem(given_priority, given_attempts, options.delay)

    def _problem(self, priority: object, attempts: object, delay: object) -> str | None:
        task = self.task
        if self.priority_fn is None:
            if as_int(priority) is None:
                return f"task {task}: priority must be an integer, got {priority!r}"
            if not -32768 <= self.priority <= 32767:
                return f"task {task}: priority {self.priority} is outside -32768..32767"
        if as_int(attempts) is None:
            return f"task {task}: max_attempts must be an integer, got {attempts!r}"
        if self.attempts < 1:
            return f"task {task}: max_attempts must be >= 1, got {self.attempts}"
        if self.attempts > INT4_MAX:
            return f"task {task}: max_attempts must be 1 to {INT4_MAX}, got {self.attempts}"
        if delay is not None:
            if isinstance(delay, str | bytes | bool):
                return f"task {task}: delay must be seconds or a timedelta, got {delay!r}"
            try:
                seconds = delay if isinstance(delay, timedelta) else float(delay)  # type: ignore[arg-type]
                self.delay = seconds if isinstance(seconds, timedelta) else timedelta(0, seconds)
            except (TypeError, ValueError, OverflowError):
                return f"task {task}: delay must be seconds or a timedelta, got {delay!r}"
            if self.delay.total_seconds() < 0:
                return f"task {task}: delay must be >= 0 seconds, got {self.delay.total_seconds()}"
            try:
                self.now() + self.delay
            except OverflowError:
                return self._too_far()
        if self.run_at is not None:
            if not isinstance(self.run_at, datetime):
                return f"task {task}: run_at must be a datetime, got {type(self.run_at).__name__}"
            if self.run_at.tzinfo is None:
                return f"task {task}: run_at must be timezone-aware, got {self.run_at}"
        problem = name_problem("queue name", self.queue, 128)
        if problem is not None:
            return f"task {task}: {problem}"
        key = self.unique_key
        if key is not None:
            if not isinstance(key, str):
                return f"task {task}: unique_key must be a string, got {type(key).__name__}"
            problem = unique_key_problem(key)
            if problem is not None:
                return f"task {task}: {problem}"
        return None

    def _too_far(self) -> str:
        return (
            f"task {self.task}: delay {self.delay} is too far in the future (the run time "
            "would be past the year 9999)"
        )

    def __call__(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> JobSpec:
        task = self.task
        if self.problem is not None:
            raise EnqueueError(self.problem)
        try:
            self.check(args, kwargs)
        except TypeError as exc:
            raise EnqueueError(f"task {task}: arguments do not fit its signature: {exc}") from None
        try:
            payload = _encode({"args": list(args), "kwargs": kwargs})
        except RecursionError:
            raise EnqueueError(
                f"task {task}: arguments are nested more than {MAX_ARGS_DEPTH} levels deep "
                "or refer to themselves"
            ) from None
        except (TypeError, ValueError) as exc:
            raise EnqueueError(
                f"task {task}: arguments cannot be serialised to JSON: {exc}"
            ) from None
        # ASCII (the encoder escapes the rest): characters are bytes.
        size = len(payload)
        # Two substring searches in C; the walk only for a payload that has such an escape.
        if ("\\u0000" in payload or "\\ud" in payload) and (bad := unstorable_in(payload)):
            raise EnqueueError(
                f"task {task}: arguments hold {bad}, which PostgreSQL cannot store as text"
            )
        if size > self.max_payload_bytes:
            raise EnqueueError(too_big(task, size, self.max_payload_bytes))
        # Each level takes two characters: most payloads are too short to be too deep.
        if size > 2 * MAX_PAYLOAD_DEPTH and nested_deeper_than(payload, MAX_PAYLOAD_DEPTH):
            raise EnqueueError(
                f"task {task}: arguments are nested more than {MAX_ARGS_DEPTH} levels deep "
                "(the limit); pass flatter data"
            )
        prio = self.priority
        if self.priority_fn is not None:
            given = self.priority_fn(*args, **kwargs)
            try:
                prio = int(given)
            except (TypeError, ValueError, OverflowError):
                raise EnqueueError(
                    f"task {task}: its priority function returned {given!r}, not an integer"
                ) from None
            if not -32768 <= prio <= 32767:
                raise EnqueueError(f"task {task}: priority {prio} is outside -32768..32767")
        key = self.unique_key
        if key is None and self.unique:
            unique = self.unique
            if callable(unique):
                key = str(unique(*args, **kwargs))
                problem = unique_key_problem(key)
                if problem is not None:
                    raise EnqueueError(f"task {task}: {problem}")
            else:
                key = f"{task}:{payload}"
                if (
                    len(key) > MAX_UNIQUE_KEY_BYTES // 4
                    and len(key.encode()) > MAX_UNIQUE_KEY_BYTES
                ):
                    key = f"{task}:sha256:{hashlib.sha256(payload.encode()).hexdigest()}"
        run_at = self.run_at
        if self.delay is not None:
            try:
                run_at = self.now() + self.delay
            except OverflowError:
                raise EnqueueError(self._too_far()) from None
        limit_key = self.limit_key
        if self.limit_key_fn is not None:
            limit_key = self.limit_key_fn(*args, **kwargs)
        if limit_key is not None:
            # Checked per call: the app may declare its limits after its tasks.
            problem = self.key_problem(limit_key)
            if problem is not None:
                raise EnqueueError(f"task {task}: {problem}")
        return _Checked(self.queue, task, payload, prio, run_at, self.attempts, key, limit_key)


def many_params(rows: Sequence[JobSpec]) -> dict[str, Any]:
    """Column arrays for job_insert_many: one statement for the whole batch."""
    return {
        "queues": [r.queue for r in rows],
        "tasks": [r.task for r in rows],
        "args": [r.args for r in rows],
        "priorities": [r.priority for r in rows],
        "run_ats": [r.run_at for r in rows],
        "max_attempts": [r.max_attempts for r in rows],
        "unique_keys": [r.unique_key for r in rows],
        "limit_keys": [r.limit_key for r in rows],
    }


# Rows per piece of COPY data: the server parses one piece while the next is formatted.
COPY_PIECE_ROWS = 1000


def copy_query_name(rows: Sequence[JobSpec]) -> str:
    """job_copy_now when every job may run at once (state and run_at are then the table's
    defaults, which saves the server a timestamp parse per row), else job_copy."""
    return "job_copy_now" if all(r.run_at is None for r in rows) else "job_copy"


def copy_pieces(
    query_name: str, ids: Sequence[int], rows: Sequence[JobSpec], now: datetime
) -> Iterator[str]:
    """COPY text-format data for `query_name`'s columns, `COPY_PIECE_ROWS` lines at a time.

    JSON escapes control characters, so only backslashes need doubling; names were checked
    for tabs, newlines and backslashes when the job was made."""
    full = query_name == "job_copy"
    stamp = now.isoformat()
    for start in range(0, len(rows), COPY_PIECE_ROWS):
        lines = []
        for job_id, r in zip(
            ids[start : start + COPY_PIECE_ROWS],
            rows[start : start + COPY_PIECE_ROWS],
            strict=True,
        ):
            args = r.args.replace("\\", "\\\\") if "\\" in r.args else r.args
            if not full:
                lines.append(
                    f"{job_id}\t{r.queue}\t{r.task}\t{args}\t{r.priority}\t{r.max_attempts}\n"
                )
                continue
            if r.run_at is None or r.run_at <= now:
                state, run_at = "available", stamp if r.run_at is None else r.run_at.isoformat()
            else:
                state, run_at = "scheduled", r.run_at.isoformat()
            lines.append(
                f"{job_id}\t{r.queue}\t{r.task}\t{args}\t{state}\t{r.priority}\t{run_at}"
                f"\t{r.max_attempts}\n"
            )
        yield "".join(lines)
