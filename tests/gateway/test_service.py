"""The gateway service in-process against a private Redis, with our own master over TCP.

The collector is played by the test: it writes latest values and device states to
Redis and publishes sample batches, as the ingest path and the device manager do.
"""

import json

import redis as redis_py
from twisted.internet import defer, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.task import Clock, deferLater
from twisted.trial.unittest import SynchronousTestCase, TestCase

from pydatacoll.api.app import ApiApp
from pydatacoll.config import load_settings
from pydatacoll.gateway.service import GatewayService
from pydatacoll.protocols.iec104.asdu import Asdu
from pydatacoll.protocols.iec104.link import Iec104Link, LinkParams, LinkState
from pydatacoll.protocols.iec104.station import NOT_TOPICAL
from pydatacoll.store import keys
from pydatacoll.store.config import ConfigStore
from pydatacoll.store.redis import RedisClient
from pydatacoll.testing.redis import free_port, shared_redis
from tests.api.test_app import http_call


class Master(Iec104Link):
    """A master of the tests: records ASDUs and the loss of the link."""

    def __init__(self, start=True):
        super().__init__(reactor, LinkParams(w=1))  # acknowledges every I-frame at once
        self.asdus = []
        self.lost = defer.Deferred()
        self.start = start

    def connectionMade(self):
        super().connectionMade()
        if self.start:
            self.start_data_transfer()

    def asdu_received(self, asdu):
        self.asdus.append(asdu)

    def link_lost(self, reason):
        self.lost.callback(None)


@defer.inlineCallbacks
def until(predicate, timeout=5.0):
    for _ in range(int(timeout / 0.02)):
        result = predicate()
        if result:
            return result
        yield deferLater(reactor, 0.02, lambda: None)
    raise AssertionError(f"{predicate} stayed false")


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


