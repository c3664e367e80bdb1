"""The cluster store on MemoryRedis (the same contract runs on a real redis-server)."""

from __future__ import annotations

from twisted.internet import task
from twisted.internet.defer import Deferred, succeed
from twisted.trial.unittest import TestCase

from pydatacoll.errors import StoreUnavailable
from pydatacoll.store.cluster import LEASE_GUARD, ClusterStore, guarded
from pydatacoll.testing.memory import MemoryRedis
from tests.cluster.lease_contract import LEASE, ClusterStoreContract


class MemoryClusterStoreTests(ClusterStoreContract, TestCase):
    def setUp(self) -> None:
        self.clock = task.Clock()
        self.clock.advance(1_700_000_000)
        self.redis = MemoryRedis()
        self.redis.clock = self.clock
        self.store = ClusterStore(self.redis)

    def wait(self, seconds: float) -> Deferred[None]:
        self.clock.advance(seconds)
        return succeed(None)

    def test_unreachable_redis_fails_with_store_unavailable(self) -> None:
        self.redis.down()
        self.failureResultOf(self.store.acquire("d1", "a:1", LEASE), StoreUnavailable)
        self.failureResultOf(self.store.collectors(), StoreUnavailable)

    def test_scripts_are_sent_by_sha(self) -> None:
        self.successResultOf(self.store.acquire("d1", "a:1", LEASE))
        self.assertEqual(self.redis.calls[-1][0], "evalsha")

    def test_guard_is_a_prefix_for_write_scripts(self) -> None:
        text = guarded("return 1")
        self.assertTrue(text.startswith(LEASE_GUARD))
        self.assertIn("local function lease_is_current(lease_key, token)", text)
