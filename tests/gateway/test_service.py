"""The gateway service over `MemoryRedis`, with our own master through in-memory TCP.

The collector is played by the test: it leaves latest values and device states in the
store and publishes sample batches and statuses, as the ingest path and the device
manager do; the configuration is written as the REST API's ConfigStore leaves it (hashes,
then one change message). Everything runs on one `MemoryReactorClock`: no real socket,
no redis-server, no wait (the real-Redis versions: tests/integration/test_gateway_redis.py).
"""

import json
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from pydatacoll.control.replies import ReplyListener
from pydatacoll.errors import StoreUnavailable
from pydatacoll.gateway.model import Gateway, GatewayPoint
from pydatacoll.gateway.service import STATE_INTERVAL, GatewayService
from pydatacoll.model import Device, decode_fields
from pydatacoll.protocols.iec104.asdu import Asdu
from pydatacoll.protocols.iec104.link import LinkState
from pydatacoll.protocols.iec104.station import NOT_TOPICAL
from pydatacoll.store import keys
from pydatacoll.testing.memory import MemoryRedis
from pydatacoll.testing.memory_subscriber import memory_subscription
from tests.control.support import store_point
from tests.gateway.fakes import Master, Reactor

PORT = 2404


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


class MemoryConfig:
    """Writes gateways and their points as ConfigStore does: the hash, then the message."""

    def __init__(self, redis):
        self.redis = redis

    def _changed(self, entity, op, entity_id, data, old):
        message = {"entity": entity, "op": op, "id": entity_id, "data": data, "old": old}
        channel = keys.CHANGE_CHANNELS[entity][op]
        self.redis.call("publish", channel, json.dumps(message))

    def put_device(self, body):
        device = Device.from_json(body)
        self.redis.call("sadd", keys.DEVICES, [device.key])
        self.redis.call("hmset", keys.DEVICE % device.key, device.to_fields())

    def put_gateway(self, body):
        key = keys.GATEWAY % body["id"]
        old = decode_fields(self.redis.data.get(key, {}))
        gateway = Gateway.from_json({**old, **body})
        self.redis.call("sadd", keys.GATEWAYS, [gateway.id])
        self.redis.call("hmset", key, gateway.to_fields())
        self._changed("gateway", "fresh" if old else "add", gateway.id, gateway.to_json(), old)

    def put_point(self, body):
        point = GatewayPoint.from_json(body)
        self.redis.call("sadd", keys.GATEWAY_POINTS % point.gateway_id, [str(point.ioa)])
        self.redis.call(
            "hmset", keys.GATEWAY_POINT % (point.gateway_id, point.ioa), point.to_fields()
        )
        self._changed("gateway_point", "add", point.key, point.to_json(), {})

    def delete_gateway(self, gateway_id):
        old = decode_fields(self.redis.data.pop(keys.GATEWAY % gateway_id))
        self.redis.call("srem", keys.GATEWAYS, [gateway_id])
        self._changed("gateway", "del", gateway_id, {}, old)


