"""Upstream commands through the device_ctrl round trip: real Redis, a scripted collector."""

import json

import redis as redis_py
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase

from pydatacoll.api.replies import ReplyListener
from pydatacoll.config import load_settings
from pydatacoll.gateway.commands import CommandPath
from pydatacoll.gateway.model import Gateway, GatewayPoint
from pydatacoll.gateway.service import GatewayServer
from pydatacoll.protocols.iec104.station import CommandRequest
from pydatacoll.store import keys
from pydatacoll.store.gateway import GatewayStore
from pydatacoll.store.redis import RedisClient
from pydatacoll.testing.redis import shared_redis
from tests.gateway.test_service import until
from tests.integration.test_api_redis_devices import FakeCollector

POINT = GatewayPoint.from_json(
    {
        "gateway_id": "g",
        "ioa": 5,
        "type_id": 1,
        "device_id": "d1",
        "term_id": "t1",
        "item_id": "i1",
        "command": True,
    }
)


class CommandPathTests(TestCase):
    @inlineCallbacks
    def setUp(self):
        server = shared_redis()
        self.sync = redis_py.Redis(port=server.port, decode_responses=True)
        self.addCleanup(self.sync.close)
        self.sync.flushall()
        settings = load_settings(None, {"redis": server.url})
        self.client = RedisClient(settings.redis, timeout=5, pool_size=2)
        self.client.startService()
        self.addCleanup(self.client.stopService)
        self.replies = ReplyListener(reactor, settings.redis)
        self.replies.startService()
        self.addCleanup(self.replies.stopService)
        yield until(lambda: self.client.connected and self.replies.subscribed)
        self.script = lambda channel, request: {"ok": True, "outcome": "confirmed", "message": "ok"}
        self.collector = FakeCollector(server.port, lambda c, r: self.script(c, r))
        yield self.collector.start()
        self.addCleanup(self.collector.stop)
        self.path = CommandPath(GatewayStore(self.client), self.replies, reactor, 100)

    def request(self, selected=False, value=1):
        return CommandRequest(
            GatewayServer(
                Gateway.from_json({"id": "g", "protocol": "iec104"}), [POINT], reactor
            ).station_points()[5],
            45,
            value,
            selected,
            "10.0.0.9:4000",
        )

    def audit(self):
        return [fields for _, fields in self.sync.xrevrange(keys.CTRL_LOG)]

    @inlineCallbacks
    def test_confirmed_is_positive_and_audited(self):
        answer = yield self.path.execute("g", POINT, self.request(), 2.0)
        self.assertTrue(answer.ok)
        (channel, sent) = self.collector.requests[0]
        self.assertEqual(channel, keys.DEVICE_CTRL)
        self.assertEqual(
            (sent["device_id"], sent["term_id"], sent["item_id"], sent["value"], sent["select"]),
            ("d1", "t1", "i1", 1, None),
        )
        self.assertEqual((sent["client"], sent["token_id"]), ("10.0.0.9:4000", "gateway:g"))
        (entry,) = self.audit()
        self.assertEqual(
            (entry["client"], entry["token_id"], entry["outcome"], entry["status"]),
            ("10.0.0.9:4000", "gateway:g", "confirmed", "200"),
        )

    @inlineCallbacks
    def test_refused_offline_and_timeout_are_negative(self):
        for outcome in ("negative", "offline"):
            self.script = lambda c, r, o=outcome: {"ok": False, "outcome": o, "message": o}
            answer = yield self.path.execute("g", POINT, self.request(), 2.0)
            self.assertFalse(answer.ok)
        self.script = lambda c, r: None  # silence
        answer = yield self.path.execute("g", POINT, self.request(), 0.3)
        self.assertFalse(answer.ok)
        self.assertIn("timeout", answer.message)
        self.assertEqual(
            [e["outcome"] for e in reversed(self.audit())], ["negative", "offline", "timeout"]
        )

    @inlineCallbacks
    def test_no_collector_is_negative_and_audited(self):
        yield self.collector.stop()
        self.collector.stop = lambda: None  # cleanup: stopped already
        answer = yield self.path.execute("g", POINT, self.request(), 2.0)
        self.assertFalse(answer.ok)
        self.assertEqual(self.audit()[0]["outcome"], "unavailable")

    @inlineCallbacks
    def test_select_goes_down_only_where_the_protocol_has_it(self):
        gateway = Gateway.from_json({"id": "g", "protocol": "iec104"})
        for protocol, expected in (("iec104", True), ("modbus", None)):
            server = GatewayServer(gateway, [POINT], reactor, self.path)
            server.load({}, {"d1": "online"}, {"d1": protocol})
            answer = yield server.execute(self.request(selected=True))
            self.assertTrue(answer.ok)
            self.assertEqual(self.collector.requests[-1][1]["select"], expected, protocol)
        self.assertEqual([json.loads(e["select"]) for e in reversed(self.audit())], [True, None])
