"""The lease keeper on a Clock with MemoryRedis: renewal, expiry, a paused collector, late
answers, rejoin. Redis' own time is ``world``; each collector has its own clock, so a
paused collector is one whose clock stands still while the world's runs on."""

from __future__ import annotations

from typing import Any

from twisted.internet import task
from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase

from pydatacoll.cluster.leases import DRIFT_MARGIN, LeaseKeeper
from pydatacoll.store.cluster import RENEW, ClusterStore, Lease
from pydatacoll.testing.memory import MemoryRedis

L = 10.0  # lease_seconds; renewals every L/3
SAFE = L * (1 - DRIFT_MARGIN)  # how long after a confirmed request's sending it holds


class SlowReplies:
    """A ClusterStore whose requests reach Redis at once but whose replies wait for
    `deliver` (a network that stalls on the way back)."""

    def __init__(self, store: ClusterStore) -> None:
        self.store = store
        self.holding = False
        self.pending: list[tuple[Deferred[Any], Any]] = []

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.store, name)

        def call(*args: Any, **kwargs: Any) -> Deferred[Any]:
            d = method(*args, **kwargs)
            if not self.holding:
                return d
            late: Deferred[Any] = Deferred()
            d.addBoth(lambda result: self.pending.append((late, result)))
            return late

        return call

    def deliver(self) -> None:
        pending, self.pending = self.pending, []
        for d, result in pending:
            d.callback(result)


class Collector:
    """One collector's keeper on its own clock, recording the devices it had to stop."""

    def __init__(self, store: Any, collector_id: str, start: float) -> None:
        self.clock = task.Clock()
        self.clock.advance(start)
        self.lost: list[tuple[str, int, float]] = []
        self.keeper = LeaseKeeper(
            store,
            self.clock,
            collector_id,
            lease_seconds=L,
            on_lost=lambda d, lease, why: self.lost.append((d, lease.epoch, self.clock.seconds())),
        )
        self.keeper.startService()


class LeaseKeeperTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.world = task.Clock()
        self.world.advance(1000)
        self.redis = MemoryRedis()
        self.redis.clock = self.world
        self.store = ClusterStore(self.redis)

    def collector(self, collector_id: str, store: Any = None) -> Collector:
        return Collector(store or self.store, collector_id, self.world.seconds())

    def advance(self, seconds: float, *collectors: Collector, step: float = 0.5) -> None:
        """Time passes for the world and for ``collectors`` (the others are paused)."""
        while seconds > 1e-9:
            dt = min(step, seconds)
            self.world.advance(dt)
            for c in collectors:
                c.clock.advance(dt)
            seconds -= dt

    def current(self, lease: Lease) -> bool:
        return bool(self.successResultOf(self.store.is_current(lease)))

    def test_renewals_keep_the_lease(self) -> None:
        a = self.collector("a:1")
        lease = self.successResultOf(a.keeper.acquire("d1"))
        self.assertEqual(lease, Lease("d1", "a:1", 1))
        self.advance(10 * L, a)
        self.assertEqual(a.lost, [])
        self.assertEqual(a.keeper.held(), {"d1": lease})
        self.assertTrue(self.current(lease))
        renewals = [c for c in self.redis.calls if c[0] == "evalsha" and c[1][0] == RENEW.sha]
        self.assertEqual(len(renewals), 30)  # every L/3 for 10 L
        self.assertIsNone(self.successResultOf(self.collector("b:2").keeper.acquire("d1")))

    def test_redis_away_stops_the_device_at_the_local_deadline(self) -> None:
        a = self.collector("a:1")
        self.successResultOf(a.keeper.acquire("d1"))
        self.advance(L / 3, a)  # one renewal confirmed, sent at 1000 + L/3
        confirmed_sent = 1000 + L / 3
        self.redis.down()
        self.advance(SAFE - 0.1, a)
        self.assertEqual(a.lost, [])  # failed renewals alone do not stop it
        self.advance(1.0, a, step=0.01)
        self.assertEqual(len(a.lost), 1)
        device, epoch, when = a.lost[0]
        self.assertEqual((device, epoch), ("d1", 1))
        self.assertLessEqual(abs(when - (confirmed_sent + SAFE)), 0.011)  # advance's step
        self.assertEqual(a.keeper.held(), {})
        # Redis' own expiry is no earlier than the local deadline: nobody else could
        # have held the lease while this collector still ran the device
        self.redis.up()
        self.assertLessEqual(when, self.redis.px_deadlines["STR:LEASE:d1"])

    def test_a_refused_renewal_stops_the_device_at_once(self) -> None:
        a = self.collector("a:1")
        lease = self.successResultOf(a.keeper.acquire("d1"))
        self.redis.delete_px("STR:LEASE:d1")  # e.g. lost with a failover, then taken
        b = self.collector("b:2")
        self.successResultOf(b.keeper.acquire("d1"))
        self.advance(L / 3, a, b)
        self.assertEqual([(d, e) for d, e, _ in a.lost], [("d1", lease.epoch)])
        self.assertAlmostEqual(a.lost[0][2], 1000 + L / 3)
        self.assertEqual(list(b.keeper.held()), ["d1"])

    def test_a_paused_collector_is_fenced(self) -> None:
        a = self.collector("a:1")
        b = self.collector("b:2")
        old = self.successResultOf(a.keeper.acquire("d1"))
        self.advance(4, a, b)  # a renewed once (at +3.33)
        self.advance(2 * L, b)  # a is paused (GC, SIGSTOP, VM freeze): its clock stands
        self.assertFalse(self.current(old))
        new = self.successResultOf(b.keeper.acquire("d1"))
        self.assertEqual(new.epoch, old.epoch + 1)
        # a still believes it holds d1: its writes carry the old token and are refused
        self.assertEqual(a.keeper.lease("d1"), old)
        self.assertFalse(self.current(old))
        self.assertTrue(self.current(new))
        # a resumes: its next renewal is refused and it stops the device at once
        a.clock.advance(L / 3)
        self.assertEqual([(d, e) for d, e, _ in a.lost], [("d1", old.epoch)])
        self.assertEqual(a.keeper.held(), {})
        self.assertTrue(self.current(new))  # the new owner is untouched
        self.advance(2 * L, a, b)
        self.assertEqual(b.lost, [])

    def test_a_resumed_collector_whose_clock_jumped_stops_before_writing(self) -> None:
        a = self.collector("a:1")
        b = self.collector("b:2")
        old = self.successResultOf(a.keeper.acquire("d1"))
        self.advance(2 * L, b)
        new = self.successResultOf(b.keeper.acquire("d1"))
        a.clock.advance(2 * L)  # the whole pause at once, as a real clock would jump
        self.assertEqual([(d, e) for d, e, _ in a.lost], [("d1", old.epoch)])
        self.assertTrue(self.current(new))

    def test_a_renewal_answered_too_late_stops_the_device(self) -> None:
        slow = SlowReplies(self.store)
        a = self.collector("a:1", slow)
        lease = self.successResultOf(a.keeper.acquire("d1"))
        slow.holding = True
        self.advance(L / 3, a)  # renewal sent at +3.33; Redis extended the key
        self.advance(L - 0.1, a)  # replies stuck; the first deadline (+10) passes
        self.assertEqual([(d, e) for d, e, _ in a.lost], [("d1", lease.epoch)])
        self.assertLessEqual(abs(a.lost[0][2] - (1000 + SAFE)), 0.5)  # advance's step
        slow.holding = False
        slow.deliver()  # the renewals' "OK" arrive now: too late, the device is stopped
        self.assertEqual(a.keeper.held(), {})
        self.assertEqual(len(a.lost), 1)
        # and the lease the late renewals kept alive is given back for the next owner
        self.assertFalse(self.current(lease))

    def test_an_acquisition_answered_too_late_is_not_used(self) -> None:
        slow = SlowReplies(self.store)
        a = self.collector("a:1", slow)
        slow.holding = True
        d = a.keeper.acquire("d1")
        self.assertNoResult(d)
        self.advance(L + 1, a)
        slow.holding = False
        slow.deliver()
        self.assertIsNone(self.successResultOf(d))
        self.assertEqual(a.keeper.held(), {})
        self.assertEqual(self.successResultOf(self.store.holders(["d1"])), {})

    def test_rejoin_after_a_loss_gets_a_new_epoch(self) -> None:
        a = self.collector("a:1")
        b = self.collector("b:2")
        first = self.successResultOf(a.keeper.acquire("d1"))
        self.advance(2 * L, b)  # a paused past its lease
        second = self.successResultOf(b.keeper.acquire("d1"))
        self.advance(L, a, b)  # a resumes, loses d1
        self.assertEqual(len(a.lost), 1)
        self.assertIsNone(self.successResultOf(a.keeper.acquire("d1")))  # b holds it
        self.successResultOf(b.keeper.release("d1"))  # b hands it back (moves away)
        third = self.successResultOf(a.keeper.acquire("d1"))
        self.assertEqual([first.epoch, second.epoch, third.epoch], [1, 2, 3])
        self.advance(2 * L, a, b)
        self.assertEqual(list(a.keeper.held()), ["d1"])
        self.assertTrue(self.current(third))

    def test_stop_releases_every_lease(self) -> None:
        a = self.collector("a:1")
        for d in ("d1", "d2"):
            self.successResultOf(a.keeper.acquire(d))
        self.successResultOf(a.keeper.stopService())
        self.assertEqual(self.successResultOf(self.store.holders(["d1", "d2"])), {})
        self.advance(2 * L, a)
        self.assertEqual(a.lost, [])
        self.assertIsNone(self.successResultOf(a.keeper.acquire("d3")))  # not running

    def test_store_failure_on_acquire_is_reported_and_forgotten(self) -> None:
        from pydatacoll.errors import StoreUnavailable

        a = self.collector("a:1")
        self.redis.fail_next("evalsha")
        self.failureResultOf(a.keeper.acquire("d1"), StoreUnavailable)
        self.assertIsNotNone(self.successResultOf(a.keeper.acquire("d1")))
