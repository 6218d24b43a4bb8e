"""The contract every ``KeyValueStore`` backend must pass: memory, SQLite, later Redis, Postgres.

Stages are written against the protocol, not a backend, so a backend that differs in one corner
(a TTL off by a boundary, a settle that creates a key, a lease counted twice) breaks a stage only
in the deployment that uses it. This suite pins the semantics once. To run it against a
backend, subclass ``StoreContract`` in a test module that provides a ``store_factory`` fixture:
a callable taking the clock and returning a fresh, empty store that reads time from it (see
``tests/test_stores.py``; a new backend is one more entry in its factory table).

Time is driven by ``FakeClock``: no test sleeps. The clock starts on a multiple of every window
used here, so the window arithmetic below is exact.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest

from bastion.stores.base import KeyValueStore, WindowHit

W = 10.0  # the window used by the sliding-window tests
START = 1_700_000_000.0  # a multiple of W, and a plausible wall-clock time


class FakeClock:
    """A clock that moves only when told to."""

    def __init__(self, now: float = START) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


StoreFactory = Callable[[FakeClock], KeyValueStore]


def approx(x: float) -> object:
    # Backends may pad ``retry_after_s`` by a microsecond against float rounding.
    return pytest.approx(x, abs=1e-5)


class StoreContract:
    @pytest.fixture
    def clock(self) -> FakeClock:
        return FakeClock()

    @pytest.fixture
    async def store(self, store_factory: StoreFactory,
                    clock: FakeClock) -> AsyncIterator[KeyValueStore]:
        store = store_factory(clock)
        yield store
        await store.aclose()

    # -- get / set / TTL

    async def test_a_missing_key_reads_as_none(self, store: KeyValueStore) -> None:
        assert await store.get("nope") is None

    async def test_set_overwrites_and_json_values_round_trip(self, store: KeyValueStore) -> None:
        value = {"s": "héllo", "i": -3, "f": 1.5, "b": True, "n": None, "l": [1, [2, {}]]}
        await store.set("k", "first")
        await store.set("k", value)
        assert await store.get("k") == value

    async def test_get_many_reads_each_key_in_order(self, store: KeyValueStore,
                                                    clock: FakeClock) -> None:
        await store.set_many([("a", 1, 5), ("b", {"x": [2]}, None)])
        await store.incr("c", 7)
        assert await store.get_many(["b", "missing", "a", "c", "a"]) == \
            [{"x": [2]}, None, 1, 7, 1]
        clock.advance(5)
        assert await store.get_many(["a", "b"]) == [None, {"x": [2]}]
        assert await store.get_many([]) == []
        many = [f"k{i}" for i in range(600)]  # past one statement's worth in SQLite
        await store.set_many([(k, i, None) for i, k in enumerate(many)])
        assert await store.get_many(many) == list(range(600))

    async def test_set_many_sets_each_with_its_own_ttl(self, store: KeyValueStore,
                                                      clock: FakeClock) -> None:
        await store.set("a", "old")
        await store.set_many([("a", 1, 5), ("b", {"x": [2]}, None), ("c", 3, 10)])
        assert (await store.get("a"), await store.get("b"), await store.get("c")) == \
            (1, {"x": [2]}, 3)
        clock.advance(5)
        assert (await store.get("a"), await store.get("b"), await store.get("c")) == \
            (None, {"x": [2]}, 3)
        await store.set_many([])

    async def test_a_value_expires_when_its_ttl_is_up(self, store: KeyValueStore,
                                                      clock: FakeClock) -> None:
        await store.set("k", 1, ttl_s=5)
        clock.advance(4.5)
        assert await store.get("k") == 1
        clock.advance(0.5)  # expiry is inclusive: at now == expires_at the key is gone
        assert await store.get("k") is None

    async def test_without_a_ttl_a_value_stays(self, store: KeyValueStore,
                                               clock: FakeClock) -> None:
        await store.set("k", 1, ttl_s=5)
        await store.set("k", 2)  # a set replaces the TTL too
        clock.advance(10**6)
        assert await store.get("k") == 2

    async def test_delete_removes_a_value_and_tolerates_a_missing_key(
            self, store: KeyValueStore) -> None:
        await store.set("k", 1)
        await store.delete("k")
        await store.delete("k")
        assert await store.get("k") is None

    async def test_ping(self, store: KeyValueStore) -> None:
        assert await store.ping() is True

    # -- set_if_absent

    async def test_set_if_absent_keeps_the_first_value(self, store: KeyValueStore) -> None:
        assert await store.set_if_absent("k", "a") is True
        assert await store.set_if_absent("k", "b") is False
        assert await store.get("k") == "a"

    async def test_set_if_absent_takes_an_expired_key(self, store: KeyValueStore,
                                                      clock: FakeClock) -> None:
        assert await store.set_if_absent("k", "a", ttl_s=1)
        clock.advance(1)
        assert await store.set_if_absent("k", "b", ttl_s=1)
        assert await store.get("k") == "b"
        clock.advance(1)
        assert await store.get("k") is None

    async def test_set_if_absent_has_exactly_one_winner(self, store: KeyValueStore) -> None:
        won = await asyncio.gather(*(store.set_if_absent("k", i) for i in range(200)))
        assert sum(won) == 1
        assert await store.get("k") == won.index(True)

    # -- incr

    async def test_incr_creates_adds_and_subtracts(self, store: KeyValueStore) -> None:
        assert await store.incr("n") == 1
        assert await store.incr("n", 5) == 6
        assert await store.incr("n", -10) == -4
        assert await store.get("n") == -4

    async def test_incr_ttl_is_a_fixed_window(self, store: KeyValueStore,
                                              clock: FakeClock) -> None:
        assert await store.incr("n", 1, ttl_s=10) == 1
        clock.advance(5)
        assert await store.incr("n", 1, ttl_s=10) == 2  # not extended...
        clock.advance(5)
        assert await store.get("n") is None  # ...so it ends 10 s after creation
        assert await store.incr("n", 1, ttl_s=10) == 1  # and a new window starts
        clock.advance(9)
        assert await store.get("n") == 1

    async def test_concurrent_incr_loses_nothing(self, store: KeyValueStore) -> None:
        await asyncio.gather(*(store.incr("n") for _ in range(300)))
        assert await store.get("n") == 300

    # -- reserve

    async def test_reserve_adds_only_within_the_limit(self, store: KeyValueStore) -> None:
        assert await store.reserve("b", 60, 100) == (True, 60)
        assert await store.reserve("b", 50, 100) == (False, 60)  # the total is unchanged
        assert await store.reserve("b", 40, 100) == (True, 100)  # exactly the limit fits
        assert await store.reserve("b", 1, 100) == (False, 100)
        assert await store.get("b") == 100

    async def test_a_negative_reserve_always_applies_and_stops_at_zero(
            self, store: KeyValueStore) -> None:
        await store.reserve("b", 100, 100)
        assert await store.reserve("b", -30, 0) == (True, 70)  # the limit is ignored
        assert await store.reserve("b", -500, 0) == (True, 0)
        assert await store.get("b") == 0

    async def test_reserve_ttl_is_set_on_creation_only(self, store: KeyValueStore,
                                                       clock: FakeClock) -> None:
        await store.reserve("b", 10, 100, ttl_s=60)
        clock.advance(30)
        await store.reserve("b", 10, 100, ttl_s=60)
        await store.reserve("b", -5, 0)
        clock.advance(30)
        assert await store.get("b") is None  # the budget period ended: a fresh total
        assert await store.reserve("b", 100, 100, ttl_s=60) == (True, 100)

    async def test_settling_a_missing_key_does_not_create_it(self, store: KeyValueStore,
                                                             clock: FakeClock) -> None:
        # A settle that arrives after the period ended must not create a key without a TTL,
        # or the next period's reservation would find it and never set one.
        assert await store.reserve("b", -10, 0) == (True, 0)
        assert await store.get("b") is None
        await store.reserve("b", 10, 100, ttl_s=60)
        clock.advance(60)
        assert await store.get("b") is None

    async def test_concurrent_reserves_fill_the_limit_exactly(self,
                                                              store: KeyValueStore) -> None:
        results = await asyncio.gather(*(store.reserve("b", 1, 100) for _ in range(500)))
        assert sum(ok for ok, _ in results) == 100
        assert await store.get("b") == 100

    # -- window_hit / window_adjust

    async def test_window_hits_count_up_to_the_limit(self, store: KeyValueStore,
                                                     clock: FakeClock) -> None:
        clock.advance(2.5)
        hit = await store.window_hit("w", 3, 5, W)
        assert hit == WindowHit(True, 3, 5, 0.0, approx(7.5))
        assert hit.remaining == 2
        assert (await store.window_hit("w", 2, 5, W)).allowed
        refused = await store.window_hit("w", 1, 5, W)
        assert not refused.allowed
        assert refused.count == 6  # what it would have been
        assert refused.remaining == 0
        # Nothing left this window; next window this one weighs 5 * (1 - e/W): 4 at e = 2 s.
        assert refused.retry_after_s == approx(7.5 + 2)
        assert refused.reset_s == approx(7.5)

    async def test_a_refused_hit_is_not_recorded_and_cost_zero_only_reports(
            self, store: KeyValueStore) -> None:
        await store.window_hit("w", 4, 5, W)
        assert not (await store.window_hit("w", 3, 5, W)).allowed
        report = await store.window_hit("w", 0, 5, W)
        assert report.allowed and report.count == 4 and report.remaining == 1
        assert (await store.window_hit("w", 0, 5, W)).count == 4

    async def test_the_previous_window_weighs_by_what_is_left_of_it(
            self, store: KeyValueStore, clock: FakeClock) -> None:
        await store.window_hit("w", 8, 10, W)
        clock.advance(W + 2.5)  # a quarter into the next window: the old one weighs 3/4
        assert (await store.window_hit("w", 0, 10, W)).count == approx(6)
        hit = await store.window_hit("w", 3, 10, W)
        assert hit.allowed and hit.count == approx(9)
        refused = await store.window_hit("w", 2, 10, W)
        assert not refused.allowed and refused.count == approx(11)
        # 8 * (1 - e/W) + 3 + 2 <= 10 once e >= 3.75 s: 1.25 s from now.
        assert refused.retry_after_s == approx(1.25)
        assert refused.reset_s == approx(7.5)
        clock.advance(refused.retry_after_s)
        assert (await store.window_hit("w", 2, 10, W)).allowed

    async def test_waiting_less_than_retry_after_is_not_enough(self, store: KeyValueStore,
                                                                clock: FakeClock) -> None:
        await store.window_hit("w", 6, 10, W)
        clock.advance(W)
        await store.window_hit("w", 4, 10, W)
        refused = await store.window_hit("w", 1, 10, W)
        assert refused.retry_after_s == approx(W / 6)  # 6 * (1 - e/W) <= 5 at e = W/6
        clock.advance(refused.retry_after_s * 0.95)
        assert not (await store.window_hit("w", 1, 10, W)).allowed
        clock.advance(refused.retry_after_s * 0.05)
        assert (await store.window_hit("w", 1, 10, W)).allowed

    async def test_two_windows_later_nothing_counts(self, store: KeyValueStore,
                                                    clock: FakeClock) -> None:
        await store.window_hit("w", 10, 10, W)
        clock.advance(2 * W)
        hit = await store.window_hit("w", 10, 10, W)
        assert hit.allowed and hit.count == 10

    async def test_a_cost_above_the_limit_never_fits(self, store: KeyValueStore) -> None:
        hit = await store.window_hit("w", 11, 10, W)
        assert not hit.allowed and hit.retry_after_s == W and hit.count == 11
        assert (await store.window_hit("w", 0, 10, W)).count == 0

    async def test_window_keys_are_independent(self, store: KeyValueStore) -> None:
        await store.window_hit("a", 5, 5, W)
        assert (await store.window_hit("b", 5, 5, W)).allowed

    async def test_window_adjust_settles_and_never_goes_below_zero(
            self, store: KeyValueStore, clock: FakeClock) -> None:
        await store.window_hit("w", 50, 100, W)
        await store.window_adjust("w", 30, W)  # the call used more than estimated
        assert (await store.window_hit("w", 0, 100, W)).count == 80
        await store.window_adjust("w", -200, W)  # a refund larger than the window
        assert (await store.window_hit("w", 0, 100, W)).count == 0
        await store.window_hit("w", 40, 100, W)
        clock.advance(W + 5)
        await store.window_adjust("w", -10, W)  # only the current window is adjusted
        assert (await store.window_hit("w", 0, 100, W)).count == approx(20)
        await store.window_adjust("w", 7, W)
        assert (await store.window_hit("w", 0, 100, W)).count == approx(27)

    async def test_concurrent_window_hits_admit_exactly_the_limit(
            self, store: KeyValueStore) -> None:
        hits = await asyncio.gather(*(store.window_hit("w", 1, 50, 60) for _ in range(300)))
        assert sum(h.allowed for h in hits) == 50

    # -- leases

    async def test_leases_hold_at_most_limit_slots(self, store: KeyValueStore) -> None:
        assert await store.lease_acquire("c", "a", 2, 30)
        assert await store.lease_acquire("c", "b", 2, 30)
        assert not await store.lease_acquire("c", "x", 2, 30)
        await store.lease_release("c", "a")
        assert await store.lease_acquire("c", "x", 2, 30)
        await store.lease_release("c", "nobody")  # releasing what is not held is a no-op

    async def test_an_expired_lease_gives_its_slot_back(self, store: KeyValueStore,
                                                        clock: FakeClock) -> None:
        assert await store.lease_acquire("c", "crashed", 1, 30)
        clock.advance(29)
        assert not await store.lease_acquire("c", "x", 1, 30)
        clock.advance(1)
        assert await store.lease_acquire("c", "x", 1, 30)

    async def test_reacquiring_is_idempotent_and_renews_the_lease(
            self, store: KeyValueStore, clock: FakeClock) -> None:
        # Chosen semantics: a holder has at most one slot per key; acquiring again succeeds
        # (even at the limit), takes no second slot, and restarts its TTL.
        assert await store.lease_acquire("c", "a", 2, 30)
        clock.advance(20)
        assert await store.lease_acquire("c", "a", 2, 30)
        assert await store.lease_acquire("c", "b", 2, 30)  # "a" still holds only one slot
        assert await store.lease_acquire("c", "a", 2, 30)  # at the limit, still its own
        clock.advance(20)  # 40 s after the first acquire, 20 s after the renewal
        assert not await store.lease_acquire("c", "x", 2, 30)
        await store.lease_release("c", "a")  # one release frees the slot
        assert await store.lease_acquire("c", "x", 2, 30)

    async def test_concurrent_lease_acquires_take_exactly_the_limit(
            self, store: KeyValueStore) -> None:
        got = await asyncio.gather(*(store.lease_acquire("c", f"h{i}", 10, 30)
                                     for i in range(100)))
        assert sum(got) == 10

    async def test_delete_clears_a_window_or_a_lease_key_too(self,
                                                         store: KeyValueStore) -> None:
        # A key is used by one family of operations (a Redis backend may store each family as
        # a different type); ``delete`` clears it whichever it is, e.g. to reset a limit.
        await store.window_hit("w", 5, 5, W)
        await store.lease_acquire("c", "a", 1, 30)
        await store.delete("w")
        await store.delete("c")
        assert (await store.window_hit("w", 5, 5, W)).allowed
        assert await store.lease_acquire("c", "b", 1, 30)
