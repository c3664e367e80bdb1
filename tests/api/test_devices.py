"""device_call / device_ctrl, the audit log, live values and status, in memory: the
collector is `MemoryCollector` (a listener of `MemoryRedis`' PUBLISHes), the replies come
through `MemoryReplyListener`, and timeouts run on a `Clock`. The reply listener's own
connection (resubscription, a killed connection) is tested with real Redis in
tests/integration/test_api_redis_devices.py."""

import hashlib
import json

from twisted.internet.defer import gatherResults, inlineCallbacks

from pydatacoll.api.app import ApiApp
from pydatacoll.devices.manager import STATUS_INTERVAL
from pydatacoll.model import iso_time
from pydatacoll.store import keys
from pydatacoll.store.config import ConfigStore
from pydatacoll.testing.memory_api import MemoryReplyListener
from tests.api.support import MemoryApiCase

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


class MemoryCollector:
    """Answers requests with ``script(channel, request)``: a reply dict, or None (silence)."""

    def __init__(self, memory, script, delivered):
        self.memory = memory
        self.delivered = delivered
        self.script = script
        self.requests = []
        for channel in (keys.DEVICE_CALL, keys.DEVICE_CTRL):
            memory.subscribe(channel, self.received)

    def received(self, channel, message):
        request = json.loads(message)
        self.requests.append((channel, request))
        reply = self.script(channel, request)
        if reply is not None:
            self.answer(request, reply)

    def answer(self, request, reply):
        body = {"request_id": request["request_id"], **reply}
        d = self.memory.call("publish", request["reply_to"], json.dumps(body))
        self.delivered()  # the HTTP answers this reply completed
        return d


def confirmed(channel, request):
    sample = dict(SAMPLE, value=request.get("value", SAMPLE["value"]))
    return {"ok": True, "outcome": "confirmed", "message": "done", "sample": sample}


class _DeviceApiCase(MemoryApiCase):
    settings_overrides = {"device_timeout": "0.4", "ctrl_log_length": "10"}

    def setUp(self):
        super().setUp()
        return self.seed()

    def make_api(self):
        self.replies = MemoryReplyListener(self.memory, self.clock)
        return ApiApp(
            ConfigStore(self.memory), self.settings, replies=self.replies, clock=self.clock
        )

    def collector(self, script=confirmed):
        return MemoryCollector(self.memory, script, self.flush)

    def call(self, method, path, body=None, raw=None, headers=None, token=True):
        headers = dict(headers or {})
        if self.token and token:
            headers.setdefault(b"Authorization", [b"Bearer " + self.token.encode()])
        return self.raw_call(method, path, body, raw, headers)

    def timeout(self):
        """Let the device timeout pass."""
        self.advance(self.settings.device_timeout + 0.01)


