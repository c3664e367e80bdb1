"""The gateway service against a private redis-server, with our own master over real TCP.

The real halves of tests/gateway: the configuration written by `ConfigStore` (the real
configuration script and its change messages), the real `Subscriber` and `ReplyListener`,
listening sockets and a collector played over txredisapi. Redis is reached only through
the Twisted clients (never a blocking client on the reactor thread).
"""

import json

import txredisapi
from twisted.internet import defer, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from pydatacoll.api.replies import ReplyListener
from pydatacoll.config import load_settings
from pydatacoll.gateway.model import Gateway, GatewayPoint
from pydatacoll.gateway.service import GatewayService
from pydatacoll.model import Device, Item, Term, TermItem
from pydatacoll.protocols.iec104.asdu import Asdu
from pydatacoll.protocols.iec104.link import LinkState
from pydatacoll.protocols.iec104.station import NOT_TOPICAL
from pydatacoll.store import keys
from pydatacoll.store.config import ConfigStore
from pydatacoll.store.redis import RedisClient
from pydatacoll.testing.redis import free_port, shared_redis
from tests.gateway.fakes import Master


@defer.inlineCallbacks
def until(predicate, timeout=5.0):
    for _ in range(int(timeout / 0.02)):
        result = predicate()
        if result:
            return result
        yield deferLater(reactor, 0.02, lambda: None)
    raise AssertionError(f"{predicate} stayed false")


def put(entity):
    op = {"op": "put", "entity": entity.KIND, "id": entity.key, "fields": entity.to_fields()}
    if entity.KIND == "term_item":
        op.update(term_id=entity.term_id, item_id=entity.item_id)
    elif entity.KIND == "gateway_point":
        op.update(gateway_id=entity.gateway_id, ioa=str(entity.ioa))
    return op


def sample(term, item, value, quality="good", flags=(), at="2026-12-03T10:00:00.000+00:00"):
    return {
        "device_id": "d1",
        "term_id": term,
        "item_id": item,
        "value": value,
        "quality": quality,
        "flags": list(flags),
        "source_time": None,
        "receive_time": at,
    }