class GatewayHarness:
    """A gateway "g" (IOA 10 <- d1:t1:a) served by an in-process GatewayService."""

    @defer.inlineCallbacks
    def setUp(self):
        server = shared_redis()
        self.sync = redis_py.Redis(port=server.port, decode_responses=True)
        self.addCleanup(self.sync.close)
        self.sync.flushall()
        settings = load_settings(None, {"redis": server.url})
        self.client = RedisClient(settings.redis, timeout=5, pool_size=2)
        self.client.startService()
        self.addCleanup(self.client.stopService)
        yield until(lambda: self.client.connected)
        api = ApiApp(ConfigStore(self.client), settings)
        port = reactor.listenTCP(0, api.site(), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.base = f"http://127.0.0.1:{port.getHost().port}"
        from twisted.web.client import HTTPConnectionPool

        self.pool = HTTPConnectionPool(reactor, persistent=False)
        # the device, its points and their latest values, as the collector leaves them
        for method, path, body in [
            ("POST", "/api/v1/devices", {"id": "d1", "protocol": "modbus", "ip": "127.0.0.1"}),
            ("POST", "/api/v1/terms", {"id": "t1", "device_id": "d1"}),
            ("POST", "/api/v1/items", {"id": "a"}),
            ("POST", "/api/v1/items", {"id": "b"}),
            ("POST", "/api/v1/terms/t1/items", {"item_id": "a", "protocol_code": 0}),
            ("POST", "/api/v1/terms/t1/items", {"item_id": "b", "protocol_code": 1}),
        ]:
            yield self.rest(method, path, body)
        self.sync.hset(keys.DEVICE_VALUES % "d1", "t1:a", json.dumps(sample("t1", "a", 5.5)))
        self.set_state("online")
        self.port = free_port()
        yield self.rest(
            "POST",
            "/api/v1/gateways",
            {"id": "g", "protocol": "iec104", "listen": f"tcp:{self.port}:interface=127.0.0.1"},
        )
        yield self.rest(
            "POST",
            "/api/v1/gateways/g/points",
            {"ioa": 10, "type_id": 13, "device_id": "d1", "term_id": "t1", "item_id": "a"},
        )
        self.service = GatewayService(self.client, reactor)
        self.service.startService()
        self.addCleanup(self.service.stopService)
        yield until(lambda: "g" in self.service.gateways)

    @defer.inlineCallbacks
    def rest(self, method, path, body=None):
        status, reply = yield http_call(self.base + path, method, self.pool, body)
        self.assertIn(status, (200, 201, 204), reply)
        return reply

    def set_state(self, state):
        self.sync.hset(keys.DEVICE_STATUS % "d1", "status", json.dumps({"state": state}))

    def publish(self, *samples):
        self.sync.publish(
            keys.DEVICE_SAMPLES % "d1", json.dumps({"device_id": "d1", "samples": list(samples)})
        )

    @defer.inlineCallbacks
    def connect(self, start=True):
        master = Master(start)
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


class GatewayServiceTests(GatewayHarness, TestCase):
    @defer.inlineCallbacks
    def test_values_changes_quality_and_live_points(self):
        master = yield self.connect()
        self.assertEqual((yield self.interrogate(master)), {10: (5.5, 0)})
        # a new sample: spontaneous, CP56; the same value again: nothing
        self.publish(sample("t1", "a", 6.5, at="2026-12-03T10:00:01.000+00:00"))
        events = yield until(lambda: [a for a in master.asdus if a.cause == 3])
        self.assertEqual((events[0].type_id, list(events[0].values)), (36, [6.5]))
        self.publish(sample("t1", "a", 6.5, at="2026-12-03T10:00:02.000+00:00"))
        # an older sample (arriving late) does not overwrite the newer one
        self.publish(sample("t1", "a", 1.0, at="2026-12-03T09:00:00.000+00:00"))
        self.publish(
            sample("t1", "a", 7.5, "questionable", ["SB"], "2026-12-03T10:00:03.000+00:00")
        )
        yield until(lambda: len([a for a in master.asdus if a.cause == 3]) == 2)
        second = [a for a in master.asdus if a.cause == 3][1]
        self.assertEqual((list(second.values), second.qualities[0]), ([7.5], 0x20))
        # the device goes offline: NT|IV at the next state read
        self.set_state("offline")
        yield self.service._tick()
        third = yield until(lambda: [a for a in master.asdus if a.cause == 3][2:])
        self.assertEqual(third[0].qualities[0] & NOT_TOPICAL, NOT_TOPICAL)
        self.set_state("online")
        yield self.service._tick()
        # a point added over REST is served at once, with its latest value; the
        # connection stays up
        self.sync.hset(keys.DEVICE_VALUES % "d1", "t1:b", json.dumps(sample("t1", "b", 1)))
        yield self.rest(
            "POST",
            "/api/v1/gateways/g/points",
            {"ioa": 11, "type_id": 1, "device_id": "d1", "term_id": "t1", "item_id": "b"},
        )
        yield until(lambda: 11 in self.service.gateways["g"].station_points())
        values = yield self.interrogate(master)
        self.assertEqual(values[11], (True, 0))
        self.assertEqual(values[10], (7.5, 0x20))
        self.assertFalse(master.lost.called)
        yield self.service._tick()
        status = json.loads(self.sync.hget(keys.GATEWAY_STATUS, "g"))
        self.assertEqual(
            (status["state"], status["points"], len(status["connections"])), ("listening", 2, 1)
        )

    @defer.inlineCallbacks
    def test_published_status_is_taken_at_once(self):
        """A status the collector publishes (at each state change) counts before the
        next state read: the points go NT, a command would be refused here."""
        master = yield self.connect()
        yield self.interrogate(master)
        del master.asdus[:]
        server = self.service.gateways["g"]
        self.sync.publish(
            keys.DEVICE_STATUS_CHANNEL % "d1", json.dumps({"device_id": "d1", "state": "offline"})
        )
        events = yield until(lambda: [a for a in master.asdus if a.cause == 3])
        self.assertEqual(events[0].qualities[0] & NOT_TOPICAL, NOT_TOPICAL)
        self.assertFalse(server._online["d1"])  # what can_command refuses on
        self.sync.publish(
            keys.DEVICE_STATUS_CHANNEL % "d1", json.dumps({"device_id": "d1", "state": "online"})
        )
        yield until(lambda: server._online["d1"])

    @defer.inlineCallbacks
    def test_gateway_changes_restart_and_delete_closes(self):
        master = yield self.connect()
        new_port = free_port()
        yield self.rest(
            "PUT", "/api/v1/gateways/g", {"listen": f"tcp:{new_port}:interface=127.0.0.1"}
        )
        yield master.lost  # the old listener and its connections are gone

        def moved():
            server = self.service.gateways.get("g")
            return server is not None and server.port.getHost().port == new_port

        yield until(moved)
        self.port = new_port
        master = yield self.connect()
        self.assertEqual((yield self.interrogate(master)), {10: (5.5, 0)})
        yield self.rest("DELETE", "/api/v1/gateways/g")
        yield master.lost
        yield until(lambda: "g" not in self.service.gateways)
        yield self.service._tick()
        self.assertIsNone(self.sync.hget(keys.GATEWAY_STATUS, "g"))

    @defer.inlineCallbacks
    def test_allowed_clients_and_busy_port(self):
        yield self.rest("PUT", "/api/v1/gateways/g", {"allowed_clients": ["10.1.2.3"]})
        # the change replaces the running gateway: it may be absent for a moment
        yield until(
            lambda: (
                "g" in self.service.gateways and self.service.gateways["g"].gateway.allowed_clients
            )
        )
        master = Master()
        yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", self.port), master)
        yield master.lost  # refused: closed at once
        self.assertEqual(self.service.gateways["g"].refused_connections, 1)
        # a second gateway on the same port cannot listen: it says why, in its status
        yield self.rest(
            "POST",
            "/api/v1/gateways",
            {"id": "h", "protocol": "iec104", "listen": f"tcp:{self.port}:interface=127.0.0.1"},
        )
        yield until(lambda: "h" in self.service.errors)
        yield self.service._tick()
        status = json.loads(self.sync.hget(keys.GATEWAY_STATUS, "h"))
        self.assertEqual(status["state"], "error")
        self.assertIn("cannot listen", status["error"])


class RedundancyTests(GatewayHarness, TestCase):
    """Two connections of one redundancy group (both masters are 127.0.0.1 here)."""

    @defer.inlineCallbacks
    def setUp(self):
        yield GatewayHarness.setUp(self)
        yield self.rest(
            "PUT",
            "/api/v1/gateways/g",
            {"redundancy_groups": [["127.0.0.1"]], "event_queue": 10, "t3": 1},
        )

        def grouped():
            server = self.service.gateways.get("g")
            return server is not None and server.gateway.redundancy_groups

        yield until(grouped)

    def values(self, master):
        return [v for a in master.asdus if a.cause == 3 for v in a.values]

    @defer.inlineCallbacks
    def test_one_active_connection_and_retention(self):
        first = yield self.connect()
        second = yield self.connect(start=False)
        self.publish(sample("t1", "a", 1.0, at="2026-12-03T10:00:01.000+00:00"))
        yield until(lambda: self.values(first) == [1.0])
        # STARTDT on the second: it becomes the active one, the first is kept stopped
        second.start_data_transfer()
        yield until(lambda: second.state is LinkState.STARTED)
        self.publish(sample("t1", "a", 2.0, at="2026-12-03T10:00:02.000+00:00"))
        yield until(lambda: self.values(second) == [2.0])
        self.assertEqual(self.values(first), [1.0])
        # the stopped connection stays up: the station tests it (t3 = 1 s)
        frames = first.counters.frames_received
        yield deferLater(reactor, 1.5, lambda: None)
        self.assertGreater(first.counters.frames_received, frames)
        self.assertFalse(first.lost.called)
        # no active connection: events are kept (bounded: the 10 newest) ...
        second.stop_data_transfer()
        yield until(lambda: second.state is LinkState.STOPPED)
        for i in range(15):
            self.publish(sample("t1", "a", 10.0 + i, at=f"2026-12-03T10:01:{i:02d}.000+00:00"))
        group = self.service.gateways["g"].groups["group 1"]
        yield until(lambda: len(group.queue) == 10)
        self.assertEqual(group.queue.dropped, 5)
        # ... and sent on the next STARTDT, on whichever connection of the group
        first.start_data_transfer()
        yield until(lambda: len(self.values(first)) == 11)
        self.assertEqual(self.values(first), [1.0, *[10.0 + i for i in range(5, 15)]])
        self.assertEqual(self.values(second), [2.0])
        yield self.service._tick()
        status = json.loads(self.sync.hget(keys.GATEWAY_STATUS, "g"))
        (group_status,) = status["groups"]
        self.assertEqual(group_status["group"], "group 1")
        self.assertEqual(len(group_status["connections"]), 2)
        self.assertEqual(group_status["events_dropped"], 5)


class _FlakyStore:
    """GatewayStore double: fails at once (as RedisClient does while Redis is away)."""

    def __init__(self):
        self.up = False
        self.reads = 0

    def gateway_ids(self):
        from twisted.internet.defer import fail, succeed

        from pydatacoll.errors import StoreUnavailable

        self.reads += 1
        if not self.up:
            return fail(StoreUnavailable("Redis is not reachable"))
        return succeed([])


class _Redis:
    address = None

    def when_ready(self):
        return defer.succeed(None)


class ReconcileOrderingTests(SynchronousTestCase):
    """Redis absent when the subscription comes up: the pass fails synchronously."""

    def test_synchronous_failure_does_not_wedge_and_is_retried(self):
        service = GatewayService(_Redis(), Clock())
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
