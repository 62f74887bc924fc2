"""What a request asks for, read from its query string or form, or a 400 saying why not.

Every parameter that reaches a query is checked here first, so a value the database could
not take (a NUL character, an id past bigint, a negative limit, an unknown state) is the
client's mistake answered 400 with its reason, never a 500 or a 503 that blames the
database. The job filter's own checks live in unbroken.ops.filters, shared with the CLI.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from unbroken.errors import ConfigError
from unbroken.ops.filters import JobFilter, storable

FILTER_KEYS = ("state", "queue", "task", "older_than", "args")
MAX_ID = 2**63 - 1  # job ids are bigint
MAX_LIMIT = 1000


class BadRequest(Exception):
    """A parameter the dashboard cannot use: answered 400 with this message."""


def filter_values(values: Mapping[str, Any]) -> dict[str, str]:
    """The job filter's fields that are set, from a query string or a form."""
    return {k: v for k in FILTER_KEYS if isinstance(v := values.get(k), str) and v}


def job_filter(values: Mapping[str, Any]) -> JobFilter:
    """The job filter a query string or a form describes."""
    try:
        return JobFilter.build(**filter_values(values))
    except ConfigError as exc:
        raise BadRequest(str(exc)) from None


def int_param(values: Mapping[str, Any], name: str, *, high: int) -> int | None:
    """A whole number from 1 to `high`; None when the parameter is absent or empty."""
    text = values.get(name)
    if not isinstance(text, str) or not text:
        return None
    try:
        number = int(text)
    except ValueError:
        number = 0
    if not 1 <= number <= high:
        shown = text if len(text) <= 24 else text[:23] + "…"
        raise BadRequest(f"{name} must be a whole number from 1 to {high} (got {shown!r})")
    return number


def text_param(values: Mapping[str, Any], name: str) -> str | None:
    """A text parameter PostgreSQL can hold; None when absent or empty."""
    text = values.get(name)
    if not isinstance(text, str) or not text:
        return None
    try:
        return storable(name, text)
    except ConfigError as exc:
        raise BadRequest(str(exc)) from None
