"""The device manager in cluster mode, on a Clock over MemoryRedis (leases expire with it).

A device runs only while its lease is held; a lost lease stops it at once; a lease goes
back only once the device's link has closed; samples written under a lease that is not
current are refused (fenced); a request is answered by the lease holder alone.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from pydatacoll.api.replies import ReplyListener
from pydatacoll.config import load_settings
from pydatacoll.devices.manager import DeviceManager
from pydatacoll.model import ControlOutcome, Sample
from pydatacoll.store import keys
from pydatacoll.store.cluster import ClusterStore
from pydatacoll.store.ingest import LINGER, NO_LEASE, RedisIngest
from pydatacoll.testing.memory import MemoryRedis
from pydatacoll.testing.memory_subscriber import memory_subscription

from .support import FakeDriver, FakeRuntime, add_point, configure

LEASE_SECONDS = 10.0
DEVICES = [f"d{i}" for i in range(8)]


def cluster_manager(
    store: MemoryRedis, clock: Clock, collector_id: str, **options: str
) -> DeviceManager:
    settings = load_settings(
        None,
        {
            "cluster": "true",
            "collector_id": collector_id,
            "lease_seconds": str(LEASE_SECONDS),
            "heartbeat_seconds": "2",
            **options,
        },
    )
    return DeviceManager(
        store,
        settings,
        clock,
        drivers={"modbus": FakeDriver()},
        subscribe=memory_subscription(store),
    )


class SlowRuntime(FakeRuntime):
    """A device whose link closes when the test says so."""

    closed: defer.Deferred[None] | None = None

    def stopService(self) -> Any:  # noqa: N802
        super().stopService()
        self.closed = defer.Deferred()
        return self.closed


class ClusterManagerHarness(SynchronousTestCase):
    """Cluster managers on one `MemoryRedis` and a `Clock` (no tests of its own)."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1000)
        self.store = MemoryRedis()
        self.store.clock = self.clock  # PX keys (leases, heartbeats) expire on this clock
        configure(self.store, *DEVICES)
        for device_id in DEVICES:
            add_point(self.store, device_id, "t" + device_id, "i")
        self.managers: dict[str, DeviceManager] = {}

    def start(
        self, collector_id: str, runtime_class: type = FakeRuntime, **options: str
    ) -> DeviceManager:
        manager = cluster_manager(self.store, self.clock, collector_id, **options)
        driver = manager.drivers["modbus"]

        def build(device: Any, terms: Any, term_items: Any, sink: Any, *rest: Any, **kw: Any):
            runtime = runtime_class(device, terms, term_items, sink, kw.get("frame_observer"))
            driver.runtimes[device.id] = runtime
            return runtime

        driver.build = build
        manager.startService()
        self.managers[collector_id] = manager
        self.addCleanup(self.stop, collector_id)
        return manager

    def stop(self, collector_id: str) -> None:
        manager = self.managers.pop(collector_id, None)
        if manager is not None and manager.running:
            self.successResultOf(manager.stopService())

    def lease(self, device_id: str) -> str | None:
        return self.store.live_get(keys.LEASE % device_id)

    def runners(self) -> dict[str, list[str]]:
        """Device -> the collectors running it now (a link each)."""
        found: dict[str, list[str]] = {d: [] for d in DEVICES}
        for collector_id, manager in self.managers.items():
            driver = manager.drivers["modbus"]
            for device_id, runtime in driver.runtimes.items():
                if runtime.running:
                    found[device_id].append(collector_id)
        return found


