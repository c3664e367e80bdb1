"""The store contracts over a private redis-server (the same mixins as tests/store run
over `MemoryRedis`): what passes in both proves the in-memory emulation equals Redis."""

from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase

from pydatacoll.config import load_settings
from pydatacoll.store.redis import RedisClient
from pydatacoll.testing.redis import RedisView, shared_redis
from tests.store.commands_contract import CommandStoreContract
from tests.store.contract import (
    ConfigStoreContract,
    EventStoreContract,
    LiveStoreContract,
    PointStoreContract,
    SnapshotContract,
)


class RedisStoreCase(TestCase):
    """``self.redis``: a started `RedisClient` on the run's private, flushed server."""

    @inlineCallbacks
    def setUp(self):
        server = shared_redis()
        settings = load_settings(None, {"redis": server.url})
        self.redis = RedisClient(settings.redis, timeout=5, pool_size=1)
        self.redis.startService()
        self.addCleanup(self.redis.stopService)
        yield self.redis.when_connected()
        self.view = RedisView(self.redis)
        yield self.view.flushall()

    def digest(self):
        return self.view.digest()


class RedisConfigStoreTests(RedisStoreCase, ConfigStoreContract):
    pass


class RedisPointStoreTests(RedisStoreCase, PointStoreContract):
    pass


class RedisEventStoreTests(RedisStoreCase, EventStoreContract):
    pass


class RedisSnapshotTests(RedisStoreCase, SnapshotContract):
    pass


class RedisLiveStoreTests(RedisStoreCase, LiveStoreContract):
    pass


class RedisCommandStoreTests(RedisStoreCase, CommandStoreContract):
    pass
