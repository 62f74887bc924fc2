"""Periodic tasks: what a schedule is and which of its ticks are due, with no I/O.

    @app.periodic("0 7 * * mon-fri", tz="Europe/Paris", catch_up="latest")
    def morning_report(tick: datetime) -> None: ...

runtime/scheduler.py writes the ticks this module computes; every worker runs it, and the
primary key of `periodic_ticks` (schedule, tick) lets exactly one job exist per tick.

Ticks. The cron expression (croniter; an optional sixth field is seconds) names wall-clock
times in the schedule's time zone; each is one tick, an instant, enqueued once:
- a time a spring-forward skips (02:30 on a day clocks jump from 02:00 to 03:00) fires at
  the instant the offset before the jump gives it: 03:30 summer time, the gap's length
  later; when the expression also names that instant, it fires once.
- a time a fall-back repeats (02:30 on a day clocks go from 03:00 back to 02:00) fires at
  its first occurrence only (summer time).
A schedule in UTC (the default) has neither.

Catch-up. A tick enqueued within `grace` seconds of its time is on time, and always
enqueued. An older one was missed (no worker ran, or the database was away), and
`catch_up` decides: "none" skips every missed tick; "latest" enqueues the latest missed
tick when no tick is on time and skips the rest; an integer N enqueues the latest N missed
ticks and skips older ones. Skipped ticks are counted and logged by the scheduler.
"""

from __future__ import annotations

import functools
import heapq
import inspect
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter
from croniter.croniter import CroniterError

from unbroken.errors import ConfigError
from unbroken.settings import MAX_SECONDS

CatchUp = str | int  # "none" | "latest" | N
MAX_CATCH_UP = 10_000  # most missed ticks one catch-up enqueues
# Most ticks one check walks from the cursor (~3 s of croniter): past it, the middle of a
# long outage is not walked, and the count of missed ticks is a lower bound.
MAX_SCAN = 100_000
_OFFSET_SAMPLE = timedelta(hours=12)  # no zone changes its offset twice within this


@dataclass(frozen=True)
class Plan:
    """What one check does: the ticks to enqueue (ascending) and the missed ones it skips."""

    enqueue: list[datetime]
    skipped: int
    skipped_first: datetime | None  # the earliest and latest skipped tick, for the log line
    skipped_last: datetime | None
    exact: bool = True  # False: the outage held more than MAX_SCAN ticks; skipped is a floor


@dataclass(frozen=True)
class Schedule:
    """One periodic task's schedule (validated: see `schedule`)."""

    name: str  # the task's name; also the schedule's
    cron: str
    tz: str
    catch_up: CatchUp
    grace: float

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.tz)

    def ticks(self, after: datetime, until: datetime | None = None) -> Iterator[datetime]:
        """Ticks in (after, until] ascending, as UTC instants (unbounded without `until`)."""
        return _ticks(self.cron, self.zone, after, until)

    def next_tick(self, after: datetime) -> datetime:
        """The first tick after `after` (UTC)."""
        return next(self.ticks(after))

    def local(self, tick: datetime) -> datetime:
        """A tick in the schedule's time zone, as the task receives it."""
        return tick.astimezone(self.zone)

    def plan(self, checked_until: datetime, now: datetime) -> Plan:
        """Which ticks in (checked_until, now] to enqueue, and how many to skip."""
        on_time_from = now - timedelta(seconds=self.grace)
        keep = _missed_kept(self.catch_up)
        on_time: list[datetime] = []
        window: deque[datetime] = deque(maxlen=keep + 1)  # the latest missed, and one more
        missed, first, exact = 0, None, True
        scan = self.ticks(checked_until, now)
        while (tick := next(scan, None)) is not None:
            if tick >= on_time_from:
                on_time.append(tick)
                continue
            missed += 1
            first = first or tick
            window.append(tick)
            if missed == MAX_SCAN and exact:
                # Go on from as far before the on-time ticks as this walk spanned: the
                # ticks in between are skipped uncounted.
                resume = on_time_from - (tick - checked_until)
                if resume > tick:
                    scan = self.ticks(resume, now)
                    exact = False
        kept = list(window)[-keep:] if keep else []
        if self.catch_up == "latest" and on_time:
            kept = []
        skipped = missed - len(kept)
        return Plan(
            enqueue=kept + on_time,
            skipped=skipped,
            skipped_first=first if skipped else None,
            skipped_last=window[-len(kept) - 1] if skipped else None,
            exact=exact,
        )


def _missed_kept(catch_up: CatchUp) -> int:
    """How many of the latest missed ticks a policy may enqueue."""
    if catch_up == "none":
        return 0
    if catch_up == "latest":
        return 1
    assert isinstance(catch_up, int)
    return catch_up


def _offset_bounds(zone: ZoneInfo, start: datetime, end: datetime) -> tuple[timedelta, timedelta]:
    """The least and greatest UTC offset of `zone` around [start, end] (a day either side)."""
    offsets = set()
    at, last = start - timedelta(days=1), end + timedelta(days=1)
    while True:
        offsets.add(at.astimezone(zone).utcoffset() or timedelta(0))
        if at >= last:
            break
        at = min(at + _OFFSET_SAMPLE, last)
    return min(offsets), max(offsets)


