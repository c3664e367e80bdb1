"""Limit checks: level alarms with hysteresis, rate of change, frozen values; events in Redis."""

import json

from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from pydatacoll.model import Sample
from pydatacoll.processing.limits import LimitsProcessor, PointLimits
from tests.processing.support import context, redis_store, wait_for

LIMITS = {
    "1000": {"up_limit": 230, "down_limit": "220", "deadband": 2, "hihi_limit": 240},
    "1001": {"rate_limit": 5},
    "1002": {"frozen_after": 30},
}


class LimitsTests(TestCase):
    @inlineCallbacks
    def setUp(self):
        yield redis_store(self, LIMITS)
        self.clock = Clock()
        self.clock.advance(1_000_000)
        self.processor = LimitsProcessor(context(self, self.clock, {"check_interval": "1"}))
        self.processor.startService()
        self.addCleanup(self.processor.stopService)
        yield wait_for(lambda: self.processor.status()["loaded"])

    def feed(self, item_id, *values, step=1.0):
        for value in values:
            self.clock.advance(step)
            now = self.clock.seconds()
            self.processor.samples_received(
                [Sample("1", "10", item_id, value, "good", (), now, now)]
            )

    @inlineCallbacks
    def log(self):
        entries = yield self.client.call("execute_command", "XRANGE", "XS:ALARM_LOG", "-", "+")
        return [json.loads(dict(zip(f[::2], f[1::2], strict=True))["event"]) for _, f in entries]

    def events(self):
        d = self.log()
        return d.addCallback(lambda log: [(e["event"], e["kind"], e["value"]) for e in log])

    @inlineCallbacks
    def written(self, count):
        yield wait_for(lambda: self.processor.status()["events_written"] >= count)

    @inlineCallbacks
    def test_levels_with_hysteresis(self):
        self.feed("1000", 225, 231, 229, 228.5, 227.9, 245, 219, 221, 222.5)
        yield self.written(6)
        self.assertEqual(
            (yield self.events()),
            [
                ("raise", "high", 231.0),
                ("clear", "high", 227.9),
                ("raise", "hihi", 245.0),
                ("raise", "high", 245.0),
                ("clear", "hihi", 219.0),
                ("clear", "high", 219.0),
                ("raise", "low", 219.0),
                ("clear", "low", 222.5),
            ],
        )
        self.assertEqual((yield self.client.call("hgetall", "HS:ALARM")), {})

    @inlineCallbacks
    def test_active_alarms_and_channel(self):
        self.feed("1000", 235)
        yield self.written(1)
        active = json.loads((yield self.client.call("hget", "HS:ALARM", "1:10:1000:high")))
        self.assertEqual((active["event"], active["limit"], active["value"]), ("raise", 230, 235.0))

    def test_invalid_and_non_numeric_samples_are_not_judged(self):
        now = self.clock.seconds()
        self.processor.samples_received(
            [
                Sample("1", "10", "1000", 999, "invalid", (), now, now),
                Sample("1", "10", "1000", "999", "good", (), now, now),
                Sample("1", "10", "1000", True, "good", (), now, now),
            ]
        )
        self.assertEqual(self.processor.status()["raised"], 0)

    @inlineCallbacks
    def test_rate_of_change(self):
        self.feed("1001", 10, 14, 30, 32, step=2.0)  # 2/s, 8/s, 1/s
        yield self.written(2)
        self.assertEqual((yield self.events()), [("raise", "rate", 30.0), ("clear", "rate", 32.0)])
        self.assertEqual((yield self.limits_of_events()), [5, 5])

    def limits_of_events(self):
        return self.log().addCallback(lambda log: [e["limit"] for e in log])

    @inlineCallbacks
    def test_a_clear_carries_the_limit_of_its_raise(self):
        """The clear names the limit its raise crossed, for every kind."""
        self.feed("1000", 225, 231, 227.9, 245, 219, 222.5)
        yield self.written(8)
        self.assertEqual(
            list(zip((yield self.events()), (yield self.limits_of_events()), strict=True)),
            [
                (("raise", "high", 231.0), 230),
                (("clear", "high", 227.9), 230),
                (("raise", "hihi", 245.0), 240),
                (("raise", "high", 245.0), 230),
                (("clear", "hihi", 219.0), 240),
                (("clear", "high", 219.0), 230),
                (("raise", "low", 219.0), 220),
                (("clear", "low", 222.5), 220),
            ],
        )

    @inlineCallbacks
    def test_frozen_values_on_the_timer(self):
        self.feed("1002", 7)
        self.clock.advance(29)
        self.assertEqual(self.processor.status()["raised"], 0)
        self.clock.advance(1)
        self.assertEqual(self.processor.status()["raised"], 1)
        self.feed("1002", 7, 7)
        self.assertEqual(self.processor.status()["cleared"], 0)
        self.feed("1002", 8)
        yield self.written(2)
        self.assertEqual(
            (yield self.events()), [("raise", "frozen", 7.0), ("clear", "frozen", 8.0)]
        )

    def test_the_loop_survives_an_error(self):
        self.processor._states.clear()  # a broken state: the check raises KeyError
        self.clock.advance(1)
        self.clock.advance(1)
        self.assertEqual(self.processor.status()["loop_errors"], 2)
        self.flushLoggedErrors(KeyError)
        self.assertTrue(self.processor._loop.running)

    @inlineCallbacks
    def test_config_changes(self):
        self.feed("1000", 235)
        yield self.written(1)
        change = {"entity": "term_item", "op": "fresh", "id": "10:1000"}
        change["data"] = {"term_id": "10", "item_id": "1000", "device_id": "1"}
        self.processor.config_changed(change)
        yield self.written(2)
        self.assertEqual((yield self.events())[-1], ("clear", "high", None))
        change["data"] = {"term_id": "10", "item_id": "1003", "device_id": "1", "up_limit": 1}
        self.processor.config_changed(change)
        self.feed("1003", 2)
        yield self.written(3)
        cascade = {
            "terms": ["10"],
            "term_items": [{"device_id": "1", "term_id": "10", "item_id": "1003"}],
        }
        self.processor.config_changed(
            {"entity": "term", "op": "del", "id": "10", "cascade": cascade}
        )
        yield self.written(4)
        self.assertEqual((yield self.events())[-1], ("clear", "high", None))
        self.assertEqual(self.processor.status()["points"], 2)

    @inlineCallbacks
    def test_active_alarms_survive_a_restart(self):
        self.feed("1000", 235)
        yield self.written(1)
        yield self.processor.stopService()
        again = LimitsProcessor(context(self, self.clock))
        again.startService()
        self.addCleanup(again.stopService)
        yield wait_for(lambda: again.status()["loaded"])
        self.assertEqual(again.status()["active"], 1)
        now = self.clock.seconds()
        again.samples_received([Sample("1", "10", "1000", 236, "good", (), now, now)])
        self.assertEqual(again.status()["raised"], 0)

    def test_limits_are_numbers(self):
        limits = PointLimits.from_term_item(
            {"term_id": "1", "item_id": "2", "up_limit": "50", "down_limit": 5}
        )
        self.assertEqual((limits.up_limit, limits.down_limit), (50.0, 5.0))
        self.assertFalse(limits.up_limit < 123.4 < limits.down_limit)
