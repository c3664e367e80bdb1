"""Contract tests of the stores, written once and run twice: over `MemoryRedis`
(tests/store/test_contract_memory.py, no redis-server) and over a private redis-server
(tests/integration/test_store_contract.py). Equal results prove the emulation of the
commands and scripts the stores use (store/config.lua, config_dump.lua) equals Redis.

A concrete test case provides ``self.redis`` (a client with ``call``), ready in setUp,
and ``digest()``: a Deferred digest of the whole keyspace (to prove nothing was written).
"""

import json

from twisted.internet.defer import inlineCallbacks
from zope.interface.verify import verifyObject

from pydatacoll import errors
from pydatacoll.model import Device, Formula, Item, Term, TermItem
from pydatacoll.store import keys
from pydatacoll.store.config import ConfigStore, RetryChange
from pydatacoll.store.events import EventStore
from pydatacoll.store.live import LiveStore
from pydatacoll.store.points import PointStore
from pydatacoll.store.snapshot import read_snapshot
from pydatacoll.store_interfaces import IConfigStore, IEventStore, ILiveStore, IPointStore


def op(kind, entity):
    """A configuration operation ``kind`` writing ``entity``."""
    found = {"op": kind, "entity": entity.KIND, "id": entity.key, "fields": entity.to_fields()}
    if entity.KIND == "term_item":
        found.update(term_id=entity.term_id, item_id=entity.item_id)
    return found


def device(device_id):
    return Device.from_json({"id": device_id, "protocol": "iec104", "ip": "127.0.0.1"})


def term(term_id, device_id):
    return Term.from_json({"id": term_id, "device_id": device_id, "address": 3})


def item(item_id):
    return Item.from_json({"id": item_id, "name": f"item {item_id}"})


def point(term_id, item_id):
    return TermItem.from_json({"term_id": term_id, "item_id": item_id, "protocol_code": 1})


def formula(formula_id, result, **params):
    d, t, i = result.split(":")
    return Formula.from_json(
        {
            "id": formula_id,
            "formula": "p1 * 2",
            "device_id": d,
            "term_id": t,
            "item_id": i,
            **params,
        }
    )


#: A device 1 with term 10 and points 10:1000 and 10:1001.
SEED = [
    op("put", device("1")),
    op("put", term("10", "1")),
    op("put", item("1000")),
    op("put", item("1001")),
    op("put", point("10", "1000")),
    op("put", point("10", "1001")),
]


