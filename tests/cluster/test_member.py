"""Collectors sharing devices on a Clock with MemoryRedis: spread, a SIGKILLed collector's
devices taken over within 15 s, a join moving only what must move, never two runners."""

from __future__ import annotations

from collections import Counter
from typing import Any

from twisted.internet import task
from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase

from pydatacoll.cluster.member import ClusterMember, default_collector_id, no_restriction
from pydatacoll.cluster.rendezvous import owner
from pydatacoll.store.cluster import ClusterStore, Lease
from pydatacoll.testing.memory import MemoryRedis

LEASE_SECONDS = 10.0
HEARTBEAT_SECONDS = 2.0
DEVICES = [f"meter{i:02d}" for i in range(24)]


class Node:
    """A collector process: its clock, its member service, the devices it runs."""

    def __init__(self, world: Any, store: ClusterStore, collector_id: str, devices: Any) -> None:
        self.clock = task.Clock()
        self.clock.advance(world.seconds())
        self.alive = True
        self.running: dict[str, Lease] = {}
        self.stop_delay = 0.0
        self.member = ClusterMember(
            store,
            self.clock,
            collector_id,
            lease_seconds=LEASE_SECONDS,
            heartbeat_seconds=HEARTBEAT_SECONDS,
            devices=devices,
            start_device=self.start,
            stop_device=self.stop,
        )

    def start(self, device_id: str, lease: Lease) -> None:
        assert device_id not in self.running
        self.running[device_id] = lease

    def stop(self, device_id: str) -> Deferred[None] | None:
        if not self.stop_delay:
            self.running.pop(device_id, None)
            return None
        # a link that takes a while to close: the lease must outlive it
        return task.deferLater(self.clock, self.stop_delay, self.running.pop, device_id, None)


class ClusterMemberTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.world = task.Clock()
        self.world.advance(5000)
        self.redis = MemoryRedis()
        self.redis.clock = self.world
        self.store = ClusterStore(self.redis)
        self.devices: dict[str, Any] = no_restriction(DEVICES)
        self.nodes: dict[str, Node] = {}

    def add(self, collector_id: str) -> Node:
        node = Node(self.world, self.store, collector_id, lambda: self.devices)
        self.nodes[collector_id] = node
        node.member.startService()
        return node

    def kill(self, collector_id: str) -> None:
        """SIGKILL: the process and its links are gone at once; nothing is released."""
        node = self.nodes[collector_id]
        node.alive = False
        node.running.clear()

    def runners(self) -> Counter[str]:
        return Counter(d for n in self.nodes.values() if n.alive for d in n.running)

    def advance(self, seconds: float, step: float = 0.1) -> None:
        """Time passes for Redis and every live collector; never two runners of a device."""
        while seconds > 1e-9:
            dt = min(step, seconds)
            self.world.advance(dt)
            for node in self.nodes.values():
                if node.alive:
                    node.clock.advance(dt)
            twice = [d for d, n in self.runners().items() if n > 1]
            self.assertEqual(twice, [], f"run twice at {self.world.seconds()}")
            seconds -= dt

    def assert_all_run_once_by_their_owner(self) -> None:
        live = sorted(c for c, n in self.nodes.items() if n.alive)
        self.assertEqual(self.runners(), Counter(dict.fromkeys(DEVICES, 1)))
        for c in live:
            self.assertEqual(
                set(self.nodes[c].running), {d for d in DEVICES if owner(d, live) == c}
            )

    def test_default_id_is_host_and_pid(self) -> None:
        import os

        self.assertTrue(default_collector_id().endswith(f":{os.getpid()}"))

    def test_three_collectors_share_the_devices(self) -> None:
        for c in ("a:1", "b:2", "c:3"):
            self.add(c)
        self.advance(3 * HEARTBEAT_SECONDS)
        self.assert_all_run_once_by_their_owner()
        counts = [len(n.running) for n in self.nodes.values()]
        self.assertTrue(all(c > 0 for c in counts), counts)
        listed = self.successResultOf(self.store.collectors())
        self.assertEqual(
            {c.collector_id: c.devices for c in listed},
            {c: len(n.running) for c, n in self.nodes.items()},
        )

    def test_a_killed_collectors_devices_run_elsewhere_within_15_s(self) -> None:
        for c in ("a:1", "b:2", "c:3"):
            self.add(c)
        self.advance(3 * HEARTBEAT_SECONDS)
        orphans = set(self.nodes["b:2"].running)
        self.assertTrue(orphans)
        self.kill("b:2")
        killed_at = self.world.seconds()
        taken_over_at = None
        while taken_over_at is None:
            self.advance(0.1)
            if set(self.runners()) >= set(DEVICES):
                taken_over_at = self.world.seconds()
            self.assertLess(self.world.seconds() - killed_at, 20)
        self.assertLessEqual(taken_over_at - killed_at, 15)
        self.assert_all_run_once_by_their_owner()
        # the others never stopped anything of theirs
        self.assertEqual(
            [c.collector_id for c in self.successResultOf(self.store.collectors())],
            ["a:1", "c:3"],
        )

    def test_a_join_moves_only_the_newcomers_share_and_never_runs_a_device_twice(self) -> None:
        for c in ("a:1", "b:2", "c:3"):
            self.add(c)
        for node in self.nodes.values():
            node.stop_delay = 1.5  # links take time to close: handover waits for it
        self.advance(3 * HEARTBEAT_SECONDS)
        before = {d: c for c, n in self.nodes.items() for d in n.running}
        self.add("d:4")
        self.advance(4 * HEARTBEAT_SECONDS)
        self.assert_all_run_once_by_their_owner()
        after = {d: c for c, n in self.nodes.items() for d in n.running}
        moved = {d for d in DEVICES if before[d] != after[d]}
        self.assertTrue(moved)
        self.assertTrue(all(after[d] == "d:4" for d in moved))

    def test_clean_stop_hands_over_at_once(self) -> None:
        for c in ("a:1", "b:2"):
            self.add(c)
        self.advance(3 * HEARTBEAT_SECONDS)
        leaving = self.nodes["a:1"]
        self.successResultOf(leaving.member.stopService())
        self.assertEqual(leaving.running, {})
        leaving.alive = False
        self.advance(2 * HEARTBEAT_SECONDS)  # no lease to wait for: released on stop
        self.assert_all_run_once_by_their_owner()

    def test_restricted_devices_run_only_where_allowed(self) -> None:
        self.devices = {d: (["c:3"] if d.endswith("7") else None) for d in DEVICES}
        for c in ("a:1", "b:2", "c:3"):
            self.add(c)
        self.advance(3 * HEARTBEAT_SECONDS)
        for d in DEVICES:
            if d.endswith("7"):
                self.assertIn(d, self.nodes["c:3"].running)
        self.kill("c:3")
        self.advance(20)
        self.assertFalse([d for d in self.runners() if d.endswith("7")])  # nowhere allowed

    def test_a_removed_device_is_stopped_and_released(self) -> None:
        self.add("a:1")
        self.advance(HEARTBEAT_SECONDS)
        self.devices = no_restriction(DEVICES[1:])
        self.advance(HEARTBEAT_SECONDS)
        self.assertNotIn(DEVICES[0], self.nodes["a:1"].running)
        self.assertEqual(self.successResultOf(self.store.holders([DEVICES[0]])), {})

    def test_redis_away_longer_than_the_lease_stops_everything_then_recovers(self) -> None:
        self.add("a:1")
        self.advance(HEARTBEAT_SECONDS)
        self.assertEqual(len(self.nodes["a:1"].running), len(DEVICES))
        self.redis.down()
        self.advance(LEASE_SECONDS + 1)
        self.assertEqual(self.nodes["a:1"].running, {})  # no proof of ownership: stopped
        self.redis.up()
        self.advance(LEASE_SECONDS + 2 * HEARTBEAT_SECONDS)
        self.assert_all_run_once_by_their_owner()
