"""Limit checks: level alarms with hysteresis, rate of change, frozen values; the events
in the store (`MemoryRedis`, a `Clock`: no redis-server, no reactor). The same behaviour
against a real Redis: tests/integration/test_limits_redis.py."""

import json

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from pydatacoll.model import Sample
from pydatacoll.processing.limits import LimitsProcessor, PointLimits
from pydatacoll.store import keys
from tests.processing.memory_support import memory_context, memory_points, stream_events

LIMITS = {
    "1000": {"up_limit": 230, "down_limit": "220", "deadband": 2, "hihi_limit": 240},
    "1001": {"rate_limit": 5},
    "1002": {"frozen_after": 30},
}


class LimitsTests(SynchronousTestCase):
    def setUp(self):
        self.memory = memory_points(LIMITS)
        self.clock = Clock()
        self.clock.advance(1_000_000)
        self.processor = self.start()

    def start(self, options=None):
        processor = LimitsProcessor(
            memory_context(self.memory, self.clock, options or {"check_interval": "1"})
        )
        processor.startService()
        self.addCleanup(lambda: processor.stopService() if processor.running else None)
        return processor

    def feed(self, item_id, *values, step=1.0):
        for value in values:
            self.clock.advance(step)
            now = self.clock.seconds()
            self.processor.samples_received(
                [Sample("1", "10", item_id, value, "good", (), now, now)]
            )

    def events(self):
        return [(e["event"], e["kind"], e["value"]) for e in stream_events(self.memory)]

    def limits_of_events(self):
        return [e["limit"] for e in stream_events(self.memory)]

    def test_loaded_at_once(self):
        status = self.processor.status()
        self.assertEqual((status["loaded"], status["points"]), (True, 3))

    def test_levels_with_hysteresis(self):
        self.feed("1000", 225, 231, 229, 228.5, 227.9, 245, 219, 221, 222.5)
        self.assertEqual(
            self.events(),
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
        self.assertEqual(self.memory.data.get(keys.ALARMS) or {}, {})
        self.assertEqual(self.processor.status()["events_written"], 8)

    def test_active_alarms_and_channel(self):
        self.feed("1000", 235)
        active = json.loads(self.memory.data[keys.ALARMS]["1:10:1000:high"])
        self.assertEqual((active["event"], active["limit"], active["value"]), ("raise", 230, 235.0))
        ((channel, message),) = self.memory.published
        self.assertEqual(channel, keys.ALARM)
        self.assertEqual(json.loads(message)["id"], self.memory.data[keys.ALARM_LOG][0][0])

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

    def test_rate_of_change(self):
        self.feed("1001", 10, 14, 30, 32, step=2.0)  # 2/s, 8/s, 1/s
        self.assertEqual(self.events(), [("raise", "rate", 30.0), ("clear", "rate", 32.0)])
        self.assertEqual(self.limits_of_events(), [5, 5])

    def test_a_clear_carries_the_limit_of_its_raise(self):
        self.feed("1000", 225, 231, 227.9, 245, 219, 222.5)
        self.assertEqual(self.limits_of_events(), [230, 230, 240, 230, 240, 230, 220, 220])

    def test_frozen_values_on_the_timer(self):
        self.feed("1002", 7)
        self.clock.advance(29)
        self.assertEqual(self.processor.status()["raised"], 0)
        self.clock.advance(1)
        self.assertEqual(self.processor.status()["raised"], 1)
        self.feed("1002", 7, 7)
        self.assertEqual(self.processor.status()["cleared"], 0)
        self.feed("1002", 8)
        self.assertEqual(self.events(), [("raise", "frozen", 7.0), ("clear", "frozen", 8.0)])

    def test_the_loop_survives_an_error(self):
        self.processor._states.clear()  # a broken state: the check raises KeyError
        self.clock.advance(1)
        self.clock.advance(1)
        self.assertEqual(self.processor.status()["loop_errors"], 2)
        self.flushLoggedErrors(KeyError)
        self.assertTrue(self.processor._loop.running)

    def test_config_changes(self):
        self.feed("1000", 235)
        change = {"entity": "term_item", "op": "fresh", "id": "10:1000"}
        change["data"] = {"term_id": "10", "item_id": "1000", "device_id": "1"}
        self.processor.config_changed(change)
        self.assertEqual(self.events()[-1], ("clear", "high", None))
        change["data"] = {"term_id": "10", "item_id": "1003", "device_id": "1", "up_limit": 1}
        self.processor.config_changed(change)
        self.feed("1003", 2)
        self.assertEqual(self.events()[-1], ("raise", "high", 2.0))
        cascade = {
            "terms": ["10"],
            "term_items": [{"device_id": "1", "term_id": "10", "item_id": "1003"}],
        }
        self.processor.config_changed(
            {"entity": "term", "op": "del", "id": "10", "cascade": cascade}
        )
        self.assertEqual(self.events()[-1], ("clear", "high", None))
        self.assertEqual(self.processor.status()["points"], 2)

    def test_active_alarms_survive_a_restart(self):
        self.feed("1000", 235)
        self.processor.stopService()
        again = self.start()
        self.assertEqual(again.status()["active"], 1)
        now = self.clock.seconds()
        again.samples_received([Sample("1", "10", "1000", 236, "good", (), now, now)])
        self.assertEqual(again.status()["raised"], 0)

    def test_an_alarm_whose_limit_is_gone_is_cleared_at_start(self):
        self.feed("1000", 235)
        self.processor.stopService()
        self.memory.call("hdel", keys.TERM_ITEM % ("10", "1000"), ["up_limit"])
        again = self.start()
        self.assertEqual(again.status()["active"], 0)
        self.assertEqual(self.events()[-1], ("clear", "high", None))
        self.assertEqual(self.memory.data.get(keys.ALARMS) or {}, {})

    def test_redis_absent_at_start_then_back(self):
        """Nothing is read (nor logged as failed) until Redis is up; then all at once."""
        self.processor.stopService()
        self.memory.down()
        late = self.start({"check_interval": "1", "retry_delay": "5"})
        self.clock.advance(60)
        self.assertFalse(late.status()["loaded"])
        self.memory.up()
        self.assertEqual((late.status()["loaded"], late.status()["points"]), (True, 3))

    def test_a_failed_load_is_retried_after_retry_delay(self):
        self.processor.stopService()
        self.memory.fail_next("smembers")
        late = self.start({"check_interval": "1", "retry_delay": "5"})
        self.assertFalse(late.status()["loaded"])
        self.clock.advance(4.9)
        self.assertFalse(late.status()["loaded"])
        self.clock.advance(0.1)
        self.assertTrue(late.status()["loaded"])

    def test_events_wait_while_redis_is_away_and_keep_their_order(self):
        self.memory.down()
        self.feed("1000", 235, 225)
        self.assertEqual(self.processor.status()["queued"], 2)
        self.assertEqual(self.events(), [])
        self.memory.up()
        self.clock.advance(5)  # retry_delay
        self.assertEqual(self.events(), [("raise", "high", 235.0), ("clear", "high", 225.0)])
        self.assertEqual(self.processor.status()["queued"], 0)

    def test_limits_are_numbers(self):
        limits = PointLimits.from_term_item(
            {"term_id": "1", "item_id": "2", "up_limit": "50", "down_limit": 5}
        )
        self.assertEqual((limits.up_limit, limits.down_limit), (50.0, 5.0))
        self.assertFalse(limits.up_limit < 123.4 < limits.down_limit)