class ConfigStoreContract:
    """`ConfigStore` (entities, atomic changes, the change log)."""

    @inlineCallbacks
    def test_provides_its_interface(self):
        self.assertTrue(verifyObject(IConfigStore, ConfigStore(self.redis)))
        yield None

    @inlineCallbacks
    def test_reads_after_a_batch(self):
        store = ConfigStore(self.redis)
        results = yield store.apply(SEED + [op("put", device("2")), op("put", device("10"))])
        self.assertEqual(len(results), 8)
        self.assertEqual((results[0]["id"], results[0]["protocol"]), ("1", "iec104"))
        self.assertEqual((yield store.list_ids("device")), ["1", "2", "10"])
        fields = yield store.get_fields("device", "1")
        self.assertEqual(json.loads(fields["protocol"]), "iec104")
        self.assertEqual((yield store.get_fields("device", "nope")), {})
        self.assertEqual((yield store.child_ids("term", "10")), ["1000", "1001"])
        self.assertIsNone((yield store.child_ids("term", "11")))
        self.assertEqual((yield store.child_ids("device", "2")), [])
        stored = yield store.get_term_item_fields("10", "1000")
        self.assertEqual(
            json.loads(stored["device_id"]), "1"
        )  # the term's device, set by the script
        self.assertTrue((yield store.entity_exists("item", "1001")))
        self.assertFalse((yield store.entity_exists("item", "1002")))

    @inlineCallbacks
    def test_refusals_name_the_element_and_write_nothing(self):
        store = ConfigStore(self.redis)
        yield store.apply(SEED)
        version = yield self.redis.call("get", keys.CONFIG_VERSION)
        with self.assertRaises(errors.Conflict) as raised:
            yield store.apply([op("put", device("3")), op("create", device("1"))])
        self.assertEqual((raised.exception.field, raised.exception.index), ("id", 1))
        with self.assertRaises(errors.NotFound) as raised:
            yield store.apply([op("put", term("11", "9"))])
        self.assertEqual((raised.exception.field, raised.exception.index), ("device_id", 0))
        with self.assertRaises(errors.NotFound) as raised:
            yield store.apply([op("put", point("10", "1002"))])
        self.assertEqual(raised.exception.field, "item_id")
        with self.assertRaises(errors.NotFound) as raised:
            yield store.apply([{"op": "delete", "entity": "item", "id": "9"}])
        self.assertEqual(
            (raised.exception.message, raised.exception.field), ("item_id not found!", "item_id")
        )
        self.assertEqual((yield self.redis.call("get", keys.CONFIG_VERSION)), version)
        self.assertEqual((yield store.list_ids("device")), ["1"])

    @inlineCallbacks
    def test_a_batch_sees_its_own_earlier_elements(self):
        store = ConfigStore(self.redis)
        yield store.apply(
            [
                op("create", device("5")),
                op("create", term("50", "5")),
                op("create", item("500")),
                op("create", point("50", "500")),
            ]
        )
        self.assertEqual((yield store.child_ids("device", "5")), ["50"])

    @inlineCallbacks
    def test_check_only_and_versions(self):
        store = ConfigStore(self.redis)
        self.assertEqual((yield store.apply(SEED, check_only=True)), [])
        self.assertEqual((yield store.list_ids("device")), [])
        yield store.apply(SEED)
        version = yield self.redis.call("get", keys.CONFIG_VERSION)
        self.assertEqual(version, str(len(SEED)))
        with self.assertRaises(RetryChange):
            yield store.apply([op("put", device("2"))], expect_version="1")
        yield store.apply([op("put", device("2"))], expect_version=version)
        self.assertEqual((yield store.list_ids("device")), ["1", "2"])

    @inlineCallbacks
    def test_a_version_that_cannot_be_incremented_writes_nothing(self):
        """config.lua: STR:CONFIG_VERSION not an integer, or too big for INCR: the change
        fails before anything is written (else the hash was written with no INCR and no
        change message, and the configuration cache served the old state for good)."""
        store = ConfigStore(self.redis)
        yield store.apply([op("create", device("1"))])
        before = yield store.get_fields("device", "1")
        changed = Device.from_json({"id": "1", "protocol": "iec104", "ip": "10.9.9.9"})
        for bad in ("not a number", "9223372036854775807"):
            yield self.redis.call("set", keys.CONFIG_VERSION, bad)
            try:
                yield store.apply([op("put", changed), op("create", device("2"))])
            except Exception as e:  # Redis's script error (or the emulation's)
                self.assertIn("cannot be incremented", str(e))
            else:
                self.fail("applied over a version that cannot be incremented")
            self.assertEqual((yield store.get_fields("device", "1")), before)
            self.assertEqual((yield store.list_ids("device")), ["1"])
            self.assertEqual((yield self.redis.call("get", keys.CONFIG_VERSION)), bad)

    @inlineCallbacks
    def test_an_update_that_raced_is_retried(self):
        store = ConfigStore(self.redis)
        yield store.apply(SEED)
        stored = yield store.get_fields("device", "1")
        changed = op(
            "update", Device.from_json({"id": "1", "protocol": "iec104", "ip": "10.0.0.1"})
        )
        changed["expect"] = {**stored, "port": "1"}
        with self.assertRaises(RetryChange):
            yield store.apply([changed])
        changed["expect"] = stored
        results = yield store.apply([changed])
        self.assertEqual(results[0]["ip"], "10.0.0.1")
        fields = yield store.get_fields("device", "1")
        self.assertEqual(json.loads(fields["ip"]), "10.0.0.1")

    @inlineCallbacks
    def test_deleting_a_device_removes_what_hangs_on_it(self):
        store = ConfigStore(self.redis)
        yield store.apply(SEED)
        yield self.redis.call("hset", keys.DEVICE_VALUES % "1", "10:1000", '{"value": 1}')
        yield self.redis.call(
            "execute_command", "XADD", keys.POINT_DATA % ("1", "10", "1000"), "*", "sample", "{}"
        )
        yield store.apply([{"op": "delete", "entity": "device", "id": "1"}])
        self.assertEqual((yield store.list_ids("device")), [])
        self.assertEqual((yield store.list_ids("term")), [])
        self.assertEqual((yield store.list_ids("item")), ["1000", "1001"])
        for key in (
            keys.TERM % "10",
            keys.TERM_ITEM % ("10", "1000"),
            keys.DEVICE_VALUES % "1",
            keys.POINT_DATA % ("1", "10", "1000"),
        ):
            self.assertEqual((yield self.redis.call("exists", key)), 0, key)

    @inlineCallbacks
    def test_moving_a_term_moves_its_points(self):
        store = ConfigStore(self.redis)
        yield store.apply(SEED + [op("put", device("2"))])
        yield self.redis.call("hset", keys.DEVICE_VALUES % "1", "10:1000", '{"value": 1}')
        yield store.apply([op("put", term("10", "2"))])
        self.assertEqual((yield store.child_ids("device", "2")), ["10"])
        self.assertEqual((yield store.child_ids("device", "1")), [])
        stored = yield store.get_term_item_fields("10", "1001")
        self.assertEqual(json.loads(stored["device_id"]), "2")
        self.assertEqual(
            (yield self.redis.call("hget", keys.DEVICE_VALUES % "2", "10:1000")), '{"value": 1}'
        )

    @inlineCallbacks
    def test_formulas_refuse_missing_points_shared_results_and_cycles(self):
        store = ConfigStore(self.redis)
        yield store.apply(SEED)
        with self.assertRaises(errors.NotFound) as raised:
            yield store.apply([op("put", formula("f1", "1:10:1000", p1="1:10:9"))])
        self.assertEqual(raised.exception.field, "p1")
        yield store.apply([op("put", formula("f1", "1:10:1000", p1="1:10:1001"))])
        with self.assertRaises(errors.Conflict) as raised:
            yield store.apply([op("put", formula("f2", "1:10:1000", p1="1:10:1001"))])
        self.assertEqual(raised.exception.field, "item_id")
        with self.assertRaises(errors.Conflict) as raised:
            yield store.apply([op("put", formula("f2", "1:10:1001", p1="1:10:1000"))])
        self.assertEqual(raised.exception.field, "p1")
        self.assertIn("cycle", raised.exception.message)
        yield store.apply([{"op": "delete", "entity": "formula", "id": "f1"}])
        yield store.apply([op("put", formula("f2", "1:10:1001", p1="1:10:1000"))])
        self.assertEqual((yield store.list_ids("formula")), ["f2"])

    @inlineCallbacks
    def test_the_snapshot_reads_everything_at_once(self):
        store = ConfigStore(self.redis)
        yield store.apply(SEED + [op("put", formula("f1", "1:10:1000", p1="1:10:1001"))])
        snapshot = yield read_snapshot(self.redis)
        self.assertEqual(snapshot.version, str(len(SEED) + 1))
        self.assertEqual(
            {name: sorted(found) for name, found in snapshot.entities.items()},
            {
                "device": ["1"],
                "term": ["10"],
                "item": ["1000", "1001"],
                "term_item": ["10:1000", "10:1001"],
                "formula": ["f1"],
            },
        )
        self.assertEqual(snapshot.entities["device"]["1"], (yield store.get_fields("device", "1")))