class DeviceApiTests(_DeviceApiCase):
    # -- device_call / device_ctrl ------------------------------------------------------------
    @inlineCallbacks
    def test_call_answers_200_with_the_fresh_sample(self):
        fake = self.collector()
        status, body = yield self.call("POST", "/api/v1/device_call", dict(POINT, item_id=1000))
        self.assertEqual(status, 200, body)
        self.assertEqual(
            (body["outcome"], body["message"], body["cause"], body["sample"]),
            ("confirmed", "done", None, SAMPLE),
        )
        [(channel, request)] = fake.requests
        self.assertEqual(channel, keys.DEVICE_CALL)
        self.assertEqual(request["request_id"], body["request_id"])
        self.assertEqual(request["reply_to"], keys.REPLY % ("api", body["request_id"]))
        self.assertEqual(
            (request["device_id"], request["term_id"], request["item_id"]), ("1", "10", "1000")
        )
        self.assertEqual(request["deadline"], self.clock.seconds() + 0.4)
        self.assertEqual(self.replies.pending, 0)

    @inlineCallbacks
    def test_negative_confirmation_is_409_with_the_cause(self):
        fake = self.collector(
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
        fake = self.collector()
        for value in (False, True):
            status, body = yield self.call("POST", "/api/v1/device_ctrl", dict(POINT, value=value))
            self.assertEqual(status, 200, body)
        self.assertEqual([request["value"] for _, request in fake.requests], [False, True])

    @inlineCallbacks
    def test_every_outcome_gets_its_status(self):
        outcome = {}
        self.collector(lambda channel, request: {"outcome": outcome["next"], "message": ""})
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
        outcome = {"next": "overloaded"}
        self.collector(lambda channel, request: {"outcome": outcome["next"], "message": ""})
        headers = {b"Content-Type": [b"application/json"]}

        @inlineCallbacks
        def post():
            response, content = yield self.request(
                "POST", "/api/v1/device_call", json.dumps(POINT).encode(), headers
            )
            body = json.loads(content)
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
        fake = self.collector(lambda channel, request: None)
        answered = self.call("POST", "/api/v1/device_ctrl", dict(POINT, value=5))
        self.assertNoResult(answered)
        self.assertEqual(self.replies.pending, 1)
        self.timeout()
        status, body = yield answered
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
        self.assertEqual(self.clock.getDelayedCalls(), [])

    @inlineCallbacks
    def test_concurrent_calls_for_one_point_get_their_own_answers(self):
        fake = self.collector(lambda channel, request: None)
        calls = [self.call("POST", "/api/v1/device_call", POINT) for _ in range(6)]
        self.assertEqual(len(fake.requests), 6)
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
        fake = self.collector()
        self.replies.subscribed = False
        status, body = yield self.call("POST", "/api/v1/device_call", POINT)
        self.assertEqual((status, body["error"]), (503, "unavailable"))
        self.assertIn("not subscribed", body["message"])
        self.assertEqual(fake.requests, [])

    @inlineCallbacks
    def test_redis_lost_while_publishing_is_503_and_nothing_waits(self):
        fake = self.collector()
        self.memory.fail_next("evalsha")  # the lookups and the PUBLISH: one script call
        status, body = yield self.call("POST", "/api/v1/device_call", POINT)
        self.assertEqual((status, body["error"]), (503, "redis_unavailable"))
        self.assertEqual((fake.requests, self.replies.pending), ([], 0))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    @inlineCallbacks
    def test_pending_requests_are_bounded(self):
        self.collector(lambda channel, request: None)
        self.replies.max_pending = 2
        first = [self.call("POST", "/api/v1/device_call", POINT) for _ in range(2)]
        self.assertEqual(self.replies.pending, 2)
        status, body = yield self.call("POST", "/api/v1/device_call", POINT)
        self.assertEqual((status, body["error"]), (503, "unavailable"))
        self.assertIn("in flight", body["message"])
        self.timeout()
        self.assertEqual([s for s, _ in (yield gatherResults(first))], [504, 504])

    # -- hostile input ----------------------------------------------------------------------
    @inlineCallbacks
    def test_hostile_json_names_the_field(self):
        self.collector()
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
        self.sync.hset(keys.DEVICE_VALUES % "1", "10:1000", json.dumps(sample))
        self.sync.hset(keys.DEVICE_VALUES % "1", "10:2", json.dumps(dict(sample, value=7)))
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
        now = self.clock.seconds()
        written = {
            "device_id": "1",
            "state": "online",
            "counters": {"frames_in": 3},
            "updated": iso_time(now),
        }
        self.sync.hset(keys.DEVICE_STATUS % "1", "status", json.dumps(written))
        self.assertEqual(
            (yield self.call("GET", "/api/v1/devices/1/status")),
            (200, dict(written, stale=False)),
        )
        # Exactly at the limit it is still fresh; a moment later it is stale.
        self.clock.advance(3 * STATUS_INTERVAL)
        status, body = yield self.call("GET", "/api/v1/devices/1/status")
        self.assertFalse(body["stale"])
        self.clock.advance(0.01)
        status, body = yield self.call("GET", "/api/v1/devices/1/status")
        self.assertTrue(body["stale"])
        # No collector refreshed it for 3 intervals (it died): it must not look online.
        for updated in (iso_time(now - 3 * STATUS_INTERVAL - 1), None, "garbage"):
            written["updated"] = updated
            self.sync.hset(keys.DEVICE_STATUS % "1", "status", json.dumps(written))
            status, body = yield self.call("GET", "/api/v1/devices/1/status")
            self.assertEqual((status, body["state"], body["stale"]), (200, "online", True))
        self.sync.hset(keys.DEVICE_STATUS % "1", "status", "{broken")
        status, body = yield self.call("GET", "/api/v1/devices/1/status")
        self.assertEqual((status, body["state"]), (200, "unknown"))
        self.assertIn("not a JSON object", body["last_error"])


class AuditTests(_DeviceApiCase):
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

        self.collector(script)
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
            answered = self.call("POST", "/api/v1/device_ctrl", body)
            self.timeout()  # only the silent one was still waiting
            status, answer = yield answered
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
        self.assertEqual(self.sync.xlen(keys.CTRL_LOG), 10)

    @inlineCallbacks
    def test_an_audit_entry_redis_refuses_is_logged_and_the_answer_stands(self):
        self.collector()
        self.memory.fail_next("execute_command")
        status, answer = yield self.call("POST", "/api/v1/device_ctrl", dict(POINT, value=1))
        self.assertEqual((status, answer["outcome"]), (200, "confirmed"))
        self.assertEqual(len(self.flushLoggedErrors()), 1)
        self.assertEqual(self.sync.xlen(keys.CTRL_LOG), 0)

    @inlineCallbacks
    def test_the_round_trip_finishes_when_the_client_goes_away(self):
        fake = self.collector(lambda channel, request: None)
        d = self.call("POST", "/api/v1/device_ctrl", dict(POINT, value=9))
        self.assertEqual(len(fake.requests), 1)
        d.cancel()
        d.addErrback(lambda f: None)
        yield fake.answer(fake.requests[0][1], {"outcome": "confirmed", "message": "ok"})
        [(_, entry)] = self.memory.data[keys.CTRL_LOG]
        self.assertEqual((entry["outcome"], entry["value"]), ("confirmed", "9"))
