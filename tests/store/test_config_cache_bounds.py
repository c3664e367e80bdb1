"""`ConfigCache`'s bounds: messages kept while the base is read, entries, absent ones."""

from __future__ import annotations

from pydatacoll.store import config_cache
from tests.store.test_config_cache import CacheCase


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
