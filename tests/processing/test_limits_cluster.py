"""Limit checks in cluster mode (`MemoryRedis`, a `Clock`): a collector judges only the
points of the devices whose lease it holds, and the new holder of a device takes over
the alarms the old one raised (it clears them; the old one writes nothing more)."""

import json

import attrs
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from pydatacoll.cluster.ownership import Ownership
from pydatacoll.model import Sample
from pydatacoll.processing.limits import LimitsProcessor
from pydatacoll.store import keys
from pydatacoll.testing.memory_subscriber import memory_subscription
from tests.processing.memory_support import memory_context, memory_points, stream_events

LIMITS = {"1000": {"up_limit": 230, "deadband": 2}, "1002": {"frozen_after": 30}}


class ClusterLimitsTests(SynchronousTestCase):
    def setUp(self):
        self.memory = memory_points(LIMITS)
        self.memory.call("sadd", keys.DEVICES, ["1", "9"])
        self.clock = Clock()
        self.clock.advance(1_000_000)
        self.owners = {c: Ownership(c, memory_subscription(self.memory)) for c in "ab"}
        self.processors = {c: self.start(c) for c in "ab"}
        self.memory.call("set", keys.LEASE % "1", "1 a")
        self.owners["a"].set_owned("1", True, "1 a")  # a holds device 1's lease

    def start(self, collector_id):
        context = memory_context(self.memory, self.clock, {"check_interval": "1"})
        processor = LimitsProcessor(attrs.evolve(context, cluster=self.owners[collector_id]))
        processor.startService()
        self.addCleanup(lambda: processor.stopService() if processor.running else None)
        return processor

    def feed(self, collector_id, item_id, value):
        self.clock.advance(1)
        now = self.clock.seconds()
        sample = Sample("1", "10", item_id, value, "good", (), now, now)
        self.processors[collector_id].samples_received([sample])

    def events(self):
        return [(e["event"], e["kind"], e["value"]) for e in stream_events(self.memory)]

    def test_only_the_holder_judges_and_checks_frozen_values(self):
        self.feed("a", "1000", 235)
        self.feed("b", "1000", 236)  # a stale sample at b (never its device): not judged
        self.clock.advance(40)
        self.assertEqual(
            self.events(), [("raise", "high", 235.0), ("raise", "frozen", None)]
        )  # raised once each, by a: b runs no frozen check of a device it does not hold
        self.assertEqual(self.processors["b"].status()["raised"], 0)
        self.assertEqual(self.processors["b"].status()["samples"], 0)

    def test_the_new_holder_takes_the_alarms_over_and_clears_them(self):
        self.feed("a", "1000", 235)
        self.assertIn("1:10:1000:high", self.memory.data[keys.ALARMS])
        # the lease moves from a to b
        self.owners["a"].set_owned("1", False)
        self.memory.call("set", keys.LEASE % "1", "2 b")
        self.owners["b"].set_owned("1", True, "2 b")
        self.feed("a", "1000", 100)  # a's last sample while the link closes: not judged
        self.assertEqual(self.processors["a"].status()["cleared"], 0)
        self.feed("b", "1000", 236)  # still high: not raised twice
        self.feed("b", "1000", 220)
        self.assertEqual(self.events(), [("raise", "high", 235.0), ("clear", "high", 220.0)])
        self.assertEqual(self.memory.data.get(keys.ALARMS) or {}, {})
        # frozen: counted at b from the takeover (3 s ago), never at a any more
        self.clock.advance(26)
        self.assertNotIn(("raise", "frozen", None), self.events())
        self.clock.advance(2)
        self.assertEqual(self.events()[-1], ("raise", "frozen", None))
        self.assertEqual(self.processors["a"].status()["raised"], 1)  # its high only
        self.assertEqual(self.processors["b"].status()["raised"], 1)  # the frozen value
        alarm = json.loads(self.memory.data[keys.ALARMS]["1:10:1002:frozen"])
        self.assertEqual(alarm["device_id"], "1")

    def test_an_event_judged_under_a_lease_that_moved_on_is_refused(self):
        """A paused holder's late judgement is not written over the new holder's alarms."""
        self.feed("a", "1000", 235)  # written under a's current lease
        self.assertIn("1:10:1000:high", self.memory.data[keys.ALARMS])
        self.memory.call("set", keys.LEASE % "1", "2 b")  # b took device 1; a was paused
        self.feed("a", "1000", 220)  # a's last sample, judged before it notices
        self.assertIn("1:10:1000:high", self.memory.data[keys.ALARMS])  # not cleared by a
        status = self.processors["a"].status()
        self.assertEqual((status["events_written"], status["events_fenced"]), (1, 1))
        self.assertEqual(self.events(), [("raise", "high", 235.0)])

    def restart(self):
        for c in "ab":  # both collectors restart: the load takes the alarms over
            self.processors[c].stopService()
            self.processors[c] = self.start(c)

    def test_an_alarm_of_a_deleted_device_is_cleared_once_at_the_load(self):
        """Device 7 was deleted (no lease ever again) and its clear was lost: any
        collector's load clears it, once across the collectors."""
        event = {
            "event": "raise",
            "device_id": "7",
            "term_id": "70",
            "item_id": "1000",
            "kind": "high",
            "value": 1.0,
            "limit": 2.0,
            "time": "t",
            "message": "m",
        }
        self.memory.call("hset", keys.ALARMS, "7:70:1000:high", json.dumps(event))
        # device 9 exists (b holds it, or nobody right now): its alarm is not an orphan
        self.memory.call(
            "hset",
            keys.ALARMS,
            "9:90:1000:high",
            json.dumps({**event, "device_id": "9", "term_id": "90"}),
        )
        self.restart()
        self.assertEqual(list(self.memory.data.get(keys.ALARMS) or {}), ["9:90:1000:high"])
        self.assertEqual(self.events(), [("clear", "high", None)])
        self.assertEqual(stream_events(self.memory)[0]["message"], "device deleted")
        written = [self.processors[c].status()["events_written"] for c in "ab"]
        self.assertEqual(sorted(written), [0, 1])

    def test_a_raise_judged_before_the_deletion_and_written_after_is_refused(self):
        self.memory.call("srem", keys.DEVICES, ["1"])  # deleted, the lease not yet given back
        self.feed("a", "1000", 235)
        self.assertEqual(self.memory.data.get(keys.ALARMS) or {}, {})
        self.assertEqual(self.processors["a"].status()["events_fenced"], 1)

    def test_an_alarm_left_by_another_device_on_a_moved_point_is_not_cleared_unfenced(self):
        """Point 10:1000 belonged to device 9 (held by z) before it moved to device 1.
        b takes device 1 over: device 9's alarm is z's to clear, under 9's lease."""
        event = {
            "event": "raise",
            "device_id": "9",
            "term_id": "10",
            "item_id": "1000",
            "kind": "low",
            "value": 1.0,
            "limit": 2.0,
            "time": "t",
            "message": "m",
        }
        self.memory.call("hset", keys.ALARMS, "9:10:1000:low", json.dumps(event))
        self.memory.call("set", keys.LEASE % "9", "5 z")
        self.owners["b"].set_owned("1", True, "1 b")  # (a stale token: the lease is a's)
        self.assertIn("9:10:1000:low", self.memory.data.get(keys.ALARMS) or {})
        self.assertEqual(self.events(), [])
        # the holder of device 9 clears it, under its lease (kind low is not configured)
        self.memory.call("set", keys.LEASE % "9", "6 a")
        self.owners["a"].set_owned("9", True, "6 a")
        self.clock.advance(0)
        self.assertEqual(self.memory.data.get(keys.ALARMS) or {}, {})
        self.assertEqual(self.events(), [("clear", "low", None)])

    def test_an_event_with_no_lease_held_is_never_written_unfenced(self):
        limits = self.processors["b"]
        limits._event(
            "raise",
            {"device_id": "1", "term_id": "10", "item_id": "1000"},
            "high",
            235.0,
            230.0,
            "judged by a collector not holding device 1",
        )
        self.assertEqual(self.memory.data.get(keys.ALARMS) or {}, {})
        self.assertEqual(limits.status()["events_fenced"], 1)

    def test_a_frozen_alarm_taken_over_is_not_cleared_by_the_same_frozen_value(self):
        self.feed("a", "1002", 5.0)
        self.clock.advance(40)
        self.assertIn("1:10:1002:frozen", self.memory.data[keys.ALARMS])
        self.owners["a"].set_owned("1", False)
        self.memory.call("set", keys.LEASE % "1", "2 b")
        self.owners["b"].set_owned("1", True, "2 b")
        self.feed("b", "1002", 5.0)  # still the same frozen value
        self.assertIn("1:10:1002:frozen", self.memory.data.get(keys.ALARMS) or {})
        self.assertEqual(self.events(), [("raise", "frozen", 5.0)])
        self.feed("b", "1002", 6.0)  # it changes: cleared by the new holder
        self.assertEqual(self.events()[-1], ("clear", "frozen", 6.0))

    def test_a_takeover_of_many_devices_reads_the_active_alarms_once(self):
        self.feed("a", "1000", 235)
        self.owners["a"].set_owned("1", False)
        self.memory.call("set", keys.LEASE % "1", "2 b")
        before = sum(1 for name, _ in self.memory.calls if name == "hgetall")
        for device in ["1", *(str(n) for n in range(100, 120))]:  # 21 leases at once
            self.owners["b"].set_owned(device, True, "2 b")
        self.clock.advance(0)
        reads = sum(1 for name, _ in self.memory.calls if name == "hgetall") - before
        self.assertEqual(reads, 1)
        self.feed("b", "1000", 220)  # the alarm was taken over: b clears it
        self.assertEqual(self.events(), [("raise", "high", 235.0), ("clear", "high", 220.0)])

    def test_a_failed_takeover_read_is_tried_again(self):
        self.feed("a", "1000", 235)
        self.owners["a"].set_owned("1", False)
        self.memory.call("set", keys.LEASE % "1", "2 b")
        self.memory.fail_next("hgetall")
        self.owners["b"].set_owned("1", True, "2 b")
        self.clock.advance(0)
        self.assertEqual(self.processors["b"].status()["active"], 0)
        self.clock.advance(self.processors["b"].retry_delay)
        self.assertEqual(self.processors["b"].status()["active"], 1)
