"""`ConfigCache`'s bounds: messages kept while the base is read, entries (least recently
used dropped first), entries of entities not stored."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from pydatacoll.store import config_cache
from pydatacoll.store.config import ConfigStore
from pydatacoll.store.config_cache import ConfigCache
from pydatacoll.testing.memory import MemoryRedis
from tests.store.test_config_cache import CacheCase, HeldSubscription, device_op, name_of


class EarlyBoundTests(CacheCase):
    def test_no_messages_kept_after_a_failed_base_read(self) -> None:
        """After a failed base read (seen None, no base read under way) every message
        was kept until some GET came: 1000 changes on an API nobody reads, 1000 kept."""
        self.subscription.lose()
        self.memory.fail_next("mget")
        self.subscription.connect()
        for i in range(1000):
            self.change(self.there, "put", "1", f"n{i}")
        self.assertEqual(len(self.cache._early), 0)
        self.assert_from_redis("n999")  # the next read reads the base again
        self.assertEqual(self.cache.seen, 1001)
        self.assert_from_memory("n999")

    def test_messages_kept_while_the_base_is_read_are_bounded(self) -> None:
        """More than HISTORY_KEPT messages while the base read is on its way: the base
        is read again rather than keeping them all."""
        self.subscription.lose()
        self.redis.holding = True
        self.subscription.connect()  # the base read is on its way
        for i in range(config_cache.HISTORY_KEPT + 10):
            self.change(self.there, "put", "1", f"n{i}")
            self.assertLessEqual(len(self.cache._early), config_cache.HISTORY_KEPT)
        self.redis.release()  # the first base (dropped) and the second
        self.redis.holding = False
        self.assertEqual(self.cache.seen, config_cache.HISTORY_KEPT + 11)
        self.assert_from_redis(f"n{config_cache.HISTORY_KEPT + 9}")
        self.assert_from_memory(f"n{config_cache.HISTORY_KEPT + 9}")


class EvictionTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.memory = MemoryRedis()
        for device_id in "123":
            self.successResultOf(
                ConfigStore(self.memory).apply([device_op("create", device_id, f"d{device_id}")])
            )

    def cache(self, size: int) -> ConfigCache[str | None]:
        cache: ConfigCache[str | None] = ConfigCache(
            self.memory, HeldSubscription(self.memory), size
        )
        cache.startService()
        self.addCleanup(cache.stopService)
        return cache

    def test_a_hit_counts_as_use(self) -> None:
        """The entry read most recently is kept: with 2 entries, 1 and 2 filled, 1 read
        again, then 3: 2 is dropped, not 1 (it was first in, first out)."""
        cache = self.cache(2)
        for device_id in "121":
            self.successResultOf(cache.read("device", device_id, name_of))
        self.assertEqual(cache.hits, 1)
        self.successResultOf(cache.read("device", "3", name_of))
        self.assertEqual(list(cache.entries), [("device", "1"), ("device", "3")])

    def test_unknown_ids_cannot_push_out_real_entries(self) -> None:
        """Reads of ids that are not stored (cached 404s) keep at most ABSENT_MAX
        entries: a reader asking for many unknown ids leaves the real ones in memory."""
        cache = self.cache(config_cache.ABSENT_MAX + 3)
        for device_id in "123":
            self.successResultOf(cache.read("device", device_id, name_of))
        for n in range(config_cache.ABSENT_MAX * 2):
            self.assertIsNone(self.successResultOf(cache.read("device", f"9{n}", name_of)))
        self.assertEqual(len(cache.absent), config_cache.ABSENT_MAX)
        self.assertEqual(len(cache.entries), config_cache.ABSENT_MAX + 3)
        for device_id in "123":
            self.assertIn(("device", device_id), cache.entries)
        self.assertEqual(cache.dropped, config_cache.ABSENT_MAX)
