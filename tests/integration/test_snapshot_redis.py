"""The whole-configuration read over a private redis-server: the contract's real half (the
same tests run over `MemoryRedis` in tests/store/test_snapshot.py), and the mixed batches
of the configuration script read back through it (moved here from tests/store: the
configuration script runs on a real server only). Redis is reached only through the
Twisted client."""

import json

from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase

from pydatacoll import errors
from pydatacoll.config import load_settings
from pydatacoll.model import Device, Item, Term, TermItem
from pydatacoll.store.config import ConfigStore, RetryChange
from pydatacoll.store.redis import RedisClient
from pydatacoll.store.snapshot import read_snapshot
from pydatacoll.testing.redis import shared_redis
from tests.store.test_snapshot import SnapshotContract


def put(entity):
    op = {"op": "put", "entity": entity.KIND, "id": entity.key, "fields": entity.to_fields()}
    if entity.KIND == "term_item":
        op.update(term_id=entity.term_id, item_id=entity.item_id)
    return op


DEVICE = Device.from_json({"id": "1", "protocol": "iec104", "ip": "127.0.0.1"})
TERM = Term.from_json({"id": "10", "device_id": "1", "address": 3})
ITEM = Item.from_json({"id": "1000", "name": "voltage"})
POINT = TermItem.from_json({"term_id": "10", "item_id": "1000", "protocol_code": 1})


class RealRedis:
    @inlineCallbacks
    def setUp(self):
        settings = load_settings(None, {"redis": shared_redis().url})
        self.redis = RedisClient(settings.redis, timeout=5, pool_size=1)
        self.redis.startService()
        self.addCleanup(self.redis.stopService)
        yield self.redis.when_connected()
        yield self.redis.call("flushdb")

    @inlineCallbacks
    def digest(self):
        """Every key and its content (to show that nothing was written)."""
        found = {}
        for key in sorted((yield self.redis.call("keys", "*"))):
            kind = yield self.redis.call("type", key)
            if kind == "hash":
                found[key] = yield self.redis.call("hgetall", key)
            elif kind == "set":
                found[key] = sorted((yield self.redis.call("smembers", key)))
            elif kind == "string":
                found[key] = yield self.redis.call("get", key)
            else:
                found[key] = kind
        return found


class RealSnapshotTests(RealRedis, SnapshotContract, TestCase):
    pass


class ConfigBatchTests(RealRedis, TestCase):
    @inlineCallbacks
    def setUp(self):
        yield RealRedis.setUp(self)
        self.store = ConfigStore(self.redis)

    @inlineCallbacks
    def test_one_batch_creates_what_depends_on_what(self):
        """A term, item and point see the device and term put before them in the batch."""
        results = yield self.store.apply([put(DEVICE), put(TERM), put(ITEM), put(POINT)])
        self.assertEqual(len(results), 4)
        stored = yield self.redis.call("hget", "HS:TERM_ITEM:10:1000", "device_id")
        self.assertEqual(stored, '"1"')
        snapshot = yield read_snapshot(self.redis)
        self.assertEqual(snapshot.version, "4")
        self.assertEqual(snapshot.count(), 4)
        self.assertEqual(dict(snapshot.entities["device"]["1"]), DEVICE.to_fields())
        self.assertEqual(snapshot.entities["term_item"]["10:1000"]["protocol_code"], "1")

    @inlineCallbacks
    def test_a_delete_is_seen_by_later_ops(self):
        yield self.store.apply([put(DEVICE)])
        before = yield self.digest()
        delete = {"op": "delete", "entity": "device", "id": "1"}
        with self.assertRaises(errors.NotFound) as caught:
            yield self.store.apply([delete, put(TERM)])
        self.assertEqual((caught.exception.field, caught.exception.index), ("device_id", 1))
        self.assertEqual((yield self.digest()), before)

    @inlineCallbacks
    def test_check_only_and_expected_version(self):
        empty = yield read_snapshot(self.redis)
        self.assertEqual((empty.version, empty.count()), ("", 0))
        before = yield self.digest()
        self.assertEqual((yield self.store.apply([put(DEVICE)], check_only=True)), [])
        self.assertEqual((yield self.digest()), before)
        yield self.store.apply([put(DEVICE)], expect_version="")
        with self.assertRaises(RetryChange):
            yield self.store.apply([put(TERM)], expect_version="")  # now "1"
        self.assertEqual((yield self.redis.call("exists", "HS:TERM:10")), 0)
        yield self.store.apply([put(TERM)], expect_version="1")
        self.assertEqual(json.loads((yield self.redis.call("hget", "HS:TERM:10", "address"))), 3)
