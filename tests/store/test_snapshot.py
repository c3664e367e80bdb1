"""The whole-configuration read, through `ISnapshotReader`: the contract is written once
here and run against `MemoryRedis` (below) and a private redis-server
(tests/integration/test_snapshot_redis.py imports `SnapshotContract`, and also runs the
configuration script's batches that the snapshot reads back).

A test case mixing the contract in sets ``self.redis`` in its ``setUp``, with an empty
database; the seeding goes through the same client.
"""

from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase
from zope.interface.verify import verifyObject

from pydatacoll.store import keys
from pydatacoll.store.snapshot import ENTITY_ORDER, SnapshotReader, read_snapshot
from pydatacoll.store_interfaces import ISnapshotReader
from pydatacoll.testing.memory import MemoryRedis

DEVICE = {"id": '"007"', "protocol": '"iec104"', "ip": '"127.0.0.1"', "port": "2404"}
TERM = {"id": '"10"', "device_id": '"007"', "address": "3"}
ITEM = {"id": '"1000"', "name": '"voltage"'}
POINT = {"term_id": '"10"', "item_id": '"1000"', "protocol_code": "1", "coefficient": "1.50"}
FORMULA = {"id": '"f1"', "formula": '"p1 * 2"'}


class SnapshotContract:
    @inlineCallbacks
    def seed(self, set_key, hash_key, entity_id, fields):
        yield self.redis.call("sadd", set_key, [entity_id])
        yield self.redis.call("hmset", hash_key % entity_id, fields)

    def test_interface(self):
        self.assertTrue(verifyObject(ISnapshotReader, SnapshotReader(self.redis)))

    @inlineCallbacks
    def test_empty_configuration(self):
        snapshot = yield read_snapshot(self.redis)
        self.assertEqual((snapshot.version, snapshot.count()), ("", 0))
        self.assertEqual({name: dict(snapshot.entities[name]) for name in ENTITY_ORDER},
                         {name: {} for name in ENTITY_ORDER})  # fmt: skip

    @inlineCallbacks
    def test_every_entity_as_stored(self):
        yield self.seed(keys.DEVICES, keys.DEVICE, "007", DEVICE)
        yield self.redis.call("sadd", keys.DEVICES, ["gone"])  # listed, its hash deleted
        yield self.seed(keys.TERMS, keys.TERM, "10", TERM)
        yield self.seed(keys.ITEMS, keys.ITEM, "1000", ITEM)
        yield self.redis.call("sadd", keys.TERM_ITEMS % "10", ["1000", "2000"])
        yield self.redis.call("hmset", keys.TERM_ITEM % ("10", "1000"), POINT)
        yield self.seed(keys.FORMULAS, keys.FORMULA, "f1", FORMULA)
        yield self.redis.call("set", keys.CONFIG_VERSION, "7")
        snapshot = yield SnapshotReader(self.redis).read()
        self.assertEqual(snapshot.version, "7")
        self.assertEqual(snapshot.count(), 5)
        self.assertEqual(
            {name: dict(snapshot.entities[name]) for name in ENTITY_ORDER},
            {
                "device": {"007": DEVICE},  # the JSON texts as stored: "1.50" stays "1.50"
                "term": {"10": TERM},
                "item": {"1000": ITEM},
                "term_item": {"10:1000": POINT},
                "formula": {"f1": FORMULA},
            },
        )


class MemorySnapshotTests(SnapshotContract, TestCase):
    def setUp(self):
        self.redis = MemoryRedis()