class GatewayHarness:
    """A gateway "g" (IOA 10 <- d1:t1:a) served by a GatewayService over MemoryRedis."""

    def setUp(self):
        self.redis = MemoryRedis()
        self.reactor = Reactor()
        self.config = MemoryConfig(self.redis)
        # the device and the latest value of its point, as the collector leaves them
        self.config.put_device({"id": "d1", "protocol": "modbus", "ip": "127.0.0.1"})
        self.redis.call(
            "hset", keys.DEVICE_VALUES % "d1", "t1:a", json.dumps(sample("t1", "a", 5.5))
        )
        self.set_state("online")
        self.config.put_gateway(
            {"id": "g", "protocol": "iec104", "listen": f"tcp:{PORT}:interface=127.0.0.1"}
        )
        self.config.put_point(
            {
                "gateway_id": "g",
                "ioa": 10,
                "type_id": 13,
                "device_id": "d1",
                "term_id": "t1",
                "item_id": "a",
            }
        )
        self.service = self.make_service()
        self.service.startService()
        self.addCleanup(self.service.stopService)
        self.assertIn("g", self.service.gateways)  # reconciled at once: the store answers now
        self.port = PORT

    def make_service(self):
        return GatewayService(self.redis, self.reactor, subscribe=memory_subscription(self.redis))

    def set_state(self, state):
        self.redis.call("hset", keys.DEVICE_STATUS % "d1", "status", json.dumps({"state": state}))

    def publish(self, *samples):
        message = {"device_id": "d1", "samples": list(samples)}
        self.redis.call("publish", keys.DEVICE_SAMPLES % "d1", json.dumps(message))
        self.reactor.flush()

    def tick(self):
        """One read of the device states and write of the statuses."""
        self.reactor.advance(STATE_INTERVAL)
        self.reactor.flush()

    def stored_status(self, gateway_id):
        text = self.redis.data.get(keys.GATEWAY_STATUS, {}).get(gateway_id)
        return None if text is None else json.loads(text)

    def connect(self, start=True):
        master = Master(self.reactor, start)
        self.reactor.dial(self.port, master)
        if start:
            self.assertIs(master.state, LinkState.STARTED)
        return master

    def interrogate(self, master):
        del master.asdus[:]
        master.send_asdu(Asdu(100, 6, 1, [0], [20], [0]))
        self.reactor.flush()
        self.assertTrue(any(a.cause == 10 for a in master.asdus), master.asdus)
        return {i: (v, q) for a in master.asdus if a.cause == 20 for i, v, q, *_ in a.objects()}


