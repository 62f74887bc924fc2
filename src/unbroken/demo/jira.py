"""A synthetic Jira: 30,000 issues and 45,000 changelogs behind a slow, paginated API.

Pages hold 100 items (Jira's maximum) and each costs a few milliseconds of latency, like
the real API a 30-minute sync reads. Content is a pure function of the position, so
a resumed sync sees exactly what the first one saw and the final counts can be checked.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass

from unbroken import Page

ISSUES = 30_000
CHANGELOGS = 45_000
PAGE_SIZE = 100
STATUSES = ("To Do", "In Progress", "In Review", "Done")


@dataclass(frozen=True)
class Issue:
    id: int
    key: str
    summary: str
    status: str


@dataclass(frozen=True)
class Changelog:
    id: int
    issue_id: int
    field: str
    from_value: str
    to_value: str


def issue(n: int) -> Issue:
    return Issue(n + 1, f"DEMO-{n + 1}", f"Synthetic issue number {n + 1}", STATUSES[n % 4])


def changelog(n: int) -> Changelog:
    # 1.5 changelogs per issue: every issue has one, every other issue a second.
    issue_id = n * 2 // 3 + 1
    before, after = STATUSES[n % 3], STATUSES[n % 3 + 1]
    return Changelog(n + 1, issue_id, "status", before, after)


class JiraAPI:
    """Paged reads with latency; `start_at` seeks like Jira's own startAt parameter."""

    def __init__(self, latency_ms: tuple[float, float] = (20.0, 60.0)) -> None:
        self.latency_ms = latency_ms
        self.pages_served = 0

    async def _page_delay(self) -> None:
        self.pages_served += 1
        await asyncio.sleep(random.uniform(*self.latency_ms) / 1000)

    async def issues(self, start_at: int | None) -> AsyncIterator[Page[Issue]]:
        position = start_at or 0
        while position < ISSUES:
            await self._page_delay()
            end = min(position + PAGE_SIZE, ISSUES)
            yield Page([issue(n) for n in range(position, end)], cursor=end, total=ISSUES)
            position = end

    async def changelogs(self, start_at: int | None) -> AsyncIterator[Page[Changelog]]:
        position = start_at or 0
        while position < CHANGELOGS:
            await self._page_delay()
            end = min(position + PAGE_SIZE, CHANGELOGS)
            page = [changelog(n) for n in range(position, end)]
            yield Page(page, cursor=end, total=CHANGELOGS)
            position = end
