"""What an operator narrows jobs by, from loose input ('dead,cancelled', '2h', '{"user": 5}').

Input no query could use is a ConfigError naming it, before any statement runs: a job id
beyond bigint, a duration past what a timestamp holds, text PostgreSQL cannot store (a NUL
character, a lone surrogate: what bytes that are not UTF-8 become on a command line).

`JobFilter.params()` fills the optional parameters of the `job_filter` condition in
sql/admin.sql, where every field is `(%(x)s IS NULL OR ...)`: one fixed statement serves
every combination and nothing is built from the operator's text.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from unbroken.enqueue import unstorable_in
from unbroken.errors import ConfigError
from unbroken.ops.format import clip, format_age
from unbroken.settings import MAX_SECONDS
from unbroken.states import FINAL, JobState

_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?", re.IGNORECASE)
_UNIT = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, None: 1}
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
# Job ids are bigint. (Durations are bounded by MAX_SECONDS, in settings.)
MAX_JOB_ID = 2**63 - 1


def text_problem(text: str) -> str | None:
    """What PostgreSQL could not store in `text` (said as "holds ..."), or None."""
    found = _UNSTORABLE.search(text)
    if found is None:
        return None
    if found[0] == "\x00":
        return "holds a NUL character"
    return "holds a lone surrogate (bytes that are not UTF-8)"


def args_problem(text: str) -> str | None:
    """What no query could match with this `args` filter: text PostgreSQL cannot store, or a
    JSON object holding such text or a number JSON cannot (1e999 reads as Infinity)."""
    problem = text_problem(text)
    if problem is not None:
        return problem
    try:
        parsed = json.loads(text)
    except (ValueError, RecursionError):
        return None  # plain text: matched by substring
    if not isinstance(parsed, dict):
        return None
    try:
        bad = unstorable_in(json.dumps(parsed, allow_nan=False))
    except ValueError:
        return "holds a number JSON cannot hold (Infinity or NaN)"
    except RecursionError:
        return "is nested too deeply"
    return None if bad is None else f"holds {bad}, which PostgreSQL cannot store as text"


def check_job_id(job_id: int, what: str = "job id") -> int:
    """`job_id` if it can be one (1 to bigint's maximum), else a ConfigError."""
    if not 1 <= job_id <= MAX_JOB_ID:
        raise ConfigError(f"{what} {job_id} is out of range (1 to {MAX_JOB_ID})")
    return job_id


def parse_duration(text: str) -> float:
    """'90', '90s', '5m', '1h30m', '2d' -> seconds; anything else is a ConfigError."""
    compact = text.strip().replace(" ", "")
    pos, total = 0, 0.0
    while pos < len(compact):
        match = _DURATION.match(compact, pos)
        if not match:
            break
        unit = match[2].lower() if match[2] else None
        total += float(match[1]) * _UNIT[unit]
        pos = match.end()
    if not compact or pos != len(compact):
        raise ConfigError(f"{text!r} is not a duration (examples: 30s, 5m, 1h30m, 2d)")
    # MAX_SECONDS is also within what PostgreSQL's interval arithmetic can take.
    if not math.isfinite(total) or total > MAX_SECONDS:
        raise ConfigError(f"{clip(text, 40)!r} is too long a duration: at most 10 years (3650d)")
    return total


def storable(what: str, text: str) -> str:
    """`text`, if PostgreSQL can hold it; else a ConfigError naming `what` and the problem
    (a NUL character or a lone surrogate: no text or jsonb value stores either)."""
    problem = unstorable_in(json.dumps(text))
    if problem:
        raise ConfigError(f"{what} holds {problem}, which PostgreSQL cannot store")
    return text


def job_states(names: Iterable[str]) -> tuple[JobState, ...]:
    """State names as JobStates; an unknown one is a ConfigError that lists the known."""
    found = []
    for name in names:
        try:
            found.append(JobState(name))
        except ValueError:
            known = ", ".join(JobState)
            raise ConfigError(f"unknown job state {name!r} (one of: {known})") from None
    return tuple(found)


def args_object(text: str) -> str | None:
    """An args filter that is a JSON object, as the JSON the query compares; else None."""
    try:
        parsed = json.loads(text)
    except ValueError:
        return None
    return json.dumps(parsed) if isinstance(parsed, dict) else None


def checked_args(text: str) -> str:
    """An args filter PostgreSQL can compare: in the text and, when it is a JSON object, in
    what it decodes to (`{"k": "\\u0000"}` is valid JSON, but no jsonb value holds it)."""
    storable("args", text)
    as_json = args_object(text)
    problem = unstorable_in(as_json) if as_json else None
    if problem:
        raise ConfigError(f"args holds {problem}, which PostgreSQL cannot store")
    return text


@dataclass(frozen=True)
class JobFilter:
    """What an operator narrows jobs by; every field optional. `args` is JSON or plain text."""

    states: tuple[JobState, ...] | None = None
    queue: str | None = None
    task: str | None = None
    older_than: float | None = None  # seconds since the job was created
    args: str | None = None  # a JSON object matches by containment, other text by substring

    def __post_init__(self) -> None:
        if self.states is not None:
            object.__setattr__(self, "states", job_states(self.states))
        for what, text in (("queue", self.queue), ("task", self.task)):
            problem = None if text is None else text_problem(text)
            if problem is not None:
                raise ConfigError(f"{what} {problem}")
        problem = None if self.args is None else args_problem(self.args)
        if problem is not None:
            raise ConfigError(f"args filter {problem}")
        if self.older_than is not None and not 0 <= self.older_than <= MAX_SECONDS:
            raise ConfigError(f"older than {self.older_than} s: 0 to 100 years")

    @classmethod
    def build(
        cls,
        state: str | Sequence[str] | None = None,
        queue: str | None = None,
        task: str | None = None,
        older_than: str | float | None = None,
        args: str | None = None,
    ) -> JobFilter:
        """From loose operator input: 'dead,cancelled', '2h', empty strings meaning 'any'."""
        if isinstance(state, str):
            state = [s.strip() for s in state.split(",") if s.strip()]
        age = parse_duration(older_than) if isinstance(older_than, str) and older_than else None
        if isinstance(older_than, int | float):
            age = float(older_than)
        return cls(
            states=job_states(state) if state else None,
            queue=storable("queue", queue) if queue else None,
            task=storable("task", task) if task else None,
            older_than=age,
            args=checked_args(args.strip()) if args and args.strip() else None,
        )

    @property
    def searched(self) -> bool:
        """Whether it asks what no index answers (age, arguments) or what no index is keyed
        by (the queue or task of finished jobs: jobs_finished_state_idx only carries them):
        a list then searches a bounded number of the newest candidates (sql/admin.sql
        job_search_window)."""
        if self.older_than is not None or self.args is not None:
            return True
        finished = self.states is None or any(s in FINAL for s in self.states)
        return finished and (self.queue is not None or self.task is not None)

    def restricted_to(self, allowed: Sequence[JobState]) -> JobFilter:
        """The same filter limited to `allowed` states (what an action can apply to)."""
        # () matches nothing: none of the asked states is one the action applies to.
        states = tuple(s for s in (allowed if self.states is None else self.states) if s in allowed)
        return JobFilter(states, self.queue, self.task, self.older_than, self.args)

    def params(self) -> dict[str, Any]:
        """The `job_filter` condition's parameters (sql/admin.sql)."""
        args_json = None if self.args is None else args_object(self.args)
        args_text = self.args if args_json is None else None
        return {
            # An array literal, typed by the query (job_state[]): the planner then sees it.
            "states": None if self.states is None else "{" + ",".join(self.states) + "}",
            "queue": self.queue,
            "task": self.task,
            "older_than": self.older_than,
            "args_json": args_json,
            "args_text": args_text,
        }

    def describe(self) -> str:
        parts = []
        if self.states is not None:
            parts.append(f"state={','.join(self.states) or '(none)'}")
        if self.queue:
            parts.append(f"queue={self.queue}")
        if self.task:
            parts.append(f"task={self.task}")
        if self.older_than is not None:
            parts.append(f"older than {format_age(self.older_than)}")
        if self.args:
            parts.append(f"args~{self.args}")
        return " ".join(parts) or "all jobs"