class GatewayServiceTests(GatewayHarness, SynchronousTestCase):
    def test_values_changes_quality_and_live_points(self):
        master = self.connect()
        self.assertEqual(self.interrogate(master), {10: (5.5, 0)})
        # a new sample: spontaneous, CP56; the same value again: nothing
        self.publish(sample("t1", "a", 6.5, at="2026-12-03T10:00:01.000+00:00"))
        (first,) = master.events()
        self.assertEqual((first.type_id, list(first.values)), (36, [6.5]))
        self.publish(sample("t1", "a", 6.5, at="2026-12-03T10:00:02.000+00:00"))
        # an older sample (arriving late) does not overwrite the newer one
        self.publish(sample("t1", "a", 1.0, at="2026-12-03T09:00:00.000+00:00"))
        self.assertEqual(len(master.events()), 1)
        self.publish(
            sample("t1", "a", 7.5, "questionable", ["SB"], "2026-12-03T10:00:03.000+00:00")
        )
        second = master.events()[1]
        self.assertEqual((list(second.values), second.qualities[0]), ([7.5], 0x20))
        # the device goes offline: NT|IV at the next state read
        self.set_state("offline")
        self.tick()
        third = master.events()[2]
        self.assertEqual(third.qualities[0] & NOT_TOPICAL, NOT_TOPICAL)
        self.set_state("online")
        self.tick()
        # a point added (over REST) is served at once, with its latest value; the
        # connection stays up
        self.redis.call("hset", keys.DEVICE_VALUES % "d1", "t1:b", json.dumps(sample("t1", "b", 1)))
        self.config.put_point(
            {
                "gateway_id": "g",
                "ioa": 11,
                "type_id": 1,
                "device_id": "d1",
                "term_id": "t1",
                "item_id": "b",
            }  # fmt: skip
        )
        self.assertIn(11, self.service.gateways["g"].station_points())
        values = self.interrogate(master)
        self.assertEqual(values[11], (True, 0))
        self.assertEqual(values[10], (7.5, 0x20))
        self.assertFalse(master.lost.called)
        self.tick()
        status = self.stored_status("g")
        self.assertEqual(
            (status["state"], status["points"], len(status["connections"])), ("listening", 2, 1)
        )

    def test_a_new_point_is_served_only_with_its_value(self):
        """A point added to a running gateway is left out of interrogations until its
        device's latest value has been read: never served as a placeholder (NT|IV)."""
        master = self.connect()
        self.redis.call("hset", keys.DEVICE_VALUES % "d1", "t1:b", json.dumps(sample("t1", "b", 1)))
        store = self.service.store
        reads: list[tuple[Deferred, Any]] = []
        real = store.device_values

        def slow(devices):
            held: Deferred = Deferred()
            reads.append((held, real(devices)))  # answered, but handed on later
            return held

        self.patch(store, "device_values", slow)
        self.config.put_point(
            {
                "gateway_id": "g",
                "ioa": 11,
                "type_id": 1,
                "device_id": "d1",
                "term_id": "t1",
                "item_id": "b",
            }  # fmt: skip
        )
        self.assertEqual(len(reads), 1)
        self.assertNotIn(11, self.service.gateways["g"].station_points())
        self.assertEqual(self.interrogate(master), {10: (5.5, 0)})
        held, answer = reads[0]
        answer.chainDeferred(held)
        self.reactor.flush()
        self.assertIn(11, self.service.gateways["g"].station_points())
        self.assertEqual(self.interrogate(master), {10: (5.5, 0), 11: (True, 0)})

    def test_published_status_is_taken_at_once(self):
        """A status the collector publishes (at each state change) counts before the
        next state read: the points go NT, a command would be refused here."""
        master = self.connect()
        self.interrogate(master)
        del master.asdus[:]
        server = self.service.gateways["g"]
        channel = keys.DEVICE_STATUS_CHANNEL % "d1"
        self.redis.call("publish", channel, json.dumps({"device_id": "d1", "state": "offline"}))
        self.reactor.flush()
        (event,) = master.events()
        self.assertEqual(event.qualities[0] & NOT_TOPICAL, NOT_TOPICAL)
        self.assertFalse(server._online["d1"])  # what can_command refuses on
        self.redis.call("publish", channel, json.dumps({"device_id": "d1", "state": "online"}))
        self.assertTrue(server._online["d1"])

    def test_gateway_changes_restart_and_delete_closes(self):
        master = self.connect()
        new_port = PORT + 1
        self.config.put_gateway({"id": "g", "listen": f"tcp:{new_port}:interface=127.0.0.1"})
        self.reactor.flush()
        self.assertTrue(master.lost.called)  # the old listener and its connections are gone
        self.assertNotIn(PORT, self.reactor.listening)
        self.assertEqual(self.service.gateways["g"].port.getHost().port, new_port)
        self.port = new_port
        master = self.connect()
        self.assertEqual(self.interrogate(master), {10: (5.5, 0)})
        self.tick()
        self.assertEqual(self.stored_status("g")["state"], "listening")
        self.config.delete_gateway("g")
        self.reactor.flush()
        self.assertTrue(master.lost.called)
        self.assertNotIn("g", self.service.gateways)
        self.assertEqual(self.reactor.listening, {})
        self.tick()
        self.assertIsNone(self.stored_status("g"))

    def test_allowed_clients_and_busy_port(self):
        self.config.put_gateway({"id": "g", "allowed_clients": ["10.1.2.3"]})
        self.assertEqual(self.service.gateways["g"].gateway.allowed_clients, ("10.1.2.3",))
        master = self.connect(start=False)
        self.assertTrue(master.lost.called)  # refused: closed at once
        self.assertEqual(self.service.gateways["g"].refused_connections, 1)
        # a second gateway on the same port cannot listen: it says why, in its status
        self.config.put_gateway(
            {"id": "h", "protocol": "iec104", "listen": f"tcp:{PORT}:interface=127.0.0.1"}
        )
        self.assertIn("h", self.service.errors)
        self.tick()
        status = self.stored_status("h")
        self.assertEqual(status["state"], "error")
        self.assertIn("cannot listen", status["error"])

    def test_store_failure_postpones_the_reconcile_to_the_tick(self):
        """A change met while Redis cannot answer is caught up at the next tick."""
        self.redis.fail_next("smembers")  # the reconcile's first read
        self.config.put_gateway({"id": "g", "listen": f"tcp:{PORT + 1}:interface=127.0.0.1"})
        self.assertEqual(self.service.gateways["g"].port.getHost().port, PORT)  # postponed
        self.tick()
        self.assertEqual(self.service.gateways["g"].port.getHost().port, PORT + 1)


