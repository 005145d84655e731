"""Triton is asked whether a request was cancelled at most once per interval (imem/cancellation.py)."""

from imem.cancellation import CancellationChecks


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_a_request_is_due_at_once_then_once_per_interval():
    clock = Clock()
    checks = CancellationChecks(interval=0.05, clock=clock)
    assert checks.due("a")
    assert not checks.due("a")
    clock.now += 0.049
    assert not checks.due("a")
    clock.now += 0.002
    assert checks.due("a")
    assert not checks.due("a")


def test_requests_are_due_independently_and_a_forgotten_one_is_due_again():
    clock = Clock()
    checks = CancellationChecks(interval=0.05, clock=clock)
    assert checks.due("a") and checks.due("b")
    assert not checks.due("a") and not checks.due("b")
    checks.forget("a")
    assert checks.due("a") and not checks.due("b")


def test_the_oldest_requests_are_dropped_beyond_the_limit():
    clock = Clock()
    checks = CancellationChecks(interval=0.05, limit=3, clock=clock)
    for key in "abcd":
        assert checks.due(key)
    assert len(checks._next) == 3
    assert checks.due("a")  # dropped, so due again at once
    assert not checks.due("d")
