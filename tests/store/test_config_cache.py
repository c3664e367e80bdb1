"""`ConfigCache`: every ordering of a read, a change, its message and the subscription.

Redis is a `MemoryRedis` whose commands run when they are sent (as Redis runs a command
when it arrives) and whose replies can be held (`HeldRedis`); the subscription's
messages can be held too (`HeldSubscription`), as they travel on another connection.
"Another API process" is a second `ConfigStore` on the same `MemoryRedis`: its change
is acknowledged when its ``apply`` fires, its message reaches this cache when released.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from pydatacoll.errors import StoreUnavailable
from pydatacoll.model import Device
from pydatacoll.store import keys
from pydatacoll.store.config import ConfigStore
from pydatacoll.store.config_cache import CHANGE_CHANNELS, ConfigCache, VersionFence
from pydatacoll.testing.memory import MemoryRedis


class HeldRedis:
    """A `MemoryRedis` client whose replies wait for `release` while ``holding``."""

    def __init__(self, memory: MemoryRedis) -> None:
        self.memory = memory
        self.holding = False
        self.held: list[tuple[str, Deferred[Any], Deferred[Any]]] = []

    def call(self, command: str, *args: Any) -> Deferred[Any]:
        done = self.memory.call(command, *args)  # Redis runs it now
        if not self.holding:
            return done
        answer: Deferred[Any] = Deferred()
        self.held.append((command, done, answer))
        return answer

    def release(self, count: int | None = None) -> None:
        """Deliver the first ``count`` held replies (all by default), in order."""
        count = len(self.held) if count is None else count
        now, self.held = self.held[:count], self.held[count:]
        for _command, done, answer in now:
            done.chainDeferred(answer)


class HeldSubscription:
    """The cache's subscription over ``memory``'s PUBLISH; messages wait for `deliver`
    while ``holding``; `lose` drops the connection and what was on its way."""

    def __init__(self, memory: MemoryRedis) -> None:
        self.memory = memory
        self.holding = False
        self.queue: list[tuple[str, str]] = []
        self.subscribed = False
        self.running = False

    def __call__(self, handler: Any, *, channels: Any, on_subscribed: Any, on_lost: Any, name: str):
        self.handler, self.channels = handler, set(channels)
        self.on_subscribed, self.on_lost = on_subscribed, on_lost
        return self

    def startService(self) -> None:  # noqa: N802
        self.running = True
        self.connect()

    def stopService(self) -> None:  # noqa: N802
        self.running = False
        self._drop()

    def connect(self) -> None:
        self.memory.listeners.append(self._heard)
        self.subscribed = True
        self.on_subscribed()

    def lose(self) -> None:
        self._drop()
        self.on_lost()

    def _drop(self) -> None:
        if self._heard in self.memory.listeners:
            self.memory.listeners.remove(self._heard)
        self.subscribed = False
        self.queue = []

    def _heard(self, channel: str, message: str) -> None:
        if channel not in self.channels:
            return
        if self.holding:
            self.queue.append((channel, message))
        else:
            self.handler(channel, message)

    def deliver(self) -> None:
        queue, self.queue = self.queue, []
        for channel, message in queue:
            self.handler(channel, message)


def device_op(kind: str, device_id: str, name: str) -> dict[str, Any]:
    device = Device.from_json(
        {"id": device_id, "name": name, "protocol": "iec104", "ip": "127.0.0.1", "port": 2404}
    )
    return {"op": kind, "entity": "device", "id": device_id, "fields": device.to_fields()}


def name_of(fields: dict[str, str]) -> str | None:
    """The render of the tests: the stored name (None: not stored)."""
    return fields["name"].strip('"') if fields else None


class CacheCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.memory = MemoryRedis()
        self.redis = HeldRedis(self.memory)
        self.subscription = HeldSubscription(self.memory)
        self.clock = Clock()
        self.cache: ConfigCache[str | None] = ConfigCache(
            self.redis, self.subscription, 100, self.clock
        )
        #: This API process's changes, and another's on the same Redis.
        self.here = ConfigStore(self.redis)
        self.there = ConfigStore(self.memory)
        self.change(self.there, "create", "1", "first")
        self.cache.startService()
        self.addCleanup(self.cache.stopService)

    def change(self, store: ConfigStore, kind: str, device_id: str, name: str) -> None:
        """A change, acknowledged (its ``apply`` has fired)."""
        self.successResultOf(store.apply([device_op(kind, device_id, name)]))

    def read(self, device_id: str = "1") -> Deferred[Any]:
        """A read arriving in a reactor turn of its own (the turn ends: its GET is sent)."""
        d = self.cache.read("device", device_id, name_of)
        self.clock.advance(0)
        return d

    def hgetalls(self) -> int:
        return sum(1 for command, _ in self.memory.calls if command == "hgetall")

    def assert_from_memory(self, expected: str | None, device_id: str = "1") -> None:
        before = self.hgetalls()
        self.assertEqual(self.successResultOf(self.read(device_id)), expected)
        self.assertEqual(self.hgetalls(), before, "answered from Redis, not from memory")

    def assert_from_redis(self, expected: str | None, device_id: str = "1") -> None:
        before = self.hgetalls()
        self.assertEqual(self.successResultOf(self.read(device_id)), expected)
        self.assertEqual(self.hgetalls(), before + 1, "answered from memory, not from Redis")


class ReadTests(CacheCase):
    def test_second_read_is_served_from_memory(self) -> None:
        """The first read fills the entry; the next costs one GET of the version only."""
        self.assert_from_redis("first")
        gets = self.fence_reads()
        self.assert_from_memory("first")
        self.assertEqual(self.fence_reads(), gets + 1)
        self.assertEqual((self.cache.hits, self.cache.misses), (1, 1))

    def fence_reads(self) -> int:
        return self.cache.fence.reads

    def test_absent_entity_is_cached_as_absent_until_created(self) -> None:
        self.assert_from_redis(None, "2")
        self.assert_from_memory(None, "2")
        self.change(self.there, "create", "2", "second")
        self.assert_from_redis("second", "2")

    def test_own_change_before_its_message_is_read_from_redis(self) -> None:
        """A change made here and acknowledged, its message not here yet: the version read
        after it is above ``seen``, so the read goes to Redis and sees the change."""
        self.assert_from_redis("first")
        self.subscription.holding = True
        self.change(self.here, "put", "1", "second")
        self.assert_from_redis("second")
        self.assert_from_redis("second")  # still no message: still from Redis
        self.subscription.deliver()
        self.assert_from_redis("second")  # the message cleared the entry: filled again
        self.assert_from_memory("second")

    def test_other_process_change_before_its_message_is_read_from_redis(self) -> None:
        """Read-your-writes across API processes: PUT on another process (acknowledged),
        then GET here, before this process has heard the change."""
        self.assert_from_redis("first")
        self.assert_from_memory("first")
        self.subscription.holding = True
        self.change(self.there, "put", "1", "second")
        self.assert_from_redis("second")
        self.subscription.deliver()
        self.assertEqual(self.cache.seen, 2)
        self.assert_from_redis("second")
        self.assert_from_memory("second")

    def test_delete_elsewhere_is_never_served_from_memory(self) -> None:
        self.assert_from_redis("first")
        self.subscription.holding = True
        self.successResultOf(self.there.apply([{"op": "delete", "entity": "device", "id": "1"}]))
        self.assert_from_redis(None)

    def test_read_waits_for_a_version_read_sent_after_it(self) -> None:
        """A read that arrives while a GET of the version is on its way does not use it:
        that GET may have run before a change acknowledged since."""
        self.assert_from_redis("first")
        self.redis.holding = True
        self.subscription.holding = True
        early = self.read()  # its GET runs now (version 1) and its reply is held
        self.assertEqual(len(self.redis.held), 1)
        self.change(self.there, "put", "1", "second")  # acknowledged after that GET ran
        late = self.read()  # must not be answered by the held GET: it sends its own
        self.assertEqual(len(self.redis.held), 2)
        self.redis.release(1)  # the first GET's reply answers `early` only
        self.assertEqual(self.successResultOf(early), "first")  # a state current when it came
        self.assertNoResult(late)
        self.redis.release(1)  # the second GET (version 2 > seen 1): late reads Redis
        self.assertNoResult(late)
        self.redis.release()  # its HGETALL
        self.assertEqual(self.successResultOf(late), "second")

    def test_reads_share_one_version_read(self) -> None:
        self.assert_from_redis("first")
        self.redis.holding = True
        first = self.read()
        # Ten reads in one reactor turn (one GET still on its way): one more GET.
        waiting = [self.cache.read("device", "1", name_of) for _ in range(10)]
        self.assertEqual(len(self.redis.held), 1)
        self.clock.advance(0)
        self.assertEqual(len(self.redis.held), 2)
        self.redis.release()
        self.assertEqual([self.successResultOf(d) for d in [first, *waiting]], ["first"] * 11)
        self.assertEqual(self.hgetalls(), 1)
        self.assertEqual(self.cache.fence.reads, 3)  # with the first read's

    def test_change_in_flight_when_the_read_arrives(self) -> None:
        """A change not yet acknowledged when the read came may or may not be seen (as with
        a read of Redis); once it is acknowledged, every later read sees it."""
        self.assert_from_redis("first")
        self.redis.holding = True
        self.subscription.holding = True
        read = self.read()  # the version GET runs now, before the change
        pending = self.here.apply([device_op("put", "1", "second")])  # runs, reply held
        self.redis.release(1)  # the read's GET
        self.assertEqual(self.successResultOf(read), "first")  # the state when it came
        self.assertNoResult(pending)
        self.redis.release()  # the change is acknowledged
        self.successResultOf(pending)
        self.redis.holding = False
        self.assert_from_redis("second")

    def test_fill_not_stored_when_a_change_came_during_its_read(self) -> None:
        """An HGETALL that ran before a change whose message arrived before its reply
        would store the old state: it is served (it was current when the read came) but
        not stored."""
        self.redis.holding = True
        read = self.read()
        self.redis.release()  # the version GET; the HGETALL is sent and runs now
        self.assertEqual(self.redis.held[0][0], "hgetall")
        self.change(self.there, "put", "1", "second")  # message delivered at once
        self.redis.release()
        self.assertEqual(self.successResultOf(read), "first")
        self.assertEqual(self.cache.entries, {})
        self.redis.holding = False
        self.assert_from_redis("second")
        self.assert_from_memory("second")


class SubscriptionTests(CacheCase):
    def test_changes_lost_while_the_subscription_was_down(self) -> None:
        """Down: no cache (every read from Redis); messages published meanwhile are lost;
        the new subscription starts from an empty cache and a new base version."""
        self.assert_from_redis("first")
        self.subscription.lose()
        self.assertIsNone(self.cache.seen)
        self.change(self.there, "put", "1", "second")  # its message is lost
        self.assert_from_redis("second")
        self.assert_from_redis("second")  # no entry is stored while down
        self.change(self.there, "put", "1", "third")
        self.subscription.connect()
        self.assertEqual(self.cache.seen, 3)
        self.assert_from_redis("third")
        self.assert_from_memory("third")

    def test_lost_with_messages_on_their_way(self) -> None:
        self.assert_from_redis("first")
        self.subscription.holding = True
        self.change(self.there, "put", "1", "second")
        self.subscription.lose()  # the message was on its way: lost with the connection
        self.subscription.holding = False
        self.subscription.connect()
        self.assert_from_redis("second")
        self.assert_from_memory("second")

    def test_fill_during_a_loss_is_not_stored(self) -> None:
        self.redis.holding = True
        read = self.read()
        self.redis.release()  # the GET; the HGETALL runs
        self.subscription.lose()
        self.subscription.connect()  # base GET sent, held
        self.redis.release()
        self.assertEqual(self.successResultOf(read), "first")
        self.assertEqual(self.cache.entries, {})

    def test_changes_heard_while_the_base_version_is_read(self) -> None:
        """Subscribed, base GET on its way; a change is published and heard before the
        GET's reply (which may have run before or after it)."""
        self.subscription.lose()
        self.redis.holding = True
        self.subscription.connect()
        self.change(self.there, "put", "1", "second")  # version 2, heard at once
        self.redis.release()  # the base GET ran before the change: 1
        self.assertEqual(self.cache.seen, 2)  # 1, then the 2 heard meanwhile
        self.redis.holding = False
        self.assert_from_redis("second")
        self.assert_from_memory("second")

    def test_base_version_read_fails(self) -> None:
        self.subscription.lose()
        self.memory.fail_next("mget")
        self.subscription.connect()
        self.assertIsNone(self.cache.seen)
        self.assert_from_redis("first")  # reads the base again first: the fill is stored
        self.assertEqual(self.cache.seen, 1)
        self.assert_from_memory("first")

    def test_hole_in_the_versions(self) -> None:
        """A version skipped (a change not heard without losing the connection): the cache
        is cleared and restarts from the version heard."""
        self.assert_from_redis("first")
        self.memory._incr(keys.CONFIG_VERSION)  # version 2 never published
        self.change(self.there, "put", "1", "second")  # version 3
        self.assertEqual(self.cache.seen, 3)
        self.assert_from_redis("second")
        self.assert_from_memory("second")

    def test_version_gone_backwards(self) -> None:
        """Redis lost data (flushed, restarted empty): the version is below ``seen``; the
        cache is cleared even though no change message came."""
        self.assert_from_redis("first")
        self.memory.data.clear()
        self.assert_from_redis(None)
        self.change(self.there, "create", "1", "again")
        self.assert_from_redis("again")
        self.assert_from_memory("again")

    def test_message_before_the_version_reply_is_not_a_loss(self) -> None:
        """A change made after a read's GET ran, its message here before that GET's reply:
        ``seen`` is above the version read, which is no sign of lost data."""
        self.assert_from_redis("first")
        self.redis.holding = True
        read = self.read()  # its GET runs now: version 1
        self.change(self.there, "put", "1", "second")  # heard at once: seen 2
        self.redis.release(1)
        self.assertEqual(self.cache.seen, 2)  # not cleared and based anew
        self.assertEqual(self.redis.held[0][0], "hgetall")  # the entry went with the change
        self.redis.release()
        self.assertEqual(self.successResultOf(read), "second")
        self.redis.holding = False
        self.assert_from_memory("second")

    def test_redis_down(self) -> None:
        self.assert_from_redis("first")
        self.memory.down()
        self.failureResultOf(self.read(), StoreUnavailable)
        self.memory.up()
        self.assert_from_memory("first")

    def test_stopped_reads_redis(self) -> None:
        self.assert_from_redis("first")
        self.cache.stopService()
        self.assert_from_redis("first")
        self.assertFalse(self.subscription.running)


