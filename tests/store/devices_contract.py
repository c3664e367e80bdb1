"""The contract of the collector's store classes, written once: `DeviceStore`,
`ConfigStore.read_device_config` and the ingest script's NT marks.

`tests.store.test_device_store` runs it on MemoryRedis (no redis-server);
`tests.integration.test_store_contract_devices` runs the same tests on a private
redis-server, so the in-memory emulations of our Lua scripts cannot drift.
A subclass sets ``self.redis`` (a started `RedisClient`, or a `MemoryRedis`) in setUp,
on an empty database.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet import defer
from zope.interface.verify import verifyObject

from pydatacoll.errors import ValidationError
from pydatacoll.model import Device, Sample, Term, TermItem
from pydatacoll.store import keys
from pydatacoll.store.config import ConfigStore
from pydatacoll.store.devices import DeviceStore
from pydatacoll.store.ingest import RedisIngest
from pydatacoll.store_interfaces import IDeviceStore, IRedisClient


def fields(body: dict[str, Any]) -> dict[str, str]:
    """An entity's stored hash: each field's JSON text (as ConfigStore writes it)."""
    return {name: json.dumps(value) for name, value in body.items()}


def _pairs(flat: Any) -> Any:
    """A stream entry's fields (a flat list from Redis, a dict from MemoryRedis)."""
    if isinstance(flat, dict):
        return flat.items()
    return zip(flat[::2], flat[1::2], strict=True)


