"""`ConfigCache` and config.lua's history on a private redis-server (never 6379)."""

from __future__ import annotations

import json
import socket
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from pydatacoll.config import load_settings
from pydatacoll.store import keys, subscriber
from pydatacoll.store.config import ConfigStore
from pydatacoll.store.config_cache import ConfigCache, redis_subscription
from pydatacoll.store.redis import RedisClient
from pydatacoll.testing.redis import PrivateRedis
from tests.store.test_config_cache import device_op, name_of


class RealRedisCase(TestCase):
    timeout = 60

    def setUp(self) -> None:
        self.redis = PrivateRedis()
        self.addCleanup(self.redis.stop)

    @inlineCallbacks
    def client(self, db: int) -> Any:
        settings = load_settings(None, {"redis": f"{self.redis.url.rsplit('/', 1)[0]}/{db}"})
        client = RedisClient(settings.redis, timeout=5, pool_size=4)
        client.startService()
        self.addCleanup(client.stopService)
        yield client.when_connected()
        return client

    @inlineCallbacks
    def cache_on(self, client: Any) -> Any:
        cache: ConfigCache[Any] = ConfigCache(
            client, redis_subscription(client, reactor), 100, reactor
        )
        cache.startService()
        self.addCleanup(cache.stopService)
        for _ in range(500):
            if cache.seen is not None:
                return cache
            yield deferLater(reactor, 0.01, lambda: None)
        self.fail("never subscribed")


class OtherDatabaseTests(RealRedisCase):
    @inlineCallbacks
    def test_db1_changes_do_not_move_db0_cache(self) -> None:
        """PUBLISH ignores SELECT: db 1's change messages reach db 0's cache, which must
        not count them (another history); its reads are still served from memory."""
        db0 = yield self.client(0)
        db1 = yield self.client(1)
        yield ConfigStore(db0).apply([device_op("create", "1", "here")])
        cache = yield self.cache_on(db0)
        for i in range(5):
            kind = "create" if i == 0 else "put"
            yield ConfigStore(db1).apply([device_op(kind, "7", f"n{i}")])
        yield deferLater(reactor, 0.2, lambda: None)
        self.assertEqual(cache.seen, 1)
        for _ in range(3):
            self.assertEqual((yield cache.read("device", "1", name_of)), "here")
        self.assertEqual((cache.hits, cache.misses, cache.resets["history"]), (2, 1, 0))


class HistoryTests(RealRedisCase):
    @inlineCallbacks
    def test_history_kept_and_stamped_per_change(self) -> None:
        """config.lua: the origin is set by the first change and kept, the stamp moves,
        and each message carries STR:CONFIG_HISTORY as it was after its change."""
        db0 = yield self.client(0)
        heard: list[dict[str, Any]] = []
        cache = yield self.cache_on(db0)
        handler = cache._message
        cache.subscriber.handler = lambda c, m: (heard.append(json.loads(m)), handler(c, m))
        store = ConfigStore(db0)
        yield store.apply([device_op("create", "1", "a")])
        first = yield db0.call("get", keys.CONFIG_HISTORY)
        yield store.apply([device_op("put", "1", "b")])
        second = yield db0.call("get", keys.CONFIG_HISTORY)
        origin = first.partition(":")[0]
        self.assertEqual(second.partition(":")[0], origin)
        self.assertNotEqual(first, second)
        yield db0.call("flushall")
        yield store.apply([device_op("create", "1", "c")])
        third = yield db0.call("get", keys.CONFIG_HISTORY)
        self.assertNotEqual(third.partition(":")[0], origin)
        for _ in range(100):
            if len(heard) == 3:
                break
            yield deferLater(reactor, 0.01, lambda: None)
        self.assertEqual([m["history"] for m in heard], [first, second, third])


class LivenessTests(RealRedisCase):
    @inlineCallbacks
    def test_subscription_has_tcp_keepalive(self) -> None:
        """The subscription sends nothing once subscribed: without TCP keepalive a master
        gone silently (its replica promoted) leaves it "subscribed" for hours, deaf."""
        db0 = yield self.client(0)
        cache = yield self.cache_on(db0)
        sock = cache.subscriber._conn.transport.getHandle()
        self.assertEqual(sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE), 1)
        self.assertEqual(
            sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE), subscriber.KEEPALIVE_IDLE
        )
        self.assertEqual(
            sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT), subscriber.KEEPALIVE_COUNT
        )


class BadVersionTests(RealRedisCase):
    @inlineCallbacks
    def test_change_refused_and_nothing_cached_when_the_version_is_bad(self) -> None:
        """STR:CONFIG_VERSION made a non-number: config.lua used to write the hash, then
        fail at INCR (no message), while the cache took the version as 0 and kept
        serving the old state. Now the change writes nothing and no read is cached."""
        db0 = yield self.client(0)
        store = ConfigStore(db0)
        yield store.apply([device_op("create", "1", "first")])
        cache = yield self.cache_on(db0)
        yield db0.call("set", keys.CONFIG_VERSION, "not a number")
        for _ in range(3):
            self.assertEqual((yield cache.read("device", "1", name_of)), "first")
        self.assertEqual((cache.hits, cache.entries), (0, {}))
        try:
            yield store.apply([device_op("put", "1", "second")])
        except Exception as e:
            self.assertIn("cannot be incremented", str(e))
        else:
            self.fail("applied over a bad version")
        stored = yield db0.call("hget", "HS:DEVICE:1", "name")
        self.assertEqual(stored, '"first"')
        self.assertEqual((yield cache.read("device", "1", name_of)), "first")
