"""Two API processes' worth of `ApiApp` (each with its own Redis pool, configuration
cache and subscription) on one private redis-server: a change acknowledged by one is
read at once by the other, whatever the cache holds (read-your-writes across API
processes), also across a lost subscription."""

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase
from twisted.web.client import HTTPConnectionPool

from pydatacoll.api.app import ApiApp
from pydatacoll.config import load_settings
from pydatacoll.store.config import ConfigStore
from pydatacoll.store.config_cache import ConfigCache, redis_subscription
from pydatacoll.store.redis import RedisClient
from pydatacoll.testing.fixtures import DEVICE
from pydatacoll.testing.redis import PrivateRedis
from tests.api.support import http_call


class TwoApisTests(TestCase):
    timeout = 120

    @inlineCallbacks
    def setUp(self):
        self.redis = PrivateRedis()
        self.addCleanup(self.redis.stop)
        self.settings = load_settings(None, {"redis": self.redis.url})
        self.pool = HTTPConnectionPool(reactor, persistent=True)
        self.addCleanup(self.pool.closeCachedConnections)
        self.apis = []
        for _ in range(2):
            client = RedisClient(self.settings.redis, timeout=5, pool_size=2)
            client.startService()
            self.addCleanup(client.stopService)
            yield client.when_connected()
            cache = ConfigCache(client, redis_subscription(client, reactor), 1000, reactor)
            cache.startService()
            self.addCleanup(cache.stopService)
            api = ApiApp(ConfigStore(client), self.settings, config_cache=cache)
            port = reactor.listenTCP(0, api.site(), interface="127.0.0.1")
            self.addCleanup(port.stopListening)
            self.apis.append((f"http://127.0.0.1:{port.getHost().port}", cache, client))
        yield self.subscribed()

    @inlineCallbacks
    def subscribed(self):
        for _ in range(500):
            if all(cache.seen is not None for _, cache, _ in self.apis):
                return
            yield deferLater(reactor, 0.01, lambda: None)
        self.fail("the caches never subscribed")

    def call(self, api, method, path, body=None):
        return http_call(self.apis[api][0] + path, method, self.pool, body)

    @inlineCallbacks
    def test_change_on_one_api_read_at_once_on_the_other(self):
        status, body = yield self.call(0, "POST", "/api/v1/devices", DEVICE)
        self.assertEqual(status, 201, body)
        for i in range(150):
            writer, reader = i % 2, 1 - i % 2
            status, body = yield self.call(writer, "PUT", "/api/v1/devices/1", {"name": f"n{i}"})
            self.assertEqual(status, 200, body)
            # The reader's cache may hold the previous name (its change message may
            # still be on its way): the answer must be the new one nonetheless.
            for api in (reader, writer, reader):
                status, body = yield self.call(api, "GET", "/api/v1/devices/1")
                self.assertEqual((status, body["name"]), (200, f"n{i}"), (i, api))
        status, _ = yield self.call(1, "DELETE", "/api/v1/devices/1")
        self.assertEqual(status, 204)
        status, body = yield self.call(0, "GET", "/api/v1/devices/1")
        self.assertEqual(status, 404, body)
        hits = [cache.hits for _, cache, _ in self.apis]
        self.assertTrue(all(hits), f"the caches served nothing from memory: {hits}")

    @inlineCallbacks
    def test_change_while_the_subscription_is_down(self):
        status, body = yield self.call(0, "POST", "/api/v1/devices", DEVICE)
        self.assertEqual(status, 201, body)
        for _ in range(2):  # the second read comes from memory (once the message came)
            status, body = yield self.call(1, "GET", "/api/v1/devices/1")
        _, cache, client = self.apis[1]
        # Cut the subscriptions; the change is published while they are down.
        yield client.call("execute_command", "CLIENT", "KILL", "TYPE", "pubsub")
        for _ in range(100):
            if cache.seen is None:
                break
            yield deferLater(reactor, 0.01, lambda: None)
        self.assertIsNone(cache.seen, "the cache did not see its subscription go")
        status, body = yield self.call(0, "PUT", "/api/v1/devices/1", {"name": "while down"})
        self.assertEqual(status, 200, body)
        status, body = yield self.call(1, "GET", "/api/v1/devices/1")
        self.assertEqual(body["name"], "while down")
        yield self.subscribed()
        for _ in range(3):
            status, body = yield self.call(1, "GET", "/api/v1/devices/1")
            self.assertEqual(body["name"], "while down")
        self.assertGreater(cache.hits, 0)
