"""The cluster store's contract, written once: run on MemoryRedis (tests/cluster) and on a
private redis-server (tests/integration/test_cluster_redis.py), so the fake cannot drift.

A concrete test case provides ``self.store`` (a `ClusterStore`) and ``wait(seconds)``, a
Deferred that fires once that much server time has passed.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, inlineCallbacks

from pydatacoll.store.cluster import ClusterStore, Lease
from pydatacoll.store_interfaces import IClusterStore

#: Lease and heartbeat lifetimes of the contract (s): short for the real server's sake.
LEASE = 0.3


class ClusterStoreContract:
    store: ClusterStore

    def wait(self, seconds: float) -> Deferred[None]:
        raise NotImplementedError

    def test_interface(self) -> None:
        from zope.interface.verify import verifyObject

        self.assertTrue(verifyObject(IClusterStore, self.store))  # type: ignore[attr-defined]

    @inlineCallbacks
    def test_acquire_is_exclusive_with_growing_epochs(self) -> Any:
        first = yield self.store.acquire("d1", "a:1", LEASE)
        self.assertEqual(first, Lease("d1", "a:1", 1))  # type: ignore[attr-defined]
        refused = yield self.store.acquire("d1", "b:2", LEASE)
        self.assertIsNone(refused)  # type: ignore[attr-defined]
        other = yield self.store.acquire("d2", "b:2", LEASE)
        self.assertEqual(other, Lease("d2", "b:2", 1))  # type: ignore[attr-defined]
        held = yield self.store.holders(["d1", "d2", "d3"])
        self.assertEqual(held, {"d1": first, "d2": other})  # type: ignore[attr-defined]
        # the same id again (a restart under a fixed id) gets a new epoch, never the old
        again = yield self.store.acquire("d1", "a:1", LEASE)
        self.assertEqual(again.epoch, 2)  # type: ignore[attr-defined]
        self.assertFalse((yield self.store.is_current(first)))  # type: ignore[attr-defined]
        self.assertTrue((yield self.store.is_current(again)))  # type: ignore[attr-defined]

    @inlineCallbacks
    def test_expiry_hands_over_and_fences_the_old_holder(self) -> Any:
        old = yield self.store.acquire("d1", "a:1", LEASE)
        yield self.wait(LEASE * 1.5)
        self.assertFalse((yield self.store.is_current(old)))  # type: ignore[attr-defined]
        new = yield self.store.acquire("d1", "b:2", LEASE)
        self.assertEqual(new.epoch, old.epoch + 1)  # type: ignore[attr-defined]
        # the old holder wakes up: its renewal, its release and its writes are refused
        self.assertFalse((yield self.store.renew(old, LEASE)))  # type: ignore[attr-defined]
        self.assertFalse((yield self.store.release(old)))  # type: ignore[attr-defined]
        self.assertFalse((yield self.store.is_current(old)))  # type: ignore[attr-defined]
        self.assertTrue((yield self.store.is_current(new)))  # type: ignore[attr-defined]
        # a lease with the new epoch number but another holder is not the lease either
        impostor = Lease("d1", "a:1", new.epoch)
        self.assertFalse((yield self.store.is_current(impostor)))  # type: ignore[attr-defined]
        self.assertFalse((yield self.store.renew(impostor, LEASE)))  # type: ignore[attr-defined]

    @inlineCallbacks
    def test_renewal_keeps_the_lease_alive(self) -> Any:
        lease = yield self.store.acquire("d1", "a:1", LEASE)
        for _ in range(3):
            yield self.wait(LEASE * 0.5)
            self.assertTrue((yield self.store.renew(lease, LEASE)))  # type: ignore[attr-defined]
        self.assertTrue((yield self.store.is_current(lease)))  # type: ignore[attr-defined]
        self.assertIsNone((yield self.store.acquire("d1", "b:2", LEASE)))  # type: ignore[attr-defined]

    @inlineCallbacks
    def test_release_frees_at_once(self) -> Any:
        lease = yield self.store.acquire("d1", "a:1", LEASE)
        self.assertTrue((yield self.store.release(lease)))  # type: ignore[attr-defined]
        self.assertFalse((yield self.store.release(lease)))  # type: ignore[attr-defined]
        self.assertEqual((yield self.store.holders(["d1"])), {})  # type: ignore[attr-defined]
        taken = yield self.store.acquire("d1", "b:2", LEASE)
        self.assertEqual(taken.epoch, 2)  # type: ignore[attr-defined]

    @inlineCallbacks
    def test_heartbeats_list_the_live_collectors(self) -> Any:
        yield self.store.heartbeat("a:1", devices=3, started_ms=1000, ttl=LEASE)
        yield self.store.heartbeat("b:2", devices=0, started_ms=2000, ttl=LEASE * 4)
        live = yield self.store.collectors()
        self.assertEqual(  # type: ignore[attr-defined]
            [(c.collector_id, c.devices, c.started_ms) for c in live],
            [("a:1", 3, 1000), ("b:2", 0, 2000)],
        )
        self.assertTrue(all(0 <= c.heartbeat_age < LEASE for c in live))  # type: ignore[attr-defined]
        yield self.wait(LEASE * 1.5)
        live = yield self.store.collectors()
        self.assertEqual([c.collector_id for c in live], ["b:2"])  # type: ignore[attr-defined]
        self.assertGreaterEqual(live[0].heartbeat_age, LEASE)  # type: ignore[attr-defined]
        self.assertEqual(  # type: ignore[attr-defined]
            live[0].to_json(),
            {
                "collector": "b:2",
                "devices": 0,
                "heartbeat_age": live[0].heartbeat_age,
                "started_ms": 2000,
            },
        )
        self.assertTrue((yield self.store.leave("b:2")))  # type: ignore[attr-defined]
        self.assertEqual((yield self.store.collectors()), [])  # type: ignore[attr-defined]
        # a collector that left comes back with its next heartbeat
        yield self.store.heartbeat("a:1", devices=1, started_ms=1000, ttl=LEASE)
        self.assertEqual([c.collector_id for c in (yield self.store.collectors())], ["a:1"])  # type: ignore[attr-defined]