class DeviceStoreContract:
    """The tests; mixed into a trial TestCase that sets ``self.redis`` and ``self.clock``."""

    redis: Any
    clock: Any

    @defer.inlineCallbacks
    def hash(self, key: str, body: dict[str, Any]) -> Any:
        for name, text in fields(body).items():
            yield self.redis.call("hset", key, name, text)

    @defer.inlineCallbacks
    def seed(self) -> Any:
        """Device d with terms t2 and t10 (t10 has two points, one of them without fields)
        and a term t9 listed but not stored; device e elsewhere."""
        yield self.hash(keys.DEVICE % "d", {"id": "d", "protocol": "iec104", "ip": "127.0.0.1"})
        yield self.redis.call("sadd", keys.DEVICES, ["d", "e"])
        yield self.redis.call("sadd", keys.DEVICE_TERMS % "d", ["t2", "t10", "t9"])
        for term_id, address in (("t2", 2), ("t10", 10)):
            yield self.hash(
                keys.TERM % term_id, {"id": term_id, "device_id": "d", "address": address}
            )
        yield self.redis.call("sadd", keys.TERM_ITEMS % "t2", ["i1"])
        yield self.redis.call("sadd", keys.TERM_ITEMS % "t10", ["i2", "i10", "gone"])
        yield self.redis.call("sadd", keys.TERM_ITEMS % "t9", ["i1"])
        for term_id, item_id, ioa in (("t2", "i1", 1), ("t10", "i2", 2), ("t10", "i10", 10)):
            yield self.hash(
                keys.TERM_ITEM % (term_id, item_id),
                {"term_id": term_id, "item_id": item_id, "device_id": "d", "protocol_code": ioa},
            )
        yield self.hash(keys.DEVICE % "e", {"id": "e", "protocol": "iec104", "ip": "127.0.0.2"})

    def test_interfaces(self) -> None:
        verifyObject(IRedisClient, self.redis)  # what the stores and the ingest path use
        verifyObject(IDeviceStore, DeviceStore(self.redis))

    @defer.inlineCallbacks
    def test_read_device_config(self) -> Any:
        yield self.seed()
        for read in (
            DeviceStore(self.redis).read_device_config,
            ConfigStore(self.redis).read_device_config,
        ):
            config = yield read("d")
            self.assertEqual(
                config.device,
                Device.from_json({"id": "d", "protocol": "iec104", "ip": "127.0.0.1"}),
            )
            self.assertEqual([t.id for t in config.terms], ["t10", "t2"])  # by id, as text
            self.assertEqual(
                config.terms[1], Term.from_json({"id": "t2", "device_id": "d", "address": 2})
            )
            self.assertEqual(
                [(ti.term_id, ti.item_id) for ti in config.term_items],
                [("t10", "i10"), ("t10", "i2"), ("t2", "i1")],
            )
            self.assertEqual(
                config.term_items[0],
                TermItem.from_json(
                    {"term_id": "t10", "item_id": "i10", "device_id": "d", "protocol_code": 10}
                ),
            )
            missing = yield read("nobody")
            self.assertIsNone(missing)
        lonely = yield DeviceStore(self.redis).read_device_config("e")
        self.assertEqual((lonely.terms, lonely.term_items), ((), ()))

    @defer.inlineCallbacks
    def test_an_entity_the_model_refuses_fails_the_read(self) -> Any:
        yield self.seed()
        yield self.redis.call("hset", keys.TERM % "t2", "address", "not json")
        d = DeviceStore(self.redis).read_device_config("d")
        yield self.assertFailure(d, ValidationError)

    @defer.inlineCallbacks
    def test_version_and_device_ids(self) -> Any:
        store = DeviceStore(self.redis)
        version = yield store.config_version()
        ids = yield store.device_ids()
        self.assertEqual((version, ids), (None, set()))
        yield self.seed()
        yield self.redis.call("set", keys.CONFIG_VERSION, "7")
        version = yield store.config_version()
        ids = yield store.device_ids()
        self.assertEqual((version, ids), ("7", {"d", "e"}))

    @defer.inlineCallbacks
    def test_statuses_frames_and_replies(self) -> Any:
        store = DeviceStore(self.redis)
        written = yield store.write_statuses({"d": '{"state": "online"}', "e": "{}"})
        self.assertEqual(int(written), 2)
        status = yield self.redis.call("hgetall", keys.DEVICE_STATUS % "d")
        self.assertEqual(status, {"status": '{"state": "online"}'})
        yield store.append_frames("d", ["a", "b", "c"], 4)
        yield store.append_frames("d", ["d", "e"], 4)
        frames = yield self.redis.call("lrange", keys.FRAME_LOG % "d", 0, -1)
        self.assertEqual(frames, ["b", "c", "d", "e"])
        heard = yield store.publish_reply("CHANNEL:REPLY:nobody:1", {"outcome": "confirmed"})
        self.assertEqual(int(heard), 0)
        # Cluster mode: an answer goes out only under the device's current lease.
        yield self.redis.call("set", keys.LEASE % "d", "7 b")
        answer = ("CHANNEL:REPLY:nobody:2", {"outcome": "confirmed"}, "d")
        self.assertEqual(int((yield store.publish_reply(*answer, "6 a"))), -1)
        self.assertEqual(int((yield store.publish_reply(*answer, "7 b"))), 0)
        self.assertEqual(int((yield store.publish_reply(*answer[:2], "e", "1 a"))), -1)

    @defer.inlineCallbacks
    def test_fenced_statuses_and_frame_logs(self) -> Any:
        """Cluster mode: a device's status and frame lines are written only under its
        current lease; a stale holder's are refused whole."""
        store = DeviceStore(self.redis)
        yield self.redis.call("set", keys.LEASE % "d", "7 b")
        yield self.redis.call("set", keys.LEASE % "e", "1 a")
        yield store.write_statuses({"d": '{"by": "b"}'})
        result = yield store.write_fenced(
            {
                "d": ("6 a", '{"by": "stale a"}', ["stale"]),
                "e": ("1 a", '{"by": "a"}', ["1", "2", "3"]),
                "f": ("1 a", None, ["x"]),  # no lease at all
            },
            2,
        )
        self.assertEqual([int(n) for n in result], [1, 2])
        status = yield self.redis.call("hget", keys.DEVICE_STATUS % "d", "status")
        self.assertEqual(status, '{"by": "b"}')  # the new owner's, untouched
        status = yield self.redis.call("hget", keys.DEVICE_STATUS % "e", "status")
        self.assertEqual(status, '{"by": "a"}')
        for device_id, lines in (("d", []), ("e", ["2", "3"]), ("f", [])):
            frames = yield self.redis.call("lrange", keys.FRAME_LOG % device_id, 0, -1)
            self.assertEqual(frames, lines)
        result = yield store.write_fenced({"d": ("7 b", None, ["4", "5", "6"])}, 2)
        self.assertEqual([int(n) for n in result], [0, 0])
        frames = yield self.redis.call("lrange", keys.FRAME_LOG % "d", 0, -1)
        self.assertEqual(frames, ["5", "6"])

    @defer.inlineCallbacks
    def test_a_ctrl_answer_with_its_audit_entry(self) -> Any:
        """store/ctrl_answer.lua: the entry once per request, bounded, under the lease."""
        store = DeviceStore(self.redis)
        body = {"request_id": "r1", "outcome": "confirmed", "audited": True}
        entry = {"time": "T", "request_id": "r1", "outcome": "confirmed", "status": "200"}
        heard = yield store.answer_ctrl("r1", "CHANNEL:REPLY:nobody:r1", body, entry, 2)
        self.assertEqual(int(heard), 0)
        again = yield store.answer_ctrl("r1", "CHANNEL:REPLY:nobody:r1", body, entry, 2)
        self.assertEqual(int(again), 0)  # published again, not audited again
        log = yield self.redis.call("execute_command", "XRANGE", keys.CTRL_LOG, "-", "+")
        self.assertEqual([dict(_pairs(fields)) for _, fields in log], [entry])
        done = yield self.redis.call("get", keys.CTRL_DONE % "r1")
        self.assertEqual(json.loads(done), body)
        # Cluster mode: nothing at all without the device's current lease.
        yield self.redis.call("set", keys.LEASE % "d", "7 b")
        for n, token in ((2, "6 a"), (3, "7 b"), (4, "7 b"), (5, "7 b")):
            fields = {**entry, "request_id": f"r{n}"}
            answer = ("CHANNEL:REPLY:nobody:x", body, fields, 2, "d", token)
            heard = yield store.answer_ctrl(f"r{n}", *answer)
            self.assertEqual(int(heard), -1 if token == "6 a" else 0)
        log = yield self.redis.call("execute_command", "XRANGE", keys.CTRL_LOG, "-", "+")
        self.assertEqual([dict(_pairs(f))["request_id"] for _, f in log], ["r4", "r5"])
        self.assertIsNone((yield self.redis.call("get", keys.CTRL_DONE % "r2")))

    @defer.inlineCallbacks
    def test_not_topical_marks_of_the_ingest_script(self) -> Any:
        """Samples of d (one looks like our own JSON), a mark, then a fresh one; e untouched."""
        for device_id, term_id, item_id in (("d", "t", i) for i in ("a", "b", "c", "n", "fresh")):
            yield self.redis.call(
                "hset", keys.TERM_ITEM % (term_id, item_id), "device_id", json.dumps(device_id)
            )
        yield self.redis.call("set", keys.CONFIG_VERSION, "1")
        sink = RedisIngest(self.redis, self.clock, 100, 1000)
        sink.settled_version = "1"  # every point is where it is configured
        sink.startService()
        sink.samples_received(
            [
                Sample("d", "t", "a", 1.25, receive_time=1.5),
                Sample("d", "t", "b", '","quality":"good","flags":[],', receive_time=1.5),
                Sample("d", "t", "c", 3, "questionable", ("SB",), receive_time=1.5),
                Sample("d", "t", "n", None, "invalid", ("NT", "IV"), receive_time=1.5),
                Sample("e", "t", "a", 9.0, receive_time=1.5),
            ]
        )
        sink.mark_not_topical("d")
        sink.samples_received([Sample("d", "t", "fresh", 5.0, receive_time=2.5)])
        yield sink.stopService()  # writes everything waiting
        self.assertEqual(sink.status()["marks_written"], 1)
        stored = yield self.redis.call("hgetall", keys.DEVICE_VALUES % "d")
        values = {k: json.loads(v) for k, v in stored.items()}
        self.assertEqual(
            {k: (v["value"], v["quality"], v["flags"]) for k, v in values.items()},
            {
                "t:a": (1.25, "questionable", ["NT"]),
                "t:b": ('","quality":"good","flags":[],', "questionable", ["NT"]),
                "t:c": (3, "questionable", ["SB", "NT"]),
                "t:n": (None, "invalid", ["NT", "IV"]),  # NT already: left as it was
                "t:fresh": (5.0, "good", []),  # arrived after the mark
            },
        )
        self.assertEqual(values["t:a"]["receive_time"], "1970-01-01T00:00:01.500+00:00")
        other = yield self.redis.call("hgetall", keys.DEVICE_VALUES % "e")
        self.assertEqual(json.loads(other["t:a"])["flags"], [])

    @defer.inlineCallbacks
    def test_owner_checks_of_the_ingest_script(self) -> Any:
        """A point moved to x: checked (and skipped) on an unsettled device, trusted on a
        settled one, checked everywhere once the stored version moved on."""
        for device_id, term_id in (("d", "t"), ("e", "u")):
            for item_id, owner in (("a", device_id), ("moved", "x")):
                yield self.redis.call(
                    "hset", keys.TERM_ITEM % (term_id, item_id), "device_id", json.dumps(owner)
                )
        yield self.redis.call("set", keys.CONFIG_VERSION, "1")
        batch = [
            Sample(device_id, term_id, item_id, 1.0, receive_time=1.5)
            for device_id, term_id in (("d", "t"), ("e", "u"))
            for item_id in ("a", "moved")
        ]
        sink = RedisIngest(self.redis, self.clock, 100, 1000)
        sink.settled_version = "1"
        sink.unsettled = {"d"}  # a change touched d; the collector has not applied it yet
        sink.startService()
        sink.samples_received(batch)
        yield sink.stopService()
        self.assertEqual((sink.status()["written"], sink.status()["skipped"]), (3, 1))
        stored = yield self.redis.call("hgetall", keys.DEVICE_VALUES % "d")
        self.assertEqual(set(stored), {"t:a"})
        yield self.redis.call("set", keys.CONFIG_VERSION, "2")  # a change not heard yet
        sink = RedisIngest(self.redis, self.clock, 100, 1000)
        sink.settled_version = "1"
        sink.startService()
        sink.samples_received(batch)
        yield sink.stopService()
        self.assertEqual((sink.status()["written"], sink.status()["skipped"]), (2, 2))

    @defer.inlineCallbacks
    def test_the_ingest_script_refuses_a_lease_that_is_not_current(self) -> Any:
        """Cluster mode: d's lease is "7 b"; a writes under a stale "6 a" (fenced, samples
        and mark alike), b under the current one (stored); e has no lease at all."""
        for device_id, item_id in (("d", "a"), ("d", "b"), ("e", "a")):
            yield self.redis.call(
                "hset",
                keys.TERM_ITEM % ("t" + device_id, item_id),
                "device_id",
                json.dumps(device_id),
            )
        yield self.redis.call("set", keys.LEASE % "d", "7 b")
        tokens = {"d": "6 a", "e": "1 a"}
        sink = RedisIngest(self.redis, self.clock, 100, 1000, token_of=tokens.__getitem__)
        sink.startService()
        sink.samples_received(
            [Sample("d", "td", "a", 1.0, receive_time=1.5), Sample("e", "te", "a", 2.0)]
        )
        sink.mark_not_topical("d")
        yield sink.stopService()
        self.assertEqual((sink.status()["written"], sink.status()["fenced"]), (0, 2))
        for device_id in ("d", "e"):
            stored = yield self.redis.call("hgetall", keys.DEVICE_VALUES % device_id)
            self.assertEqual(stored, {})
            history = yield self.redis.call(
                "execute_command",
                "XRANGE",
                keys.POINT_DATA % (device_id, "t" + device_id, "a"),
                "-",
                "+",
            )
            self.assertEqual(list(history), [])
        tokens["d"] = "7 b"
        sink = RedisIngest(self.redis, self.clock, 100, 1000, token_of=tokens.__getitem__)
        sink.startService()
        sink.samples_received([Sample("d", "td", "b", 3.0, receive_time=1.5)])
        yield sink.stopService()
        self.assertEqual((sink.status()["written"], sink.status()["fenced"]), (1, 0))
        stored = yield self.redis.call("hgetall", keys.DEVICE_VALUES % "d")
        self.assertEqual(json.loads(stored["td:b"])["value"], 3.0)

    @defer.inlineCallbacks
    def test_the_history_stays_bounded(self) -> Any:
        """600 samples of one point, history_length 20: the script trims the stream every
        trim_interval(20) = 2 samples (MAXLEN ~: whole nodes of up to 100 entries), so it
        holds from 20 to 20 + 2 + 99 entries, the newest last."""
        yield self.redis.call("set", keys.CONFIG_VERSION, "1")
        sink = RedisIngest(self.redis, self.clock, 20, 1000)
        sink.settled_version = "1"
        sink.startService()
        sink.samples_received(
            [Sample("d", "t", "a", float(n), receive_time=1.5) for n in range(600)]
        )
        yield sink.stopService()
        self.assertEqual(sink.status()["written"], 600)
        history = yield self.redis.call(
            "execute_command", "XRANGE", keys.POINT_DATA % ("d", "t", "a"), "-", "+"
        )
        self.assertTrue(20 <= len(history) <= 121, len(history))
        values = [json.loads(dict(_pairs(fields))["sample"])["value"] for _, fields in history]
        self.assertEqual(values, [float(n) for n in range(600 - len(history), 600)])

    @defer.inlineCallbacks
    def test_a_term_moved_away_and_back_keeps_its_history_bounded(self) -> Any:
        """Term t moves from d to e and back (store/config.lua renames its stream along,
        then the collector hears of the new version): the count made on d before the
        moves does not hold back the trims, the stream keeps history_length + 100 + 99."""
        yield self.redis.call("set", keys.CONFIG_VERSION, "1")
        yield self.hash(keys.TERM_ITEM % ("t", "i"), {"device_id": "d"})
        sink = RedisIngest(self.redis, self.clock, 1000, 10_000)  # trims every 100 samples
        sink.settled_version = "1"
        lengths = []
        for version, (device_id, count) in enumerate((("d", 1001), ("e", 100), ("d", 99)), 1):
            if version > 1:
                old, new = ("d", "e") if device_id == "e" else ("e", "d")
                yield self.redis.call(
                    "rename", keys.POINT_DATA % (old, "t", "i"), keys.POINT_DATA % (new, "t", "i")
                )
                yield self.hash(keys.TERM_ITEM % ("t", "i"), {"device_id": new})
                yield self.redis.call("set", keys.CONFIG_VERSION, str(version))
                sink.settled_version = str(version)  # as reconcile does on the message
                sink.unsettled.update({old, new})
            sink.startService()
            sink.samples_received(
                [Sample(device_id, "t", "i", float(n), receive_time=1.5) for n in range(count)]
            )
            yield sink.stopService()  # writes them all
            history = yield self.redis.call(
                "execute_command", "XRANGE", keys.POINT_DATA % (device_id, "t", "i"), "-", "+"
            )
            lengths.append(len(history))
        self.assertEqual((sink.status()["written"], sink.status()["skipped"]), (1200, 0))
        self.assertLessEqual(max(lengths), 1000 + 100 + 99, lengths)
