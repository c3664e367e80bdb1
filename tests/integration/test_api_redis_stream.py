"""GET /api/v1/stream and GET /metrics over real HTTP, against a real (private) redis-server.

Samples are written by the real ingest path (its Lua script publishes them with their
entry ids), alarm events by the limits plugin's own script; statuses are published on
CHANNEL:DEVICE_STATUS:{id} by the test, as the collector does on every status write.
"""

import json
import re
import socket

from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks, maybeDeferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.task import Clock, deferLater
from twisted.trial.unittest import TestCase
from twisted.web.client import HTTPConnectionPool

from pydatacoll.api import stream, stream_events
from pydatacoll.api.app import ApiApp
from pydatacoll.api.stream import StreamHub
from pydatacoll.config import load_settings
from pydatacoll.metrics import ProcessMetrics
from pydatacoll.model import Sample
from pydatacoll.store import alarms as alarm_store
from pydatacoll.store import keys
from pydatacoll.store.config import ConfigStore
from pydatacoll.store.ingest import RedisIngest
from pydatacoll.store.redis import RedisClient
from pydatacoll.testing.fixtures import CREATE_ALL
from pydatacoll.testing.redis import PrivateRedis, RedisView, free_port, shared_redis
from pydatacoll.testing.sse import SseProtocol
from tests.api.support import http_call

ENTRY_ID = r"\d+-\d+"
STATUS = {
    "device_id": "1",
    "protocol": "iec104",
    "state": "online",
    "since": "2026-12-03T10:00:00+00:00",
    "counters": {"timeouts": 0},
}


