"""The REST API over real HTTP, against a real (private) redis-server."""

import json

import redis as redis_py
import treq
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase
from twisted.web.client import HTTPConnectionPool

from pydatacoll.api.app import ApiApp, route_table
from pydatacoll.api.openapi import document
from pydatacoll.config import load_settings
from pydatacoll.store.config import ConfigStore
from pydatacoll.store.redis import RedisClient
from pydatacoll.testing.fixtures import CREATE_ALL, DEVICE, ITEM, TERM, TERM_ITEM
from pydatacoll.testing.redis import digest, shared_redis


@inlineCallbacks
def http_call(url, method, pool, body=None, raw=None, headers=None):
    """One HTTP request over real TCP; fires with (status, parsed JSON or text)."""
    headers = dict(headers or {})
    data = raw
    if body is not None:
        data = json.dumps(body).encode()
        headers.setdefault(b"Content-Type", [b"application/json"])
    response = yield treq.request(method, url, data=data, headers=headers, pool=pool)
    text = (yield treq.content(response)).decode()
    try:
        parsed = json.loads(text) if text else None
    except ValueError:
        parsed = text
    return response.code, parsed


class ApiTests(TestCase):
    token = None

    @inlineCallbacks
    def setUp(self):
        server = shared_redis()
        self.sync = redis_py.Redis(port=server.port, decode_responses=True)
        self.sync.flushall()
        overrides = {"redis": server.url, "api_token": self.token}
        self.settings = load_settings(None, overrides)
        self.client = RedisClient(self.settings.redis, timeout=5, pool_size=2)
        self.client.startService()
        self.addCleanup(self.client.stopService)
        self.addCleanup(self.sync.close)
        for _ in range(200):
            if self.client.connected:
                break
            yield deferLater(reactor, 0.01, lambda: None)
        self.api = ApiApp(ConfigStore(self.client), self.settings)
        self.port = reactor.listenTCP(0, self.api.site(), interface="127.0.0.1")
        self.addCleanup(self.port.stopListening)
        self.base = f"http://127.0.0.1:{self.port.getHost().port}"
        self.pool = HTTPConnectionPool(reactor, persistent=False)
        self.addCleanup(self.pool.closeCachedConnections)

    def call(self, method, path, body=None, raw=None, headers=None):
        """One request; returns (status, parsed JSON or text)."""
        return http_call(self.base + path, method, self.pool, body, raw, headers)

    @inlineCallbacks
    def seed(self):
        for method, path, body in CREATE_ALL:
            status, result = yield self.call(method, path, body)
            self.assertEqual(status, 201, result)

    @inlineCallbacks
    def test_crud_walkthrough(self):
        yield self.seed()
        status, device = yield self.call("GET", "/api/v1/devices/1")
        self.assertEqual((status, device["port"], device["name"]), (200, 2404, "concentrator 1"))
        status, error = yield self.call("POST", "/api/v1/devices", DEVICE)
        self.assertEqual((status, error["error"]), (409, "conflict"))
        self.assertEqual(
            (yield self.call("GET", "/api/v1/devices/99")),
            (404, {"error": "not_found", "message": "device_id not found!", "field": "device_id"}),
        )
        self.assertEqual((yield self.call("GET", "/api/v1/devices/1/terms")), (200, ["10"]))
        self.assertEqual((yield self.call("GET", "/api/v1/terms/10/items")), (200, ["1000"]))
        status, point = yield self.call("GET", "/api/v1/terms/10/items/1000")
        self.assertEqual(
            (point["device_id"], point["protocol_code"], point["up_limit"]), ("1", 100, 230)
        )
        status, changed = yield self.call(
            "PUT", "/api/v1/devices/1", {"name": "renamed", "identify": None}
        )
        self.assertEqual((status, changed["name"], "identify" in changed), (200, "renamed", False))
        status, error = yield self.call("PUT", "/api/v1/devices/1", {"id": "5"})
        self.assertEqual((status, error["field"]), (409, "id"))
        status, _ = yield self.call("PUT", "/api/v1/terms/10/items/1000", {"protocol_code": 101})
        self.assertEqual(json.loads(self.sync.hget("HS:TERM_ITEM:10:1000", "protocol_code")), 101)
        self.assertEqual(
            (yield self.call("GET", "/api/v1/devices/1/terms/10/items/1000/datas")), (200, [])
        )
        status, _ = yield self.call("GET", "/api/v1/devices/1/terms/10/items/1000/datas/-1")
        self.assertEqual(status, 404)

    @inlineCallbacks
    def test_samples_are_read_newest_first(self):
        yield self.seed()
        for value in (100.0, 101.0, 102.0):
            self.sync.xadd(
                "XS:DATA:1:10:1000", {"sample": json.dumps({"value": value, "quality": 0})}
            )
        status, samples = yield self.call(
            "GET", "/api/v1/devices/1/terms/10/items/1000/datas?limit=2"
        )
        self.assertEqual([s["value"] for s in samples], [102.0, 101.0])
        # datas/N is the N-th of that same list: 0 the newest; -1 the oldest kept
        base = "/api/v1/devices/1/terms/10/items/1000/datas/"
        for index, value in (
            ("0", 102.0),
            ("1", 101.0),
            ("2", 100.0),
            ("-1", 100.0),
            ("-3", 102.0),
        ):
            self.assertEqual((yield self.call("GET", base + index))[1]["value"], value, index)
        for index in ("3", "-4"):
            self.assertEqual((yield self.call("GET", base + index))[0], 404, index)
        status, _ = yield self.call("GET", "/api/v1/devices/1/terms/10/items/1000/datas/x")
        self.assertEqual(status, 400)

    @inlineCallbacks
    def test_cascades_touch_nothing_else(self):
        yield self.seed()
        yield self.call("POST", "/api/v1/terms", dict(TERM, id="20"))
        yield self.call("POST", "/api/v1/items", dict(ITEM, id="2000"))
        yield self.call("POST", "/api/v1/terms/20/items", dict(TERM_ITEM, term_id="20"))
        yield self.call("POST", "/api/v1/terms/10/items", dict(TERM_ITEM, item_id="2000"))
        self.sync.xadd("XS:DATA:1:10:1000", {"sample": "{}"})
        status, _ = yield self.call("DELETE", "/api/v1/items/1000")
        self.assertEqual(status, 204)
        self.assertEqual(self.sync.smembers("SET:TERM_ITEM:10"), {"2000"})
        self.assertEqual(self.sync.smembers("SET:TERM_ITEM:20"), set())
        self.assertFalse(self.sync.exists("XS:DATA:1:10:1000"))
        status, _ = yield self.call("DELETE", "/api/v1/devices/1")
        self.assertEqual(status, 204)
        self.assertEqual(
            sorted(self.sync.keys("*")), ["HS:ITEM:2000", "SET:ITEM", "STR:CONFIG_VERSION"]
        )

    @inlineCallbacks
    def test_change_messages(self):
        pubsub = self.sync.pubsub()
        pubsub.psubscribe("CHANNEL:*")
        pubsub.get_message(timeout=1)
        yield self.seed()
        yield self.call("DELETE", "/api/v1/terms/10")
        messages = []
        while (m := pubsub.get_message(timeout=0.5)) is not None:
            messages.append((m["channel"], json.loads(m["data"])))
        pubsub.close()
        self.assertEqual(
            [c for c, _ in messages],
            [
                "CHANNEL:DEVICE_ADD",
                "CHANNEL:TERM_ADD",
                "CHANNEL:ITEM_ADD",
                "CHANNEL:TERM_ITEM_ADD",
                "CHANNEL:TERM_DEL",
            ],
        )
        deleted = messages[-1][1]
        self.assertEqual(
            deleted["cascade"],
            {
                "terms": ["10"],
                "term_items": [{"device_id": "1", "term_id": "10", "item_id": "1000"}],
            },
        )
        self.assertEqual(deleted["version"], 5)

    @inlineCallbacks
    def test_batches_are_all_or_nothing(self):
        yield self.seed()
        before = digest(self.sync)
        status, error = yield self.call(
            "POST", "/api/v2/devices", [dict(DEVICE, id="7"), {"id": "8", "protocol": "x"}]
        )
        self.assertEqual((status, error["index"], error["field"]), (400, 1, "protocol"))
        status, error = yield self.call(
            "POST", "/api/v2/terms", [dict(TERM, id="30"), dict(TERM, id="31", device_id="99")]
        )
        self.assertEqual((status, error["index"], error["field"]), (404, 1, "device_id"))
        status, error = yield self.call("POST", "/api/v2/devices/del", ["1", "99"])
        self.assertEqual((status, error["index"]), (404, 1))
        self.assertEqual(digest(self.sync), before)
        status, stored = yield self.call(
            "POST", "/api/v2/devices", [dict(DEVICE, id="7"), dict(DEVICE, id=8)]
        )
        self.assertEqual((status, [d["id"] for d in stored]), (200, ["7", "8"]))
        status, _ = yield self.call("POST", "/api/v2/devices/del", [7, "8"])
        self.assertEqual((status, self.sync.smembers("SET:DEVICE")), (204, {"1"}))

    @inlineCallbacks
    def test_protocol_settings_are_checked(self):
        """A device its driver could not run is refused with 400 naming the setting."""
        base = {"id": "9", "ip": "127.0.0.1"}
        for body, field in [
            ({**base, "protocol": "iec104", "k": 0}, "k"),
            ({**base, "protocol": "iec104", "k": 4, "w": 8}, "k"),
            ({**base, "protocol": "iec104", "t1": 5, "t2": 10}, "t1"),
            ({**base, "protocol": "iec104", "timezone": "Mars/Olympus"}, "timezone"),
            ({**base, "protocol": "iec104", "endpoints": ["nohost"]}, "endpoints"),
            ({**base, "protocol": "iec104", "interrogation_groups": [17]}, "interrogation_groups"),
            ({**base, "protocol": "modbus", "timeout": -1}, "timeout"),
            ({**base, "protocol": "modbus", "byte_order": "XYZW"}, "byte_order"),
        ]:
            before = digest(self.sync)
            status, reply = yield self.call("POST", "/api/v1/devices", body)
            self.assertEqual((status, reply["field"]), (400, field), (body, reply))
            self.assertEqual(digest(self.sync), before)
        status, _ = yield self.call(
            "POST", "/api/v1/devices", {**base, "protocol": "iec104", "k": 24, "w": 12}
        )
        self.assertEqual(status, 201)
        status, reply = yield self.call("PUT", "/api/v1/devices/9", {"w": 30})
        self.assertEqual((status, reply["field"]), (400, "k"))
        status, reply = yield self.call(
            "POST",
            "/api/v2/devices",
            [
                {**base, "protocol": "modbus"},
                {**base, "id": "10", "protocol": "modbus", "timeout": 0},
            ],
        )
        self.assertEqual((status, reply["field"], reply["index"]), (400, "timeout", 1))

    @inlineCallbacks
    def test_bad_requests(self):
        for raw, headers, status in (
            (b"{", {b"Content-Type": [b"application/json"]}, 400),
            (b"{}", {b"Content-Type": [b"text/plain"]}, 415),
            (b"[NaN]", {b"Content-Type": [b"application/json"]}, 400),
            (b"{" * 100000, {b"Content-Type": [b"application/json"]}, 400),
        ):
            code, error = yield self.call("POST", "/api/v1/devices", raw=raw, headers=headers)
            self.assertEqual(code, status, error)
            self.assertIn("message", error)
        code, _ = yield self.call(
            "POST",
            "/api/v1/devices",
            raw=b" " * (2 << 20),
            headers={b"Content-Type": [b"application/json"]},
        )
        self.assertEqual(code, 413)
        code, error = yield self.call("PATCH", "/api/v1/devices")
        self.assertEqual((code, error["error"]), (405, "method_not_allowed"))

    @inlineCallbacks
    def test_device_call_without_collector(self):
        yield self.seed()
        status, error = yield self.call(
            "POST", "/api/v1/device_call", {"device_id": 1, "term_id": "10", "item_id": 1000}
        )
        self.assertEqual((status, error["error"]), (503, "unavailable"))
        status, error = yield self.call(
            "POST", "/api/v1/device_ctrl", {"device_id": "1", "term_id": "10", "item_id": "9"}
        )
        self.assertEqual((status, error["field"]), (400, "value"))
        status, error = yield self.call(
            "POST",
            "/api/v1/device_ctrl",
            {"device_id": "1", "term_id": "10", "item_id": "9", "value": 1},
        )
        self.assertEqual((status, error["field"]), (404, "item_id"))

    @inlineCallbacks
    def test_redis_down_is_503(self):
        yield self.client.stopService()
        status, error = yield self.call("GET", "/api/v1/devices")
        self.assertEqual((status, error["error"]), (503, "redis_unavailable"))

    @inlineCallbacks
    def test_index_and_openapi_cover_every_route(self):
        status, text = yield self.call("GET", "/")
        self.assertTrue(text.startswith("PyDataColl is running, available API:\n\n"))
        status, spec = yield self.call("GET", "/api/v1/openapi.json")
        self.assertEqual(spec["openapi"], "3.1.0")
        for method, path in route_table(self.api.app):
            self.assertIn(method.lower(), spec["paths"][path], path)
            self.assertIn(f"{method:<8} URL: {self.base}{path}", text)
        import jsonschema

        for schema in document(self.api.app)["components"]["schemas"].values():
            for example in schema.get("examples", []):
                jsonschema.validate(example, schema)


class TokenTests(ApiTests):
    token = "s3cret"

    def call(self, method, path, body=None, raw=None, headers=None):
        headers = dict(headers or {})
        headers.setdefault(b"Authorization", [b"Bearer s3cret"])
        return ApiTests.call(self, method, path, body, raw, headers)

    @inlineCallbacks
    def test_token_required_for_changes(self):
        status, error = yield ApiTests.call(self, "POST", "/api/v1/devices", DEVICE)
        self.assertEqual((status, error["error"]), (401, "unauthorized"))
        status, _ = yield ApiTests.call(
            self, "POST", "/api/v1/devices", DEVICE, headers={b"Authorization": [b"Bearer wrong"]}
        )
        self.assertEqual(status, 401)
        status, _ = yield ApiTests.call(self, "GET", "/api/v1/devices")
        self.assertEqual(status, 200)
        self.assertEqual(self.sync.keys("*"), [])
