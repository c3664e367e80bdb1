"""Upstream commands through the device_ctrl round trip: `MemoryRedis`, a scripted collector,
timeouts on a `Clock` (the real-Redis version: tests/integration/test_gateway_redis.py)."""

import json

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from pydatacoll.control.commander import CommandSettings, make_commander
from pydatacoll.gateway.commands import CommandPath
from pydatacoll.gateway.model import Gateway, GatewayPoint
from pydatacoll.gateway.service import GatewayServer
from pydatacoll.protocols.iec104.station import CommandRequest
from pydatacoll.store import keys
from pydatacoll.testing.memory import MemoryRedis
from tests.control.support import store_point
from tests.gateway.fakes import MemoryReplies

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


class MemoryCollector:
    """Subscribed to device_ctrl: answers ``script(request)`` (a reply, or None: silence).

    It also hands the replies to the gateway's reply listener: one listener on
    `MemoryRedis`, so that a PUBLISH counts only the collector as a receiver.
    """

    def __init__(self, redis, replies, script):
        self.redis = redis
        self.replies = replies
        self.script = script
        self.requests = []
        redis.listeners.append(self.received)

    def stop(self):
        self.redis.listeners.remove(self.received)

    def received(self, channel, message):
        if channel != keys.DEVICE_CTRL:
            self.replies.deliver(channel, message)
            return
        request = json.loads(message)
        self.requests.append((channel, request))
        reply = self.script(request)
        if reply is not None:
            body = {"request_id": request["request_id"], **reply}
            self.redis.call("publish", request["reply_to"], json.dumps(body))


def confirmed(request):
    return {"ok": True, "outcome": "confirmed", "message": "ok"}


class CommandPathTests(SynchronousTestCase):
    def setUp(self):
        self.redis = MemoryRedis()
        self.clock = Clock()
        self.replies = MemoryReplies(self.clock)
        self.successResultOf(store_point(self.redis, "d1", "t1", "i1"))
        self.collector = MemoryCollector(self.redis, self.replies, confirmed)
        settings = CommandSettings(ctrl_log_length=100)
        self.path = CommandPath(make_commander(self.redis, settings, self.clock, self.replies))

    def request(self, selected=False, value=1):
        return CommandRequest(
            GatewayServer(
                Gateway.from_json({"id": "g", "protocol": "iec104"}), [POINT], self.clock
            ).station_points()[5],
            45,
            value,
            selected,
            "10.0.0.9:4000",
        )

    def audit(self):
        reply = self.successResultOf(
            self.redis.call("execute_command", "XREVRANGE", keys.CTRL_LOG, "+", "-")
        )
        return [dict(zip(flat[::2], flat[1::2], strict=True)) for _, flat in reply]

    def test_confirmed_is_positive_and_audited(self):
        answer = self.successResultOf(self.path.execute("g", POINT, self.request(), 2.0))
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

    def test_refused_offline_and_timeout_are_negative(self):
        for outcome in ("negative", "offline"):
            self.collector.script = lambda r, o=outcome: {"ok": False, "outcome": o, "message": o}
            answer = self.successResultOf(self.path.execute("g", POINT, self.request(), 2.0))
            self.assertFalse(answer.ok)
        self.collector.script = lambda r: None  # silence
        d = self.path.execute("g", POINT, self.request(), 0.3)
        self.clock.advance(0.29)
        self.assertNoResult(d)
        self.clock.advance(0.01)
        answer = self.successResultOf(d)
        self.assertFalse(answer.ok)
        self.assertIn("timeout", answer.message)
        self.assertEqual(
            [e["outcome"] for e in reversed(self.audit())], ["negative", "offline", "timeout"]
        )
        self.assertEqual(self.replies.pending, {})

    def test_no_collector_is_negative_and_audited(self):
        self.collector.stop()
        answer = self.successResultOf(self.path.execute("g", POINT, self.request(), 2.0))
        self.assertFalse(answer.ok)
        self.assertEqual(self.audit()[0]["outcome"], "unavailable")
        self.assertEqual(self.replies.pending, {})  # nothing left waiting

    def test_a_point_that_is_not_configured_is_negative_and_nothing_is_sent(self):
        point = GatewayPoint.from_json({**POINT.to_json(), "item_id": "gone"})
        answer = self.successResultOf(self.path.execute("g", point, self.request(), 2.0))
        self.assertFalse(answer.ok)
        self.assertEqual(answer.message, "not_found: item_id not found!")
        self.assertEqual(self.collector.requests, [])
        self.assertEqual(
            (self.audit()[0]["outcome"], self.audit()[0]["status"]), ("not_found", "404")
        )

    def test_store_down_is_negative(self):
        self.redis.fail_next("evalsha")  # the request: one script call
        answer = self.successResultOf(self.path.execute("g", POINT, self.request(), 2.0))
        self.assertFalse(answer.ok)
        self.assertIn("redis_unavailable: Redis is not reachable", answer.message)
        self.assertEqual(self.audit()[0]["outcome"], "redis_unavailable")

    def test_select_goes_down_only_where_the_protocol_has_it(self):
        gateway = Gateway.from_json({"id": "g", "protocol": "iec104"})
        for protocol, expected in (("iec104", True), ("modbus", None)):
            server = GatewayServer(gateway, [POINT], self.clock, self.path)
            server.load({}, {"d1": "online"}, {"d1": protocol})
            answer = self.successResultOf(server.execute(self.request(selected=True)))
            self.assertTrue(answer.ok)
            self.assertEqual(self.collector.requests[-1][1]["select"], expected, protocol)
        self.assertEqual([json.loads(e["select"]) for e in reversed(self.audit())], [True, None])