class StreamTests(TestCase):
    token = None
    protect_reads = False

    @inlineCallbacks
    def setUp(self):
        server = shared_redis()
        self.settings = load_settings(
            None,
            {
                "redis": server.url,
                "api_token": self.token,
                "protect_reads": str(self.protect_reads).lower(),
            },
        )
        self.client = RedisClient(self.settings.redis, timeout=5, pool_size=2)
        self.client.startService()
        self.addCleanup(self.client.stopService)
        self.ingest_client = self.client.dedicated()
        self.ingest_client.startService()
        self.addCleanup(self.ingest_client.stopService)
        yield self.until(lambda: self.client.connected and self.ingest_client.connected)
        #: Writes and looks behind the API's back, without blocking the reactor.
        self.sync = RedisView(self.client)
        yield self.sync.flushall()
        self.ingest = RedisIngest(self.ingest_client, reactor, 1000, 100000)
        self.ingest.startService()
        self.addCleanup(self.ingest.stopService)
        self.clock = Clock()
        self.hub = StreamHub(reactor, self.client, max_clients=4, clock=self.clock)
        self.hub.startService()
        self.addCleanup(self.hub.stopService)
        self.metrics = ProcessMetrics(reactor)
        self.metrics.watch_stream(self.hub)
        self.api = ApiApp(
            ConfigStore(self.client), self.settings, stream_hub=self.hub, metrics=self.metrics
        )
        self.port = reactor.listenTCP(0, self.api.site(), interface="127.0.0.1")
        self.addCleanup(self.port.stopListening)
        self.base = f"http://127.0.0.1:{self.port.getHost().port}"
        self.pool = HTTPConnectionPool(reactor, persistent=False)
        self.addCleanup(self.pool.closeCachedConnections)
        self.headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        for method, path, body in CREATE_ALL:
            status, _ = yield self.call(method, path, body)
            self.assertEqual(status, 201)
        yield self.call(
            "POST",
            "/api/v1/devices",
            {"id": "2", "name": "d2", "protocol": "modbus", "ip": "127.0.0.1"},
        )
        yield self.call(
            "POST", "/api/v1/terms", {"id": "20", "name": "t2", "device_id": "2", "address": 1}
        )
        yield self.call("POST", "/api/v1/items", {"id": "2000", "name": "i2"})
        status, _ = yield self.call(
            "POST",
            "/api/v1/terms/20/items",
            {"term_id": "20", "item_id": "2000", "protocol_code": 1},
        )
        self.assertEqual(status, 201)

    def call(self, method, path, body=None):
        headers = {k.encode(): [v.encode()] for k, v in self.headers.items()}
        return http_call(self.base + path, method, self.pool, body, headers=headers)

    @inlineCallbacks
    def until(self, predicate, timeout=20.0, what="condition"):
        """Poll ``predicate`` (its answer, or a Deferred of it) until it holds."""
        for _ in range(int(timeout / 0.01)):
            if (yield maybeDeferred(predicate)):
                return
            yield deferLater(reactor, 0.01, lambda: None)
        raise AssertionError(f"timed out waiting for {what}")

    @inlineCallbacks
    def open(self, path="/api/v1/stream", headers=None, ready=True):
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", self.port.getHost().port)
        client = yield connectProtocol(
            endpoint, SseProtocol(path, {**self.headers, **(headers or {})})
        )
        self.addCleanup(lambda: client.close() if client.transport.connected else None)
        if ready:  # the head and the catch-up (its "retry:" line) have come
            yield self.until(
                lambda: any("retry" in e for e in client.parser.events), what="stream open"
            )
        return client

    def store(self, *samples):
        self.ingest.samples_received(
            [
                Sample(d, t, i, v, receive_time=1796290000.5 + n)
                for n, (d, t, i, v) in enumerate(samples)
            ]
        )

    @inlineCallbacks
    def alarm(self, kind="high", device="1", term="10", item="1000"):
        body = {
            "event": "raise",
            "device_id": device,
            "term_id": term,
            "item_id": item,
            "kind": kind,
            "value": 231,
            "limit": 230,
            "time": "2026-12-03T10:00:00+00:00",
            "message": "above 230",
        }
        field = f"{device}:{term}:{item}:{kind}"
        yield self.sync.eval(
            alarm_store.SCRIPT,
            2,
            keys.ALARM_LOG,
            keys.ALARMS,
            "1000",
            json.dumps(body),
            "raise",
            field,
            keys.ALARM,
        )
        return body

    @inlineCallbacks
    def test_samples_statuses_and_alarms(self):
        yield self.sync.hset(keys.DEVICE_STATUS % "1", "status", json.dumps(STATUS))
        client = yield self.open()
        parser = client.parser
        self.assertEqual(parser.status, 200)
        self.assertEqual(parser.headers["content-type"], "text/event-stream")
        # the current status of every device comes first (device 2 has none yet)
        self.assertEqual([e["data"] for e in parser.of_kind("status")], [STATUS])
        self.store(("1", "10", "1000", 225.5))
        yield self.until(lambda: parser.of_kind("sample"), what="a sample")
        [sample] = parser.of_kind("sample")
        self.assertEqual(
            sample["data"],
            {
                "device_id": "1",
                "term_id": "10",
                "item_id": "1000",
                "value": 225.5,
                "quality": "good",
                "time": "2026-12-03T09:26:40.500+00:00",
            },
        )
        [(entry_id, _)] = yield self.sync.xrange(keys.POINT_DATA % ("1", "10", "1000"))
        self.assertRegex(sample["id"], f"^{entry_id},{ENTRY_ID}$")
        changed = dict(STATUS, state="offline")
        yield self.sync.publish(keys.DEVICE_STATUS_CHANNEL % "1", json.dumps(changed))
        yield self.until(lambda: len(parser.of_kind("status")) == 2, what="a status event")
        self.assertEqual(parser.of_kind("status")[1]["data"], changed)
        body = yield self.alarm()
        yield self.until(lambda: parser.of_kind("alarm"), what="an alarm event")
        [alarm] = parser.of_kind("alarm")
        [(log_id, _)] = yield self.sync.xrange(keys.ALARM_LOG)
        self.assertEqual(alarm["data"], {**body, "id": log_id})
        self.assertEqual(alarm["id"], f"{entry_id},{log_id}")
        # the history route answers the same event, with the same id
        status, history = yield self.call("GET", "/api/v1/alarms/history")
        self.assertEqual(history, [alarm["data"]])

    @inlineCallbacks
    def test_filters(self):
        by_device = yield self.open("/api/v1/stream?device_id=1")
        by_point = yield self.open("/api/v1/stream?point=2:20:2000")
        everything = yield self.open()
        self.store(("1", "10", "1000", 1.0), ("2", "20", "2000", 2.0))
        yield self.until(lambda: len(everything.parser.of_kind("sample")) == 2, what="samples")
        yield self.until(lambda: by_point.parser.of_kind("sample"), what="the point's sample")
        self.assertEqual([e["data"]["value"] for e in by_device.parser.of_kind("sample")], [1.0])
        self.assertEqual([e["data"]["value"] for e in by_point.parser.of_kind("sample")], [2.0])
        yield self.sync.publish(keys.DEVICE_STATUS_CHANNEL % "2", json.dumps({"state": "online"}))
        yield self.alarm(device="2", term="20", item="2000")
        yield self.until(lambda: by_point.parser.of_kind("alarm"), what="the alarm")
        yield self.until(lambda: len(everything.parser.of_kind("status")) == 1, what="status")
        self.assertEqual(
            by_point.parser.of_kind("status")[0]["data"], {"state": "online", "device_id": "2"}
        )
        self.assertEqual(by_device.parser.of_kind("status") + by_device.parser.of_kind("alarm"), [])

    @inlineCallbacks
    def test_resume_with_last_event_id(self):
        client = yield self.open("/api/v1/stream?device_id=1")
        self.store(("1", "10", "1000", 1.0))
        yield self.until(lambda: client.parser.of_kind("sample"), what="the first sample")
        last = client.parser.events[-1]["id"]
        yield client.close()
        yield self.until(lambda: not self.hub.clients, what="the client forgotten")
        yield deferLater(reactor, 0.01, lambda: None)  # a later millisecond
        self.store(("1", "10", "1000", 2.0), ("2", "20", "2000", 9.0))
        self.store(("1", "10", "1000", 3.0))
        body = yield self.alarm()
        yield self.until(
            lambda: self.sync.xlen(keys.POINT_DATA % ("1", "10", "1000")).addCallback(
                lambda length: length == 3
            )
        )
        again = yield self.open("/api/v1/stream?device_id=1", {"Last-Event-ID": last})
        values = [e["data"]["value"] for e in again.parser.of_kind("sample")]
        # the missed ones in order, not device 2's; 1.0 again: it was stored in the
        # millisecond of the position (at least once)
        self.assertEqual(values, [1.0, 2.0, 3.0])
        [alarm] = again.parser.of_kind("alarm")
        self.assertEqual(alarm["data"]["message"], body["message"])
        # resuming from the alarm's id sends neither it nor the samples before it again
        third = yield self.open(
            "/api/v1/stream?device_id=1", {"Last-Event-ID": again.parser.events[-1]["id"]}
        )
        self.assertEqual(third.parser.of_kind("alarm"), [])
        # at most the samples of the position's millisecond again
        self.assertLessEqual(
            {e["data"]["value"] for e in third.parser.of_kind("sample")}, {2.0, 3.0}
        )
        # a plain stream entry id is a sample position
        [(first_id, _), *_] = yield self.sync.xrange(keys.POINT_DATA % ("1", "10", "1000"))
        plain = yield self.open("/api/v1/stream?point=1:10:1000", {"Last-Event-ID": first_id})
        self.assertEqual(
            [e["data"]["value"] for e in plain.parser.of_kind("sample")], [1.0, 2.0, 3.0]
        )

    @inlineCallbacks
    def test_heartbeat(self):
        client = yield self.open()
        self.clock.advance(stream.HEARTBEAT)
        yield self.until(lambda: {"comment": "hb"} in client.parser.events, what="a heartbeat")

    @inlineCallbacks
    def test_a_client_that_does_not_read_is_dropped(self):
        reader = yield self.open("/api/v1/stream?point=1:10:1000")
        idle = yield self.open("/api/v1/stream?device_id=2")
        idle.pause_reading()
        idle.transport.getHandle().setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        longest = []
        original = stream_events.StreamClient.deliver

        def deliver(client, chunk):
            original(client, chunk)
            longest.append(len(client.queue))

        self.patch(stream_events.StreamClient, "deliver", deliver)
        deadline = reactor.seconds() + 90
        while not self.hub.dropped and reactor.seconds() < deadline:
            if len(self.ingest.buffer) < 10000:  # as fast as Redis takes them
                self.store(*[("2", "20", "2000", float(n)) for n in range(2000)])
            yield deferLater(reactor, 0.005, lambda: None)
        idle.transport.resumeProducing()  # read again: the server has closed it
        yield idle.closed
        self.assertEqual(self.hub.dropped, 1)
        self.assertEqual(len(self.hub.clients), 1)
        self.assertLessEqual(max(longest), stream.QUEUE_EVENTS)
        # the client that reads is still served
        count = len(reader.parser.of_kind("sample"))
        self.store(("1", "10", "1000", -1.0))
        yield self.until(lambda: len(reader.parser.of_kind("sample")) > count, what="a sample")

    @inlineCallbacks
    def test_a_client_that_leaves_is_forgotten(self):
        client = yield self.open()
        self.assertEqual(len(self.hub.clients), 1)
        yield client.close()
        yield self.until(lambda: not self.hub.clients, what="the client forgotten")
        self.assertIsNotNone(self.hub.subscriber)
        self.clock.advance(stream.IDLE_UNSUBSCRIBE)
        self.assertIsNone(self.hub.subscriber)  # the subscription closes when idle
        again = yield self.open()  # and opens again for the next client
        self.store(("1", "10", "1000", 5.0))
        yield self.until(lambda: again.parser.of_kind("sample"), what="a sample")

    @inlineCallbacks
    def test_bad_requests(self):
        for path, headers, field in (
            ("/api/v1/stream?point=1:10", {}, "point"),
            ("/api/v1/stream?device_id=a*b", {}, "device_id"),
            ("/api/v1/stream", {"Last-Event-ID": "yesterday"}, "Last-Event-ID"),
        ):
            client = yield self.open(path, headers, ready=False)
            yield client.closed
            self.assertEqual((client.parser.status, client.parser.error()["field"]), (400, field))
        for _ in range(self.hub.max_clients):
            yield self.open()
        client = yield self.open(ready=False)
        yield self.until(lambda: client.parser.status is not None)
        self.assertEqual(client.parser.status, 503)

    @inlineCallbacks
    def test_metrics(self):
        yield self.open()
        yield self.call("GET", "/api/v1/devices/1")
        yield self.call("GET", "/api/v1/devices/2")
        yield self.call("GET", "/api/v1/terms/20/items/2000")
        yield self.call("GET", "/no/such/path/42")
        status, _ = yield self.call(
            "POST",
            "/api/v1/device_ctrl",
            {"device_id": "1", "term_id": "10", "item_id": "1000", "value": 1},
        )
        self.assertEqual(status, 503)
        status, text = yield self.call("GET", "/metrics")
        self.assertEqual(status, 200)
        families = {f.name: f for f in text_string_to_metric_families(text)}
        self.assertEqual(families["pydatacoll_stream_clients"].samples[0].value, 1)
        routes = {
            (s.labels["method"], s.labels["route"], s.labels["code"]): s.value
            for s in families["pydatacoll_http_request_duration_seconds"].samples
            if s.name.endswith("_count")
        }
        self.assertEqual(routes[("GET", "/api/v1/devices/{entity_id}", "200")], 2)
        self.assertEqual(routes[("GET", "/api/v1/terms/{term_id}/items/{item_id}", "200")], 1)
        self.assertEqual(routes[("GET", "unmatched", "404")], 1)
        self.assertEqual(routes[("POST", "/api/v1/device_ctrl", "503")], 1)
        self.assertFalse([r for r in routes if re.search(r"/(1|2|42)(/|$)", r[1])])
        self.assertFalse([r for r in routes if r[1] == "/api/v1/stream"])  # streams are not timed
        [command] = families["pydatacoll_commands"].samples
        self.assertEqual((command.labels, command.value), ({"outcome": "unavailable"}, 1))


