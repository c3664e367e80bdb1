"""The contract of the processors' stores, written once and run against `MemoryRedis`
(tests/processing/test_store_contract.py) and a private redis-server
(tests/integration/test_store_contract_processing.py), so the fake cannot drift.

A test case mixing this in sets ``self.redis`` (a `RedisClient` or a `MemoryRedis`) in its
``setUp``, with an empty database; the seeding goes through the same client.
"""

import json

from twisted.internet.defer import inlineCallbacks
from zope.interface.verify import verifyObject

from pydatacoll.model import iso_time
from pydatacoll.store import keys
from pydatacoll.store.alarms import AlarmStore
from pydatacoll.store.plugins import PluginStatusStore
from pydatacoll.store.processing import FormulaStore, PointConfigStore
from pydatacoll.store_interfaces import (
    IAlarmStore,
    IFormulaStore,
    IPluginStatusStore,
    IPointConfigStore,
)

POINT = ("1", "10", "1000")


def alarm(event, kind="high", item="1000", value=231.0):
    return {
        "event": event,
        "device_id": "1",
        "term_id": "10",
        "item_id": item,
        "kind": kind,
        "value": value,
        "limit": 230.0,
        "time": "2026-12-03T10:00:00+00:00",
        "message": f"{event} {kind}",
    }


