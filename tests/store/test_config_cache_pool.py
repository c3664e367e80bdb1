"""`ConfigCache` on a pool of connections, and against a Redis whose history changes.

`PoolRedis` models txredisapi's pool (``redis_pool_size`` connections, one picked at
random per command): a command is *sent* at once, *runs* in Redis when the test says,
and its reply arrives when the test says, so two commands sent on different connections
can run in either order.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from pydatacoll.store.config import ConfigStore
from pydatacoll.store.config_cache import ConfigCache
from pydatacoll.testing.memory import MemoryRedis
from tests.store.test_config_cache import HeldSubscription, device_op, name_of


class PoolRedis:
    """A `MemoryRedis` client over a pool: commands run and reply when the test says."""

    def __init__(self, memory: MemoryRedis) -> None:
        self.memory = memory
        #: [command, args, ran (the MemoryRedis reply) or None, answer]
        self.sent: list[list[Any]] = []

    def call(self, command: str, *args: Any) -> Deferred[Any]:
        answer: Deferred[Any] = Deferred()
        self.sent.append([command, args, None, answer])
        return answer

    def pending(self, command: str) -> int:
        """The index of the first sent ``command`` that has not run."""
        for i, (sent, _args, ran, _answer) in enumerate(self.sent):
            if sent == command and ran is None:
                return i
        raise AssertionError(f"no {command} waiting: {self.sent}")

    def run(self, i: int) -> None:
        """Command ``i`` runs in Redis now (its reply is held)."""
        entry = self.sent[i]
        entry[2] = self.memory.call(entry[0], *entry[1])

    def reply(self, i: int) -> None:
        """Command ``i``'s reply arrives (it runs now if it has not)."""
        entry = self.sent[i]
        if entry[2] is None:
            self.run(i)
        entry[2].chainDeferred(entry[3])


class PoolReorderTests(SynchronousTestCase):
    def test_fill_sent_during_base_read_that_ran_before_a_counted_change(self) -> None:
        """The base GET (resubscription) and a fill's HGETALL go out on different pool
        connections; the HGETALL runs first, then another process's PUT (version 2), then
        the base GET (2). The fill predates change 2 yet no message came during it: it
        must not be stored, else a GET after the PUT's acknowledgement (fence 2 <= seen
        2) is answered with the old state until message 2 lands."""
        memory = MemoryRedis()
        there = ConfigStore(memory)
        self.successResultOf(there.apply([device_op("create", "1", "first")]))
        redis = PoolRedis(memory)
        subscription = HeldSubscription(memory)
        clock = Clock()
        cache: ConfigCache[Any] = ConfigCache(redis, subscription, 100, clock)
        cache.startService()
        self.addCleanup(cache.stopService)
        base = redis.pending("mget")
        subscription.holding = True

        read = cache.read("device", "1", name_of)
        clock.advance(0)
        redis.reply(len(redis.sent) - 1)  # the read's fence: 1; no base yet: a miss
        hgetall = redis.pending("hgetall")
        redis.run(hgetall)  # runs first: "first"
        self.successResultOf(there.apply([device_op("put", "1", "second")]))  # version 2
        redis.reply(base)  # the base GET runs after the change: 2
        self.assertEqual(cache.seen, 2)
        redis.reply(hgetall)
        self.assertEqual(self.successResultOf(read), "first")  # it predates the PUT: fine

        late = cache.read("device", "1", name_of)  # after the PUT's acknowledgement
        clock.advance(0)
        redis.reply(len(redis.sent) - 1)  # its fence: 2
        if redis.sent[-1][0] == "hgetall":
            redis.reply(len(redis.sent) - 1)
        self.assertEqual(self.successResultOf(late), "second")
        self.assertEqual(cache.entries.get(("device", "1")), "second")

    def test_fill_sent_with_a_base_is_stored(self) -> None:
        """The same pool, with the base known before the HGETALL is sent: stored."""
        memory = MemoryRedis()
        self.successResultOf(ConfigStore(memory).apply([device_op("create", "1", "first")]))
        redis = PoolRedis(memory)
        clock = Clock()
        cache: ConfigCache[Any] = ConfigCache(redis, HeldSubscription(memory), 100, clock)
        cache.startService()
        self.addCleanup(cache.stopService)
        redis.reply(redis.pending("mget"))  # the base: 1
        read = cache.read("device", "1", name_of)
        clock.advance(0)
        redis.reply(redis.pending("mget"))
        redis.reply(redis.pending("hgetall"))
        self.assertEqual(self.successResultOf(read), "first")
        self.assertEqual(cache.entries, {("device", "1"): "first"})
