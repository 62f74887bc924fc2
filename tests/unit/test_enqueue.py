"""Making jobs without a database: what a bad call is told, and the COPY text a batch becomes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from unbroken.enqueue import (
    COPY_PIECE_ROWS,
    EnqueueOptions,
    JobMaker,
    argument_checker,
    copy_pieces,
    copy_query_name,
)
from unbroken.errors import EnqueueError

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)


def maker(priority: Any = 0, **options: Any) -> JobMaker:
    def fn(a: Any, b: Any = None) -> None: ...

    import inspect

    return JobMaker(
        task="t",
        check=argument_checker(inspect.signature(fn)),
        queue="q",
        priority=priority,
        max_attempts=3,
        unique=None,
        options=EnqueueOptions(**options),
        max_payload_bytes=100,
        now=lambda: NOW,
    )


def test_a_job_carries_its_arguments_and_options() -> None:
    spec = maker(priority=lambda a, b=None: a * 2)((7,), {"b": "x"})
    assert spec.args == '{"args":[7],"kwargs":{"b":"x"}}'
    assert (spec.queue, spec.priority, spec.max_attempts, spec.run_at) == ("q", 14, 3, None)
    later = maker(delay=60)((1,), {})
    assert later.run_at == NOW + timedelta(seconds=60)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: maker()((1, 2, 3), {}), "do not fit its signature"),
        (lambda: maker()(({1},), {}), "cannot be serialised"),
        (lambda: maker()((float("inf"),), {}), "cannot be serialised"),
        (lambda: maker()(("x" * 200,), {}), "over the limit of 100"),
        (lambda: maker(priority=lambda a, b=None: 40000)((1,), {}), "priority 40000 is outside"),
        (lambda: maker(priority=40000)((1,), {}), "priority 40000 is outside"),
        (lambda: maker(max_attempts=0)((1,), {}), "max_attempts must be >= 1"),
        (lambda: maker(delay=-1)((1,), {}), "delay must be >= 0"),
        (lambda: maker(delay="soon")((1,), {}), "delay must be seconds or a timedelta"),
        (lambda: maker(run_at=datetime(2030, 1, 1))((1,), {}), "must be timezone-aware"),
        (lambda: maker(queue="a\tb")((1,), {}), "queue name"),
    ],
)
def test_a_bad_call_is_one_line_naming_task_and_problem(make: Any, message: str) -> None:
    with pytest.raises(EnqueueError, match=message) as info:
        make()
    assert str(info.value).startswith("task t: ")
    assert "\n" not in str(info.value)


def test_arguments_that_refer_to_themselves_are_refused() -> None:
    loop: list[Any] = []
    loop.append(loop)
    with pytest.raises(EnqueueError, match="refer to themselves"):
        maker()((loop,), {})


def test_copy_text_is_cut_into_pieces_with_backslashes_doubled() -> None:
    make = maker()
    specs = [make(("a\\b",), {}) for _ in range(COPY_PIECE_ROWS + 1)]
    assert copy_query_name(specs) == "job_copy_now"
    pieces = list(copy_pieces("job_copy_now", range(1, len(specs) + 1), specs, NOW))
    assert [p.count("\n") for p in pieces] == [COPY_PIECE_ROWS, 1]
    assert pieces[1] == f'{len(specs)}\tq\tt\t{{"args":["a\\\\\\\\b"],"kwargs":{{}}}}\t0\t3\n'


def test_a_batch_with_a_later_job_names_state_and_run_at() -> None:
    specs = [maker()((1,), {}), maker(delay=60)((2,), {})]
    assert copy_query_name(specs) == "job_copy"
    (piece,) = copy_pieces("job_copy", [1, 2], specs, NOW)
    now_line, later_line = piece.splitlines()
    assert now_line.split("\t")[4:7] == ["available", "0", NOW.isoformat()]
    assert later_line.split("\t")[4:7] == [
        "scheduled",
        "0",
        (NOW + timedelta(60 / 86400)).isoformat(),
    ]
