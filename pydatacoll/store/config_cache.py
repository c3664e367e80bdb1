"""Configuration reads served from memory, never staler than a read of Redis.

`ConfigCache` keeps what ``HGETALL`` of an entity hash gave (rendered by the caller,
e.g. as the JSON body of ``GET /api/v1/devices/{id}``), and serves a read from memory
only when that is *provably* what a read of Redis started at the same moment could
return. It rests on three facts of the store:

1. every configuration change is one ``config.lua`` call that writes, ``INCR``\\s
   ``STR:CONFIG_VERSION``, sets ``STR:CONFIG_HISTORY`` ("<origin>:<stamp>": the origin
   kept since the key was created, the stamp the TIME of the change) and
   ``PUBLISH``\\es one change message carrying both, atomically: the versions of the
   change messages are 1, 2, 3... without a hole, in the order of the changes, a
   (version, stamp) names one change of one history, and nothing else writes an entity
   hash;
2. Redis runs commands one after the other, so a command sent after a change was
   acknowledged (to anyone) runs after it;
3. messages on one subscribed connection arrive in the order they were published.

The cache subscribes to every change channel on its own connection and keeps ``seen``:
the highest version V such that the messages of every change up to V of its history
(the origin read with the base) have been handled (handling any message clears the
cache; another origin's, e.g. another database of the same server, is not counted). A
read:

- asks Redis for the version and history, with one ``MGET`` *sent after the read
  arrived* (one MGET, sent at the end of the reactor turn, answers every read of that
  turn: a fence);
- answers from memory only when the subscription is up, ``seen`` >= that version and
  the stamp read is the one counted for that version (else Redis's history is not the
  one counted: a flush, a lagging replica promoted; the cache restarts):
  then every change acknowledged before the read arrived has cleared the cache, and an
  entry in it holds a state of the entity as new as that change;
- otherwise (subscription down, a message not here yet: a change made a moment ago by
  this or another API process, a hole in the versions, the version gone backwards)
  reads the hash from Redis, as without a cache.

An entry is stored only when the base version was known when its ``HGETALL`` was sent
(on a pool of connections a command sent earlier may run later, so a fill sent while the
base is read may predate a change the base counts), when no change message arrived while
it was on the way (else the reply might predate a change already handled), and only
while the subscription is up and has a base version; losing the subscription clears everything,
and a new one starts again from the version read after it was confirmed.

So a read never returns a state older than the newest change acknowledged before the
read arrived: from this process, from another API process on the same Redis, whatever
was lost while the subscription was down. A change still in flight when the read arrives
may or may not be seen (as with a read of Redis). What bypasses ``config.lua`` (a
``FLUSHALL``, a hand edit, a restore of an older dump) is not a change in this sense; a
version lower than ``seen`` (Redis lost data) clears the cache, but a hand edit of an
entity hash is not seen until the next change.

The fence's waiting reads are HTTP requests in flight (bounded by the connections);
the entries are at most ``max_entries``, the least recently used dropped first, and of
them at most `ABSENT_MAX` are of entities not stored (a 404: any client can ask for
unknown ids; the oldest of those is dropped first) (a dropped entry is
read from Redis again).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from twisted.application.service import Service
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.logger import Logger
from twisted.python.failure import Failure

from pydatacoll.store import keys
from pydatacoll.store.config import ENTITY_KEYS
from pydatacoll.store.redis import when_connected
from pydatacoll.store.subscriber import Subscriber

T = TypeVar("T")

#: Every configuration change channel (each version is published on exactly one).
CHANGE_CHANNELS = sorted(
    channel for kinds in keys.CHANGE_CHANNELS.values() for channel in kinds.values()
)


class VersionFence:
    """``version()``: STR:CONFIG_VERSION and STR:CONFIG_HISTORY read by one MGET sent
    after the call.

    The calls of one reactor turn share one GET, sent at the end of the turn
    (``clock.callLater(0)``); several may be on their way at once. Without a clock each
    call sends its own GET at once.
    """

    def __init__(self, redis: Any, clock: Any = None) -> None:
        self.redis = redis
        self.clock = clock
        self._next: list[Deferred[Stamp]] = []
        #: GETs sent (a test's and the benchmark's count).
        self.reads = 0

    def version(self) -> Deferred[Stamp]:
        """Fires with the (version, history) read after this call (`_stamp`)."""
        d: Deferred[Stamp] = Deferred()
        self._next.append(d)
        if len(self._next) == 1:
            if self.clock is None:
                self._send()
            else:
                self.clock.callLater(0, self._send)
        return d

    def _send(self) -> None:
        batch, self._next = self._next, []
        self.reads += 1
        d: Deferred[Any] = self.redis.call("mget", keys.CONFIG_VERSION, keys.CONFIG_HISTORY)
        d.addBoth(self._answer, batch)

    def _answer(self, result: Any, batch: list[Deferred[Stamp]]) -> None:
        if not isinstance(result, Failure):
            result = _stamp(result)
        for d in batch:
            if isinstance(result, Failure):
                d.errback(result)
            else:
                d.callback(result)


#: (version, history): the version is None when STR:CONFIG_VERSION is not an integer
#: (no read is then served from memory); the history is "" before the first change.
Stamp = tuple[int | None, str]


def _stamp(reply: Any) -> Stamp:
    """An ``MGET STR:CONFIG_VERSION STR:CONFIG_HISTORY`` reply as a `Stamp`."""
    text, history = reply
    try:
        version: int | None = int(text or 0)
    except (TypeError, ValueError):
        version = None
    return version, history or ""


def _origin(history: str) -> str:
    """The identity of a configuration history: what precedes the ":" of its stamp."""
    return history.partition(":")[0]


#: Why the cache was cleared and started again: the history read by a fence was not the
#: one counted (version backwards, another origin or stamp), a change message without a
#: version, a hole in the versions, the subscription lost, the base read failed, too
#: many messages while the base was read.
RESET_REASONS = ("history", "message", "hole", "lost", "no_base", "early")

#: At most this many entries of entities not stored (cached 404s), within max_entries.
ABSENT_MAX = 1000

#: Versions whose history stamp the cache keeps (a fence older than that is a miss).
HISTORY_KEPT = 1024


def redis_subscription(redis: Any, reactor: Any) -> Callable[..., Any]:
    """The cache's subscription: its own connection to the Redis of ``redis``."""

    def subscribe(handler: Callable[[str, str], None], **options: Any) -> Subscriber:
        return Subscriber(
            reactor, lambda: redis.address, handler, ready=redis.when_ready, **options
        )

    return subscribe


