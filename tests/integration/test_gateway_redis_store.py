"""The gateway's store over a private redis-server: the contract's real half (the same
tests run over `MemoryRedis` in tests/store/test_gateway_store.py)."""

from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase

from pydatacoll.config import load_settings
from pydatacoll.store.redis import RedisClient
from pydatacoll.testing.redis import shared_redis
from tests.store.test_gateway_store import GatewayStoreContract


class RealGatewayStoreTests(GatewayStoreContract, TestCase):
    @inlineCallbacks
    def setUp(self):
        settings = load_settings(None, {"redis": shared_redis().url})
        self.redis = RedisClient(settings.redis, timeout=5, pool_size=1)
        self.redis.startService()
        self.addCleanup(self.redis.stopService)
        yield self.redis.when_connected()
        yield self.redis.call("flushdb")
