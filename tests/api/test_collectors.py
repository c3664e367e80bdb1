"""GET /api/v1/collectors: the live collectors, from their heartbeats in Redis."""

from twisted.internet.defer import inlineCallbacks

from pydatacoll.store.cluster import ClusterStore

from .support import MemoryApiCase


class CollectorsRouteTests(MemoryApiCase):
    @inlineCallbacks
    def test_lists_the_live_collectors_by_id(self):
        status, body = yield self.call("GET", "/api/v1/collectors")
        self.assertEqual((status, body), (200, []))  # no collector in cluster mode
        store = ClusterStore(self.memory)
        started = int(self.clock.seconds() * 1000)
        yield store.heartbeat("site-b:2", devices=5, started_ms=started, ttl=6)
        self.clock.advance(1.5)
        yield store.heartbeat("site-a:1", devices=7, started_ms=started, ttl=6)
        status, body = yield self.call("GET", "/api/v1/collectors")
        self.assertEqual(status, 200)
        self.assertEqual(
            body,
            [
                {
                    "collector": "site-a:1",
                    "devices": 7,
                    "heartbeat_age": 0.0,
                    "started_ms": started,
                },
                {
                    "collector": "site-b:2",
                    "devices": 5,
                    "heartbeat_age": 1.5,
                    "started_ms": started,
                },
            ],
        )
        self.clock.advance(5)  # site-b's heartbeat (6 s) has expired: it is gone
        status, body = yield self.call("GET", "/api/v1/collectors")
        self.assertEqual([c["collector"] for c in body], ["site-a:1"])

    @inlineCallbacks
    def test_redis_away_is_503(self):
        self.redis_down()
        status, body = yield self.call("GET", "/api/v1/collectors")
        self.assertEqual(status, 503, body)

    @inlineCallbacks
    def test_in_the_openapi_document(self):
        status, document = yield self.call("GET", "/api/v1/openapi.json")
        operation = document["paths"]["/api/v1/collectors"]["get"]
        schema = operation["responses"]["200"]["content"]["application/json"]["schema"]
        self.assertEqual(schema["items"], {"$ref": "#/components/schemas/Collector"})
        self.assertIn("heartbeat_age", document["components"]["schemas"]["Collector"]["required"])
