"""PostgreSQL array literals for the batch statements' unnest() parameters.

psycopg adapting a thousand-element list value by value was the worker's largest single
cost; one join per column builds the same parameter as text, which the statement casts.
Only for values whose text needs no quoting (numbers, enum labels, the server's own
timestamp text).
"""

from __future__ import annotations

from collections.abc import Iterable


def int_array(values: Iterable[int]) -> str:
    return "{" + ",".join(map(str, values)) + "}"


def word_array(values: Iterable[str]) -> str:
    """Words with no comma, quote, brace, backslash or space (state names)."""
    return "{" + ",".join(values) + "}"


def float_array(values: Iterable[float | None]) -> str:
    return "{" + ",".join("NULL" if v is None else repr(v) for v in values) + "}"


def claim_array(claims: Iterable[str]) -> str:
    """Claim tokens (timestamps as the server printed them: spaces, so quoted)."""
    return "{" + ",".join(f'"{c}"' for c in claims) + "}"
