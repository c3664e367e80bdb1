"""The processors' REST routes over real HTTP against a private Redis."""

import json
import time

import treq
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase
from twisted.web.client import HTTPConnectionPool

from pydatacoll.api.app import ApiApp
from pydatacoll.model import Sample, iso_time
from tests.processing.support import redis_store, store_sample

F1 = {
    "id": "1",
    "formula": "p1 * 2",
    "device_id": "1",
    "term_id": "10",
    "item_id": "1002",
    "p1": "1:10:1000",
}


class RouteTests(TestCase):
    @inlineCallbacks
    def setUp(self):
        yield redis_store(self)
        api = ApiApp(self.store, self.settings)
        self.port = reactor.listenTCP(0, api.site(), interface="127.0.0.1")
        self.addCleanup(self.port.stopListening)
        self.base = f"http://127.0.0.1:{self.port.getHost().port}"
        self.pool = HTTPConnectionPool(reactor, persistent=False)
        self.addCleanup(self.pool.closeCachedConnections)

    @inlineCallbacks
    def call(self, method, path, body=None, raw=None):
        headers = {b"Content-Type": [b"application/json"]}
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        response = yield treq.request(
            method, self.base + path, data=data, headers=headers, pool=self.pool
        )
        text = (yield treq.content(response)).decode()
        return response.code, (json.loads(text) if text else None)

    def digest(self):
        return self.client.call("execute_command", "DEBUG", "DIGEST")

    def members(self, key):
        return self.client.call("smembers", key).addCallback(set)

    @inlineCallbacks
    def test_formula_crud(self):
        self.assertEqual((yield self.call("POST", "/api/v1/formulas", F1))[0], 201)
        self.assertEqual((yield self.call("GET", "/api/v1/formulas")), (200, ["1"]))
        status, stored = yield self.call("GET", "/api/v1/formulas/1")
        self.assertEqual((status, stored["p1"]), (200, "1:10:1000"))
        status, error = yield self.call("POST", "/api/v1/formulas", F1)
        self.assertEqual((status, error["field"]), (409, "id"))
        status, changed = yield self.call(
            "PUT", "/api/v1/formulas/1", {"formula": "p1 + p2", "p2": "1:10:1001"}
        )
        self.assertEqual((status, changed["p2"]), (200, "1:10:1001"))
        self.assertEqual((yield self.members("SET:FORMULA_PARAM:1:10:1001")), {"1"})
        status, state = yield self.call("GET", "/api/v1/formulas/1/status")
        self.assertEqual((status, state["state"]), (200, "disabled"))
        self.assertEqual((yield self.call("DELETE", "/api/v1/formulas/1"))[0], 204)
        status, error = yield self.call("GET", "/api/v1/formulas/1")
        self.assertEqual((status, error["field"]), (404, "formula_id"))
        self.assertEqual((yield self.call("DELETE", "/api/v1/formulas/1"))[0], 404)

    @inlineCallbacks
    def test_hostile_bodies_name_the_field_and_write_nothing(self):
        before = yield self.digest()
        cases = [
            ({**F1, "formula": "__import__('os').system('id')"}, 400, "formula"),
            ({**F1, "formula": "open('/etc/passwd').read()"}, 400, "formula"),
            ({**F1, "formula": "9**9**9 + p1"}, 201, None),  # refused when evaluated
            ({**F1, "p1": "1:10"}, 400, "p1"),
            ({**F1, "p1": 5}, 400, "p1"),
            ({**F1, "p1": "1:10:9999"}, 404, "p1"),
            ({**F1, "item_id": "1000"}, 409, "p1"),
            ({**F1, "formula": "p2"}, 400, "formula"),
            ({**F1, "formula": ["p1"]}, 400, "formula"),
            ({**F1, "formula": "x" * 5000}, 400, "formula"),
            ({**F1, "device_id": None}, 400, "device_id"),
            ({**F1, "p1000": "1:10:1000"}, 400, "p1000"),
            ([F1], 400, None),
            ("formula", 400, None),
        ]
        for body, code, field in cases:
            status, error = yield self.call("POST", "/api/v1/formulas", body)
            self.assertEqual((status, error.get("field")), (code, field), body)
            if status == 201:
                yield self.call("DELETE", "/api/v1/formulas/1")
                before = yield self.digest()
        self.assertEqual((yield self.digest()), before)
        status, error = yield self.call("POST", "/api/v1/formulas", raw=b"{not json")
        self.assertEqual(status, 400)

    @inlineCallbacks
    def test_batch_is_all_or_nothing(self):
        before = yield self.digest()
        second = {**F1, "id": "2", "item_id": "1003", "p1": "1:10:1002"}
        cycle = {**F1, "id": "3", "item_id": "1000", "p1": "1:10:1003"}
        status, error = yield self.call("POST", "/api/v2/formulas", [F1, second, cycle])
        self.assertEqual((status, error["field"], error["index"]), (409, "p1", 2))
        self.assertEqual((yield self.digest()), before)
        status, stored = yield self.call("POST", "/api/v2/formulas", [F1, second])
        self.assertEqual((status, len(stored)), (200, 2))
        status, error = yield self.call("POST", "/api/v2/formulas/del", ["1", "9"])
        self.assertEqual((status, error["index"]), (404, 1))
        self.assertEqual((yield self.members("SET:FORMULA")), {"1", "2"})
        self.assertEqual((yield self.call("POST", "/api/v2/formulas/del", ["1", "2"]))[0], 204)
        self.assertEqual((yield self.members("SET:FORMULA")), set())

    @inlineCallbacks
    def test_formula_check(self):
        yield store_sample(
            self.client, Sample("1", "10", "1000", 5.0, "questionable", (), None, 0.0)
        )
        check = "/api/v1/formula_check"
        self.assertEqual(
            (yield self.call("POST", check, {"formula": "p1[-1]+10", "p1": "1:10:1000"}))[1][
                "field"
            ],
            "formula",
        )
        self.assertEqual(
            (yield self.call("POST", check, {"formula": "p1 + 10", "p1": "1:10:1000"})),
            (200, {"ok": True, "value": 15.0, "quality": "questionable"}),
        )
        status, result = yield self.call("POST", check, {"formula": "p1+p2", "p1": "1:10:1000"})
        self.assertEqual((status, result["ok"], result["field"]), (200, False, "formula"))
        self.assertIn("p2", result["message"])
        status, result = yield self.call("POST", check, {"formula": "p1", "p1": "123:45:6"})
        self.assertEqual(result["message"], "parameter not found: p1=123:45:6")
        status, result = yield self.call("POST", check, {"formula": "9**9**9"})
        self.assertIn("power was refused", result["message"])
        status, result = yield self.call("POST", check, {"formula": "p1 / 0", "p1": "1:10:1000"})
        self.assertEqual(result["message"], "division by zero")
        status, result = yield self.call("POST", check, {"formula": 1})
        self.assertEqual((status, result["field"]), (400, "formula"))

    @inlineCallbacks
    def test_alarms_and_plugins(self):
        for n in range(5):
            event = {"event": "raise" if n % 2 == 0 else "clear", "kind": "high", "n": n}
            yield self.client.call(
                "execute_command", "XADD", "XS:ALARM_LOG", "*", "event", json.dumps(event)
            )
        yield self.client.call(
            "hset", "HS:ALARM", "1:10:1000:high", json.dumps({"event": "raise", "n": 4})
        )
        self.assertEqual(
            (yield self.call("GET", "/api/v1/alarms")), (200, [{"event": "raise", "n": 4}])
        )
        status, events = yield self.call("GET", "/api/v1/alarms/history?limit=3")
        self.assertEqual([e["n"] for e in events], [4, 3, 2])
        self.assertIn("id", events[0])
        status, events = yield self.call("GET", "/api/v1/alarms/history?until=2000-01-01T00:00:00Z")
        self.assertEqual((status, events), (200, []))
        status, error = yield self.call("GET", "/api/v1/alarms/history?since=yesterday")
        self.assertEqual((status, error["field"]), (400, "since"))
        status, error = yield self.call("GET", "/api/v1/alarms/history?limit=0")
        self.assertEqual((status, error["field"]), (400, "limit"))

    @inlineCallbacks
    def test_plugins_listed_from_discovery_with_collectors_from_heartbeats(self):
        """Without a collector in this process, every installed plugin is listed at once
        (enabled or not); its state comes from the collectors' fresh heartbeats only: a
        previous process's status or a stale heartbeat says nothing."""
        yield self.client.call(
            "hset", "HS:PLUGIN_STATUS", "limits", json.dumps({"name": "limits", "state": "running"})
        )
        status, plugins = yield self.call("GET", "/api/v1/plugins")
        by_name = {p["name"]: p for p in plugins}
        self.assertEqual(status, 200)
        self.assertTrue({"formulas", "limits", "history"} <= set(by_name))
        self.assertEqual(by_name["limits"]["state"], "not_running")
        self.assertEqual(by_name["limits"]["collectors"], 0)
        self.assertEqual(
            (by_name["formulas"]["enabled"], by_name["history"]["enabled"]), (True, False)
        )
        self.assertTrue(by_name["history"]["description"])
        yield self.client.call(
            "hset", "HS:PLUGIN_RUNNING:limits", "other", iso_time(time.time() - 1)
        )
        yield self.client.call(
            "hset", "HS:PLUGIN_RUNNING:formulas", "gone", iso_time(time.time() - 600)
        )
        by_name = {p["name"]: p for p in (yield self.call("GET", "/api/v1/plugins"))[1]}
        self.assertEqual(
            (by_name["limits"]["state"], by_name["limits"]["collectors"]), ("running", 1)
        )
        self.assertEqual(by_name["formulas"]["state"], "not_running")

    @inlineCallbacks
    def test_formulas_and_limits_say_when_their_plugin_runs_nowhere(self):
        """A formula or a limit whose plugin runs in no collector is not a silent no-op:
        the create answer carries a warning and the formula's status says disabled."""
        status, created = yield self.call("POST", "/api/v1/formulas", F1)
        self.assertEqual(status, 201)
        self.assertIn("formulas plugin runs in no collector", created["warning"])
        status, state = yield self.call("GET", "/api/v1/formulas/1/status")
        self.assertEqual((status, state["state"]), (200, "disabled"))
        self.assertIn("[plugins] enabled", state["error"])
        status, changed = yield self.call("PUT", "/api/v1/terms/10/items/1003", {"up_limit": 5})
        self.assertEqual(status, 200, changed)
        self.assertIn("limits plugin runs in no collector", changed["warning"])
        status, plain = yield self.call("PUT", "/api/v1/terms/10/items/1004", {"name": "x"})
        self.assertNotIn("warning", plain)
        status, batch = yield self.call(
            "POST", "/api/v2/formulas", [{**F1, "id": "9", "item_id": "1004"}]
        )
        self.assertEqual(status, 200)
        self.assertIn("formulas plugin runs in no collector", batch[0]["warning"])
        status, batch = yield self.call(
            "POST",
            "/api/v2/term_items",
            [
                {"term_id": "10", "item_id": "1004", "protocol_code": 104, "lolo_limit": 1},
                {"term_id": "10", "item_id": "1001", "protocol_code": 101},
            ],
        )
        self.assertEqual(status, 200, batch)
        self.assertIn("limits plugin runs in no collector", batch[0]["warning"])
        self.assertNotIn("warning", batch[1])
        # a collector reports both plugins running: no warning, the stored status is shown
        for name in ("formulas", "limits"):
            yield self.client.call("hset", f"HS:PLUGIN_RUNNING:{name}", "c1", iso_time(time.time()))
        status, created = yield self.call(
            "POST", "/api/v1/formulas", {**F1, "id": "2", "item_id": "1005"}
        )
        self.assertEqual(status, 201)
        self.assertNotIn("warning", created)
        self.assertEqual(
            (yield self.call("GET", "/api/v1/formulas/2/status"))[1]["state"], "unknown"
        )
        status, changed = yield self.call("PUT", "/api/v1/terms/10/items/1003", {"up_limit": 6})
        self.assertNotIn("warning", changed)
