"""An in-memory stand-in for `pydatacoll.store.redis.RedisClient`, with a failure switch.

For fast, deterministic tests of everything that waits on Redis: the store can be taken
down and brought back at any moment (``down()`` / ``up()``), or made to fail its next
calls (``fail_next``), so the bad orderings (Redis absent at start, lost mid-way, back
late) are inputs of a test on a `twisted.internet.task.Clock`. Like the real client it
fails at once with `StoreUnavailable` while down, and ``when_connected`` fires when it
is up. It covers the commands the collector uses (strings, hashes, sets, lists,
PUBLISH, and the ingest and status scripts, emulated in Python); a command it does not
know raises `NotImplementedError`, so a test never passes on a command that silently did
nothing. Streams are lists of ``(id, fields)``.
"""

from __future__ import annotations

import fnmatch
import hashlib
import time
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from zope.interface import implementer

from pydatacoll.config import RedisAddress
from pydatacoll.errors import StoreUnavailable
from pydatacoll.store.redis import decode_command
from pydatacoll.store_interfaces import IRedisClient


@implementer(IRedisClient)
class MemoryRedis:
    """Strings, hashes, sets and lists in dicts; ``published`` records every PUBLISH."""

    def __init__(self, *, connected: bool = True, clock: Any = None) -> None:
        #: The server's clock (a `task.Clock` in tests): stream entry ids, TIME, and the
        #: expiry of the cluster scripts' PX keys. None: the wall clock for ids and TIME,
        #: and PX keys never expire.
        self.clock = clock
        self.data: dict[str, Any] = {}
        self.published: list[tuple[str, str]] = []
        #: Called with (channel, message) on every PUBLISH (a test's subscriber).
        self.listeners: list[Callable[[str, str], None]] = []
        #: (channel pattern, callback): called on a PUBLISH to a matching channel, and
        #: counted in PUBLISH's reply only then (as Redis counts its subscribers).
        self.subscriptions: list[tuple[str, Callable[[str, str], None]]] = []
        #: Every call made, as (command, args), failed ones included.
        self.calls: list[tuple[str, tuple[Any, ...]]] = []
        self.address = RedisAddress(host="127.0.0.1", port=0)
        self._up = connected
        self._fail: dict[str, int] = {}
        self._waiters: list[Deferred[None]] = []
        #: Lua scripts by SHA1 -> a Python emulation ``(store, keys, args) -> reply``.
        self.scripts: dict[str, Callable[[MemoryRedis, Any, list[Any]], Any]] = _scripts()

    # -- the failure switch ----------------------------------------------------------------
    def down(self) -> None:
        """Redis is gone: every call fails at once with `StoreUnavailable`."""
        self._up = False

    def up(self) -> None:
        """Redis is back: calls work and ``when_connected`` waiters fire."""
        self._up = True
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.callback(None)

    def fail_next(self, command: str, times: int = 1) -> None:
        """The next ``times`` calls of ``command`` ("*" for any) fail with StoreUnavailable."""
        self._fail[command.lower()] = self._fail.get(command.lower(), 0) + times

    def digest(self) -> str:
        """A digest of the whole keyspace (what ``DEBUG DIGEST`` is to Redis): equal
        digests, equal data (empty hashes, sets and lists count as absent, as in Redis)."""

        def plain(value: Any) -> Any:
            if isinstance(value, dict):
                return sorted(value.items())
            if isinstance(value, set):
                return sorted(value)
            return value

        present = sorted((k, plain(v)) for k, v in self.data.items() if v not in ({}, set(), []))
        return hashlib.sha1(repr(present).encode()).hexdigest()

    # -- what RedisClient offers -----------------------------------------------------------
    @property
    def connected(self) -> bool:
        """Whether calls work now."""
        return self._up

    def when_ready(self) -> Deferred[None]:
        """Never fires: there is no server to subscribe to (tests drive subscriptions)."""
        return Deferred()

    def when_connected(self) -> Deferred[None]:
        """Fires when the store is up."""
        if self._up:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._waiters.append(d)
        return d

    def dedicated(self) -> MemoryRedis:
        """The client itself: its commands run in call order already (as on one
        connection of `RedisClient.dedicated`)."""
        return self

    def call(self, command: str, *args: Any, **kwargs: Any) -> Deferred[Any]:
        """Run ``command`` on the dicts; fails at once while down."""
        name = command.lower()
        self.calls.append((name, args))
        for key in (name, "*"):
            if self._fail.get(key):
                self._fail[key] -= 1
                return fail(StoreUnavailable(f"Redis is not reachable (failing {name} on demand)"))
        if not self._up:
            return fail(StoreUnavailable("Redis is not reachable"))
        handler = getattr(self, "_" + name, None)
        if handler is None:
            raise NotImplementedError(f"MemoryRedis has no {command}")
        try:
            return succeed(handler(*args, **kwargs))
        except Exception as e:
            return fail(e)

    def call_encoded(self, command: bytes) -> Deferred[Any]:
        """A command in RESP form (`pydatacoll.store.redis.call_encoded`), decoded and run
        as `call` runs it: ``EVAL``/``EVALSHA`` only (what the ingest path sends)."""
        name, *args = decode_command(command)
        if name.lower() not in ("eval", "evalsha"):
            raise NotImplementedError(f"MemoryRedis has no encoded {name}")
        numkeys = int(args[1])
        return self.call(name, args[0], args[2 : 2 + numkeys], args[2 + numkeys :])

    # -- commands ----------------------------------------------------------------------------
    def _typed(self, key: str, kind: type) -> Any:
        value = self.data.get(key)
        if value is None:
            value = self.data[key] = kind()
        if not isinstance(value, kind):
            raise TypeError("WRONGTYPE Operation against a key holding the wrong kind of value")
        return value

    def _get(self, key: str) -> Any:
        value = self.data.get(key)
        return value if value is None or isinstance(value, str) else self._typed(key, str)

    def _mget(self, *names: str) -> list[Any]:
        return [self._get(name) for name in names]

    def _set(self, key: str, value: Any) -> str:
        self.data[key] = str(value)
        return "OK"

    def _incr(self, key: str) -> int:
        value = int(self.data.get(key) or 0) + 1
        self.data[key] = str(value)
        return value

    def _delete(self, keys: Any) -> int:
        keys = [keys] if isinstance(keys, str) else list(keys)
        return sum(self.data.pop(k, None) is not None for k in keys)

    def _keys(self, pattern: str = "*") -> list[str]:
        return sorted(k for k in self.data if fnmatch.fnmatchcase(k, pattern))

    def _hset(self, key: str, field: str, value: Any) -> int:
        h = self._typed(key, dict)
        new = field not in h
        h[field] = str(value)
        return int(new)

    def _hmset(self, key: str, mapping: dict[str, Any]) -> str:
        self._typed(key, dict).update({f: str(v) for f, v in mapping.items()})
        return "OK"

    def _hget(self, key: str, field: str) -> Any:
        return dict(self.data.get(key) or {}).get(field)

    def _hgetall(self, key: str) -> dict[str, str]:
        return dict(self.data.get(key) or {})

    def _hdel(self, key: str, fields: Any) -> int:
        h = self._typed(key, dict)
        fields = [fields] if isinstance(fields, str) else list(fields)
        return sum(h.pop(f, None) is not None for f in fields)

    def _sadd(self, key: str, members: Any) -> int:
        s = self._typed(key, set)
        members = [members] if isinstance(members, str) else list(members)
        before = len(s)
        s.update(str(m) for m in members)
        return len(s) - before

    def _srem(self, key: str, members: Any) -> int:
        s = self._typed(key, set)
        members = [members] if isinstance(members, str) else list(members)
        before = len(s)
        s.difference_update(members)
        return before - len(s)

    def _smembers(self, key: str) -> set[str]:
        return set(self.data.get(key) or ())

    def _rpush(self, key: str, values: Any) -> int:
        lst = self._typed(key, list)
        lst.extend([values] if isinstance(values, str) else values)
        return len(lst)

    def _ltrim(self, key: str, start: int, end: int) -> str:
        lst = self._typed(key, list)
        n = len(lst)
        start = max(start + n if start < 0 else start, 0)
        end = end + n if end < 0 else end
        lst[:] = lst[start : end + 1]
        return "OK"

    def _lrange(self, key: str, start: int, end: int) -> list[str]:
        lst = list(self.data.get(key) or [])
        n = len(lst)
        start = max(start + n if start < 0 else start, 0)
        end = end + n if end < 0 else end
        return lst[start : end + 1]

    def subscribe(self, pattern: str, callback: Callable[[str, str], None]) -> None:
        """Call ``callback(channel, message)`` on each PUBLISH to a channel matching
        ``pattern`` (PSUBSCRIBE's glob)."""
        self.subscriptions.append((pattern, callback))

    def _publish(self, channel: str, message: str) -> int:
        # Like Redis, the reply counts the subscribers the message reached: a listener
        # with a ``matches(channel)`` method (a subscriber) counts only for its channels
        # and patterns; a bare callable (a test's ear) hears everything.
        self.published.append((channel, message))
        receivers = 0
        for listener in list(self.listeners):
            matches = getattr(listener, "matches", None)
            if matches is not None and not matches(channel):
                continue
            receivers += 1
            listener(channel, message)
        for pattern, callback in list(self.subscriptions):
            if fnmatch.fnmatchcase(channel, pattern):
                receivers += 1
                callback(channel, message)
        return receivers

    def _evalsha(self, sha: str, keys: Any, args: Any) -> Any:
        script = self.scripts.get(sha)
        if script is None:
            raise RuntimeError("NOSCRIPT No matching script. Please use EVAL.")
        return script(self, keys, [str(a) for a in args])

    def _eval(self, text: str, keys: Any, args: Any) -> Any:
        sha = hashlib.sha1(text.encode()).hexdigest()
        if sha not in self.scripts:
            raise NotImplementedError("MemoryRedis has no emulation of this script")
        return self._evalsha(sha, keys, args)

    def _xadd(self, key: str, fields: dict[str, str], maxlen: int | None = None) -> str:
        stream = self._typed(key, list)
        entry_id = self._next_stream_id(stream)
        stream.append((entry_id, dict(fields)))
        if maxlen is not None and len(stream) > maxlen:
            del stream[: len(stream) - maxlen]
        return entry_id

    def _seconds(self) -> float:
        return float(self.clock.seconds()) if self.clock is not None else time.time()

    def _xadd_at(self, key: str, entry_id: str, fields: dict[str, str], maxlen: int | None) -> str:
        """XADD with an explicit id (greater than the stream's last one, as Redis wants)."""
        stream = self._typed(key, list)
        if stream and _stream_id(entry_id) <= _stream_id(stream[-1][0]):
            raise ValueError("ERR The ID specified in XADD is equal or smaller than the target")
        stream.append((entry_id, dict(fields)))
        if maxlen is not None and len(stream) > maxlen:
            del stream[: len(stream) - maxlen]
        return entry_id

    def _next_stream_id(self, stream: list[Any]) -> str:
        """``ms-seq`` from the clock, like Redis: never below the stream's last id."""
        now = int(self._seconds() * 1000)
        if stream:
            last_ms, last_seq = _stream_id(stream[-1][0])
            if now <= last_ms:
                return f"{last_ms}-{last_seq + 1}"
        return f"{now}-0"

    def _xrange(self, key: str, start: str = "-", end: str = "+") -> list[Any]:
        return self._stream_range(key, start, end, None)

    def _stream_range(self, key: str, low: str, high: str, count: int | None) -> list[Any]:
        entries = list(self._typed(key, list)) if key in self.data else []
        low_id, low_open = _bound(low, 0)
        high_id, high_open = _bound(high, 2**64)
        found = []
        for entry_id, fields in entries:
            at = _stream_id(entry_id)
            if at < low_id or (low_open and at == low_id):
                continue
            if at > high_id or (high_open and at == high_id):
                continue
            flat: list[str] = []
            for name, value in fields.items():
                flat += [name, value]
            found.append((entry_id, flat))
        return found if count is None else found[:count]

    def _exists(self, *keys: str) -> int:
        names = [k for key in keys for k in ([key] if isinstance(key, str) else key)]
        return sum(1 for k in names if self.data.get(k) not in (None, {}, set(), []))

    def _rename(self, key: str, new_key: str) -> str:
        if key not in self.data:
            raise RuntimeError("ERR no such key")
        self.data[new_key] = self.data.pop(key)
        return "OK"

    def _hkeys(self, key: str) -> list[str]:
        return list(dict(self.data.get(key) or {}))

    def _hmget(self, key: str, fields: Any) -> list[Any]:
        h = dict(self.data.get(key) or {})
        return [h.get(f) for f in ([fields] if isinstance(fields, str) else fields)]

    def _execute_command(self, command: str, *args: Any) -> Any:
        """The raw commands the stores send: XADD, XRANGE, XREVRANGE, TIME."""
        name = command.upper()
        if name == "TIME":
            now = self._seconds()
            return [str(int(now)), str(int(now * 1_000_000) % 1_000_000)]
        if name == "XADD":
            key, rest = args[0], list(args[1:])
            maxlen = None
            if rest and str(rest[0]).upper() == "MAXLEN":
                rest = rest[1:]
                if rest[0] in ("=", "~"):
                    rest = rest[1:]
                maxlen, rest = int(rest[0]), rest[1:]
            flat = [str(a) for a in rest[1:]]
            fields = dict(zip(flat[::2], flat[1::2], strict=True))
            if rest[0] == "*":
                return self._xadd(key, fields, maxlen)
            return self._xadd_at(key, str(rest[0]), fields, maxlen)
        if name in ("XRANGE", "XREVRANGE"):
            key, first, second, *rest = args
            count = int(rest[1]) if rest and str(rest[0]).upper() == "COUNT" else None
            if name == "XRANGE":
                return self._stream_range(key, str(first), str(second), count)
            found = self._stream_range(key, str(second), str(first), None)
            found.reverse()
            return found if count is None else found[:count]
        raise NotImplementedError(f"MemoryRedis has no {command}")

    # -- i14: key expiry for the cluster scripts (heartbeats, leases) -----------------------
    # (``self.clock``: the time of key expiry; None: PX keys never expire. Plain commands
    # ignore expiry.)

    @property
    def px_deadlines(self) -> dict[str, float]:
        """Key -> when it expires (clock seconds), for keys set with PX by the scripts."""
        deadlines: dict[str, float] = self.__dict__.setdefault("_px_deadlines", {})
        return deadlines

    def now_ms(self) -> int:
        """The emulated server clock (``TIME``) in ms: 0 without a clock."""
        return int(self.clock.seconds() * 1000) if self.clock is not None else 0

    def live_get(self, key: str) -> str | None:
        """GET that honours PX expiry (an expired key is deleted first)."""
        deadline = self.px_deadlines.get(key)
        if deadline is not None and self.clock is not None and self.clock.seconds() >= deadline:
            self.data.pop(key, None)
            del self.px_deadlines[key]
        value = self.data.get(key)
        return value if value is None else str(value)

    def set_px(self, key: str, value: str, ms: int) -> None:
        """SET key value PX ms."""
        self.data[key] = value
        now = self.clock.seconds() if self.clock is not None else 0.0
        self.px_deadlines[key] = now + int(ms) / 1000 if self.clock is not None else float("inf")

    def delete_px(self, key: str) -> int:
        """DEL of a key the scripts may have set with PX."""
        self.px_deadlines.pop(key, None)
        return int(self.data.pop(key, None) is not None)


def _stream_id(text: str) -> tuple[int, int]:
    ms, _, seq = str(text).partition("-")
    return int(ms), int(seq or 0)


def _bound(text: str, default_seq: int) -> tuple[tuple[int, int], bool]:
    """An XRANGE bound as (id, exclusive): ``-``, ``+``, ``ms``, ``ms-seq``, ``(ms-seq``."""
    if text == "-":
        return (0, 0), False
    if text == "+":
        return (2**64, 2**64), False
    exclusive = text.startswith("(")
    ms, dash, seq = text.lstrip("(").partition("-")
    return (int(ms), int(seq) if dash else default_seq), exclusive


def _scripts() -> dict[str, Callable[[MemoryRedis, Any, list[Any]], Any]]:
    from pydatacoll.testing.memory_scripts import scripts

    return scripts()
