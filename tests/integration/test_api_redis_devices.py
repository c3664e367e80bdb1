"""device_call / device_ctrl, the audit log, live values and status: real HTTP, real Redis
(the reply listener's own connection, resubscription and timing included; tests/api/
test_devices.py runs the API's side of the same in memory).

`FakeCollector` is a test double of the collector process: a txredisapi subscriber on the
request channels that answers on each request's ``reply_to`` with scripted outcomes.
"""

import hashlib
import json
import time

import txredisapi
from twisted.internet import reactor
from twisted.internet.defer import gatherResults, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase
from twisted.web.client import HTTPConnectionPool

from pydatacoll.api.app import ApiApp
from pydatacoll.api.replies import ReplyListener
from pydatacoll.config import load_settings
from pydatacoll.devices.manager import STATUS_INTERVAL
from pydatacoll.model import iso_time
from pydatacoll.store import keys
from pydatacoll.store.config import ConfigStore
from pydatacoll.store.redis import RedisClient
from pydatacoll.testing.fixtures import CREATE_ALL
from pydatacoll.testing.redis import RedisView, shared_redis
from tests.integration.test_api_redis import http_call

POINT = {"device_id": "1", "term_id": "10", "item_id": "1000"}
SAMPLE = {
    "device_id": "1",
    "term_id": "10",
    "item_id": "1000",
    "value": 102.5,
    "quality": "good",
    "flags": [],
    "source_time": None,
    "receive_time": "2026-12-01T06:40:00.123+00:00",
}


class _Sub(txredisapi.SubscriberProtocol):
    def messageReceived(self, pattern, channel, message):  # noqa: N802
        self.factory.owner.received(channel, message)


class _SubFactory(txredisapi.SubscriberFactory):
    protocol = _Sub


class FakeCollector:
    """Answers requests with ``script(channel, request)``: a reply dict, or None (silence)."""

    def __init__(self, port, script):
        self.port = port
        self.script = script
        self.requests = []

    @inlineCallbacks
    def start(self):
        self.publisher = yield txredisapi.Connection(
            "127.0.0.1", self.port, reconnect=False, convertNumbers=False
        )
        factory = _SubFactory()
        factory.owner = self
        factory.reconnect = False
        factory.convertNumbers = False
        factory.startConnecting(TCP4ClientEndpoint(reactor, "127.0.0.1", self.port))
        self.subscriber = yield factory.deferred
        yield self.subscriber.subscribe([keys.DEVICE_CALL, keys.DEVICE_CTRL])

    @inlineCallbacks
    def stop(self):
        yield self.subscriber.disconnect()
        yield self.publisher.disconnect()

    def received(self, channel, message):
        request = json.loads(message)
        self.requests.append((channel, request))
        reply = self.script(channel, request)
        if reply is not None:
            self.answer(request, reply)

    def answer(self, request, reply):
        body = {"request_id": request["request_id"], **reply}
        return self.publisher.publish(request["reply_to"], json.dumps(body))


def confirmed(channel, request):
    sample = dict(SAMPLE, value=request.get("value", SAMPLE["value"]))
    return {"ok": True, "outcome": "confirmed", "message": "done", "sample": sample}


class _DeviceApiBase(TestCase):
    token = None
    device_timeout = "0.4"
    ctrl_log_length = "10"

    @inlineCallbacks
    def setUp(self):
        server = shared_redis()
        self.server = server
        overrides = {
            "redis": server.url,
            "api_token": self.token,
            "device_timeout": self.device_timeout,
            "ctrl_log_length": self.ctrl_log_length,
        }
        self.settings = load_settings(None, overrides)
        self.client = RedisClient(self.settings.redis, timeout=5, pool_size=2)
        self.client.startService()
        self.addCleanup(self.client.stopService)
        self.replies = ReplyListener(reactor, self.settings.redis, retry_policy=lambda n: 0.05)
        self.replies.startService()
        self.addCleanup(self.replies.stopService)
        yield self.replies.when_subscribed()
        for _ in range(200):
            if self.client.connected:
                break
            yield deferLater(reactor, 0.01, lambda: None)
        #: Looks at Redis behind the API's back, without blocking the reactor.
        self.sync = RedisView(self.client)
        yield self.sync.flushall()
        self.api = ApiApp(ConfigStore(self.client), self.settings, replies=self.replies)
        self.port = reactor.listenTCP(0, self.api.site(), interface="127.0.0.1")
        self.addCleanup(self.port.stopListening)
        self.base = f"http://127.0.0.1:{self.port.getHost().port}"
        self.pool = HTTPConnectionPool(reactor, persistent=False)
        self.addCleanup(self.pool.closeCachedConnections)
        for method, path, body in CREATE_ALL:
            status, result = yield self.call(method, path, body)
            self.assertEqual(status, 201, result)

    @inlineCallbacks
    def collector(self, script=confirmed):
        fake = FakeCollector(self.server.port, script)
        yield fake.start()
        self.addCleanup(fake.stop)
        return fake

    def call(self, method, path, body=None, raw=None, headers=None, token=True):
        headers = dict(headers or {})
        if self.token and token:
            headers.setdefault(b"Authorization", [b"Bearer " + self.token.encode()])
        return http_call(self.base + path, method, self.pool, body, raw, headers)


