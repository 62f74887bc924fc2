"""Failed-login throttling (unbroken.dashboard.throttle) on a fake clock."""

from __future__ import annotations

from unbroken.dashboard.throttle import LoginThrottle


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_delays_double_after_the_free_failures_and_a_success_clears_them() -> None:
    clock = Clock()
    throttle = LoginThrottle(free_failures=2, base_delay=1.0, max_delay=5.0, clock=clock)
    waits = []
    for _ in range(6):
        throttle.failed("a")
        waits.append(throttle.wait("a"))
    assert waits == [0.0, 0.0, 1.0, 2.0, 4.0, 5.0]  # capped at max_delay
    assert throttle.wait("b") == 0.0  # another address is not held up
    clock.now += 5.0
    assert throttle.wait("a") == 0.0
    throttle.succeeded("a")
    throttle.failed("a")
    assert throttle.wait("a") == 0.0  # free again after a success


def test_waiting_out_a_lock_does_not_reset_the_count() -> None:
    clock = Clock()
    throttle = LoginThrottle(free_failures=1, max_delay=900.0, clock=clock)
    for _ in range(3):
        throttle.failed("a")
        clock.now += throttle.wait("a") + 1
    throttle.failed("a")
    assert throttle.wait("a") == 4.0  # the fourth failure: 1, 2, then 4 s
    clock.now += 86401  # a day without failures forgets the address
    throttle.failed("a")
    assert throttle.wait("a") == 0.0


def test_the_global_limit_holds_every_address_for_the_rest_of_the_minute() -> None:
    clock = Clock()
    throttle = LoginThrottle(global_per_minute=3, clock=clock)
    for name in ("a", "b", "c"):
        assert throttle.wait(name) == 0.0
        throttle.failed(name)
        clock.now += 10
    assert throttle.wait("d") == 30.0  # the first failure, at 0 s, leaves the window at 60 s
    clock.now += 30
    assert throttle.wait("d") == 0.0


def test_the_table_of_addresses_stays_bounded() -> None:
    clock = Clock()
    throttle = LoginThrottle(max_clients=3, clock=clock)
    for i in range(10):
        clock.now += 1
        throttle.failed(f"10.0.0.{i}")
    assert len(throttle._clients) <= 3
    assert "10.0.0.9" in throttle._clients
