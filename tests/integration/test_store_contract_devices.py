"""The collector's store contract (`tests.store.devices_contract`) on a private
redis-server: the same tests MemoryRedis passes, so its script emulations cannot drift."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, reactor
from twisted.trial.unittest import TestCase

from pydatacoll.config import load_settings
from pydatacoll.store.redis import RedisClient
from pydatacoll.testing.redis import shared_redis
from tests.store.devices_contract import DeviceStoreContract


class RedisDeviceStoreTests(DeviceStoreContract, TestCase):
    timeout = 30

    @defer.inlineCallbacks
    def setUp(self) -> Any:
        settings = load_settings(None, {"redis": shared_redis().url})
        self.redis = RedisClient(settings.redis, timeout=2, pool_size=1)
        self.redis.startService()
        self.addCleanup(self.redis.stopService)
        self.clock = reactor
        yield self.redis.when_connected()
        yield self.redis.call("flushdb")