class ConfigCache(Service, Generic[T]):
    """Entity reads (device, term, item, formula, gateway) served from memory when that
    is provably current (see the module docstring).

    ``subscribe(handler, channels=, on_subscribed=, on_lost=, name=)`` builds the
    subscription (an `ISubscriber` service: `redis_subscription`, or the in-memory one
    of the tests); ``max_entries`` bounds the entries. Without ``subscribe`` or with
    ``max_entries`` 0 there is no cache: every read is one ``HGETALL``. ``clock`` (the
    reactor) lets the reads of one reactor turn share one GET (`VersionFence`).
    """

    log = Logger()

    def __init__(
        self,
        redis: Any,
        subscribe: Callable[..., Any] | None = None,
        max_entries: int = 0,
        clock: Any = None,
    ) -> None:
        self.redis = redis
        self.max_entries = max_entries
        self.fence = VersionFence(redis, clock)
        self._subscribe = subscribe
        self.subscriber: Any = None
        #: (entity, id) -> the rendered entity (None: not stored).
        self.entries: dict[tuple[str, str], Any] = {}
        #: The keys of ``entries`` that are of entities not stored, oldest first.
        self.absent: dict[tuple[str, str], None] = {}
        #: Every change up to this version has cleared the cache; None: no base (the
        #: subscription is down or its base version is being read).
        self.seen: int | None = None
        #: The history stamp of ``seen`` and of the versions before it since the base
        #: (the last `HISTORY_KEPT`): a fence is trusted only if it read one of these.
        self.history: dict[int, str] = {}
        #: The identity of the configuration history the base was read from (None: not
        #: known yet); messages of another one (another db of the same server) are foreign.
        self.origin: str | None = None
        #: (version, history) of the messages heard while the base version is read.
        self._early: list[tuple[int, str]] = []
        #: Bumped by every change message, loss and resubscription: a fill whose read
        #: saw it change is not stored.
        self.generation = 0
        #: Bumped when the base is dropped: a base read for an older one is not used.
        self._epoch = 0
        self._basing = False
        #: Reads answered from memory / from Redis (counted for tests and the bench).
        self.hits = 0
        self.misses = 0
        #: Entries dropped at ``max_entries`` (the oldest first).
        self.dropped = 0
        #: Times the cache was cleared, by reason (`RESET_REASONS`).
        self.resets: dict[str, int] = dict.fromkeys(RESET_REASONS, 0)

    # -- service --------------------------------------------------------------------------
    def startService(self) -> None:  # noqa: N802 (Twisted API)
        super().startService()
        if self._subscribe is None or self.max_entries <= 0:
            return
        self.subscriber = self._subscribe(
            self._message,
            channels=CHANGE_CHANNELS,
            on_subscribed=self._subscribed,
            on_lost=self._lost,
            name="configuration cache",
        )
        self.subscriber.startService()

    def stopService(self) -> Deferred[None] | None:  # noqa: N802 (Twisted API)
        super().stopService()
        self._forget()
        subscriber, self.subscriber = self.subscriber, None
        if subscriber is None:
            return None
        result: Deferred[None] | None = subscriber.stopService()
        return result

    # -- reads ----------------------------------------------------------------------------
    @inlineCallbacks
    def read(self, entity: str, entity_id: str, render: Callable[[dict[str, str]], T]) -> Any:
        """``render`` of the entity's stored hash (``{}`` when it is not stored), no older
        than the newest change acknowledged before this call."""
        if self.subscriber is None:
            fields = yield self.redis.call("hgetall", ENTITY_KEYS[entity] % entity_id)
            return render(fields)
        # Every version ``seen`` takes is one a change reached, so the version read after
        # this moment is at least ``seen`` now, unless Redis lost data. (``seen`` may pass
        # that version meanwhile: a change made after the GET ran, its message here first.)
        seen_before = self.seen
        version, history = yield self.fence.version()
        key = (entity, entity_id)
        seen = self.seen
        known = self.history.get(version) if version is not None else None
        if version is None:
            pass  # STR:CONFIG_VERSION is not a number: read from Redis, nothing stored
        elif (seen_before is not None and version < seen_before) or (
            self.origin is not None and seen is not None and _origin(history) != self.origin
        ):
            # The version went backwards, or it is another history's: Redis lost data
            # (flushed, or a replica that was behind took over). Nothing held can be
            # trusted: cleared, base read again.
            self._reset("history", "version {version} ({history}) after {seen}", version, history)
        elif seen is not None and seen >= version and known is not None and known != history:
            # The same version with another history stamp: a replica that was behind took
            # over and as many changes were made on it since (or a flush, then as many).
            self._reset("history", "version {version} is {history}, not {known}", version, history)
        elif seen is not None and seen >= version and known == history and key in self.entries:
            self.hits += 1
            entry = self.entries[key] = self.entries.pop(key)  # the most recently used now
            return entry
        self.misses += 1
        if self.seen is None and not self._basing and self.subscriber.subscribed:
            self._restart_base()  # the last base read failed: try again
        generation = self.generation
        # Stored only if the base version was already known when the HGETALL was sent:
        # then the HGETALL runs after the base GET ran (whatever pool connection each
        # took), and every change after the base has bumped ``generation``. A fill sent
        # while the base is read may run before a change that the base counts.
        based = self.seen is not None
        fields = yield self.redis.call("hgetall", ENTITY_KEYS[entity] % entity_id)
        rendered = render(fields)
        if (
            based
            and version is not None
            and self.generation == generation
            and self.seen is not None
        ):
            self._store(key, rendered, not fields)
        return rendered

    def _store(self, key: tuple[str, str], rendered: Any, absent: bool) -> None:
        self.entries.pop(key, None)
        self.entries[key] = rendered
        self.absent.pop(key, None)
        if absent:
            self.absent[key] = None
            if len(self.absent) > min(ABSENT_MAX, self.max_entries):
                self._drop(next(iter(self.absent)))
        while len(self.entries) > self.max_entries:
            self._drop(next(iter(self.entries)))  # the least recently used

    def _drop(self, key: tuple[str, str]) -> None:
        del self.entries[key]
        self.absent.pop(key, None)
        self.dropped += 1

    def _clear(self) -> None:
        self.entries.clear()
        self.absent.clear()

    # -- the subscription -------------------------------------------------------------------
    def _message(self, channel: str, message: str) -> None:
        self.generation += 1
        self._clear()
        try:
            change = json.loads(message)
            version, history = int(change["version"]), str(change["history"])
        except (ValueError, TypeError, KeyError):
            self.log.warn("change message without a version on {channel}", channel=channel)
            self._reset("message", "change message without a version or history", None, None)
            return
        seen = self.seen
        if seen is None:
            if self._basing and len(self._early) < HISTORY_KEPT:
                self._early.append((version, history))
            elif self._basing:  # too many while the base is read: read it again
                self.resets["early"] += 1
                self._restart_base()
            return  # no base read under way (it failed): the next read starts one
        if self.origin is None:
            self.origin = _origin(history)  # the first change of an empty Redis
        if _origin(history) != self.origin:
            return  # another history's (another db of this server): cleared, not counted
        if version == seen + 1:
            self._heard(version, history)
        elif version > seen + 1 or version <= seen:
            # A hole (a change not heard) or a version gone backwards: the cache is empty
            # now, so any base is true of it; restart from this version.
            self.log.info(
                "configuration change {version} after {seen}: cache restarted",
                version=version,
                seen=seen,
            )
            self.resets["hole"] += 1
            self.history.clear()
            self._heard(version, history)

    def _heard(self, version: int, history: str) -> None:
        self.seen = version
        self.history[version] = history
        while len(self.history) > HISTORY_KEPT:
            del self.history[next(iter(self.history))]

    def _reset(self, reason: str, text: str, version: int | None, history: str | None) -> None:
        self.log.warn(
            "configuration cache cleared: " + text,
            version=version,
            history=history,
            seen=self.seen,
            known=self.history.get(version) if version is not None else None,
        )
        self.resets[reason] += 1
        self._restart_base()

    def _subscribed(self) -> None:
        # At start the subscription may be up before the pool: the base is read once the
        # pool can be used (a read failing meanwhile left the cache off until the next
        # resubscription, and logged "not reachable" on a normal start).
        when_connected(self.redis).addCallback(self._pool_ready)

    def _pool_ready(self, _: Any) -> None:
        if self.subscriber is not None and self.subscriber.subscribed:
            self._restart_base()

    def _restart_base(self) -> None:
        """Clear, and read the base version anew (changes heard meanwhile are kept)."""
        self._forget()
        self._basing = True
        d: Deferred[Any] = self.redis.call("mget", keys.CONFIG_VERSION, keys.CONFIG_HISTORY)
        d.addCallbacks(
            self._based, self._no_base, callbackArgs=(self._epoch,), errbackArgs=(self._epoch,)
        )

    def _based(self, text: Any, epoch: int) -> None:
        if epoch != self._epoch:
            return  # the base was dropped meanwhile (a newer one is read)
        self._basing = False
        if self.subscriber is None or not self.subscriber.subscribed:
            return
        seen, history = _stamp(text)
        if seen is None:  # STR:CONFIG_VERSION is not a number: no base
            self._early = []
            self.log.warn("configuration cache: STR:CONFIG_VERSION is not a number")
            return
        self.origin = _origin(history) if history else None
        early, self._early = self._early, []
        self._heard(seen, history)
        for version, stamp in early:
            if self.origin is None:
                self.origin = _origin(stamp)
            if _origin(stamp) != self.origin or version <= seen:
                continue  # another history's, or counted by the base already
            if version != seen + 1:
                self.history.clear()  # a hole while the base was read: the cache is empty
            self._heard(version, stamp)
            seen = version

    def _no_base(self, failure: Failure, epoch: int) -> None:
        if epoch != self._epoch:
            return
        self._basing = False
        self.resets["no_base"] += 1
        self.log.info(
            "configuration cache: base version not read ({error}); reads go to Redis",
            error=failure.getErrorMessage(),
        )

    def _lost(self) -> None:
        self.resets["lost"] += 1
        self._forget()

    @property
    def serving(self) -> bool:
        """Whether a read can be answered from memory now: the subscription is up and
        its base version is known (else every read goes to Redis)."""
        return self.subscriber is not None and self.subscriber.subscribed and self.seen is not None

    def _forget(self) -> None:
        self.generation += 1
        self._epoch += 1
        self._basing = False
        self._clear()
        self.seen = None
        self.history.clear()
        self.origin = None
        self._early = []
