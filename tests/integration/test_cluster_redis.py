"""The cluster store's contract on a private redis-server (the same as on MemoryRedis),
plus the fencing guard inside a write script, as the ingest script will use it."""

from __future__ import annotations

from typing import Any

from twisted.internet import reactor, task
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.trial.unittest import TestCase

from pydatacoll.config import parse_redis_url
from pydatacoll.store import keys
from pydatacoll.store.cluster import ClusterStore, LuaScript, guarded
from pydatacoll.store.redis import RedisClient
from pydatacoll.testing.redis import shared_redis
from tests.cluster.lease_contract import LEASE, ClusterStoreContract

#: A write script the way the ingest will guard its writes: SET only for the lease holder.
GUARDED_SET = LuaScript(
    guarded(
        "if not lease_is_current(string.format(ARGV[1], ARGV[2]), ARGV[3]) then\n"
        "  return 0\nend\n"
        'redis.call("SET", ARGV[4], ARGV[5])\nreturn 1\n'
    )
)


class RedisClusterStoreTests(ClusterStoreContract, TestCase):
    timeout = 30

    @inlineCallbacks
    def setUp(self) -> Any:
        server = shared_redis()
        self.client = RedisClient(parse_redis_url(server.url), timeout=2.0, pool_size=2)
        self.client.startService()
        self.addCleanup(self.client.stopService)
        yield self.client.when_connected()
        yield self.client.call("flushdb")  # the private server is the tests' own
        self.store = ClusterStore(self.client)

    def wait(self, seconds: float) -> Deferred[None]:
        return task.deferLater(reactor, seconds, lambda: None)

    @inlineCallbacks
    def test_guarded_write_refuses_a_stale_lease(self) -> Any:
        old = yield self.store.acquire("d1", "a:1", LEASE)
        args = [keys.LEASE, "d1", old.token, "written", "by-old"]
        self.assertEqual((yield GUARDED_SET(self.client, args)), 1)
        yield self.wait(LEASE * 1.5)
        new = yield self.store.acquire("d1", "b:2", LEASE)
        # the old holder resumes after a pause: its write is refused, the new one's is not
        self.assertEqual((yield GUARDED_SET(self.client, args)), 0)
        self.assertEqual((yield self.client.call("get", "written")), "by-old")
        args = [keys.LEASE, "d1", new.token, "written", "by-new"]
        self.assertEqual((yield GUARDED_SET(self.client, args)), 1)
        self.assertEqual((yield self.client.call("get", "written")), "by-new")
