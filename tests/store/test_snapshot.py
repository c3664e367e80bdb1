"""The whole-configuration read and the mixed batches of the configuration script."""

import json

import redis as redis_py
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from pydatacoll import errors
from pydatacoll.config import load_settings
from pydatacoll.model import Device, Item, Term, TermItem
from pydatacoll.store.config import ConfigStore, RetryChange
from pydatacoll.store.redis import RedisClient
from pydatacoll.store.snapshot import read_snapshot
from pydatacoll.testing.redis import digest, shared_redis


def put(entity):
    op = {"op": "put", "entity": entity.KIND, "id": entity.key, "fields": entity.to_fields()}
    if entity.KIND == "term_item":
        op.update(term_id=entity.term_id, item_id=entity.item_id)
    return op


DEVICE = Device.from_json({"id": "1", "protocol": "iec104", "ip": "127.0.0.1"})
TERM = Term.from_json({"id": "10", "device_id": "1", "address": 3})
ITEM = Item.from_json({"id": "1000", "name": "voltage"})
POINT = TermItem.from_json({"term_id": "10", "item_id": "1000", "protocol_code": 1})


class SnapshotTests(TestCase):
    @inlineCallbacks
    def setUp(self):
        server = shared_redis()
        self.sync = redis_py.Redis(port=server.port, decode_responses=True)
        self.sync.flushall()
        self.addCleanup(self.sync.close)
        settings = load_settings(None, {"redis": server.url})
        self.client = RedisClient(settings.redis, timeout=5, pool_size=1)
        self.client.startService()
        self.addCleanup(self.client.stopService)
        for _ in range(200):
            if self.client.connected:
                break
            yield deferLater(reactor, 0.01, lambda: None)
        self.store = ConfigStore(self.client)

    @inlineCallbacks
    def test_one_batch_creates_what_depends_on_what(self):
        """A term, item and point see the device and term put before them in the batch."""
        results = yield self.store.apply([put(DEVICE), put(TERM), put(ITEM), put(POINT)])
        self.assertEqual(len(results), 4)
        self.assertEqual(self.sync.hget("HS:TERM_ITEM:10:1000", "device_id"), '"1"')
        snapshot = yield read_snapshot(self.client)
        self.assertEqual(snapshot.version, "4")
        self.assertEqual(snapshot.count(), 4)
        self.assertEqual(dict(snapshot.entities["device"]["1"]), DEVICE.to_fields())
        self.assertEqual(snapshot.entities["term_item"]["10:1000"]["protocol_code"], "1")

    @inlineCallbacks
    def test_a_delete_is_seen_by_later_ops(self):
        yield self.store.apply([put(DEVICE)])
        before = digest(self.sync)
        delete = {"op": "delete", "entity": "device", "id": "1"}
        with self.assertRaises(errors.NotFound) as caught:
            yield self.store.apply([delete, put(TERM)])
        self.assertEqual((caught.exception.field, caught.exception.index), ("device_id", 1))
        self.assertEqual(digest(self.sync), before)

    @inlineCallbacks
    def test_check_only_and_expected_version(self):
        empty = yield read_snapshot(self.client)
        self.assertEqual((empty.version, empty.count()), ("", 0))
        before = digest(self.sync)
        self.assertEqual((yield self.store.apply([put(DEVICE)], check_only=True)), [])
        self.assertEqual(digest(self.sync), before)
        yield self.store.apply([put(DEVICE)], expect_version="")
        with self.assertRaises(RetryChange):
            yield self.store.apply([put(TERM)], expect_version="")  # now "1"
        self.assertEqual(self.sync.exists("HS:TERM:10"), 0)
        yield self.store.apply([put(TERM)], expect_version="1")
        self.assertEqual(json.loads(self.sync.hget("HS:TERM:10", "address")), 3)
