"""Named queries, loaded once from the `.sql` files beside this module.

Each query sits under a header line `-- name: <noun_verb>` followed by a one-line
`-- <purpose>` comment; nothing in Python builds SQL by concatenation. Queries are written
against the schema `unbroken` and rendered for the configured schema at load time.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from unbroken.migrations import render

HERE = Path(__file__).parent
_HEADER = re.compile(r"^-- name: ([a-z_]+)\s*$", re.MULTILINE)


@dataclass(frozen=True)
class Query:
    name: str
    purpose: str
    text: bytes  # bytes, so psycopg takes it as a ready query and mypy refuses f-strings


class Queries:
    """All named queries for one schema: `queries["job_get_available"]`."""

    def __init__(self, schema: str = "unbroken") -> None:
        self.schema = schema
        self._by_name = _load(schema)

    def __getitem__(self, name: str) -> bytes:
        return self._by_name[name].text

    def get(self, name: str) -> Query:
        return self._by_name[name]

    def names(self) -> list[str]:
        return sorted(self._by_name)


@cache
def _load(schema: str) -> dict[str, Query]:
    found: dict[str, Query] = {}
    for path in sorted(HERE.glob("*.sql")):
        text = path.read_text()
        parts = _HEADER.split(text)
        # parts = [preamble, name1, body1, name2, body2, ...]
        for name, body in zip(parts[1::2], parts[2::2], strict=True):
            if name in found:
                raise ValueError(f"query {name!r} is defined twice ({path.name})")
            lines = body.strip().splitlines()
            purpose = lines[0].removeprefix("--").strip() if lines else ""
            sql = "\n".join(line for line in lines[1:]).strip()
            if not lines or not lines[0].startswith("--") or not sql:
                raise ValueError(f"query {name!r} in {path.name} needs a purpose line and a body")
            found[name] = Query(name, purpose, render(sql, schema).encode())
    return found


@cache
def queries(schema: str = "unbroken") -> Queries:
    return Queries(schema)
