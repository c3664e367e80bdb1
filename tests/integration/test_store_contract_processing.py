"""The processors' stores over a private redis-server: the contract's real half (the same
tests run over `MemoryRedis` in tests/processing/test_store_contract.py)."""

from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase

from pydatacoll.config import load_settings
from pydatacoll.store.redis import RedisClient
from pydatacoll.testing.redis import shared_redis
from tests.processing.store_contract import ProcessingStoreContract


class RealProcessingStoreTests(ProcessingStoreContract, TestCase):
    @inlineCallbacks
    def setUp(self):
        settings = load_settings(None, {"redis": shared_redis().url})
        self.redis = RedisClient(settings.redis, timeout=5, pool_size=1)
        self.redis.startService()
        self.addCleanup(self.redis.stopService)
        yield self.redis.when_connected()
        yield self.redis.call("flushdb")
