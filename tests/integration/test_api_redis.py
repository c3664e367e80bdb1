"""The REST API's route tests (the mixins of tests/api/test_app.py) over real HTTP,
against a private redis-server: what tests/api proves in memory, proved on the real
thing."""

import treq
from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase
from twisted.web.client import HTTPConnectionPool

from pydatacoll.api.app import ApiApp
from pydatacoll.config import load_settings
from pydatacoll.store.config import ConfigStore
from pydatacoll.store.redis import RedisClient
from pydatacoll.store.subscriber import Subscriber
from pydatacoll.testing.redis import RedisView, shared_redis
from tests.api.support import ApiCalls, http_call
from tests.api.test_app import ApiRouteTests, ContractRouteTests, TokenRouteTests
from tests.api.test_gateways import GatewayRouteMixin


class RedisApiCase(ApiCalls, TestCase):
    """The API on a real port over the run's private, flushed redis-server.

    ``sync`` is a `RedisView` over the test's own `RedisClient`: its look-ups return
    Deferreds (the route mixins yield them), nothing blocks the reactor thread.
    """

    token = None
    settings_overrides: dict = {}

    @inlineCallbacks
    def setUp(self):
        server = shared_redis()
        overrides = {"redis": server.url, "api_token": self.token, **self.settings_overrides}
        self.settings = load_settings(None, overrides)
        self.client = RedisClient(self.settings.redis, timeout=5, pool_size=1)
        self.client.startService()
        self.addCleanup(self.client.stopService)
        yield self.client.when_connected()
        self.sync = RedisView(self.client)
        yield self.sync.flushall()
        self.api = self.make_api()
        self.port = reactor.listenTCP(0, self.api.site(), interface="127.0.0.1")
        self.addCleanup(self.port.stopListening)
        self.base = f"http://127.0.0.1:{self.port.getHost().port}"
        self.pool = HTTPConnectionPool(reactor, persistent=False)
        self.addCleanup(self.pool.closeCachedConnections)

    def make_api(self):
        return ApiApp(ConfigStore(self.client), self.settings)

    def digest(self):
        """A Deferred digest of the whole keyspace (the mixins yield it)."""
        return self.sync.digest()

    def redis_down(self):
        return self.client.stopService()

    @inlineCallbacks
    def watch_channels(self, pattern):
        """Start recording messages on channels matching ``pattern``; the returned
        callable fires with [(channel, message text)] published since."""
        messages = []
        subscribed = Deferred()
        watcher = Subscriber(
            reactor,
            lambda: self.settings.redis,
            lambda channel, message: messages.append((channel, message)),
            patterns=[pattern],
            on_subscribed=lambda: None if subscribed.called else subscribed.callback(None),
            name="watch_channels",
        )
        watcher.startService()
        self.addCleanup(watcher.stopService)
        yield subscribed  # the subscription's confirmation

        @inlineCallbacks
        def seen():
            yield deferLater(reactor, 0.1, lambda: None)  # let the last publications land
            return list(messages)

        return seen

    @inlineCallbacks
    def request(self, method, path, data=None, headers=None, **options):
        """One request over real TCP; fires with (response, body bytes)."""
        response = yield treq.request(
            method, self.base + path, data=data, headers=headers, pool=self.pool, **options
        )
        body = yield treq.content(response)
        return response, body


__all__ = ["RedisApiCase", "http_call"]  # http_call: for tests/integration/*


class RedisApiTests(ApiRouteTests, RedisApiCase):
    pass


class RedisTokenTests(TokenRouteTests, RedisApiCase):
    pass


class RedisContractTests(ContractRouteTests, RedisApiCase):
    pass


class RedisGatewayRouteTests(GatewayRouteMixin, RedisApiCase):
    pass