class DeviceApiTests(_DeviceApiBase):
    # -- device_call / device_ctrl ------------------------------------------------------------
    @inlineCallbacks
    def test_call_answers_200_with_the_fresh_sample(self):
        fake = yield self.collector()
        status, body = yield self.call("POST", "/api/v1/device_call", dict(POINT, item_id=1000))
        self.assertEqual(status, 200, body)
        self.assertEqual(
            (body["outcome"], body["message"], body["cause"], body["sample"]),
            ("confirmed", "done", None, SAMPLE),
        )
        [(channel, request)] = fake.requests
        self.assertEqual(channel, keys.DEVICE_CALL)
        self.assertEqual(request["request_id"], body["request_id"])
        self.assertEqual(
            request["reply_to"], keys.REPLY % (self.replies.instance_id, body["request_id"])
        )
        self.assertEqual(
            (request["device_id"], request["term_id"], request["item_id"]), ("1", "10", "1000")
        )
        self.assertGreater(request["deadline"], reactor.seconds())
        self.assertEqual(self.replies.pending, 0)

    @inlineCallbacks
    def test_negative_confirmation_is_409_with_the_cause(self):
        fake = yield self.collector(
            lambda channel, request: {
                "ok": False,
                "outcome": "negative",
                "message": "the RTU refused",
                "cause": "UNKNOWN_IOA",
            }
        )
        status, body = yield self.call("POST", "/api/v1/device_ctrl", dict(POINT, value=1))
        self.assertEqual(status, 409, body)
        self.assertEqual(
            (body["error"], body["outcome"], body["cause"], body["message"], body["field"]),
            ("negative", "negative", "UNKNOWN_IOA", "the RTU refused", None),
        )
        [(channel, request)] = fake.requests
        self.assertEqual(
            (channel, request["value"], request["select"], request["client"], request["token_id"]),
            (keys.DEVICE_CTRL, 1, None, "127.0.0.1", "-"),
        )

    @inlineCallbacks
    def test_booleans_reach_the_collector_as_booleans(self):
        """JSON true/false are accepted (a coil, an IEC 104 single or double command takes
        them) and forwarded as they are, for the driver to map by the point's type."""
        fake = yield self.collector()
        for value in (False, True):
            status, body = yield self.call("POST", "/api/v1/device_ctrl", dict(POINT, value=value))
            self.assertEqual(status, 200, body)
        self.assertEqual([request["value"] for _, request in fake.requests], [False, True])

    @inlineCallbacks
    def test_every_outcome_gets_its_status(self):
        outcome = {}
        yield self.collector(lambda channel, request: {"outcome": outcome["next"], "message": ""})
        for name, code in (
            ("terminated", 200),
            ("busy", 409),
            ("refused", 400),
            ("not_found", 404),
            ("offline", 503),
            ("timeout", 504),
            ("failed", 502),
            ("nonsense", 502),
        ):
            outcome["next"] = name
            status, body = yield self.call("POST", "/api/v1/device_call", POINT)
            self.assertEqual(status, code, (name, body))
        self.assertEqual(body["outcome"], "failed")
        self.assertIn("unknown outcome", body["message"])

    @inlineCallbacks
    def test_overload_is_503_with_retry_after(self):
        import treq

        outcome = {"next": "overloaded"}
        yield self.collector(lambda channel, request: {"outcome": outcome["next"], "message": ""})
        headers = {b"Content-Type": [b"application/json"]}
        if self.token:
            headers[b"Authorization"] = [b"Bearer " + self.token.encode()]

        @inlineCallbacks
        def post():
            response = yield treq.post(
                self.base + "/api/v1/device_call",
                json.dumps(POINT).encode(),
                headers=headers,
                pool=self.pool,
            )
            body = json.loads((yield treq.content(response)))
            return response.code, response.headers.getRawHeaders(b"Retry-After"), body

        status, retry_after, body = yield post()
        self.assertEqual(
            (status, body["error"], body["outcome"]), (503, "overloaded", "overloaded")
        )
        self.assertEqual(retry_after, [b"1"])
        # other 503s (the device is offline) carry no Retry-After: a second will not help
        outcome["next"] = "offline"
        status, retry_after, body = yield post()
        self.assertEqual((status, body["outcome"], retry_after), (503, "offline", None))

    @inlineCallbacks
    def test_silence_is_504(self):
        fake = yield self.collector(lambda channel, request: None)
        status, body = yield self.call("POST", "/api/v1/device_ctrl", dict(POINT, value=5))
        self.assertEqual((status, body["outcome"], body["error"]), (504, "timeout", "timeout"))
        self.assertIn("may still have been executed", body["message"])
        self.assertEqual(self.replies.pending, 0)
        # the late reply is dropped, counted, and does not disturb the next request
        yield fake.answer(fake.requests[0][1], {"outcome": "confirmed", "message": "late"})
        fake.script = confirmed
        status, body = yield self.call("POST", "/api/v1/device_call", POINT)
        self.assertEqual((status, body["message"]), (200, "done"))
        self.assertEqual(self.replies.late_replies, 1)

    @inlineCallbacks
    def test_no_collector_is_503_and_nothing_waits(self):
        status, body = yield self.call("POST", "/api/v1/device_call", POINT)
        self.assertEqual((status, body["outcome"]), (503, "unavailable"))
        self.assertIn("no collector is running", body["message"])
        self.assertEqual(self.replies.pending, 0)

    @inlineCallbacks
    def test_concurrent_calls_for_one_point_get_their_own_answers(self):
        fake = yield self.collector(lambda channel, request: None)
        calls = [self.call("POST", "/api/v1/device_call", POINT) for _ in range(6)]
        for _ in range(300):
            if len(fake.requests) == 6:
                break
            yield deferLater(reactor, 0.01, lambda: None)
        sent = {}
        for number, (_, request) in enumerate(reversed(fake.requests)):
            sent[request["request_id"]] = number
            fake.answer(
                request,
                {"outcome": "confirmed", "message": "", "sample": dict(SAMPLE, value=number)},
            )
        answers = yield gatherResults(calls)
        self.assertEqual(len(sent), 6)
        self.assertEqual(
            sorted((b["request_id"], b["sample"]["value"]) for _, b in answers),
            sorted(sent.items()),
        )

    @inlineCallbacks
    def test_not_subscribed_is_503_and_nothing_is_sent(self):
        fake = yield self.collector()
        yield self.replies.stopService()
        status, body = yield self.call("POST", "/api/v1/device_call", POINT)
        self.assertEqual((status, body["error"]), (503, "unavailable"))
        self.assertIn("not subscribed", body["message"])
        self.assertEqual(fake.requests, [])

    @inlineCallbacks
    def test_resubscribes_after_the_connection_is_killed(self):
        yield self.collector()
        listener = [c for c in (yield self.sync.client_list()) if c["psub"] == "1"]
        self.assertEqual(len(listener), 1)
        yield self.sync.client_kill_id(listener[0]["id"])
        for _ in range(200):
            if not self.replies.subscribed:
                break
            yield deferLater(reactor, 0.005, lambda: None)
        yield self.replies.when_subscribed()
        status, body = yield self.call("POST", "/api/v1/device_call", POINT)
        self.assertEqual(status, 200, body)

    @inlineCallbacks
    def test_pending_requests_are_bounded(self):
        yield self.collector(lambda channel, request: None)
        self.replies.max_pending = 2
        first = [self.call("POST", "/api/v1/device_call", POINT) for _ in range(2)]
        for _ in range(300):
            if self.replies.pending == 2:
                break
            yield deferLater(reactor, 0.01, lambda: None)
        status, body = yield self.call("POST", "/api/v1/device_call", POINT)
        self.assertEqual((status, body["error"]), (503, "unavailable"))
        self.assertIn("in flight", body["message"])
        self.assertEqual([s for s, _ in (yield gatherResults(first))], [504, 504])

    # -- hostile input ----------------------------------------------------------------------
    @inlineCallbacks
    def test_hostile_json_names_the_field(self):
        yield self.collector()
        for path, body, field in (
            ("/api/v1/device_call", dict(POINT, device_id={"$ne": 1}), "device_id"),
            ("/api/v1/device_call", dict(POINT, term_id="10:*"), "term_id"),
            ("/api/v1/device_call", dict(POINT, item_id=None), "item_id"),
            ("/api/v1/device_call", dict(POINT, item_id=True), "item_id"),
            ("/api/v1/device_ctrl", dict(POINT, value={"x": [1]}), "value"),
            ("/api/v1/device_ctrl", dict(POINT, value="x" * 300), "value"),
            ("/api/v1/device_ctrl", dict(POINT, value=1, select="yes"), "select"),
            ("/api/v1/device_ctrl", dict(POINT, item_id="9", value=1), "item_id"),
            ("/api/v1/device_ctrl", dict(POINT, device_id="2", value=1), "device_id"),
            ("/api/v1/device_ctrl", [POINT], None),
            ("/api/v1/device_ctrl", "ctrl", None),
        ):
            status, error = yield self.call("POST", path, body)
            self.assertTrue(400 <= status < 500, (body, status, error))
            self.assertEqual(error["field"], field, body)
        for raw in (b"[" * 50000, b'{"device_id": 1e999999}', b"\xff\xfe", b"{}" * 3):
            status, error = yield self.call(
                "POST", "/api/v1/device_ctrl", raw=raw, headers={b"Content-Type": [b"text/json"]}
            )
            self.assertEqual(status, 415)
            status, error = yield self.call(
                "POST",
                "/api/v1/device_ctrl",
                raw=raw,
                headers={b"Content-Type": [b"application/json"]},
            )
            self.assertTrue(400 <= status < 500, (raw[:20], status, error))
        for query, field in (("limit=abc", "limit"), ("limit=0", "limit"), ("since=soon", "since")):
            status, error = yield self.call("GET", "/api/v1/device_ctrl/log?" + query)
            self.assertEqual((status, error["field"]), (400, field))
        for path in ("/api/v1/devices/a:b/values", "/api/v1/devices/a*b/status"):
            status, error = yield self.call("GET", path)
            self.assertEqual((status, error["field"]), (404, "device_id"))

    # -- values and status -------------------------------------------------------------------
    @inlineCallbacks
    def test_values(self):
        self.assertEqual((yield self.call("GET", "/api/v1/devices/1/values")), (200, {}))
        status, error = yield self.call("GET", "/api/v1/devices/9/values")
        self.assertEqual((status, error["field"]), (404, "device_id"))
        sample = {k: v for k, v in SAMPLE.items() if not k.endswith("_id")}
        yield self.sync.hset(
            keys.DEVICE_VALUES % "1",
            mapping={"10:1000": json.dumps(sample), "10:2": json.dumps(dict(sample, value=7))},
        )
        status, values = yield self.call("GET", "/api/v1/devices/1/values")
        self.assertEqual(list(values), ["10:2", "10:1000"])
        self.assertEqual((values["10:1000"], values["10:2"]["value"]), (sample, 7))

    @inlineCallbacks
    def test_status(self):
        status, body = yield self.call("GET", "/api/v1/devices/1/status")
        self.assertEqual(
            (status, body["state"], body["device_id"], body["protocol"]),
            (200, "unknown", "1", "iec104"),
        )
        status, error = yield self.call("GET", "/api/v1/devices/9/status")
        self.assertEqual((status, error["field"]), (404, "device_id"))
        written = {
            "device_id": "1",
            "state": "online",
            "counters": {"frames_in": 3},
            "updated": iso_time(time.time()),
        }
        yield self.sync.hset(keys.DEVICE_STATUS % "1", "status", json.dumps(written))
        self.assertEqual(
            (yield self.call("GET", "/api/v1/devices/1/status")),
            (200, dict(written, stale=False)),
        )
        # No collector refreshed it for 3 intervals (it died): it must not look online.
        for updated in (iso_time(time.time() - 3 * STATUS_INTERVAL - 1), None, "garbage"):
            written["updated"] = updated
            yield self.sync.hset(keys.DEVICE_STATUS % "1", "status", json.dumps(written))
            status, body = yield self.call("GET", "/api/v1/devices/1/status")
            self.assertEqual((status, body["state"], body["stale"]), (200, "online", True))
        yield self.sync.hset(keys.DEVICE_STATUS % "1", "status", "{broken")
        status, body = yield self.call("GET", "/api/v1/devices/1/status")
        self.assertEqual((status, body["state"]), (200, "unknown"))
        self.assertIn("not a JSON object", body["last_error"])