class BoundTests(SynchronousTestCase):
    def test_oldest_entry_dropped(self) -> None:
        memory = MemoryRedis()
        subscription = HeldSubscription(memory)
        cache: ConfigCache[str | None] = ConfigCache(memory, subscription, 3)
        cache.startService()
        for device_id in "12345":
            self.successResultOf(cache.read("device", device_id, name_of))
        self.assertEqual(list(cache.entries), [("device", i) for i in "345"])
        self.assertEqual(cache.dropped, 2)

    def test_no_subscription_no_cache(self) -> None:
        memory = MemoryRedis()
        for cache in (ConfigCache(memory), ConfigCache(memory, HeldSubscription(memory), 0)):
            cache.startService()
            for _ in range(2):
                self.successResultOf(cache.read("device", "1", name_of))
            self.assertEqual(cache.entries, {})
            self.assertEqual(cache.fence.reads, 0)

    def test_every_change_channel_is_subscribed(self) -> None:
        """Each change publishes its version on one of these: a channel missed would be
        a hole every time."""
        channels = {c for kinds in keys.CHANGE_CHANNELS.values() for c in kinds.values()}
        self.assertEqual(set(CHANGE_CHANNELS), channels)

    def test_fence_error_reaches_every_waiter(self) -> None:
        memory = MemoryRedis()
        redis = HeldRedis(memory)
        redis.holding = True
        clock = Clock()
        fence = VersionFence(redis, clock)
        first = fence.version()
        clock.advance(0)
        memory.fail_next("mget")
        waiting = [fence.version(), fence.version()]
        clock.advance(0)
        self.assertEqual(len(redis.held), 2)
        redis.release()
        self.assertEqual(self.successResultOf(first), (0, ""))
        for d in waiting:
            self.failureResultOf(d, StoreUnavailable)


class PoolAfterSubscriptionTests(SynchronousTestCase):
    def test_the_base_is_read_once_the_pool_is_up(self) -> None:
        """At start the subscription may be up before the pool: the base version is read
        when the pool comes up, not tried at once and given up ("base version not read
        (Redis is not reachable)": the cache stayed off until a resubscription)."""
        memory = MemoryRedis()
        self.successResultOf(ConfigStore(memory).apply([device_op("create", "1", "first")]))
        memory.down()
        cache: ConfigCache[str | None] = ConfigCache(memory, HeldSubscription(memory), 100, Clock())
        cache.startService()
        self.addCleanup(cache.stopService)
        self.assertFalse(cache.serving)
        self.assertEqual(cache.resets["no_base"], 0)  # not tried while the pool is down
        memory.up()
        self.assertTrue(cache.serving)
        self.assertEqual(cache.resets["no_base"], 0)