class CommandTests(GatewayHarness, SynchronousTestCase):
    """A master's command through the gateway: device_ctrl, the real `ReplyListener` (on an
    in-memory subscription), a collector played on `MemoryRedis`."""

    def setUp(self):
        self.answer = {"ok": True, "outcome": "confirmed", "message": "done"}
        self.requests = []
        GatewayHarness.setUp(self)
        self.config.put_point(
            {
                "gateway_id": "g",
                "ioa": 12,
                "type_id": 1,
                "device_id": "d1",
                "term_id": "t1",
                "item_id": "b",
                "command": True,
            }  # fmt: skip
        )
        device = {"id": "d1", "protocol": "modbus", "ip": "127.0.0.1"}
        self.successResultOf(store_point(self.redis, "d1", "t1", "b", device=device))
        self.redis.listeners.append(self.collector)

    def make_service(self):
        self.replies = ReplyListener(self.reactor, subscribe=memory_subscription(self.redis))
        self.replies.startService()
        self.addCleanup(self.replies.stopService)
        return GatewayService(
            self.redis,
            self.reactor,
            replies=self.replies,
            subscribe=memory_subscription(self.redis),
        )

    def collector(self, channel, message):
        if channel != keys.DEVICE_CTRL:
            return
        request = json.loads(message)
        self.requests.append(request)
        if self.answer is not None:
            body = json.dumps({"request_id": request["request_id"], **self.answer})
            self.reactor.callLater(0.05, self.redis.call, "publish", request["reply_to"], body)

    def command(self, master, value=True):
        del master.asdus[:]
        master.send_asdu(Asdu(45, 6, 1, [12], [value], [0]))  # C_SC_NA_1
        self.reactor.flush()

    def confirmations(self, master):
        return [a for a in master.asdus if a.cause == 7]

    def test_confirmed_command_and_audit(self):
        master = self.connect()
        self.command(master)
        self.assertEqual(self.confirmations(master), [])  # waits for the collector
        self.reactor.wait(0.1)
        (reply,) = self.confirmations(master)
        self.assertFalse(reply.negative)
        (request,) = self.requests
        self.assertEqual(
            (request["device_id"], request["term_id"], request["item_id"], request["value"]),
            ("d1", "t1", "b", 1),
        )
        ((_, entry),) = self.redis.data[keys.CTRL_LOG]
        self.assertEqual((entry["token_id"], entry["outcome"]), ("gateway:g", "confirmed"))

    def test_silence_times_out_negative(self):
        self.answer = None
        master = self.connect()
        self.command(master)
        self.reactor.wait(9.9)
        self.assertEqual(self.confirmations(master), [])
        self.reactor.wait(0.2)  # the gateway's command_timeout: 10 s
        (reply,) = self.confirmations(master)
        self.assertTrue(reply.negative)
        self.assertEqual(self.redis.data[keys.CTRL_LOG][-1][1]["outcome"], "timeout")

    def test_offline_device_refused_at_once(self):
        master = self.connect()
        self.redis.call(
            "publish",
            keys.DEVICE_STATUS_CHANNEL % "d1",
            json.dumps({"device_id": "d1", "state": "offline"}),
        )
        self.command(master)
        (reply,) = self.confirmations(master)
        self.assertTrue(reply.negative)
        self.assertEqual(self.requests, [])  # nothing went down


