"""The manager following the configuration, on MemoryRedis with an in-memory subscription:
changes published by the API reach it as they would through Redis."""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from pydatacoll.devices.status import STATUS_INTERVAL, iso_times
from pydatacoll.interfaces import IConfigSink, ISampleSink
from pydatacoll.model import Sample
from pydatacoll.store import keys
from pydatacoll.store.subscriber import Subscriber
from pydatacoll.store_interfaces import ISubscriber
from pydatacoll.testing.memory import MemoryRedis

from .support import FakeDriver, HeldIngest, RecordingSink, add_point, configure, memory_manager


class FollowTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.store = MemoryRedis()
        configure(self.store, "d")
        add_point(self.store, "d", "t", "i1")
        self.driver = FakeDriver()
        self.sink = RecordingSink()
        self.manager = memory_manager(self.store, self.clock, self.driver, sinks=[self.sink])
        self.manager.startService()
        self.addCleanup(self.manager.stopService)
        self.version = 1

    def publish(self, entity: str, op: str, **body: Any) -> None:
        """What the API publishes after a change (the version moves by one)."""
        self.version += 1
        self.store.data[keys.CONFIG_VERSION] = str(self.version)
        message = {"entity": entity, "op": op, "version": self.version, **body}
        self.store.call("publish", keys.CHANGE_CHANNELS[entity][op], json.dumps(message))

    def points(self) -> list[str]:
        running = self.manager.running_devices["d"]
        return [ti.item_id for ti in running.config.term_items]

    def test_interfaces(self) -> None:
        verifyObject(ISampleSink, self.manager)
        verifyObject(ISubscriber, self.manager.subscriber)
        verifyObject(IConfigSink, self.sink)
        real = Subscriber(self.clock, lambda: self.store.address, lambda c, m: None)
        verifyObject(ISubscriber, real)

    def test_new_points_update_the_running_device_without_a_restart(self) -> None:
        self.assertEqual((self.driver.builds, self.points()), (1, ["i1"]))
        add_point(self.store, "d", "t", "i2")
        self.publish("term_item", "add", data={"device_id": "d", "term_id": "t", "item_id": "i2"})
        self.assertEqual((self.driver.builds, self.points()), (1, ["i1", "i2"]))
        runtime = self.driver.runtimes["d"]
        self.assertEqual((runtime.point_updates, len(runtime.term_items)), (1, 2))
        self.assertEqual([c["op"] for c in self.sink.changes], ["add"])  # processors told

    def test_a_changed_device_restarts_and_a_deleted_one_stops(self) -> None:
        first = self.driver.runtimes["d"]
        self.store.data[keys.DEVICE % "d"]["port"] = "2"
        self.publish("device", "fresh", id="d")
        self.assertEqual(self.driver.builds, 2)
        self.assertFalse(first.running)
        self.assertTrue(self.driver.runtimes["d"].running)
        self.store.data[keys.DEVICES].discard("d")
        del self.store.data[keys.DEVICE % "d"]
        self.publish("device", "del", id="d")
        self.assertNotIn("d", self.manager.running_devices)
        self.assertFalse(self.driver.runtimes["d"].running)

    def test_only_the_devices_a_change_touches_are_unsettled(self) -> None:
        """The ingest script checks point owners (an HGET per sample) only where a change
        may have moved points: a change touching no device, or other devices, leaves the
        running device trusted; one touching it makes it checked until it is applied."""
        ingest = self.manager.ingest
        self.assertEqual((ingest.settled_version, ingest.unsettled), ("1", set()))
        self.publish("item", "add", data={"id": "x"})  # touches no device
        self.assertEqual((ingest.settled_version, ingest.unsettled), ("2", set()))
        self.store.fail_next("evalsha")  # reading d's configuration fails once
        add_point(self.store, "d", "t", "i2")
        self.publish("term_item", "add", data={"device_id": "d", "term_id": "t", "item_id": "i2"})
        self.assertEqual((ingest.settled_version, ingest.unsettled), ("3", {"d"}))
        self.clock.advance(1)  # the reconcile is retried and applies the change
        self.assertEqual((ingest.settled_version, ingest.unsettled), ("3", set()))
        self.assertEqual(self.points(), ["i1", "i2"])
        self.version += 1  # a message was lost: everything is checked until reconciled
        self.store.fail_next("smembers")
        self.publish("item", "add", data={"id": "y"})
        self.assertEqual(ingest.settled_version, "")
        self.clock.advance(1)
        self.assertEqual((ingest.settled_version, ingest.unsettled), ("5", set()))

    def test_a_version_gap_reconciles_everything(self) -> None:
        configure(self.store, "e", version=1)  # created without a message of its own
        self.version += 1  # a message was lost
        self.publish("item", "add", data={"id": "x"})
        self.assertEqual(set(self.manager.running_devices), {"d", "e"})

    def test_messages_older_than_a_full_pass_do_not_start_another(self) -> None:
        # A full pass read version 9 (a burst of changes was applied meanwhile); the
        # burst's messages, still queued, arrive afterwards with versions 3, 4, 5.
        self.store.data[keys.CONFIG_VERSION] = "9"
        self.manager.reconcile()
        self.assertEqual(self.manager.version, 9)
        configure(self.store, "e", version=9)  # not named by any of the messages
        for version in (3, 4, 5):
            message = {"entity": "item", "op": "add", "version": version, "data": {"id": "x"}}
            self.store.call("publish", keys.CHANGE_CHANNELS["item"]["add"], json.dumps(message))
        self.assertEqual(self.manager.version, 9)  # not moved back
        self.assertNotIn("e", self.manager.running_devices)  # no full pass started
        self.assertEqual(len(self.sink.changes), 3)  # the processors still see each one
        message = {"entity": "item", "op": "add", "version": 10, "data": {"id": "x"}}
        self.store.call("publish", keys.CHANGE_CHANNELS["item"]["add"], json.dumps(message))
        self.assertEqual(self.manager.version, 10)  # the next one follows on

    def test_a_resubscription_catches_up(self) -> None:
        configure(self.store, "e", version=5)  # changed while the subscription was down
        self.store.down()
        self.manager.subscriber.lose()
        self.assertFalse(self.manager.status()["subscribed"])
        self.store.up()  # resubscribed: the pass runs
        self.assertTrue(self.manager.status()["subscribed"])
        self.assertEqual(set(self.manager.running_devices), {"d", "e"})
        self.assertEqual(self.manager.version, 5)

    def test_congestion_pauses_only_the_devices_with_samples_waiting(self) -> None:
        configure(self.store, "e", version=1)
        configure(self.store, "f", version=1)
        self.manager.reconcile()
        flood, quiet, late = (self.driver.runtimes[d] for d in "def")
        ingest = HeldIngest()
        self.patch(self.manager, "ingest", ingest)
        ingest.samples_received([Sample("d", "t", "i1", 1.0, receive_time=0.0)])
        ingest.congested = True
        self.manager._congestion(True)  # what the ingest path calls above its high water
        self.assertEqual((flood.paused, quiet.paused, late.paused), (True, False, False))
        # A device that delivers samples while the ingest is still congested is paused too.
        self.manager.samples_received([Sample("f", "t", "i1", 1.0, receive_time=0.0)])
        self.assertEqual((flood.paused, quiet.paused, late.paused), (True, False, True))
        # A flooding device restarted meanwhile: its new runtime is paused in turn.
        self.store.data[keys.DEVICE % "d"]["port"] = "2"
        self.manager.reconcile({"d"})
        restarted = self.driver.runtimes["d"]
        self.assertIsNot(restarted, flood)
        self.manager.samples_received([Sample("d", "t", "i1", 2.0, receive_time=0.0)])
        self.assertTrue(restarted.paused)
        ingest.congested = False
        self.manager._congestion(False)
        self.assertEqual((restarted.paused, quiet.paused, late.paused), (False, False, False))

    def test_samples_go_to_the_ingest_path_then_the_sinks(self) -> None:
        sample = Sample("d", "t", "i1", 2.5, receive_time=self.clock.seconds())
        self.manager.samples_received([sample])
        self.assertEqual(self.sink.samples, [sample])
        self.clock.advance(1)
        stored = json.loads(self.store.data[keys.DEVICE_VALUES % "d"]["t:i1"])
        self.assertEqual(stored["value"], 2.5)