class GatewayRedisTests(TestCase):
    """A gateway "g" (IOA 10 <- d1:t1:a) served by a GatewayService over real Redis."""

    @defer.inlineCallbacks
    def setUp(self):
        self.settings = load_settings(None, {"redis": shared_redis().url})
        self.client = RedisClient(self.settings.redis, timeout=5, pool_size=2)
        self.client.startService()
        self.addCleanup(self.client.stopService)
        yield self.client.when_connected()
        yield self.client.call("flushdb")
        self.config = ConfigStore(self.client)
        self.port = free_port()
        self.gateway = {
            "id": "g",
            "protocol": "iec104",
            "listen": f"tcp:{self.port}:interface=127.0.0.1",
        }
        yield self.config.apply(
            [
                put(Device.from_json({"id": "d1", "protocol": "modbus", "ip": "127.0.0.1"})),
                put(Term.from_json({"id": "t1", "device_id": "d1"})),
                put(Item.from_json({"id": "a"})),
                put(Item.from_json({"id": "b"})),
                put(TermItem.from_json({"term_id": "t1", "item_id": "a", "protocol_code": 0})),
                put(TermItem.from_json({"term_id": "t1", "item_id": "b", "protocol_code": 1})),
                put(Gateway.from_json(self.gateway)),
            ]
        )
        yield self.config.apply([put(self.point(10, 13, "a"))])
        yield self.client.call(
            "hset", keys.DEVICE_VALUES % "d1", "t1:a", json.dumps(sample("t1", "a", 5.5))
        )
        yield self.set_state("online")
        self.replies = ReplyListener(reactor, self.settings.redis)
        self.replies.startService()
        self.addCleanup(self.replies.stopService)
        self.service = GatewayService(self.client, reactor, replies=self.replies)
        self.service.startService()
        self.addCleanup(self.service.stopService)
        yield until(lambda: "g" in self.service.gateways and self.replies.subscribed)

    def point(self, ioa, type_id, item):
        return GatewayPoint.from_json(
            {
                "gateway_id": "g",
                "ioa": ioa,
                "type_id": type_id,
                "device_id": "d1",
                "term_id": "t1",
                "item_id": item,
                "command": True,
            }  # fmt: skip
        )

    def put_gateway(self, **changes):
        self.gateway.update(changes)
        return self.config.apply([put(Gateway.from_json(self.gateway))])

    def set_state(self, state):
        text = json.dumps({"state": state})
        return self.client.call("hset", keys.DEVICE_STATUS % "d1", "status", text)

    def publish(self, *samples):
        message = json.dumps({"device_id": "d1", "samples": list(samples)})
        return self.client.call("publish", keys.DEVICE_SAMPLES % "d1", message)

    @defer.inlineCallbacks
    def stored_status(self, gateway_id):
        text = yield self.client.call("hget", keys.GATEWAY_STATUS, gateway_id)
        return None if text is None else json.loads(text)

    @defer.inlineCallbacks
    def connect(self, start=True):
        master = Master(reactor, start)
        yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", self.port), master)
        self.addCleanup(lambda: master.transport.loseConnection())
        if start:
            yield until(lambda: master.state is LinkState.STARTED)
        return master

    @defer.inlineCallbacks
    def interrogate(self, master):
        del master.asdus[:]
        master.send_asdu(Asdu(100, 6, 1, [0], [20], [0]))
        yield until(lambda: any(a.cause == 10 for a in master.asdus))
        return {i: (v, q) for a in master.asdus if a.cause == 20 for i, v, q, *_ in a.objects()}

    @defer.inlineCallbacks
    def test_values_changes_quality_and_live_points(self):
        master = yield self.connect()
        self.assertEqual((yield self.interrogate(master)), {10: (5.5, 0)})
        yield self.publish(sample("t1", "a", 6.5, at="2026-12-03T10:00:01.000+00:00"))
        (event,) = yield until(master.events)
        self.assertEqual((event.type_id, list(event.values)), (36, [6.5]))
        yield self.publish(sample("t1", "a", 1.0, at="2026-12-03T09:00:00.000+00:00"))  # older
        yield self.publish(
            sample("t1", "a", 7.5, "questionable", ["SB"], "2026-12-03T10:00:03.000+00:00")
        )
        yield until(lambda: len(master.events()) == 2)
        second = master.events()[1]
        self.assertEqual((list(second.values), second.qualities[0]), ([7.5], 0x20))
        # the device goes offline: NT|IV at the next state read
        yield self.set_state("offline")
        yield self.service._tick()
        third = yield until(lambda: master.events()[2:])
        self.assertEqual(third[0].qualities[0] & NOT_TOPICAL, NOT_TOPICAL)
        yield self.set_state("online")
        yield self.service._tick()
        # a point added is served at once, with its latest value; the connection stays up
        yield self.client.call(
            "hset", keys.DEVICE_VALUES % "d1", "t1:b", json.dumps(sample("t1", "b", 1))
        )
        yield self.config.apply([put(self.point(11, 1, "b"))])
        yield until(lambda: 11 in self.service.gateways["g"].station_points())
        values = yield self.interrogate(master)
        self.assertEqual((values[10], values[11]), ((7.5, 0x20), (True, 0)))
        self.assertFalse(master.lost.called)
        yield self.service._tick()
        status = yield self.stored_status("g")
        self.assertEqual(
            (status["state"], status["points"], len(status["connections"])), ("listening", 2, 1)
        )

    @defer.inlineCallbacks
    def test_gateway_changes_restart_and_delete_closes(self):
        master = yield self.connect()
        new_port = free_port()
        yield self.put_gateway(listen=f"tcp:{new_port}:interface=127.0.0.1")
        yield master.lost  # the old listener and its connections are gone

        def moved():
            server = self.service.gateways.get("g")
            return server is not None and server.port.getHost().port == new_port

        yield until(moved)
        self.port = new_port
        master = yield self.connect()
        self.assertEqual((yield self.interrogate(master)), {10: (5.5, 0)})
        yield self.config.apply([{"op": "delete", "entity": "gateway", "id": "g"}])
        yield master.lost
        yield until(lambda: "g" not in self.service.gateways)
        yield self.service._tick()
        self.assertIsNone((yield self.stored_status("g")))

    @defer.inlineCallbacks
    def test_allowed_clients_and_busy_port(self):
        yield self.put_gateway(allowed_clients=["10.1.2.3"])
        yield until(
            lambda: (
                "g" in self.service.gateways and self.service.gateways["g"].gateway.allowed_clients
            )
        )
        master = Master(reactor)
        yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", self.port), master)
        yield master.lost  # refused: closed at once
        self.assertEqual(self.service.gateways["g"].refused_connections, 1)
        # a second gateway on the same port cannot listen: it says why, in its status
        yield self.config.apply(
            [put(Gateway.from_json({**self.gateway, "id": "h", "allowed_clients": None}))]
        )
        yield until(lambda: "h" in self.service.errors)
        yield self.service._tick()
        status = yield self.stored_status("h")
        self.assertEqual(status["state"], "error")
        self.assertIn("cannot listen", status["error"])

    @defer.inlineCallbacks
    def test_command_round_trip_and_audit(self):
        """A master's command goes down device_ctrl; the collector's reply comes back."""
        collector = yield Collector.start(self.settings.redis.port)
        self.addCleanup(collector.stop)
        master = yield self.connect()
        yield self.interrogate(master)
        del master.asdus[:]
        master.send_asdu(Asdu(50, 6, 1, [10], [1.5], [0]))  # C_SE_NC_1 on IOA 10: 1.5
        yield until(lambda: [a for a in master.asdus if a.cause == 7])
        (channel, request) = collector.requests[0]
        self.assertEqual(
            (channel, request["device_id"], request["term_id"], request["item_id"]),
            (keys.DEVICE_CTRL, "d1", "t1", "a"),
        )
        self.assertEqual((request["value"], request["token_id"]), (1.5, "gateway:g"))
        (reply,) = [a for a in master.asdus if a.cause == 7]
        self.assertFalse(reply.negative)
        audit = yield self.client.call("execute_command", "XREVRANGE", keys.CTRL_LOG, "+", "-")
        entry = dict(zip(audit[0][1][::2], audit[0][1][1::2], strict=True))
        self.assertEqual((entry["token_id"], entry["outcome"]), ("gateway:g", "confirmed"))

    @defer.inlineCallbacks
    def test_command_without_collector_is_negative_and_audited(self):
        """Nobody subscribed to device_ctrl (real Redis counts the receivers): refused."""
        master = yield self.connect()
        yield self.interrogate(master)
        del master.asdus[:]
        master.send_asdu(Asdu(50, 6, 1, [10], [1.5], [0]))
        (reply,) = yield until(lambda: [a for a in master.asdus if a.cause == 7])
        self.assertTrue(reply.negative)
        audit = yield self.client.call("execute_command", "XREVRANGE", keys.CTRL_LOG, "+", "-")
        entry = dict(zip(audit[0][1][::2], audit[0][1][1::2], strict=True))
        self.assertEqual(entry["outcome"], "unavailable")