class RedundancyTests(GatewayHarness, SynchronousTestCase):
    """Two connections of one redundancy group (both masters are 127.0.0.1 here)."""

    def setUp(self):
        GatewayHarness.setUp(self)
        self.config.put_gateway(
            {"id": "g", "redundancy_groups": [["127.0.0.1"]], "event_queue": 10, "t3": 1}
        )
        self.assertTrue(self.service.gateways["g"].gateway.redundancy_groups)

    def values(self, master):
        return [v for a in master.events() for v in a.values]

    def test_one_active_connection_and_retention(self):
        first = self.connect()
        second = self.connect(start=False)
        self.publish(sample("t1", "a", 1.0, at="2026-12-03T10:00:01.000+00:00"))
        self.assertEqual(self.values(first), [1.0])
        # STARTDT on the second: it becomes the active one, the first is kept stopped
        second.start_data_transfer()
        self.reactor.flush()
        self.assertIs(second.state, LinkState.STARTED)
        self.publish(sample("t1", "a", 2.0, at="2026-12-03T10:00:02.000+00:00"))
        self.assertEqual(self.values(second), [2.0])
        self.assertEqual(self.values(first), [1.0])
        # the stopped connection stays up: the station tests it (t3 = 1 s)
        frames = first.counters.frames_received
        self.reactor.wait(1.5)
        self.assertGreater(first.counters.frames_received, frames)
        self.assertFalse(first.lost.called)
        # no active connection: events are kept (bounded: the 10 newest) ...
        second.stop_data_transfer()
        self.reactor.flush()
        self.assertIs(second.state, LinkState.STOPPED)
        for i in range(15):
            self.publish(sample("t1", "a", 10.0 + i, at=f"2026-12-03T10:01:{i:02d}.000+00:00"))
        group = self.service.gateways["g"].groups["group 1"]
        self.assertEqual((len(group.queue), group.queue.dropped), (10, 5))
        # ... and sent on the next STARTDT, on whichever connection of the group
        first.start_data_transfer()
        self.reactor.flush()
        self.assertEqual(self.values(first), [1.0, *[10.0 + i for i in range(5, 15)]])
        self.assertEqual(self.values(second), [2.0])
        self.tick()
        (group_status,) = self.stored_status("g")["groups"]
        self.assertEqual(group_status["group"], "group 1")
        self.assertEqual(len(group_status["connections"]), 2)
        self.assertEqual(group_status["events_dropped"], 5)


class _FlakyStore:
    """GatewayStore double: fails at once (as RedisClient does while Redis is away)."""

    def __init__(self):
        self.up = False
        self.reads = 0

    def gateway_ids(self):
        self.reads += 1
        if not self.up:
            return fail(StoreUnavailable("Redis is not reachable"))
        return succeed([])


class ReconcileOrderingTests(SynchronousTestCase):
    """Redis absent when the subscription comes up: the pass fails synchronously."""

    def test_synchronous_failure_does_not_wedge_and_is_retried(self):
        redis = MemoryRedis()
        service = GatewayService(redis, Clock(), subscribe=memory_subscription(redis))
        service.store = store = _FlakyStore()
        service.running = True
        service.reconcile()  # fails at once, inside the call
        self.assertIsNone(service._reconciling)  # nothing is left "in progress"
        store.up = True
        service.reconcile({"g"})  # a change message: runs now
        self.assertEqual(store.reads, 2)
        store.up = False
        service.reconcile()
        store.up = True
        self.successResultOf(service._tick())  # the tick retries the failed pass
        self.assertEqual(store.reads, 4)
        self.assertFalse(service._retry)

    def test_subscription_up_before_the_pool_waits_for_the_pool(self):
        """At start the subscription may be up before the pool (CI saw "gateway reconcile
        postponed: Redis is not reachable" on a normal embedded start): the catch-up pass
        waits for the pool instead of failing and warning."""
        redis = MemoryRedis()
        redis.down()
        service = GatewayService(redis, Clock(), subscribe=memory_subscription(redis))
        service.store = store = _FlakyStore()
        service.store.when_connected = redis.when_connected
        service.running = True
        service._subscribed()  # the subscription is up, the pool is not
        self.assertEqual(store.reads, 0)
        self.assertFalse(service._retry)
        store.up = True
        redis.up()  # the pool connects: the pass runs now, once
        self.assertEqual(store.reads, 1)
        self.assertFalse(service._retry)
