"""Making jobs without a database: what a bad call is told, and the COPY text a batch becomes."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from unbroken.enqueue import (
    COPY_PIECE_ROWS,
    MAX_ARGS_DEPTH,
    EnqueueOptions,
    JobMaker,
    argument_checker,
    copy_pieces,
    copy_query_name,
    decode_payload,
    nested_deeper_than,
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
        # issue 12: what PostgreSQL or the encoder would refuse with its own error
        (lambda: maker()(("a\x00b",), {}), "NUL character"),
        (lambda: maker()(("\ud800",), {}), "lone surrogate"),
        (lambda: maker()(({"k\x00": 1},), {}), "NUL character"),
        (lambda: maker(queue="a\x00")((1,), {}), "queue name"),
        (lambda: maker(queue="\udc80")((1,), {}), "queue name"),
        (lambda: maker(unique_key="k\x00")((1,), {}), "unique key"),
        (lambda: maker(unique_key=7)((1,), {}), "unique_key must be a string"),
        (lambda: maker(priority=True)((1,), {}), "priority must be an integer"),
        (lambda: maker(priority="5")((1,), {}), "priority must be an integer"),
        (lambda: maker(priority=lambda a, b=None: "x")((1,), {}), "priority function returned"),
        (lambda: maker(max_attempts=2.5)((1,), {}), "max_attempts must be an integer"),
        (lambda: maker(max_attempts=2**31)((1,), {}), "max_attempts must be 1 to 2147483647"),
        (lambda: maker(delay=1e12)((1,), {}), "delay .* is too far"),
        (lambda: maker(delay="60")((1,), {}), "delay must be seconds or a timedelta"),
        (lambda: maker(run_at="2030-01-01T00:00:00Z")((1,), {}), "run_at must be a datetime"),
    ],
)
def test_a_bad_call_is_one_line_naming_task_and_problem(make: Any, message: str) -> None:
    with pytest.raises(EnqueueError, match=message) as info:
        make()
    assert str(info.value).startswith("task t: ")
    assert "\n" not in str(info.value)


def test_escapes_that_only_look_like_nul_or_surrogates_are_kept() -> None:
    text = "\\u0000 \\ud800 \U0001f600"  # a backslash then u0000, and an emoji (a pair)
    spec = maker(priority=0)((text,), {})
    assert json.loads(spec.args)["args"] == [text]


def test_arguments_that_refer_to_themselves_are_refused() -> None:
    loop: list[Any] = []
    loop.append(loop)
    with pytest.raises(EnqueueError, match="refer to themselves"):
        maker()((loop,), {})


def nested(depth: int) -> Any:
    value: Any = 0
    for level in range(depth):
        value = [value] if level % 2 else {"k": value}
    return value


def test_arguments_deeper_than_the_limit_are_refused_naming_it() -> None:
    roomy = JobMaker(
        task="t",
        check=argument_checker(None),
        queue="q",
        priority=0,
        max_attempts=3,
        unique=None,
        options=EnqueueOptions(),
        max_payload_bytes=10_000,
        now=lambda: NOW,
    )
    assert roomy((nested(MAX_ARGS_DEPTH),), {"b": nested(MAX_ARGS_DEPTH)})
    for args, kwargs in [((nested(MAX_ARGS_DEPTH + 1),), {}), ((), {"b": nested(65)})]:
        with pytest.raises(EnqueueError, match="nested more than 64 levels deep") as info:
            roomy(args, kwargs)
        assert str(info.value) == (
            "task t: arguments are nested more than 64 levels deep (the limit); pass flatter data"
        )


@pytest.mark.parametrize(
    ("text", "limit", "deeper"),
    [
        ('{"args":[],"kwargs":{}}', 2, False),
        ('{"args":[[]],"kwargs":{}}', 2, True),
        ('{"args":["[[[[{{{{"],"kwargs":{}}', 2, False),  # brackets in strings do not count
        (r'{"args":["\\\"[[[", "\\"],"kwargs":{}}', 2, False),  # nor escaped quotes
        ('{"a": [1, {"b": [2]}], "c": [[[]]]}', 4, False),  # PostgreSQL's jsonb text
        ('{"a": [1, {"b": [2]}], "c": [[[[]]]]}', 4, True),
        ("[" * 3000 + "]" * 3000, 66, True),
        ("[]" * 3000, 66, False),  # many brackets, shallow
    ],
)
def test_nesting_is_measured_on_the_json_text(text: str, limit: int, deeper: bool) -> None:
    if len(text) < 1000:
        json.loads(text)  # the cases are JSON
    assert nested_deeper_than(text, limit) is deeper


def depth_of(value: Any) -> int:
    if isinstance(value, list):
        return 1 + max(map(depth_of, value), default=0)
    if isinstance(value, dict):
        return 1 + max(map(depth_of, value.values()), default=0)
    return 0


# Strings made of what could fool a scan of the text: brackets, quotes, backslashes.
tricky = st.text(alphabet='[]{}"\\ aé', max_size=6)
json_values = st.recursive(
    st.none() | st.integers() | tricky,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(tricky, inner, max_size=3),
    max_leaves=40,
)


@settings(max_examples=400, deadline=None)
@given(value=json_values, limit=st.integers(0, 8))
def test_nesting_measured_on_the_text_is_the_values_depth(value: Any, limit: int) -> None:
    deeper = depth_of(value) > limit
    assert nested_deeper_than(json.dumps(value, separators=(",", ":")), limit) is deeper
    assert nested_deeper_than(json.dumps(value, ensure_ascii=False), limit) is deeper


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("[" * 5000 + "]" * 5000, "nested too deeply for the JSON decoder"),
        ("[1, 2]", 'an array, not an object with "args" and "kwargs"'),
        ("null", 'null, not an object with "args" and "kwargs"'),
        ('{"args": "x"}', '"args" is a string, not a list'),
        ('{"args": [], "kwargs": true}', '"kwargs" is a boolean, not an object'),
    ],
)
def test_a_payload_that_cannot_be_one_says_why(text: str, reason: str) -> None:
    with pytest.raises(ValueError, match="^" + reason.replace("[", "\\[") + "$"):
        decode_payload(text)


def test_a_payload_decodes_with_missing_parts_empty() -> None:
    assert decode_payload('{"args": [1], "kwargs": {"a": 2}}') == {"args": [1], "kwargs": {"a": 2}}
    assert decode_payload("{}") == {}  # the executor reads missing args and kwargs as empty


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
