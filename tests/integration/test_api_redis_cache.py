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

    @inlineCallbacks
    def warm(self, api, path="/api/v1/devices/1"):
        """GET ``path`` on ``api`` until one is answered from its cache (the change
        messages may still be on their way at first)."""
        cache = self.apis[api][1]
        hits = cache.hits
        for _ in range(200):
            status, body = yield self.call(api, "GET", path)
            if cache.hits > hits:
                return status, body
            yield deferLater(reactor, 0.01, lambda: None)
        self.fail(f"API {api} never answered {path} from its cache")

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
        for api in (0, 1):  # and both caches do serve from memory
            status, body = yield self.warm(api, "/api/v1/devices/2")
            self.assertEqual(status, 404, body)

    @inlineCallbacks
    def test_change_while_the_subscription_is_down(self):
        status, body = yield self.call(0, "POST", "/api/v1/devices", DEVICE)
        self.assertEqual(status, 201, body)
        yield self.warm(1)
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
        status, body = yield self.warm(1)
        self.assertEqual(body["name"], "while down")

    @inlineCallbacks
    def test_redis_restarted_empty(self):
        """Redis comes back without its data: no API answers the entity it held."""
        status, body = yield self.call(0, "POST", "/api/v1/devices", DEVICE)
        self.assertEqual(status, 201, body)
        for api in (0, 1):
            status, body = yield self.warm(api)
            self.assertEqual(status, 200, body)
        self.redis.restart()  # not persistent: empty
        for api in (0, 1):
            for _ in range(300):
                status, body = yield self.call(api, "GET", "/api/v1/devices/1")
                if status != 503:
                    break
                yield deferLater(reactor, 0.05, lambda: None)
            self.assertEqual(status, 404, body)

    @inlineCallbacks
    def test_flushall(self):
        """FLUSHALL (no change message, the subscription stays up): the version read is
        below the caches' own, so they are cleared."""
        status, body = yield self.call(0, "POST", "/api/v1/devices", DEVICE)
        self.assertEqual(status, 201, body)
        for api in (0, 1):
            status, body = yield self.warm(api)
            self.assertEqual(status, 200, body)
        yield self.apis[0][2].call("execute_command", "FLUSHALL")
        for api in (0, 1):
            status, body = yield self.call(api, "GET", "/api/v1/devices/1")
            self.assertEqual(status, 404, body)
