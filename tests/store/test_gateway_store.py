"""The gateway's store, through `IGatewayStore` only: the contract is written once here and
run against `MemoryRedis` (below, no redis-server) and a private redis-server
(tests/integration/test_gateway_redis.py imports `GatewayStoreContract`), so the fake
cannot drift.

A test case mixing the contract in sets ``self.redis`` (a `RedisClient` or a
`MemoryRedis`) in its ``setUp``, with an empty database; the seeding goes through the same
client.
"""

import json

from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase
from zope.interface.verify import verifyObject

from pydatacoll.store import keys
from pydatacoll.store.gateway import GatewayStore
from pydatacoll.store_interfaces import IGatewayStore
from pydatacoll.testing.memory import MemoryRedis


def encoded(fields):
    """A stored hash: every field a JSON text."""
    return {name: json.dumps(value) for name, value in fields.items()}


class GatewayStoreContract:
    """What the gateway service and the gateway routes rely on."""

    @property
    def store(self):
        return GatewayStore(self.redis)

    @inlineCallbacks
    def seed_gateway(self, gateway_id, points):
        yield self.redis.call("sadd", keys.GATEWAYS, [gateway_id])
        gateway = {"id": gateway_id, "protocol": "iec104"}
        yield self.redis.call("hmset", keys.GATEWAY % gateway_id, encoded(gateway))
        for ioa in points:
            yield self.redis.call("sadd", keys.GATEWAY_POINTS % gateway_id, [str(ioa)])
            point = {"gateway_id": gateway_id, "ioa": ioa, "type_id": 13}
            yield self.redis.call("hmset", keys.GATEWAY_POINT % (gateway_id, ioa), encoded(point))

    def test_interface(self):
        self.assertTrue(verifyObject(IGatewayStore, self.store))

    @inlineCallbacks
    def test_gateways_and_their_points_in_natural_order(self):
        self.assertEqual((yield self.store.gateway_ids()), [])
        self.assertIsNone((yield self.store.gateway("g2")))
        yield self.seed_gateway("g10", [])
        yield self.seed_gateway("g2", [10, 9, 100])
        # a point listed whose hash is gone (deleted meanwhile) is left out
        yield self.redis.call("sadd", keys.GATEWAY_POINTS % "g2", ["11"])
        self.assertEqual((yield self.store.gateway_ids()), ["g2", "g10"])
        fields, points = yield self.store.gateway("g2")
        self.assertEqual(json.loads(fields["id"]), "g2")
        self.assertEqual([json.loads(p["ioa"]) for p in points], [9, 10, 100])
        self.assertEqual((yield self.store.gateway("g10"))[1], [])
        self.assertEqual((yield self.store.point_ioas("g2")), [9, 10, 11, 100])
        self.assertEqual((yield self.store.point_ioas("nope")), [])
        point = yield self.store.point_fields("g2", 9)
        self.assertEqual(json.loads(point["type_id"]), 13)
        self.assertEqual(dict((yield self.store.point_fields("g2", 11))), {})

    @inlineCallbacks
    def test_device_values_states_and_protocols(self):
        sample = {"value": 5.5, "quality": "good", "receive_time": "2026-12-03T10:00:00+00:00"}
        yield self.redis.call("hset", keys.DEVICE_VALUES % "d1", "t1:a", json.dumps(sample))
        yield self.redis.call("hset", keys.DEVICE_VALUES % "d1", "t1:b", "{not json")
        yield self.redis.call("hset", keys.DEVICE_STATUS % "d1", "status", '{"state": "online"}')
        yield self.redis.call("hset", keys.DEVICE_STATUS % "d2", "status", "[1]")
        yield self.redis.call("hset", keys.DEVICE_STATUS % "d3", "status", "{not json")
        yield self.redis.call("hset", keys.DEVICE % "d1", "protocol", '"modbus"')
        yield self.redis.call("hset", keys.DEVICE % "d2", "protocol", "7")
        devices = ["d2", "d1", "d3", "d4", "d1"]
        values = yield self.store.device_values(devices)
        self.assertEqual(values, {"d1": {"t1:a": sample}, "d2": {}, "d3": {}, "d4": {}})
        states = yield self.store.device_states(devices)
        self.assertEqual(states, {"d1": "online", "d2": None, "d3": None, "d4": None})
        protocols = yield self.store.device_protocols(devices)
        self.assertEqual(protocols, {"d1": "modbus", "d2": None, "d3": None, "d4": None})

    @inlineCallbacks
    def test_statuses_written_read_and_forgotten(self):
        self.assertIsNone((yield self.store.read_status("g")))
        yield self.store.write_statuses(
            {"g": {"state": "listening", "points": 2}, "h": {"state": "error"}}
        )
        self.assertEqual((yield self.store.read_status("g")), {"state": "listening", "points": 2})
        yield self.store.forget_statuses(["g"])
        self.assertIsNone((yield self.store.read_status("g")))
        self.assertEqual((yield self.store.read_status("h")), {"state": "error"})
        yield self.redis.call("hset", keys.GATEWAY_STATUS, "x", "[1]")
        self.assertIsNone((yield self.store.read_status("x")))


class MemoryGatewayStoreTests(GatewayStoreContract, TestCase):
    """Every Deferred here has fired by the time it is returned: no reactor turn is used."""

    def setUp(self):
        self.redis = MemoryRedis()
