"""RetryPolicy arithmetic: backoff growth, the cap, deterministic jitter within its bounds."""

from __future__ import annotations

import pytest

from sagas.retry import DEFAULT_COMPENSATION_RETRY, DEFAULT_RETRY, NO_RETRY, RetryPolicy


def test_interval_grows_by_backoff_and_is_capped() -> None:
    p = RetryPolicy(max_attempts=10, initial=0.5, backoff=2.0, max_interval=5.0, jitter=0.0)
    assert [p.interval(n) for n in range(1, 8)] == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0, 5.0]


def test_backoff_one_is_a_constant_interval() -> None:
    p = RetryPolicy(initial=3.0, backoff=1.0, max_interval=3.0, jitter=0.0)
    assert {p.interval(n) for n in range(1, 50)} == {3.0}


def test_huge_attempt_numbers_do_not_overflow() -> None:
    # 2.0 ** 1999 is past float range; the wait is simply the cap.
    p = RetryPolicy(max_attempts=10_000, initial=1, backoff=2, max_interval=60, jitter=0.0)
    assert p.interval(2000) == 60
    jittered = RetryPolicy(max_attempts=10_000, backoff=10.0, max_interval=60.0, jitter=0.5)
    assert 30.0 <= jittered.interval(5000, "seed") <= 90.0


@pytest.mark.parametrize("jitter", [0.1, 0.25, 0.9])
def test_jitter_stays_within_its_fraction(jitter: float) -> None:
    p = RetryPolicy(max_attempts=5, initial=10.0, backoff=1.0, max_interval=10.0, jitter=jitter)
    values = [p.interval(1, f"saga-{i}:step") for i in range(500)]
    assert all(10.0 * (1 - jitter) <= v <= 10.0 * (1 + jitter) for v in values)
    # ...and actually spreads: both halves of the band are used, not one fixed value.
    assert min(values) < 10.0 * (1 - jitter / 2) and max(values) > 10.0 * (1 + jitter / 2)
    assert len(set(values)) > 450


def test_jitter_is_deterministic_per_seed_and_attempt() -> None:
    p = RetryPolicy(initial=8.0, max_interval=100.0, jitter=0.5)
    assert p.interval(2, "saga-1:pay") == p.interval(2, "saga-1:pay")
    assert p.interval(2, "saga-1:pay") != p.interval(2, "saga-2:pay")
    assert p.interval(1, "saga-1:pay") / 8.0 != p.interval(2, "saga-1:pay") / 16.0


def test_jitter_applies_after_the_cap() -> None:
    p = RetryPolicy(max_attempts=20, initial=1.0, backoff=2.0, max_interval=10.0, jitter=0.2)
    assert all(8.0 <= p.interval(n, "s") <= 12.0 for n in range(5, 20))


def test_non_retryable_names_and_classes() -> None:
    class CardDeclined(Exception):
        pass

    p = RetryPolicy(non_retryable=(CardDeclined, "OutOfStock"))
    assert p.non_retryable == ("CardDeclined", "OutOfStock")
    assert not p.is_retryable("CardDeclined")
    assert not p.is_retryable("OutOfStock")
    assert p.is_retryable("TimeoutError")


def test_build_is_the_same_policy() -> None:
    built = RetryPolicy.build(max_attempts=4, initial=2.0, non_retryable=[KeyError])
    assert built == RetryPolicy(max_attempts=4, initial=2.0, non_retryable=("KeyError",))


def test_shipped_policies() -> None:
    assert NO_RETRY.max_attempts == 1
    assert DEFAULT_RETRY.max_attempts == 3
    # Compensations are meant to succeed eventually: retried longer than steps.
    assert DEFAULT_COMPENSATION_RETRY.max_attempts > DEFAULT_RETRY.max_attempts
    assert DEFAULT_COMPENSATION_RETRY.max_interval >= DEFAULT_RETRY.max_interval


def test_policies_are_immutable_values() -> None:
    p = RetryPolicy()
    with pytest.raises(AttributeError):
        p.max_attempts = 9  # type: ignore[misc]
    assert hash(p) == hash(RetryPolicy())
