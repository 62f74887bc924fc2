"""Counts an operator reads, and how far to trust each: exact, at least, or about.

Over millions of finished jobs an exact count costs the database seconds at every page load
and scrape, so the operator store counts what it cannot afford to count in full either up
to a cap (a filtered list: "10,000+") or from a sample of the table (finished jobs per state
and queue: "~412,000"). A `Count` is an int, so sums, comparisons and `--json` see the
number; formatted (`f"{count:,}"`, the dashboard's `num`), it says which kind it is.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Kind = Literal["exact", "at_least", "about"]


class Count(int):
    """A number of jobs that knows whether it is exact, a lower bound or an estimate."""

    kind: Kind

    def __new__(cls, value: int, kind: Kind = "exact") -> Count:
        count = super().__new__(cls, value)
        count.kind = kind
        return count

    @classmethod
    def upto(cls, counted: int, cap: int) -> Count:
        """What a count stopped after `cap + 1` rows says: exact up to cap, else "cap+"."""
        return cls(cap, "at_least") if counted > cap else cls(counted)

    def __format__(self, spec: str) -> str:
        text = format(int(self), spec)
        if self.kind == "at_least":
            return f"{text}+"
        if self.kind == "about":
            return f"~{text}"
        return text

    def __repr__(self) -> str:
        return f"Count({int(self)}, {self.kind!r})"


@dataclass(frozen=True)
class Matching:
    """What a list's filter matches. A filter by age or arguments, which no index answers,
    is searched for among the newest candidates only (unbroken.ops.store.SEARCH_LIMIT):
    `examined` says how many it read, and `stopped_at`, when there were more, the oldest id
    it read: the search goes on below it (`--before`)."""

    count: Count
    examined: int | None = None  # None: no search, the indexes answered the whole filter
    stopped_at: int | None = None

    def searched(self) -> dict[str, int | None] | None:
        """How far the search went, as `--json` and the dashboard's API say it (None: no
        search)."""
        if self.examined is None:
            return None
        return {"jobs": self.examined, "stopped_at": self.stopped_at}


__all__ = ["Count", "Kind", "Matching"]