def sample_json(value):
    return json.dumps({"value": value, "quality": "good"})


class PointStoreContract:
    """`PointStore` (latest values, samples, statuses, channels)."""

    @inlineCallbacks
    def test_provides_its_interface(self):
        self.assertTrue(verifyObject(IPointStore, PointStore(self.redis)))
        yield None

    @inlineCallbacks
    def test_values_and_statuses(self):
        store = PointStore(self.redis)
        self.assertEqual((yield store.device_values("1")), {})
        yield self.redis.call("hset", keys.DEVICE_VALUES % "1", "10:1000", sample_json(1))
        yield self.redis.call("hset", keys.DEVICE_VALUES % "1", "10:1001", "not JSON")
        values = yield store.device_values("1")
        self.assertEqual(
            values, {"10:1000": {"value": 1, "quality": "good"}, "10:1001": "not JSON"}
        )
        self.assertIsNone((yield store.device_status_text("1")))
        yield self.redis.call("hset", keys.DEVICE_STATUS % "1", "status", '{"state": "online"}')
        self.assertEqual((yield store.device_status_text("1")), '{"state": "online"}')
        self.assertIsNone((yield store.formula_status_text("f1")))
        yield self.redis.call("hset", keys.FORMULA_STATUS, "f1", '{"state": "ok"}')
        self.assertEqual((yield store.formula_status_text("f1")), '{"state": "ok"}')

    @inlineCallbacks
    def test_samples_newest_first(self):
        store = PointStore(self.redis)
        where = ("1", "10", "1000")
        self.assertEqual((yield store.read_samples(where, 10, None, None)), [])
        self.assertIsNone((yield store.sample_at(where, 0)))
        for value in range(5):
            yield self.redis.call(
                "execute_command",
                "XADD",
                keys.POINT_DATA % where,
                "*",
                "sample",
                sample_json(value),
            )
        samples = yield store.read_samples(where, 10, None, None)
        self.assertEqual([s["value"] for s in samples], [4, 3, 2, 1, 0])
        samples = yield store.read_samples(where, 2, None, None)
        self.assertEqual([s["value"] for s in samples], [4, 3])
        self.assertEqual((yield store.read_samples(where, 10, 0, 0)), [])
        self.assertEqual(len((yield store.read_samples(where, 10, 0, None))), 5)
        far = 2**50
        self.assertEqual((yield store.read_samples(where, 10, far, None)), [])
        self.assertEqual(len((yield store.read_samples(where, 10, None, far))), 5)
        self.assertEqual((yield store.sample_at(where, 0))["value"], 4)
        self.assertEqual((yield store.sample_at(where, 1))["value"], 3)
        self.assertEqual((yield store.sample_at(where, -1))["value"], 0)
        self.assertEqual((yield store.sample_at(where, -2))["value"], 1)
        self.assertIsNone((yield store.sample_at(where, 5)))
        self.assertIsNone((yield store.sample_at(where, -6)))

    @inlineCallbacks
    def test_publish_counts_receivers(self):
        store = PointStore(self.redis)
        self.assertEqual((yield store.publish(keys.DEVICE_CALL, {"request_id": "r"})), 0)