class _CollectorProtocol(txredisapi.SubscriberProtocol):
    def messageReceived(self, pattern, channel, message):  # noqa: N802 (txredisapi API)
        self.factory.owner.received(channel, message)


class Collector:
    """Subscribed to device_ctrl over txredisapi: confirms every request."""

    @classmethod
    @defer.inlineCallbacks
    def start(cls, port):
        collector = cls()
        collector.requests = []
        collector.publisher = yield txredisapi.Connection(
            "127.0.0.1", port, reconnect=False, convertNumbers=False
        )
        factory = txredisapi.SubscriberFactory()
        factory.protocol = _CollectorProtocol
        factory.owner = collector
        factory.reconnect = False
        factory.convertNumbers = False
        factory.startConnecting(TCP4ClientEndpoint(reactor, "127.0.0.1", port))
        collector.subscriber = yield factory.deferred
        yield collector.subscriber.subscribe([keys.DEVICE_CTRL])
        return collector

    @defer.inlineCallbacks
    def stop(self):
        yield self.subscriber.disconnect()
        yield self.publisher.disconnect()

    def received(self, channel, message):
        request = json.loads(message)
        self.requests.append((channel, request))
        body = {"request_id": request["request_id"], "ok": True, "outcome": "confirmed"}
        return self.publisher.publish(request["reply_to"], json.dumps(body))
