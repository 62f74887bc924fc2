"""The pools' reconnect gate on a fake clock: how many attempts, and when."""

from __future__ import annotations

import pytest

from unbroken.db.backoff import BackoffPolicy
from unbroken.db.reconnect import IN_FLIGHT_RECHECK, GatedAttempt, ReconnectGate

POLICY = BackoffPolicy(base=0.05, cap=0.5, jitter=0)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_while_the_server_answers_every_attempt_goes_at_once() -> None:
    gate = ReconnectGate(POLICY, Clock())
    assert [gate.admit() for _ in range(16)] == [0.0] * 16  # a flush replacing 16 at once


def test_after_a_failure_one_attempt_at_a_time_spaced_by_the_backoff() -> None:
    clock = Clock()
    gate = ReconnectGate(POLICY, clock)
    assert gate.admit() == 0.0
    gate.failed()
    gate.release()
    assert gate.admit() == pytest.approx(0.05)  # the other lost ones wait for this slot
    assert gate.until_next() == pytest.approx(0.05)
    clock.now += 0.05
    assert gate.admit() == 0.0
    assert gate.admit() == IN_FLIGHT_RECHECK  # one in flight: the rest look again soon
    gate.failed()
    gate.release()
    assert gate.until_next() == pytest.approx(0.1)


def test_a_long_outage_costs_two_attempts_a_second_however_many_ask() -> None:
    clock = Clock()
    gate = ReconnectGate(POLICY, clock)
    attempts = 0
    while clock.now < 60.0:  # a minute down; 16 lost connections ask every 10 ms
        for _ in range(16):
            if gate.admit() == 0.0:
                attempts += 1
                gate.failed()
                gate.release()
        clock.now += 0.01
    assert attempts <= 60 * 2 + 5


def test_the_first_success_opens_the_gate_for_everyone() -> None:
    clock = Clock()
    gate = ReconnectGate(POLICY, clock)
    for _ in range(6):
        clock.now += gate.until_next()
        assert gate.admit() == 0.0
        gate.failed()
        gate.release()
    assert gate.admit() > 0
    clock.now += gate.until_next()
    assert gate.admit() == 0.0
    gate.succeeded()
    gate.release()
    assert [gate.admit() for _ in range(4)] == [0.0] * 4
    assert gate.until_next() == 0.0


def test_the_attempt_never_gives_up_and_waits_for_the_gate() -> None:
    clock = Clock()
    gate = ReconnectGate(POLICY, clock)
    attempt = GatedAttempt(gate)
    gate.admit()
    gate.failed()
    gate.release()
    attempt.update_delay(clock.now)
    assert attempt.delay == pytest.approx(0.05)
    assert not attempt.time_to_give_up(clock.now + 10**6)