class EventStoreContract:
    """`EventStore` (the command audit, the alarms' reads)."""

    @inlineCallbacks
    def test_provides_its_interface(self):
        self.assertTrue(verifyObject(IEventStore, EventStore(self.redis)))
        yield None

    @inlineCallbacks
    def test_the_audit_is_bounded_and_newest_first(self):
        store = EventStore(self.redis)
        self.assertEqual((yield store.read_audit(10, None, None)), [])
        ids = []
        for n in range(4):
            ids.append((yield store.append_audit({"request_id": f"r{n}", "status": "200"}, 3)))
        entries = yield store.read_audit(10, None, None)
        self.assertEqual([fields["request_id"] for _, fields in entries], ["r3", "r2", "r1"])
        self.assertEqual([entry_id for entry_id, _ in entries], ids[:0:-1])
        self.assertEqual(entries[0][1], {"request_id": "r3", "status": "200"})
        self.assertEqual(len((yield store.read_audit(1, None, None))), 1)
        self.assertEqual((yield store.read_audit(10, 2**50, None)), [])

    @inlineCallbacks
    def test_alarms(self):
        store = EventStore(self.redis)
        self.assertEqual((yield store.active_alarms()), {})
        yield self.redis.call("hset", keys.ALARMS, "1:10:1000:high", '{"kind": "high"}')
        yield self.redis.call("hset", keys.ALARMS, "1:10:1001:low", "not JSON")
        self.assertEqual((yield store.active_alarms()), {"1:10:1000:high": {"kind": "high"}})
        self.assertEqual((yield store.alarm_history(10, None, None)), [])
        for event in ('{"event": "raise"}', "not JSON", "[1]", '{"event": "clear"}'):
            yield self.redis.call("execute_command", "XADD", keys.ALARM_LOG, "*", "event", event)
        events = yield store.alarm_history(10, None, None)
        self.assertEqual([e["event"] for e in events], ["clear", "raise"])
        self.assertTrue(all("id" in e for e in events))
        self.assertEqual(len((yield store.alarm_history(1, None, None))), 1)