class FrameLogTests(SynchronousTestCase):
    def start(self, length: str) -> FakeDriver:
        self.clock = Clock()
        self.store = MemoryRedis()
        configure(self.store, "d")
        driver = FakeDriver()
        manager = memory_manager(self.store, self.clock, driver, frame_log_length=length)
        manager.startService()
        self.addCleanup(manager.stopService)
        return driver

    def test_frames_are_written_bounded_with_the_status(self) -> None:
        observe = self.start("5").runtimes["d"].frame_observer
        for n in range(7):
            observe("tx" if n % 2 else "rx", bytes([0x68, n]))
        self.assertNotIn(keys.FRAME_LOG % "d", self.store.data)  # written with the status
        self.clock.advance(STATUS_INTERVAL)
        frames = self.store.data[keys.FRAME_LOG % "d"]
        self.assertEqual([f.split(",", 1)[1] for f in frames][-2:], ["send,6805", "recv,6806"])
        self.assertEqual(len(frames), 5)
        observe("tx", b"\x68\x07")
        self.clock.advance(STATUS_INTERVAL)
        self.assertEqual(len(self.store.data[keys.FRAME_LOG % "d"]), 5)
        self.assertEqual(self.store.data[keys.FRAME_LOG % "d"][-1].split(",")[1:], ["send", "6807"])

    def test_no_frame_log_no_observer(self) -> None:
        self.assertIsNone(self.start("0").runtimes["d"].frame_observer)


class IsoTimeTests(SynchronousTestCase):
    def test_link_counter_times_are_iso(self) -> None:
        """Whatever a driver's counters hold, the status shows its times in ISO 8601."""
        counters = {
            "link": {"last_error_time": 0.5, "last_response_time": None, "since": 60.0},
            "requests": 3,
            "flag": True,
        }
        self.assertEqual(
            iso_times(counters),
            {
                "link": {
                    "last_error_time": "1970-01-01T00:00:00.500+00:00",
                    "last_response_time": None,
                    "since": "1970-01-01T00:01:00.000+00:00",
                },
                "requests": 3,
                "flag": True,
            },
        )