class ProtectedStreamTests(StreamTests):
    token = "s3cret"
    protect_reads = True

    @inlineCallbacks
    def test_the_token_is_required(self):
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", self.port.getHost().port)
        for path in ("/api/v1/stream", "/metrics"):
            client = yield connectProtocol(endpoint, SseProtocol(path))
            yield client.closed
            self.assertEqual(
                (client.parser.status, client.parser.error()["error"]), (401, "unauthorized")
            )


class RedisOutageTests(TestCase):
    """Redis absent when a stream is asked for, then lost and back under open streams."""

    @inlineCallbacks
    def test_redis_absent_is_503(self):
        settings = load_settings(
            None, {"redis": f"redis://127.0.0.1:{free_port()}/0", "redis_timeout": "0.5"}
        )
        client = RedisClient(settings.redis, timeout=0.5, pool_size=1)
        client.startService()
        self.addCleanup(client.stopService)
        hub = StreamHub(reactor, client)
        hub.startService()
        self.addCleanup(hub.stopService)
        api = ApiApp(ConfigStore(client), settings, stream_hub=hub)
        port = reactor.listenTCP(0, api.site(), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        pool = HTTPConnectionPool(reactor, persistent=False)
        self.addCleanup(pool.closeCachedConnections)
        status, error = yield http_call(
            f"http://127.0.0.1:{port.getHost().port}/api/v1/stream", "GET", pool
        )
        self.assertEqual((status, error["error"]), (503, "redis_unavailable"))
        self.assertEqual((hub.clients, hub._waiting), (set(), []))  # nothing kept of it

    @inlineCallbacks
    def test_streams_catch_up_after_redis_comes_back(self):
        server = PrivateRedis(persistent=True)
        self.addCleanup(server.stop)
        settings = load_settings(None, {"redis": server.url})
        client = RedisClient(settings.redis, timeout=2, pool_size=2)
        client.startService()
        self.addCleanup(client.stopService)
        ingest_client = client.dedicated()
        ingest_client.startService()
        self.addCleanup(ingest_client.stopService)
        until = StreamTests.until.__get__(self)
        yield until(lambda: client.connected and ingest_client.connected)
        sync = RedisView(client)
        ingest = RedisIngest(ingest_client, reactor, 1000, 100000)
        ingest.startService()
        self.addCleanup(ingest.stopService)
        hub = StreamHub(reactor, client)
        hub.startService()
        self.addCleanup(hub.stopService)
        api = ApiApp(ConfigStore(client), settings, stream_hub=hub)
        port = reactor.listenTCP(0, api.site(), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        base = f"http://127.0.0.1:{port.getHost().port}"
        pool = HTTPConnectionPool(reactor, persistent=False)
        self.addCleanup(pool.closeCachedConnections)
        for method, path, body in CREATE_ALL:
            status, _ = yield http_call(base + path, method, pool, body)
            self.assertEqual(status, 201)
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port)
        stream_client = yield connectProtocol(endpoint, SseProtocol("/api/v1/stream?device_id=1"))
        self.addCleanup(
            lambda: stream_client.close() if stream_client.transport.connected else None
        )
        parser = stream_client.parser
        # the head and the catch-up (its "retry:" line) have come: the stream is
        # subscribed and positioned, so the first sample cannot go out before it
        yield until(lambda: any("retry" in e for e in parser.events), what="stream open")

        def values():
            return [e["data"]["value"] for e in parser.of_kind("sample")]

        # The client is served (the hub subscribed) before the first sample is published.
        yield until(lambda: len(hub.clients) == 1, what="the stream client")
        ingest.samples_received([Sample("1", "10", "1000", 1.0, receive_time=1.0)])
        yield until(lambda: values() == [1.0], what="the first sample")
        # stored and not published (as if published while the subscription was down):
        # only the catch-up after the reconnection can bring it
        yield sync.xadd(
            keys.POINT_DATA % ("1", "10", "1000"),
            {"sample": json.dumps({"value": 2.0, "quality": "good", "receive_time": None})},
        )
        server.kill()
        yield until(lambda: not hub.subscriber.subscribed, what="the subscription lost")
        ingest.samples_received([Sample("1", "10", "1000", 2.5, receive_time=2.5)])  # buffered
        server.restart()
        yield until(lambda: {2.0, 2.5} <= set(values()), timeout=60, what="the outage's samples")
        ingest.samples_received([Sample("1", "10", "1000", 3.0, receive_time=3.0)])
        yield until(lambda: 3.0 in values(), timeout=30, what="live samples again")
        # in order, each once; 1.0 may come again (the position's millisecond)
        self.assertEqual([v for v in values() if v != 1.0], [2.0, 2.5, 3.0])
        self.assertEqual(len(hub.clients), 1)