def _ticks(
    cron: str, zone: ZoneInfo, after: datetime, until: datetime | None
) -> Iterator[datetime]:
    """Ticks in (after, until], ascending and distinct, as UTC instants.

    croniter walks wall-clock times (naive) in order; each maps to an instant with fold=0
    (a skipped time by the offset before the jump, a repeated one at its first
    occurrence). That map is not monotonic around a jump, so instants wait in a heap until
    no later wall-clock time can map before them: a time n maps within [n - max_offset,
    n - min_offset], so once n - max_offset passes an instant, it is final.
    """
    after = after.astimezone(UTC)
    horizon = until if until is not None else after + timedelta(days=366)
    low, high = _offset_bounds(zone, after, horizon)
    naive_after = after.replace(tzinfo=None)
    walk = croniter(cron, naive_after + low - timedelta(seconds=1))
    heap: list[datetime] = []
    last: datetime | None = None
    while True:
        wall = walk.get_next(datetime)
        instant = wall.replace(tzinfo=zone).astimezone(UTC)
        if instant > after:
            heapq.heappush(heap, instant)
        floor = (wall - high).replace(tzinfo=UTC)
        while heap and heap[0] <= floor:
            tick = heapq.heappop(heap)
            if until is not None and tick > until:
                return
            if tick != last:
                last = tick
                yield tick
        if until is None and (wall - low).replace(tzinfo=UTC) > horizon:
            # Unbounded: the offsets were sampled a year ahead; widen them for the next year
            # (a wider bound only holds instants back longer).
            horizon += timedelta(days=366)
            high = max(high, _offset_bounds(zone, horizon - timedelta(days=366), horizon)[1])


def schedule(name: str, cron: object, tz: object, catch_up: object, grace: object) -> Schedule:
    """A validated Schedule; a ConfigError naming the problem otherwise."""
    where = f"periodic task {name}"
    if not isinstance(cron, str) or not cron.strip():
        raise ConfigError(f"{where}: cron must be a cron expression string, got {cron!r}")
    cron = " ".join(cron.split())
    try:
        croniter(cron)
    except (CroniterError, ValueError, TypeError, KeyError) as exc:
        raise ConfigError(f"{where}: bad cron expression {cron!r}: {exc}") from None
    if not isinstance(tz, str):
        raise ConfigError(f"{where}: tz must be an IANA time zone name, got {tz!r}")
    try:
        ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(
            f"{where}: unknown time zone {tz!r} (an IANA name such as 'Europe/Paris' or 'UTC')"
        ) from None
    valid_int = isinstance(catch_up, int) and not isinstance(catch_up, bool)
    if catch_up not in ("none", "latest") and not (
        valid_int and 1 <= catch_up <= MAX_CATCH_UP  # type: ignore[operator]
    ):
        raise ConfigError(
            f"{where}: catch_up must be 'none', 'latest' or a number of missed ticks from 1 "
            f"to {MAX_CATCH_UP}, got {catch_up!r}"
        )
    if (
        isinstance(grace, bool)
        or not isinstance(grace, int | float)
        or not 0 < grace <= MAX_SECONDS  # NaN fails this too
    ):
        raise ConfigError(f"{where}: grace must be seconds, more than 0, got {grace!r}")
    found = Schedule(name, cron, tz, catch_up, float(grace))  # type: ignore[arg-type]
    try:
        found.next_tick(datetime.now(UTC))
    except (CroniterError, ValueError, StopIteration) as exc:
        raise ConfigError(f"{where}: cron expression {cron!r} never fires ({exc})") from None
    return found


def catch_up_text(catch_up: CatchUp) -> str:
    """How `schedules.catch_up` stores a policy."""
    return str(catch_up)


def with_tick(fn: Callable[..., Any], zone: ZoneInfo, name: str) -> Callable[..., Any]:
    """`fn` as a task taking the tick: `tick` in a job's kwargs is ISO text; `fn` gets an
    aware datetime in the schedule's zone (and no tick if it has no such parameter)."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        raise ConfigError(f"periodic task {name}: its signature cannot be read") from None
    takes_tick = "tick" in params or any(p.kind is p.VAR_KEYWORD for p in params.values())
    needed = [
        p.name
        for p in params.values()
        if p.name != "tick"
        and p.default is p.empty
        and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    ]
    if needed:
        raise ConfigError(
            f"periodic task {name}: parameters {', '.join(needed)} need defaults; a periodic "
            "job passes only its tick (tick: datetime)"
        )

    def as_tick(tick: datetime | str) -> datetime:
        value = datetime.fromisoformat(tick) if isinstance(tick, str) else tick
        return value.astimezone(zone)

    run: Callable[..., Any]
    if inspect.iscoroutinefunction(fn):

        async def run_async(tick: datetime | str) -> Any:
            return await (fn(tick=as_tick(tick)) if takes_tick else fn())

        run = run_async
    else:

        def run_sync(tick: datetime | str) -> Any:
            return fn(tick=as_tick(tick)) if takes_tick else fn()

        run = run_sync
    functools.update_wrapper(run, fn)
    run.__signature__ = inspect.Signature(  # type: ignore[union-attr]
        [inspect.Parameter("tick", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    )
    return run