class ClusterManagerTests(ClusterManagerHarness):
    def test_a_device_runs_only_under_its_lease(self) -> None:
        manager = self.start("a")
        self.clock.advance(0.1)
        self.assertEqual(sorted(manager.running_devices), DEVICES)
        for device_id in DEVICES:
            lease = manager._leases[device_id]
            self.assertEqual(self.lease(device_id), lease.token)
            self.assertEqual(manager.token_of(device_id), f"{lease.epoch} a")
        status = manager.device_status("d0")
        self.assertEqual((status["collector"], status["epoch"]), ("a", 1))
        self.assertEqual(manager.status()["collector"], "a")
        # The renewals keep every device running for many lease periods.
        for _ in range(100):
            self.clock.advance(0.5)
        self.assertEqual(sorted(manager.running_devices), DEVICES)
        self.assertTrue(all(self.lease(d) == "1 a" for d in DEVICES))

    def test_two_collectors_share_and_never_both_run_a_device(self) -> None:
        self.start("a")
        self.clock.advance(0.1)  # a takes everything: it is alone
        self.start("b")
        for _ in range(100):  # b's heartbeat is seen; a hands b's share over
            self.clock.advance(0.1)
            self.assertTrue(all(len(who) <= 1 for who in self.runners().values()))
        runners = self.runners()
        self.assertTrue(all(len(who) == 1 for who in runners.values()), runners)
        shares = {c: sorted(d for d, who in runners.items() if who == [c]) for c in "ab"}
        self.assertTrue(shares["a"] and shares["b"], shares)
        for collector_id, share in shares.items():
            self.assertEqual(sorted(self.managers[collector_id].running_devices), share)
            for device_id in share:
                self.assertEqual(self.lease(device_id).split(" ")[1], collector_id)
        # The store lists both collectors with their device counts.
        listed = self.successResultOf(ClusterStore(self.store).collectors())
        self.assertEqual(
            {c.to_json()["collector"]: c.to_json()["devices"] for c in listed},
            {c: len(share) for c, share in shares.items()},
        )

    def test_a_lost_lease_stops_the_device_at_once_and_fences_its_samples(self) -> None:
        manager = self.start("a")
        self.clock.advance(0.1)
        runtime = manager.drivers["modbus"].runtimes["d0"]
        # Another collector took d0 (a's lease expired while a was paused, say).
        self.store.set_px(keys.LEASE % "d0", "7 b", 60_000)
        self.clock.advance(LEASE_SECONDS / 3)  # a's next renewal is refused
        self.assertFalse(runtime.running)
        self.assertNotIn("d0", manager.running_devices)
        self.assertEqual(manager.token_of("d0"), NO_LEASE)
        self.assertEqual(self.lease("d0"), "7 b")  # the new owner's lease is untouched
        # A late sample of the stopped device: refused by the script, counted, not retried.
        manager.samples_received([Sample("d0", "td0", "i", 9.0), Sample("d1", "td1", "i", 1.0)])
        self.clock.advance(LINGER)
        counters = manager.ingest.status()
        self.assertEqual((counters["fenced"], counters["written"], counters["buffered"]), (1, 1, 0))
        self.assertNotIn("td0:i", self.store._hgetall(keys.DEVICE_VALUES % "d0"))
        self.assertIn("td1:i", self.store._hgetall(keys.DEVICE_VALUES % "d1"))
        self.assertEqual(len(self.flushLoggedErrors()), 0)

    def test_redis_away_longer_than_the_lease_stops_every_device(self) -> None:
        manager = self.start("a")
        self.clock.advance(0.1)
        self.store.down()
        self.clock.advance(LEASE_SECONDS * 0.99 - 0.2)
        self.assertEqual(len(manager.running_devices), len(DEVICES))  # not yet
        self.clock.advance(0.2)  # past sent + 0.99 L: stopped, before Redis' own expiry
        self.assertEqual(manager.running_devices, {})
        self.store.up()
        for _ in range(30):
            self.clock.advance(0.5)
        self.assertEqual(sorted(manager.running_devices), DEVICES)  # taken again
        self.assertTrue(all(self.lease(d) == "2 a" for d in DEVICES))  # new epochs

    def test_a_lease_goes_back_only_once_the_link_is_closed(self) -> None:
        manager = self.start("a", SlowRuntime)
        driver = manager.drivers["modbus"]
        self.clock.advance(0.1)
        runtime = driver.runtimes["d3"]
        self.assertIsInstance(runtime, SlowRuntime)
        # d3 is deleted: its link starts closing; the lease stays until it has closed.
        self.store.data[keys.DEVICES].discard("d3")
        self.successResultOf(manager.reconcile())
        self.assertFalse(runtime.running)
        self.assertEqual(self.lease("d3"), "1 a")
        self.clock.advance(5)
        self.assertEqual(self.lease("d3"), "1 a")
        runtime.closed.callback(None)
        self.assertIsNone(self.lease("d3"))
        # Shutting down: every lease is released after every link has closed.
        d = manager.stopService()
        self.assertNoResult(d)
        self.assertEqual(self.lease("d0"), "1 a")
        for device_id in DEVICES:
            if device_id != "d3":
                driver.runtimes[device_id].closed.callback(None)
        self.successResultOf(d)
        self.assertTrue(all(self.lease(d) is None for d in DEVICES))
        self.assertEqual(self.successResultOf(ClusterStore(self.store).collectors()), [])

    def test_a_reconcile_during_a_handover_does_not_reopen_the_link(self) -> None:
        """A full reconcile (the change subscription came back, a change) while a moving
        device's link is still closing must not start it again without its lease: it
        would keep a second link to the RTU, fenced forever, and execute commands."""
        a = self.start("a", SlowRuntime)
        self.clock.advance(0.1)
        self.assertEqual(sorted(a.running_devices), DEVICES)
        self.start("b")
        for _ in range(6):
            self.clock.advance(1)
        moving = [d for d in DEVICES if d not in a.running_devices]
        self.assertTrue(moving)  # b took its share; a's links to them are closing
        closing = {d: a.drivers["modbus"].runtimes[d] for d in moving}
        self.successResultOf(a.reconcile())  # during the handover
        for device_id, runtime in closing.items():
            self.assertIs(a.drivers["modbus"].runtimes[device_id], runtime)  # not reopened
            self.assertNotIn(device_id, a.running_devices)
            runtime.closed.callback(None)
        for _ in range(6):
            self.clock.advance(1)
        runners = self.runners()
        self.assertTrue(all(runners[d] == ["b"] for d in moving), runners)
        self.assertTrue(all(a.token_of(d) == "-" for d in moving))
        # a shuts down: its remaining links close when the test says so
        d = self.managers.pop("a").stopService()
        for runtime in a.drivers["modbus"].runtimes.values():
            if runtime.closed is not None and not runtime.closed.called:
                runtime.closed.callback(None)
        self.successResultOf(d)

    def test_only_the_lease_holder_answers_a_request(self) -> None:
        self.start("a")
        self.clock.advance(0.1)
        self.start("b")
        for _ in range(50):
            self.clock.advance(0.1)
        owner = next(c for c, m in self.managers.items() if "d0" in m.running_devices)
        other = "b" if owner == "a" else "a"
        self.managers[owner].drivers["modbus"].runtimes["d0"].control = defer.succeed(
            ControlOutcome("confirmed", "done")
        )
        replies: list[Any] = []
        listener = ReplyListener(
            self.clock, instance_id="api", subscribe=memory_subscription(self.store)
        )
        listener.startService()
        self.addCleanup(listener.stopService)
        raw = memory_subscription(self.store)(
            lambda channel, text: replies.append(json.loads(text)),
            channels=[listener.reply_channel("r1"), listener.reply_channel("r2")],
            on_subscribed=lambda: None,
            name="test",
        )
        raw.startService()
        self.addCleanup(raw.stopService)
        message = {
            "request_id": "r1",
            "reply_to": listener.reply_channel("r1"),
            "device_id": "d0",
            "term_id": "td0",
            "item_id": "i",
            "value": 1,
        }
        self.store.call("publish", keys.DEVICE_CTRL, json.dumps(message))
        self.assertEqual([r["outcome"] for r in replies], ["confirmed"])  # one answer, its
        # With its holder stopped and the lease not yet expired, nobody answers (the API
        # times out): never an "offline" from a collector that does not hold it.
        self.stop(owner)
        self.managers[other].member._loop.stop()  # the other one does not take over yet
        self.store.call(
            "publish",
            keys.DEVICE_CTRL,
            json.dumps({**message, "request_id": "r2", "reply_to": listener.reply_channel("r2")}),
        )
        self.assertEqual(len(replies), 1)

    def test_a_device_handed_over_writes_its_last_samples_before_the_lease_goes(self) -> None:
        manager = self.start("a")
        self.clock.advance(0.1)
        manager.samples_received([Sample("d0", "td0", "i", 5.0)])  # waits LINGER to be sent
        manager.member._stop("d0")  # d0 moves away (a newcomer's share, say)
        self.assertEqual(self.lease("d0"), "1 a")  # its sample is not written yet
        self.clock.advance(LINGER)
        self.assertIsNone(self.lease("d0"))
        self.assertEqual((manager.ingest.fenced, manager.ingest.written), (0, 1))
        self.assertIn("td0:i", self.store._hgetall(keys.DEVICE_VALUES % "d0"))
        # Handed over, not gone offline: its values are not marked not topical (the new
        # owner's samples follow), neither now nor by a later status write.
        self.clock.advance(5)
        stored = json.loads(self.store._hgetall(keys.DEVICE_VALUES % "d0")["td0:i"])
        self.assertEqual((stored["value"], stored["flags"]), (5.0, []))

    def test_an_answer_after_the_lease_was_lost_is_refused(self) -> None:
        manager = self.start("a")
        self.clock.advance(0.1)
        runtime = manager.drivers["modbus"].runtimes["d0"]
        pending: defer.Deferred[ControlOutcome] = defer.Deferred()
        runtime.control = pending
        listener = ReplyListener(
            self.clock, instance_id="api", subscribe=memory_subscription(self.store)
        )
        listener.startService()
        self.addCleanup(listener.stopService)
        answered = listener.wait("r1", 30)
        message = {
            "request_id": "r1",
            "reply_to": listener.reply_channel("r1"),
            "device_id": "d0",
            "term_id": "td0",
            "item_id": "i",
            "value": 1,
        }
        self.store.call("publish", keys.DEVICE_CTRL, json.dumps(message))
        # While the command runs, d0's lease goes to another collector.
        self.store.set_px(keys.LEASE % "d0", "9 b", 60_000)
        self.clock.advance(LEASE_SECONDS / 3)
        self.assertFalse(runtime.running)
        pending.callback(ControlOutcome("confirmed", "done"))  # too late: not answered
        self.assertNoResult(answered)
        self.clock.advance(30)
        self.failureResultOf(answered)  # the API's timeout, never a success

    def test_a_lease_taken_again_waits_for_the_previous_link_to_close(self) -> None:
        manager = self.start("a", SlowRuntime)
        self.clock.advance(0.1)
        driver = manager.drivers["modbus"]
        first = driver.runtimes["d0"]
        # d0's lease is lost (Redis lost it, say) and free again at once.
        self.store.delete_px(keys.LEASE % "d0")
        self.clock.advance(LEASE_SECONDS / 3)  # the renewal is refused: d0 stops
        self.assertFalse(first.running)
        self.clock.advance(2)  # the member takes d0 again, with a new epoch
        self.assertEqual(self.lease("d0"), "2 a")
        self.assertIs(driver.runtimes["d0"], first)  # no second link while the first closes
        first.closed.callback(None)
        second = driver.runtimes["d0"]
        self.assertIsNot(second, first)
        self.assertTrue(second.running)
        self.assertEqual(manager.token_of("d0"), "2 a")
        d = manager.stopService()
        while not d.called:  # the member stops its devices one after the other
            closing = [
                r.closed for r in driver.runtimes.values() if r.closed and not r.closed.called
            ]
            self.assertTrue(closing)
            closing[0].callback(None)
        self.successResultOf(d)

    def test_a_stale_holder_overwrites_neither_status_frames_nor_values_of_the_new_owner(
        self,
    ) -> None:
        """A collector paused past its lease, before its next renewal tells it: its
        status, frame lines and not-topical mark for the device are refused (issue 14)."""
        manager = self.start("a", frame_log_length="10")
        self.clock.advance(0.1)
        runtime = manager.drivers["modbus"].runtimes["d0"]
        runtime.state = "online"
        runtime.frame_observer("rx", b"\x01")
        self.clock.advance(2.5)  # the status and the frame log are written at 1002.0
        written = json.loads(self.store._hgetall(keys.DEVICE_STATUS % "d0")["status"])
        self.assertEqual((written["collector"], written["state"]), ("a", "online"))
        self.assertEqual(len(self.store._lrange(keys.FRAME_LOG % "d0", 0, -1)), 1)
        # b took d0 (a was paused past its lease) and wrote its status and a fresh value
        self.store.set_px(keys.LEASE % "d0", "7 b", 60_000)
        theirs = json.dumps({"device_id": "d0", "state": "online", "collector": "b"})
        self.store._hset(keys.DEVICE_STATUS % "d0", "status", theirs)
        b = RedisIngest(self.store, self.clock, 100, 1000, token_of=lambda device_id: "7 b")
        b.startService()
        self.addCleanup(b.stopService)
        b.samples_received([Sample("d0", "td0", "i", 42.0, receive_time=self.clock.seconds())])
        self.clock.advance(LINGER)
        self.assertEqual(b.status()["written"], 1)
        # a resumes: its link to the RTU drops (state offline) before its renewal is due
        runtime.state = "disconnected"
        runtime.frame_observer("tx", b"\x02")
        self.clock.advance(0.3)  # the state check writes the status and marks d0 NT
        manager._write_status()  # and a full write with the frame log
        self.clock.advance(LINGER)
        self.assertIn("d0", manager.running_devices)  # a has not noticed yet
        self.assertEqual(self.store._hgetall(keys.DEVICE_STATUS % "d0")["status"], theirs)
        self.assertEqual(len(self.store._lrange(keys.FRAME_LOG % "d0", 0, -1)), 1)
        value = json.loads(self.store._hgetall(keys.DEVICE_VALUES % "d0")["td0:i"])
        self.assertEqual((value["value"], value["quality"], value["flags"]), (42.0, "good", []))
        # the other devices' statuses are still a's to write
        other = json.loads(self.store._hgetall(keys.DEVICE_STATUS % "d1")["status"])
        self.assertEqual(other["collector"], "a")
        self.clock.advance(LEASE_SECONDS / 3)  # a's renewal is refused: d0 stops there
        self.assertNotIn("d0", manager.running_devices)
        self.assertEqual(self.store._hgetall(keys.DEVICE_STATUS % "d0")["status"], theirs)