class ProcessingStoreContract:
    """Every store of the processors, through its interface only."""

    @inlineCallbacks
    def seed_term_item(self, term_id, item_id, fields):
        yield self.redis.call("sadd", keys.TERMS, [term_id])
        yield self.redis.call("sadd", keys.TERM_ITEMS % term_id, [item_id])
        encoded = {name: json.dumps(value) for name, value in fields.items()}
        yield self.redis.call("hmset", keys.TERM_ITEM % (term_id, item_id), encoded)

    @inlineCallbacks
    def seed_sample(self, point, ms, value):
        sample = {
            "value": value,
            "quality": "good",
            "flags": [],
            "receive_time": iso_time(ms / 1000),
        }
        text = json.dumps(sample)
        key = keys.POINT_DATA % point
        yield self.redis.call("execute_command", "XADD", key, f"{ms}-0", "sample", text)

    def test_interfaces(self):
        self.assertTrue(verifyObject(IPointConfigStore, PointConfigStore(self.redis)))
        self.assertTrue(verifyObject(IFormulaStore, FormulaStore(self.redis)))
        self.assertTrue(verifyObject(IAlarmStore, AlarmStore(self.redis)))
        self.assertTrue(verifyObject(IPluginStatusStore, PluginStatusStore(self.redis)))

    @inlineCallbacks
    def test_term_items(self):
        store = PointConfigStore(self.redis)
        self.assertEqual((yield store.term_items()), {})
        yield self.seed_term_item("10", "1000", {"device_id": "1", "up_limit": 230})
        yield self.seed_term_item("10", "1001", {"device_id": "1", "history": "none"})
        yield self.seed_term_item("11", "1000", {"device_id": "2"})
        yield self.redis.call("sadd", keys.TERM_ITEMS % "11", ["gone"])  # set, no hash
        found = yield store.term_items()
        self.assertEqual(
            found,
            {
                ("10", "1000"): {"device_id": "1", "up_limit": 230},
                ("10", "1001"): {"device_id": "1", "history": "none"},
                ("11", "1000"): {"device_id": "2"},
            },
        )
        self.assertEqual((yield store.term_item("10", "1001"))["history"], "none")
        self.assertEqual((yield store.term_item("10", "9999")), {})
        yield store.when_connected()

    @inlineCallbacks
    def test_samples(self):
        store = PointConfigStore(self.redis)
        self.assertIsNone((yield store.latest_sample(POINT)))
        self.assertEqual((yield store.sample_window(POINT, 0, 10)), [])
        for ms, value in ((1_000_000, 1), (2_000_000, 2), (3_000_000, 3), (4_000_000, 4)):
            yield self.seed_sample(POINT, ms, value)
        latest = yield store.latest_sample(POINT)
        self.assertEqual(latest["value"], 4)
        window = yield store.sample_window(POINT, 2000.0, 10)
        self.assertEqual([s["value"] for s in window], [2, 3, 4])  # oldest first
        newest_two = yield store.sample_window(POINT, 0, 2)
        self.assertEqual([s["value"] for s in newest_two], [3, 4])
        self.assertIsNone((yield store.latest_sample(("1", "10", "1001"))))
        self.assertIsNone((yield store.latest_value(POINT)))
        marked = {"value": 4, "quality": "questionable", "flags": ["NT"], "receive_time": "t"}
        yield self.redis.call("hset", keys.DEVICE_VALUES % "1", "10:1000", json.dumps(marked))
        yield self.redis.call("hset", keys.DEVICE_VALUES % "1", "10:1001", "not json")
        self.assertEqual((yield store.latest_value(POINT)), marked)
        self.assertIsNone((yield store.latest_value(("1", "10", "1001"))))

    @inlineCallbacks
    def test_formulas_and_their_status(self):
        store = FormulaStore(self.redis)
        self.assertEqual((yield store.formulas(10)), {})
        for formula_id in ("f2", "f1", "f3"):
            yield self.redis.call("sadd", keys.FORMULAS, [formula_id])
            fields = {"formula": json.dumps("p1 * 2"), "p1": json.dumps("1:10:1000")}
            yield self.redis.call("hmset", keys.FORMULA % formula_id, fields)
        yield self.redis.call("sadd", keys.FORMULAS, ["f0"])  # listed, hash gone
        found = yield store.formulas(3)
        self.assertEqual(list(found), ["f1", "f2"])  # the first 3 ids: f0 (gone), f1, f2
        self.assertEqual(found["f1"], {"formula": "p1 * 2", "p1": "1:10:1000"})
        self.assertIsNone((yield store.formula_status("f1")))
        status = {"id": "f1", "state": "ok", "value": 4.5, "quality": "good"}
        yield store.write_formula_status({"f1": status, "f2": {"id": "f2", "state": "error"}})
        self.assertEqual((yield store.formula_status("f1")), status)
        yield store.delete_formula_status("f1")  # f1 still exists (re-created): kept
        self.assertEqual((yield store.formula_status("f1")), status)
        yield self.redis.call("srem", keys.FORMULAS, ["f1"])
        self.assertEqual(int((yield store.delete_formula_status("f1"))), 1)
        self.assertIsNone((yield store.formula_status("f1")))
        self.assertEqual((yield store.formula_status("f2"))["state"], "error")
        # Cluster mode: a status is written only under its result device's current lease.
        yield self.redis.call("set", keys.LEASE % "1", "7 b")
        leases = {"f2": ("1", "6 a"), "f3": ("1", "7 b")}
        statuses = {"f2": {"id": "f2", "state": "ok"}, "f3": {"id": "f3", "state": "ok"}}
        result = yield store.write_formula_status(statuses, leases)
        self.assertEqual([int(n) for n in result], [1, 1])
        self.assertEqual((yield store.formula_status("f2"))["state"], "error")  # refused
        self.assertEqual((yield store.formula_status("f3"))["state"], "ok")

    @inlineCallbacks
    def test_alarm_events(self):
        store = AlarmStore(self.redis)
        self.assertEqual((yield store.active_alarms()), {})
        yield store.record_event(alarm("raise"), 1000)
        yield store.record_event(alarm("raise", kind="hihi"), 1000)
        yield store.record_event(alarm("raise", item="1001", kind="low", value=1), 1000)
        active = yield store.active_alarms()
        self.assertEqual(sorted(active), ["1:10:1000:high", "1:10:1000:hihi", "1:10:1001:low"])
        self.assertEqual(active["1:10:1000:high"], alarm("raise"))
        yield store.record_event(alarm("clear", kind="hihi", value=229.0), 1000)
        active = yield store.active_alarms()
        self.assertEqual(sorted(active), ["1:10:1000:high", "1:10:1001:low"])
        log = yield self.redis.call("execute_command", "XREVRANGE", keys.ALARM_LOG, "+", "-")
        events = [json.loads(dict(zip(f[::2], f[1::2], strict=True))["event"]) for _, f in log]
        self.assertEqual([e["event"] for e in events], ["clear", "raise", "raise", "raise"])
        # Cluster mode: written only under the device's current lease, while configured.
        yield self.redis.call("sadd", keys.DEVICES, ["1"])
        yield self.redis.call("set", keys.LEASE % "1", "7 b")
        refused = yield store.record_event(alarm("clear", item="1001", kind="low"), 1000, "6 a")
        self.assertEqual(int(refused), 0)
        self.assertIn("1:10:1001:low", (yield store.active_alarms()))
        log = yield self.redis.call("execute_command", "XREVRANGE", keys.ALARM_LOG, "+", "-")
        self.assertEqual(len(log), 4)
        done = yield store.record_event(alarm("clear", item="1001", kind="low"), 1000, "7 b")
        self.assertEqual(int(done), 1)
        self.assertNotIn("1:10:1001:low", (yield store.active_alarms()))
        # A deleted device: its fenced events are refused, even under its lease; the
        # orphan clear is written once, only while the device is not configured.
        self.assertEqual(int((yield store.clear_orphan(alarm("clear"), 1000))), 0)  # exists
        yield self.redis.call("srem", keys.DEVICES, ["1"])
        refused = yield store.record_event(alarm("raise", item="1002"), 1000, "7 b")
        self.assertEqual(int(refused), 0)
        self.assertEqual(sorted((yield store.active_alarms())), ["1:10:1000:high"])
        self.assertEqual(int((yield store.clear_orphan(alarm("clear"), 1000))), 1)
        self.assertEqual(int((yield store.clear_orphan(alarm("clear"), 1000))), 0)  # done
        self.assertEqual((yield store.active_alarms()), {})
        log = yield self.redis.call("execute_command", "XREVRANGE", keys.ALARM_LOG, "+", "-")
        self.assertEqual(len(log), 6)

    @inlineCallbacks
    def test_plugin_status_and_heartbeats(self):
        store = PluginStatusStore(self.redis)
        yield store.write_status({"formulas": json.dumps({"state": "running"})})
        text = yield self.redis.call("hget", keys.PLUGIN_STATUS, "formulas")
        self.assertEqual(json.loads(text), {"state": "running"})
        yield store.report_running(["formulas", "limits"], "a", 1000.0)
        yield store.report_running(["formulas"], "b", 1020.0)
        self.assertEqual((yield store.running_instances("formulas", 1025.0, 30.0)), ["a", "b"])
        self.assertEqual((yield store.running_instances("formulas", 1035.0, 30.0)), ["b"])
        found = yield store.running_instances("formulas", 1025.0, 30.0, exclude="a")
        self.assertEqual(found, ["b"])
        yield store.withdraw(["formulas"], "b")
        self.assertEqual((yield store.running_instances("formulas", 1025.0, 30.0)), ["a"])
        yield store.report_running([], "a", 1000.0)
        yield store.withdraw([], "a")
