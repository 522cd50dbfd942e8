"""Replay cache and failure limiter: pure, bounded, fake time."""

from __future__ import annotations

from registryd.guards import FailureLimiter, NewMemberLimiter, NonceCache


def test_a_nonce_is_accepted_once_within_its_window() -> None:
    cache = NonceCache()
    assert cache.check_and_add("n1", expires_at=161.0, now=100.0)
    assert not cache.check_and_add("n1", expires_at=161.0, now=150.0)
    assert cache.check_and_add("n2", expires_at=161.0, now=150.0)


def test_nonces_are_forgotten_once_their_requests_would_be_stale() -> None:
    cache = NonceCache()
    cache.check_and_add("old", expires_at=161.0, now=100.0)
    cache.check_and_add("new", expires_at=300.0, now=250.0)
    assert len(cache) == 1


def test_nonce_cache_is_bounded() -> None:
    cache = NonceCache(max_entries=3)
    for i in range(10):
        assert cache.check_and_add(f"n{i}", expires_at=1000.0 + i, now=0.0)
    assert len(cache) == 3
    assert not cache.check_and_add("n9", expires_at=2000.0, now=0.0)


def test_an_address_is_limited_after_the_burst_and_freed_by_the_window() -> None:
    limiter = FailureLimiter(burst=20, window=60.0)
    for i in range(20):
        assert limiter.retry_after("10.0.0.9", now=float(i)) is None
        limiter.record_failure("10.0.0.9", now=float(i))
    # The oldest failure (t=0) leaves the window at t=60.
    assert limiter.retry_after("10.0.0.9", now=20.0) == 40
    assert limiter.retry_after("10.0.0.9", now=59.5) == 1
    assert limiter.retry_after("10.0.0.9", now=60.0) is None


def test_other_addresses_are_not_limited() -> None:
    limiter = FailureLimiter(burst=3, window=60.0)
    for _ in range(3):
        limiter.record_failure("bad", now=0.0)
    assert limiter.retry_after("bad", now=1.0) is not None
    assert limiter.retry_after("good", now=1.0) is None


def test_failure_table_is_bounded() -> None:
    limiter = FailureLimiter(burst=5, window=60.0, max_addresses=100)
    for i in range(10_000):
        limiter.record_failure(f"10.0.{i // 256}.{i % 256}", now=0.0)
    assert len(limiter) == 100


def test_new_ids_from_one_source_come_in_a_burst_then_at_the_rate() -> None:
    limiter = NewMemberLimiter(burst=3, rate=0.5)
    assert [limiter.try_take("a", 0.0) for _ in range(4)] == [True, True, True, False]
    assert limiter.retry_after("a", 0.0) == 2  # one token in 2 s
    assert limiter.try_take("b", 0.0)  # another source has its own bucket
    assert not limiter.try_take("a", 1.9)
    assert limiter.try_take("a", 2.0)
    # A register that turns out to renew a member gives its token back.
    limiter.give_back("a", 2.0)
    assert limiter.try_take("a", 2.0)
    # Refilled to the burst at most, however long the wait.
    assert [limiter.try_take("a", 1000.0) for _ in range(4)] == [True, True, True, False]


def test_the_new_id_limiter_is_bounded_and_can_be_off() -> None:
    limiter = NewMemberLimiter(burst=1, rate=1.0, max_sources=100)
    for i in range(1000):
        limiter.try_take(f"10.0.{i // 256}.{i % 256}", 0.0)
    assert len(limiter) == 100
    off = NewMemberLimiter(burst=1, rate=0.0)
    assert all(off.try_take("a", 0.0) for _ in range(100))
    assert len(off) == 0
