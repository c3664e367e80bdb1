"""The gateway routes in memory: CRUD, validation, changes (the mixin runs over a private
redis-server too, in tests/integration/test_api_redis.py)."""

import json

from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase

from pydatacoll.api.app import route_table
from pydatacoll.api.openapi import document
from tests.api.support import MemoryApiCase

GATEWAY = {"id": "scada", "protocol": "iec104", "listen": "tcp:2405", "common_address": 3}
POINT = {"ioa": 1001, "type_id": 13, "device_id": "1", "term_id": "10", "item_id": "1000"}


class GatewayRouteMixin:
    """Gateway route tests for a harness of tests/api/support.py."""

    @inlineCallbacks
    def setUp(self):
        yield super().setUp()
        yield self.seed()  # device 1, term 10, item 1000 and their point

    @inlineCallbacks
    def test_crud(self):
        status, created = yield self.call("POST", "/api/v1/gateways", GATEWAY)
        self.assertEqual((status, created), (201, GATEWAY))
        status, ids = yield self.call("GET", "/api/v1/gateways")
        self.assertEqual((status, ids), (200, ["scada"]))
        status, point = yield self.call(
            "POST", "/api/v1/gateways/scada/points", {**POINT, "command": False, "groups": [2, 1]}
        )
        self.assertEqual((status, point["gateway_id"], point["groups"]), (201, "scada", [1, 2]))
        status, points = yield self.call("GET", "/api/v1/gateways/scada/points")
        self.assertEqual((status, [p["ioa"] for p in points]), (200, [1001]))
        status, point = yield self.call(
            "PUT", "/api/v1/gateways/scada/points/1001", {"type_id": 36}
        )
        self.assertEqual((status, point["type_id"], point["item_id"]), (200, 36, "1000"))
        status, gateway = yield self.call("PUT", "/api/v1/gateways/scada", {"clock_sync": False})
        self.assertEqual(
            (status, gateway["clock_sync"], gateway["listen"]), (200, False, "tcp:2405")
        )
        status, got = yield self.call("GET", "/api/v1/gateways/scada/points/1001")
        self.assertEqual((status, got["type_id"]), (200, 36))
        status, body = yield self.call("GET", "/api/v1/gateways/scada/status")
        self.assertEqual((status, body["state"]), (200, "unknown"))  # no gateway process here
        status, _ = yield self.call("DELETE", "/api/v1/gateways/scada/points/1001")
        self.assertEqual(status, 204)
        status, error = yield self.call("GET", "/api/v1/gateways/scada/points/1001")
        self.assertEqual((status, error["field"]), (404, "ioa"))
        yield self.call("POST", "/api/v1/gateways/scada/points", POINT)
        status, _ = yield self.call("DELETE", "/api/v1/gateways/scada")
        self.assertEqual(status, 204)
        # the points went with the gateway
        self.assertEqual((yield self.sync.keys("*GATEWAY_POINT*")), [])
        status, error = yield self.call("GET", "/api/v1/gateways/scada")
        self.assertEqual((status, error["error"], error["field"]), (404, "not_found", "gateway_id"))

    @inlineCallbacks
    def test_validation_names_the_field(self):
        cases = [
            ({**GATEWAY, "protocol": "modbus"}, "protocol"),
            ({**GATEWAY, "listen": "nonsense:1"}, "listen"),
            ({**GATEWAY, "common_address": 0}, "common_address"),
            ({**GATEWAY, "k": 4, "w": 8}, "w"),
            ({**GATEWAY, "allowed_clients": ["not an address"]}, "allowed_clients"),
            ({**GATEWAY, "clock_sync": "yes"}, "clock_sync"),
            ({**GATEWAY, "event_queue": 1}, "event_queue"),
            ({"protocol": "iec104"}, "id"),
            ({**GATEWAY, "tls_ca": "/ca.pem"}, "tls_cert"),
            ({**GATEWAY, "redundancy_groups": [["10.0.0.1"], ["10.0.0.1"]]}, "redundancy_groups"),
            ({**GATEWAY, "redundancy_groups": [[]]}, "redundancy_groups"),
            ({**GATEWAY, "redundancy_groups": ["10.0.0.1"]}, "redundancy_groups"),
            ({**GATEWAY, "tls_fingerprints": ["nope"]}, "tls_fingerprints"),
        ]
        for body, field in cases:
            status, error = yield self.call("POST", "/api/v1/gateways", body)
            self.assertEqual(
                (status, error["error"], error["field"]), (400, "invalid", field), body
            )
        yield self.call("POST", "/api/v1/gateways", GATEWAY)
        status, error = yield self.call("POST", "/api/v1/gateways", GATEWAY)
        self.assertEqual((status, error["field"]), (409, "id"))
        point_cases = [
            ({**POINT, "type_id": 45}, 400, "type_id"),
            ({**POINT, "ioa": 0}, 400, "ioa"),
            ({**POINT, "type_id": 15, "command": True}, 400, "command"),
            ({**POINT, "command_type": 60}, 400, "command_type"),
            ({**POINT, "groups": [17]}, 400, "groups"),
            ({**POINT, "gateway_id": "other"}, 409, "gateway_id"),  # as term_id in app.py
            ({**POINT, "item_id": "9999"}, 404, "item_id"),
        ]
        for body, code, field in point_cases:
            status, error = yield self.call("POST", "/api/v1/gateways/scada/points", body)
            self.assertEqual((status, error["field"]), (code, field), body)
        status, error = yield self.call("POST", "/api/v1/gateways/nope/points", POINT)
        self.assertEqual((status, error["field"]), (404, "gateway_id"))
        yield self.call("POST", "/api/v1/gateways/scada/points", POINT)
        status, error = yield self.call("POST", "/api/v1/gateways/scada/points", POINT)
        self.assertEqual((status, error["field"]), (409, "ioa"))
        status, error = yield self.call("GET", "/api/v1/gateways/scada/points/abc")
        self.assertEqual((status, error["field"]), (404, "ioa"))

    @inlineCallbacks
    def test_integral_numbers_are_integers(self):
        """A group written 2.0 is the group 2 (JSON Schema's integer, which the document
        publishes, takes 2.0); 2.5 is refused."""
        yield self.call("POST", "/api/v1/gateways", GATEWAY)
        status, point = yield self.call(
            "POST", "/api/v1/gateways/scada/points", {**POINT, "groups": [2.0, 1, 2]}
        )
        self.assertEqual((status, point["groups"]), (201, [1, 2]))
        status, error = yield self.call(
            "PUT", "/api/v1/gateways/scada/points/1001", {"groups": [2.5]}
        )
        self.assertEqual((status, error["field"]), (400, "groups"))

    @inlineCallbacks
    def test_batch_points_all_or_nothing(self):
        yield self.call("POST", "/api/v1/gateways", GATEWAY)
        good = [{**POINT, "ioa": i} for i in (1, 2, 3)]
        status, error = yield self.call(
            "POST", "/api/v2/gateways/scada/points", [*good, {**POINT, "ioa": 4, "type_id": 2}]
        )
        self.assertEqual((status, error["field"], error["index"]), (400, "type_id", 3))
        status, stored = yield self.call("POST", "/api/v2/gateways/scada/points", good)
        self.assertEqual((status, [p["ioa"] for p in stored]), (200, [1, 2, 3]))
        status, _ = yield self.call("POST", "/api/v2/gateways/scada/points/del", [1, 3])
        self.assertEqual(status, 204)
        status, points = yield self.call("GET", "/api/v1/gateways/scada/points")
        self.assertEqual([p["ioa"] for p in points], [2])

    @inlineCallbacks
    def test_changes_are_announced(self):
        """Each change is a message on its channel (what a running gateway follows)."""
        watched = yield self.watch_channels("CHANNEL:GATEWAY*")
        yield self.call("POST", "/api/v1/gateways", GATEWAY)
        yield self.call("POST", "/api/v1/gateways/scada/points", POINT)
        yield self.call("DELETE", "/api/v1/gateways/scada")
        seen = [(channel, json.loads(text)["op"]) for channel, text in (yield watched())]
        self.assertEqual(
            seen,
            [
                ("CHANNEL:GATEWAY_ADD", "add"),
                ("CHANNEL:GATEWAY_POINT_ADD", "add"),
                ("CHANNEL:GATEWAY_DEL", "del"),
            ],
        )

    def test_openapi_documents_every_gateway_route(self):
        paths = document(self.api.app)["paths"]
        routes = [(m, p) for m, p in route_table(self.api.app) if "/gateways" in p]
        self.assertEqual(len(routes), 13)
        for method, path in routes:
            self.assertIn(method.lower(), paths[path])
        schemas = document(self.api.app)["components"]["schemas"]
        post = paths["/api/v1/gateways/{gateway_id}/points"]["post"]
        self.assertEqual(
            post["requestBody"]["content"]["application/json"]["schema"],
            {"$ref": "#/components/schemas/gateway_point"},
        )
        self.assertIn("allowed_clients", schemas["gateway"]["properties"])
        groups = schemas["gateway_point"]["properties"]["groups"]  # optional: or null
        self.assertEqual(groups["anyOf"][1], {"type": "null"})
        self.assertEqual(groups["anyOf"][0]["type"], "array")
        self.assertEqual(
            groups["anyOf"][0]["items"], {"type": "integer", "minimum": 1, "maximum": 16}
        )
        clients = schemas["gateway"]["properties"]["allowed_clients"]["anyOf"][0]
        self.assertEqual((clients["type"], clients["maxItems"]), ("array", 64))
        self.assertEqual(clients["items"]["type"], "string")


class GatewayRouteTests(GatewayRouteMixin, MemoryApiCase):
    pass


class GatewayRoleTests(TestCase):
    def test_roles(self):
        """The gateway runs in the all and gateway roles, with its own reply listener; the
        commands of the API and the gateway have a connection of their own."""
        from twisted.internet import reactor

        from pydatacoll.config import load_settings
        from pydatacoll.service import make_root_service

        for role, names in (
            (
                "all",
                [
                    "command-redis",
                    *("collector", "replies", "stream", "config-cache", "api"),
                    *("gateway-replies", "gateway"),
                ],
            ),
            ("gateway", ["command-redis", "gateway-replies", "gateway"]),
            ("collector", ["collector"]),
            ("api", ["command-redis", "replies", "stream", "config-cache", "api"]),
        ):
            settings = load_settings(None, {"redis": "redis://127.0.0.1:1/0", "role": role})
            children = [s.name for s in make_root_service(settings, reactor)]
            self.assertEqual(children, ["redis", *names], role)
