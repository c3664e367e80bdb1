"""The REST API's routes, in memory (`MemoryRedis`, `StubTreq`: no redis-server).

The route tests are mixins: tests/integration/test_api_redis.py runs the same ones over
real HTTP against a private redis-server.
"""

import json
import re

from twisted.internet.defer import inlineCallbacks

from pydatacoll.api.app import ApiApp, route_table
from pydatacoll.api.openapi import document
from pydatacoll.store.config import ConfigStore
from pydatacoll.store.config_cache import ConfigCache
from pydatacoll.testing.fixtures import DEVICE, ITEM, TERM, TERM_ITEM
from pydatacoll.testing.memory_subscriber import memory_subscription
from tests.api.support import (
    MemoryApiCase,
    http_call,  # noqa: F401 (imported from here by other tests)
)


class ApiRouteTests:
    """Routes of the entities, data and catalogue (a harness of tests/api/support.py)."""

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
        self.assertEqual(
            json.loads((yield self.sync.hget("HS:TERM_ITEM:10:1000", "protocol_code"))), 101
        )
        self.assertEqual(
            (yield self.call("GET", "/api/v1/devices/1/terms/10/items/1000/datas")), (200, [])
        )
        status, _ = yield self.call("GET", "/api/v1/devices/1/terms/10/items/1000/datas/-1")
        self.assertEqual(status, 404)

    @inlineCallbacks
    def test_samples_are_read_newest_first(self):
        yield self.seed()
        for value in (100.0, 101.0, 102.0):
            yield self.sync.xadd(
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
        yield self.sync.xadd("XS:DATA:1:10:1000", {"sample": "{}"})
        status, _ = yield self.call("DELETE", "/api/v1/items/1000")
        self.assertEqual(status, 204)
        self.assertEqual((yield self.sync.smembers("SET:TERM_ITEM:10")), {"2000"})
        self.assertEqual((yield self.sync.smembers("SET:TERM_ITEM:20")), set())
        self.assertFalse((yield self.sync.exists("XS:DATA:1:10:1000")))
        status, _ = yield self.call("DELETE", "/api/v1/devices/1")
        self.assertEqual(status, 204)
        self.assertEqual(
            sorted((yield self.sync.keys("*"))),
            ["HS:ITEM:2000", "SET:ITEM", "STR:CONFIG_HISTORY", "STR:CONFIG_VERSION"],
        )

    @inlineCallbacks
    def test_change_messages(self):
        seen = yield self.watch_channels("CHANNEL:*")
        yield self.seed()
        yield self.call("DELETE", "/api/v1/terms/10")
        messages = [(channel, json.loads(text)) for channel, text in (yield seen())]
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
        before = yield self.digest()
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
        self.assertEqual((yield self.digest()), before)
        status, stored = yield self.call(
            "POST", "/api/v2/devices", [dict(DEVICE, id="7"), dict(DEVICE, id=8)]
        )
        self.assertEqual((status, [d["id"] for d in stored]), (200, ["7", "8"]))
        status, _ = yield self.call("POST", "/api/v2/devices/del", [7, "8"])
        self.assertEqual((status, (yield self.sync.smembers("SET:DEVICE"))), (204, {"1"}))

    @inlineCallbacks
    def test_protocol_settings_are_checked(self):
        """A device its driver could not run is refused with 400 naming the setting."""
        base = {"id": "9", "ip": "127.0.0.1"}
        for body, field in [
            ({**base, "protocol": "iec104", "k": 0}, "k"),
            ({**base, "protocol": "iec104", "k": 4, "w": 8}, "w"),
            ({**base, "protocol": "iec104", "t1": 5, "t2": 10}, "t2"),
            ({**base, "protocol": "iec104", "timezone": "Mars/Olympus"}, "timezone"),
            ({**base, "protocol": "iec104", "endpoints": ["nohost"]}, "endpoints"),
            ({**base, "protocol": "iec104", "interrogation_groups": [17]}, "interrogation_groups"),
            ({**base, "protocol": "modbus", "timeout": -1}, "timeout"),
            ({**base, "protocol": "modbus", "byte_order": "XYZW"}, "byte_order"),
        ]:
            before = yield self.digest()
            status, reply = yield self.call("POST", "/api/v1/devices", body)
            self.assertEqual((status, reply["field"]), (400, field), (body, reply))
            self.assertEqual((yield self.digest()), before)
        status, _ = yield self.call(
            "POST", "/api/v1/devices", {**base, "protocol": "iec104", "k": 24, "w": 12}
        )
        self.assertEqual(status, 201)
        status, reply = yield self.call("PUT", "/api/v1/devices/9", {"w": 30})
        self.assertEqual((status, reply["field"]), (400, "w"))
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
        yield self.redis_down()
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

    @inlineCallbacks
    def test_points_a_driver_cannot_read_are_refused_naming_the_field(self):
        yield self.seed()  # device 1 is iec104, its term 10
        modbus = {"id": "m1", "protocol": "modbus", "ip": "127.0.0.1"}
        for method, path, body in (
            ("POST", "/api/v1/devices", modbus),
            ("POST", "/api/v1/terms", {"id": "20", "device_id": "m1", "address": 1}),
            ("POST", "/api/v1/items", {"id": "2000"}),
        ):
            status, result = yield self.call(method, path, body)
            self.assertEqual(status, 201, result)
        cases = [
            ({}, "protocol_code"),
            ({"protocol_code": 3, "code_type": "hodling"}, "code_type"),
            ({"protocol_code": 3, "code_type": "holding", "data_type": "float33"}, "data_type"),
            ({"protocol_code": 65535, "data_type": "float32"}, "protocol_code"),
        ]
        for fields, field in cases:
            body = {"item_id": "2000", **fields}
            status, error = yield self.call("POST", "/api/v1/terms/20/items", body)
            self.assertEqual((status, error["error"], error["field"]), (400, "invalid", field))
            batch = [
                {"term_id": "20", "item_id": "1000", "protocol_code": 1},
                {"term_id": "20", **body},
            ]
            status, error = yield self.call("POST", "/api/v2/term_items", batch)
            self.assertEqual((status, error["field"], error["index"]), (400, field, 1), fields)
        self.assertFalse((yield self.sync.exists("HS:TERM_ITEM:20:2000")))
        self.assertFalse((yield self.sync.exists("HS:TERM_ITEM:20:1000")))
        status, point = yield self.call(
            "POST", "/api/v1/terms/20/items", {"item_id": "2000", "protocol_code": 4}
        )
        self.assertEqual((status, point["device_id"]), (201, "m1"))
        status, error = yield self.call(
            "PUT", "/api/v1/terms/20/items/2000", {"code_type": "hodling"}
        )
        self.assertEqual((status, error["field"]), (400, "code_type"))
        status, error = yield self.call(
            "PUT", "/api/v1/terms/20/items/2000", {"protocol_code": None}
        )
        self.assertEqual((status, error["field"]), (400, "protocol_code"))
        # an IEC 104 point needs its information object address too
        status, error = yield self.call("POST", "/api/v1/terms/10/items", {"item_id": "2000"})
        self.assertEqual((status, error["field"]), (400, "protocol_code"))
        # the term's protocol does not matter; its device's does: IEC 104 takes any code_type
        status, _ = yield self.call(
            "POST",
            "/api/v1/terms/10/items",
            {"item_id": "2000", "protocol_code": 7, "code_type": 45},
        )
        self.assertEqual(status, 201)


class TokenRouteTests(ApiRouteTests):
    token = "s3cret"

    def call(self, method, path, body=None, raw=None, headers=None):
        headers = dict(headers or {})
        headers.setdefault(b"Authorization", [b"Bearer s3cret"])
        return self.raw_call(method, path, body, raw, headers)

    @inlineCallbacks
    def test_token_required_for_changes(self):
        status, error = yield self.raw_call("POST", "/api/v1/devices", DEVICE)
        self.assertEqual((status, error["error"]), (401, "unauthorized"))
        status, _ = yield self.raw_call(
            "POST", "/api/v1/devices", DEVICE, headers={b"Authorization": [b"Bearer wrong"]}
        )
        self.assertEqual(status, 401)
        status, _ = yield self.raw_call("GET", "/api/v1/devices")
        self.assertEqual(status, 200)
        self.assertEqual((yield self.sync.keys("*")), [])


class ContractRouteTests(ApiRouteTests):
    """What the OpenAPI document promises, request by request (issue 10 item 8, issue 11)."""

    @inlineCallbacks
    def test_non_finite_numbers_are_refused_naming_the_field(self):
        """``1e99999`` is not stored as Infinity: 400 naming where it is, nothing written."""
        before = yield self.digest()
        raw = b'{"id": "7", "protocol": "formula", "a": 1e99999}'
        status, error = yield self.call(
            "POST", "/api/v1/devices", raw=raw, headers={b"Content-Type": [b"application/json"]}
        )
        self.assertEqual((status, error["error"], error["field"]), (400, "invalid", "a"))
        raw = b'[{"id": "8", "protocol": "formula", "deep": {"x": [1, -1E400]}}]'
        status, error = yield self.call(
            "POST", "/api/v2/devices", raw=raw, headers={b"Content-Type": [b"application/json"]}
        )
        self.assertEqual((status, error["field"]), (400, "[0].deep.x[1]"))
        for constant in (b"NaN", b"Infinity", b"-Infinity"):
            status, error = yield self.call(
                "POST",
                "/api/v1/items",
                raw=b'{"id": "9", "x": ' + constant + b"}",
                headers={b"Content-Type": [b"application/json"]},
            )
            self.assertEqual(status, 400, constant)
        self.assertEqual((yield self.digest()), before)

    def test_responses_never_carry_nan(self):
        """A non-finite float that reaches an answer is served as null: strict JSON."""
        from pydatacoll.api.jsonbody import dumps

        text = dumps({"sample": {"value": float("nan"), "more": [float("inf"), 1.5]}})
        self.assertEqual(
            json.loads(text, parse_constant=lambda c: self.fail(c)),
            {"sample": {"value": None, "more": [None, 1.5]}},
        )

    @inlineCallbacks
    def test_times_before_1970_are_400(self):
        yield self.seed()
        datas = "/api/v1/devices/1/terms/10/items/1000/datas"
        for path in (datas, "/api/v1/alarms/history", "/api/v1/device_ctrl/log"):
            for name in ("since", "until"):
                status, error = yield self.call("GET", f"{path}?{name}=1960-01-01T00:00:00Z")
                self.assertEqual((status, error["field"]), (400, name), path)
            status, error = yield self.call("GET", f"{path}?since=2026-13-01T00:00:00Z")
            self.assertEqual((status, error["field"]), (400, "since"))
            status, error = yield self.call("GET", f"{path}?since=2026-01-01")
            self.assertEqual((status, error["field"]), (400, "since"))
            # RFC 3339 as OpenAPI means it: lower-case t/z, a leap second, a long fraction.
            for text in (
                "1970-01-01t00:30:00+01:00",
                "2016-12-31T23:59:60Z",
                "2026-01-01T00:00:00.123456789z",
            ):
                status, body = yield self.call("GET", f"{path}?since={text.replace('+', '%2B')}")
                self.assertEqual(status, 200, (path, text, body))
        status, error = yield self.call("GET", "/api/v1/device_ctrl/log?limit=%D9%A3")
        self.assertEqual((status, error["field"]), (400, "limit"))

    @inlineCallbacks
    def test_every_error_is_json(self):
        """Non-UTF-8 URL: JSON 400; TRACE or an unknown method: JSON 405 with Allow."""
        response, content = yield self.request("GET", "/api/v1/devices/%FF")
        body = json.loads(content)
        self.assertEqual(response.code, 400)
        self.assertEqual(body, {"error": "invalid", "message": body["message"], "field": "path"})
        for method in ("TRACE", "FOO", "PATCH"):
            response, content = yield self.request(method, "/api/v1/devices")
            body = json.loads(content)
            self.assertEqual((response.code, body["error"]), (405, "method_not_allowed"))
            allow = response.headers.getRawHeaders(b"Allow")[0].decode()
            self.assertEqual(set(allow.split(", ")) - {"HEAD", "OPTIONS"}, {"GET", "POST"})
            self.assertEqual(
                response.headers.getRawHeaders(b"Content-Type")[0][:16], b"application/json"
            )

    @inlineCallbacks
    def test_device_requests_always_answer_the_device_answer_shape(self):
        """An unknown device, a bad body: the DeviceAnswer shape (with the error shape)."""
        for action in ("device_call", "device_ctrl"):
            status, answer = yield self.call(
                "POST",
                f"/api/v1/{action}",
                {"device_id": "9", "term_id": "1", "item_id": "1", "value": 1},
            )
            self.assertEqual(status, 404)
            self.assertEqual(
                (answer["outcome"], answer["error"], answer["field"], len(answer["request_id"])),
                ("not_found", "not_found", "device_id", 32),
            )
            status, answer = yield self.call(
                "POST", f"/api/v1/{action}", {"device_id": "a:b", "term_id": "1", "item_id": "1"}
            )
            self.assertEqual(
                (status, answer["outcome"], answer["field"]), (400, "invalid", "device_id")
            )
            self.assertIn("request_id", answer)

    @inlineCallbacks
    def test_conflicts_between_url_and_body_or_within_a_batch_are_409(self):
        yield self.seed()
        body = dict(TERM_ITEM, item_id="1000", term_id="11")
        status, error = yield self.call("POST", "/api/v1/terms/10/items", body)
        self.assertEqual((status, error["field"]), (409, "term_id"))
        status, error = yield self.call("POST", "/api/v2/items", [ITEM, ITEM])
        self.assertEqual((status, error["field"], error["index"]), (409, "id", 1))
        status, error = yield self.call("POST", "/api/v2/items/del", ["1000", 1000])
        self.assertEqual((status, error["index"]), (409, 1))
        status, error = yield self.call("POST", "/api/v1/terms/a:b/items", TERM_ITEM)
        self.assertEqual((status, error["field"]), (404, "term_id"))
        # an id written as 1000.0 is the id 1000
        status, item = yield self.call("GET", "/api/v1/terms/10/items/1000")
        status, _ = yield self.call("PUT", "/api/v1/items/1000", {"id": 1000.0, "unit": "V"})
        self.assertEqual(status, 200)

    @inlineCallbacks
    def test_attribute_names_are_checked_even_when_null(self):
        status, error = yield self.call("POST", "/api/v1/items", {"id": "5", "": None})
        self.assertEqual((status, error["field"]), (400, ""))

    @inlineCallbacks
    def test_datas_index_is_an_integer(self):
        yield self.seed()
        base = "/api/v1/devices/1/terms/10/items/1000/datas/"
        for index in ("x", "1.0", "%D9%A3", "1000000001"):
            status, error = yield self.call("GET", base + index)
            self.assertEqual((status, error["field"]), (400, "index"), index)
        status, error = yield self.call("GET", base + "0")
        self.assertEqual((status, error["field"]), (404, "index"))

    def test_document_has_no_dangling_reference_and_its_examples_fit(self):
        """Every $ref resolves; every example validates against its schema (format too)."""
        import jsonschema

        spec = document(self.api.app)
        schemas = spec["components"]["schemas"]
        text = json.dumps(spec)
        for name in set(re.findall(r'"#/components/schemas/([^"]+)"', text)):
            self.assertIn(name, schemas)
        for schema in schemas.values():
            for example in schema.get("examples", []):
                jsonschema.Draft202012Validator(
                    schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
                ).validate(example)
        self.assertEqual(
            spec["paths"]["/"]["get"]["responses"]["200"]["content"],
            {"text/plain": {"schema": {"type": "string"}}},
        )
        index = spec["paths"][
            "/api/v1/devices/{device_id}/terms/{term_id}/items/{item_id}/datas/{index}"
        ]
        self.assertEqual(index["get"]["parameters"][-1]["schema"]["type"], "integer")
        self.assertIn("value", schemas["DeviceCtrl"]["required"])
        # Each body is the schema of its own entity (a term-item's PUT is not a term's).
        bodies = {
            ("put", "/api/v1/terms/{term_id}/items/{item_id}"): "term_item_update",
            ("put", "/api/v1/terms/{entity_id}"): "term_update",
            ("post", "/api/v1/terms/{term_id}/items"): "term_item_in_term",
            ("put", "/api/v1/formulas/{formula_id}"): "formula_update",
            ("post", "/api/v1/formulas"): "formula",
        }
        for (method, path), name in bodies.items():
            body = spec["paths"][path][method]["requestBody"]["content"]["application/json"]
            self.assertEqual(body["schema"], {"$ref": f"#/components/schemas/{name}"}, path)

    @inlineCallbacks
    def test_document_examples_are_accepted(self):
        """The document's own examples, posted in order, are all created (v1 and v2)."""
        from pydatacoll.api.openapi import EXAMPLES

        for kind, path in (("device", "devices"), ("term", "terms"), ("item", "items")):
            for example in EXAMPLES[kind]:
                status, body = yield self.call("POST", f"/api/v1/{path}", example)
                self.assertEqual(status, 201, body)
        status, body = yield self.call("POST", "/api/v2/term_items", EXAMPLES["term_item"])
        self.assertEqual(status, 200, body)
        status, body = yield self.call("POST", "/api/v2/term_items", EXAMPLES["term_item"][0])
        self.assertEqual(status, 200, body)


class ApiTests(ApiRouteTests, MemoryApiCase):
    pass


class TokenTests(TokenRouteTests, MemoryApiCase):
    pass


class ContractTests(ContractRouteTests, MemoryApiCase):
    pass


class CachedApiCase(MemoryApiCase):
    """The API with its configuration cache on (subscribed over `MemoryRedis`): every
    route test must pass whether a read is served from memory or from Redis."""

    def make_api(self):
        self.cache = ConfigCache(self.memory, memory_subscription(self.memory), 100)
        self.cache.startService()
        self.addCleanup(self.cache.stopService)
        return ApiApp(
            ConfigStore(self.memory), self.settings, clock=self.clock, config_cache=self.cache
        )


class CachedApiTests(ApiRouteTests, CachedApiCase):
    @inlineCallbacks
    def test_entity_reads_are_served_from_memory_and_never_stale(self):
        """GET after GET is served from memory; after a PUT, DELETE or batch the next
        GET answers the change at once."""
        yield self.seed()
        for _ in range(3):
            status, body = yield self.call("GET", "/api/v1/devices/1")
            self.assertEqual(status, 200, body)
        self.assertEqual((self.cache.hits, self.cache.misses), (2, 1))
        status, body = yield self.call("PUT", "/api/v1/devices/1", {"name": "renamed"})
        self.assertEqual(status, 200, body)
        status, body = yield self.call("GET", "/api/v1/devices/1")
        self.assertEqual(body["name"], "renamed")
        status, body = yield self.call("POST", "/api/v2/devices", [dict(body, name="batched")])
        self.assertEqual(status, 200, body)
        status, body = yield self.call("GET", "/api/v1/devices/1")
        self.assertEqual(body["name"], "batched")
        status, _ = yield self.call("DELETE", "/api/v1/devices/1")
        self.assertEqual(status, 204)
        status, body = yield self.call("GET", "/api/v1/devices/1")
        self.assertEqual(status, 404, body)
        status, body = yield self.call("GET", "/api/v1/terms/10")  # cascaded with the device
        self.assertEqual(status, 404, body)