class SnapshotContract:
    """Mixed batches of the configuration script and the whole-configuration read."""

    @inlineCallbacks
    def test_one_batch_creates_what_depends_on_what(self):
        """A term, item and point see the device and term put before them in the batch."""
        store = ConfigStore(self.redis)
        results = yield store.apply(SEED[:3] + SEED[4:5])
        self.assertEqual(len(results), 4)
        self.assertEqual(
            (yield self.redis.call("hget", keys.TERM_ITEM % ("10", "1000"), "device_id")), '"1"'
        )
        snapshot = yield read_snapshot(self.redis)
        self.assertEqual(snapshot.version, "4")
        self.assertEqual(snapshot.count(), 4)
        self.assertEqual(dict(snapshot.entities["device"]["1"]), device("1").to_fields())
        self.assertEqual(snapshot.entities["term_item"]["10:1000"]["protocol_code"], "1")

    @inlineCallbacks
    def test_a_delete_is_seen_by_later_ops(self):
        store = ConfigStore(self.redis)
        yield store.apply([op("put", device("1"))])
        before = yield self.digest()
        delete = {"op": "delete", "entity": "device", "id": "1"}
        with self.assertRaises(errors.NotFound) as caught:
            yield store.apply([delete, op("put", term("10", "1"))])
        self.assertEqual((caught.exception.field, caught.exception.index), ("device_id", 1))
        self.assertEqual((yield self.digest()), before)

    @inlineCallbacks
    def test_check_only_and_expected_version(self):
        store = ConfigStore(self.redis)
        empty = yield read_snapshot(self.redis)
        self.assertEqual((empty.version, empty.count()), ("", 0))
        before = yield self.digest()
        self.assertEqual((yield store.apply([op("put", device("1"))], check_only=True)), [])
        self.assertEqual((yield self.digest()), before)
        yield store.apply([op("put", device("1"))], expect_version="")
        with self.assertRaises(RetryChange):
            yield store.apply([op("put", term("10", "1"))], expect_version="")  # now "1"
        self.assertFalse((yield store.entity_exists("term", "10")))
        yield store.apply([op("put", term("10", "1"))], expect_version="1")
        fields = yield store.get_fields("term", "10")
        self.assertEqual(json.loads(fields["address"]), 3)


class LiveStoreContract:
    """`LiveStore` (the event stream's catch-up, the metrics' statuses)."""

    @inlineCallbacks
    def test_provides_its_interface(self):
        self.assertTrue(verifyObject(ILiveStore, LiveStore(self.redis)))
        yield None

    @inlineCallbacks
    def test_stream_positions(self):
        store = LiveStore(self.redis)
        self.assertGreater((yield store.server_time_ms()), 1_600_000_000_000)
        key = keys.POINT_DATA % ("1", "10", "1000")
        self.assertIsNone((yield store.last_entry_id(key)))
        self.assertEqual((yield store.entries_from(key, "-", 10)), [])
        ids = []
        for value in range(4):
            ids.append(
                (
                    yield self.redis.call(
                        "execute_command", "XADD", key, "*", "sample", sample_json(value)
                    )
                )
            )
        self.assertEqual((yield store.last_entry_id(key)), ids[-1])
        entries = yield store.entries_from(key, "-", 10)
        self.assertEqual([entry_id for entry_id, _ in entries], ids)
        self.assertEqual(entries[0][1], {"sample": sample_json(0)})
        self.assertEqual([i for i, _ in (yield store.entries_from(key, "-", 2))], ids[2:])
        self.assertEqual([i for i, _ in (yield store.entries_from(key, ids[1], 10))], ids[1:])
        self.assertEqual([i for i, _ in (yield store.entries_from(key, "(" + ids[1], 10))], ids[2:])

    @inlineCallbacks
    def test_devices_points_and_statuses(self):
        store = LiveStore(self.redis)
        yield ConfigStore(self.redis).apply(
            SEED + [op("put", device("2")), op("put", device("10"))]
        )
        self.assertEqual((yield store.device_ids()), ["1", "10", "2"])
        self.assertEqual((yield store.point_ids("1")), [])
        yield self.redis.call("hset", keys.DEVICE_VALUES % "1", "10:1000", sample_json(1))
        self.assertEqual((yield store.point_ids("1")), [("10", "1000")])
        yield self.redis.call("hset", keys.DEVICE_STATUS % "1", "status", '{"state": "online"}')
        yield self.redis.call("hset", keys.DEVICE_STATUS % "2", "status", "not JSON")
        yield self.redis.call("hset", keys.DEVICE_STATUS % "10", "status", "[1]")
        self.assertEqual((yield store.statuses(["1", "2", "10", "11"])), {"1": {"state": "online"}})
        self.assertEqual((yield store.plugin_statuses()), {})
        yield self.redis.call("hset", keys.PLUGIN_STATUS, "limits", '{"state": "running"}')
        yield self.redis.call("hset", keys.PLUGIN_STATUS, "broken", "{")
        self.assertEqual((yield store.plugin_statuses()), {"limits": {"state": "running"}})