class AuditTests(_DeviceApiBase):
    """The same with a token: device_ctrl needs it, and the audit log names it."""

    token = "s3cret"

    @inlineCallbacks
    def test_audit_log_has_every_command_in_order_and_is_bounded(self):
        answers = {"5": "confirmed", "6": "negative"}

        def script(channel, request):
            outcome = answers.get(str(request["value"]))
            if outcome is None:
                return None
            return {
                "outcome": outcome,
                "message": outcome,
                "cause": "COT 47" if outcome != "confirmed" else None,
            }

        yield self.collector(script)
        status, _ = yield self.call(
            "POST", "/api/v1/device_ctrl", dict(POINT, value=5), token=False
        )
        self.assertEqual(status, 401)
        expected = []
        for body, code, outcome in (
            (dict(POINT, value=5, select=True), 200, "confirmed"),
            (dict(POINT, value=6), 409, "negative"),
            (dict(POINT, value=7), 504, "timeout"),
            (dict(POINT, value=[7]), 400, "invalid"),
            (dict(POINT, item_id="9", value=1), 404, "not_found"),
        ):
            status, answer = yield self.call("POST", "/api/v1/device_ctrl", body)
            self.assertEqual(status, code, answer)
            expected.append((body["item_id"], body["value"], outcome, code))
        status, log = yield self.call("GET", "/api/v1/device_ctrl/log")
        self.assertEqual(status, 200)
        self.assertEqual(
            [(e["item_id"], e["value"], e["outcome"], e["status"]) for e in log],
            expected[::-1],
        )
        token_id = hashlib.sha256(b"s3cret").hexdigest()[:8]
        newest, oldest = log[0], log[-1]
        self.assertEqual(
            (oldest["client"], oldest["token_id"], oldest["device_id"], oldest["select"]),
            ("127.0.0.1", token_id, "1", True),
        )
        self.assertEqual(
            (log[3]["cause"], log[3]["message"], log[3]["select"]), ("COT 47", "negative", None)
        )
        self.assertEqual(newest["message"], "item_id not found!")
        self.assertTrue(oldest["time"].endswith("+00:00"))
        self.assertEqual(len((yield self.call("GET", "/api/v1/device_ctrl/log?limit=2"))[1]), 2)
        since = oldest["time"].replace("+00:00", "Z")
        status, newer = yield self.call("GET", "/api/v1/device_ctrl/log?since=" + since)
        self.assertEqual((status, len(newer)), (200, 5))
        status, older = yield self.call("GET", "/api/v1/device_ctrl/log?until=2000-01-01T00:00Z")
        self.assertEqual((status, older), (200, []))
        for _ in range(12):
            yield self.call("POST", "/api/v1/device_ctrl", dict(POINT, value=5))
        self.assertEqual((yield self.sync.xlen(keys.CTRL_LOG)), 10)

    @inlineCallbacks
    def test_the_round_trip_finishes_when_the_client_goes_away(self):
        fake = yield self.collector(lambda channel, request: None)
        d = self.call("POST", "/api/v1/device_ctrl", dict(POINT, value=9))
        for _ in range(300):
            if fake.requests:
                break
            yield deferLater(reactor, 0.01, lambda: None)
        d.cancel()
        d.addErrback(lambda f: None)
        yield fake.answer(fake.requests[0][1], {"outcome": "confirmed", "message": "ok"})
        for _ in range(300):
            if (yield self.sync.xlen(keys.CTRL_LOG)):
                break
            yield deferLater(reactor, 0.01, lambda: None)
        [(_, entry)] = yield self.sync.xrange(keys.CTRL_LOG)
        self.assertEqual((entry["outcome"], entry["value"]), ("confirmed", "9"))


class RoleTests(TestCase):
    def test_roles(self):
        from pydatacoll.service import make_root_service

        for role, names in (
            ("all", ["redis", "replies", "api"]),
            ("api", ["redis", "replies", "api"]),
            ("collector", ["redis"]),
        ):
            settings = load_settings(None, {"redis": "redis://127.0.0.1:1/0", "role": role})
            children = [s.name for s in make_root_service(settings, reactor)]
            self.assertEqual([n for n in children if n in ("redis", "replies", "api")], names)
