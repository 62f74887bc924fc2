"""The checks the commands' options make as they are parsed, before any connection.

Each is a Typer callback that returns the value it was given, or raises a ConfigError
naming the option: the central handler (unbroken.cli.main) prints it as one line with exit
code 2. They refuse what no statement could use (a job id beyond bigint, text PostgreSQL
cannot store, a number that is not finite) and an empty name: `--queue "$QUEUE"` with the
variable unset must not mean "every queue" to `jobs cancel`.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from unbroken.enqueue import name_problem
from unbroken.errors import ConfigError
from unbroken.ops.filters import args_problem, check_job_id, text_problem


def text_option(flag: str) -> Callable[[str | None], str | None]:
    """A name or key given to filter by: not empty, nothing PostgreSQL cannot store."""

    def check(value: str | None) -> str | None:
        if value is None:
            return None
        problem = "is empty" if not value.strip() else text_problem(value)
        if problem is not None:
            raise ConfigError(f"{flag}: {value!r} {problem}")
        return value

    return check


def group_keys(keys: list[str] | None) -> list[str] | None:
    """Dead-letter group keys (`dlq retry|purge KEY...`), each as `text_option` checks."""
    check = text_option("group key")
    for key in keys or ():
        check(key)
    return keys


def args_filter(value: str | None) -> str | None:
    """`--args`: JSON matched by containment or text by substring, and not empty."""
    if value is None:
        return None
    problem = "is empty" if not value.strip() else args_problem(value)
    if problem is not None:
        raise ConfigError(f"--args: {problem}")
    return value


def queue_name(value: str) -> str:
    """A queue to pause or resume: a name a job could have."""
    problem = name_problem("queue name", value, 128)
    if problem is not None:
        raise ConfigError(problem)
    return value


def job_id(value: int | None) -> int | None:
    return None if value is None else check_job_id(value)


def job_ids(values: list[int] | None) -> list[int] | None:
    for value in values or ():
        check_job_id(value)
    return values


def id_option(flag: str) -> Callable[[int | None], int | None]:
    """An option that names a job id (`--before`)."""

    def check(value: int | None) -> int | None:
        return None if value is None else check_job_id(value, flag)

    return check


def number_option(flag: str, low: float, high: float) -> Callable[[float | None], float | None]:
    """A finite number from `low` to `high` (click's own range check prints a box)."""

    def check(value: float | None) -> float | None:
        if value is not None and not (math.isfinite(value) and low <= value <= high):
            raise ConfigError(f"{flag}: {value} is not a number from {low:g} to {high:g}")
        return value

    return check
