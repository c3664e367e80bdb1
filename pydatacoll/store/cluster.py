"""The cluster in Redis: collectors' heartbeats and device leases with fencing epochs.

Every operation is one Lua script (store/collector_*.lua, store/lease_*.lua), so each is
atomic and the in-memory `pydatacoll.testing.memory.MemoryRedis` emulates it. A lease is
the key ``STR:LEASE:{device}`` holding ``"EPOCH COLLECTOR_ID"`` with a TTL; the epoch comes
from ``INCR STR:LEASE_EPOCH:{device}``, so every acquisition gets a larger one. Scripts
that write for a device include `LEASE_GUARD` and refuse a lease that is not current.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from importlib.resources import files
from typing import Any

import attrs
from twisted.internet.defer import Deferred
from zope.interface import implementer

from pydatacoll.store import keys
from pydatacoll.store_interfaces import IClusterStore


def _read(name: str) -> str:
    return files("pydatacoll.store").joinpath(name).read_text(encoding="utf-8")


#: The Lua function ``lease_is_current(lease_key, token)``: put this text in front of a
#: script (`guarded`) that must write only for the current lease holder; ``token`` is
#: `Lease.token` (``"EPOCH COLLECTOR_ID"``), passed in the script's ARGV.
LEASE_GUARD = _read("lease_guard.lua")


def guarded(script: str) -> str:
    """``script`` with `LEASE_GUARD` in front of it (load the result as one script)."""
    return LEASE_GUARD + "\n" + script


class LuaScript:
    """A script run by ``EVALSHA``, sent with ``EVAL`` once when Redis does not know it."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.sha = hashlib.sha1(text.encode()).hexdigest()

    def __call__(self, redis: Any, args: Sequence[Any]) -> Deferred[Any]:
        """Run the script with ``args`` as ARGV (no KEYS, like the project's other scripts)."""
        args = list(args)
        d: Deferred[Any] = redis.call("evalsha", self.sha, [], args)

        def no_script(failure: Any) -> Any:
            message = failure.getErrorMessage()
            if "NOSCRIPT" in message or "No script matching" in message:
                return redis.call("eval", self.text, [], args)
            return failure

        return d.addErrback(no_script)


ACQUIRE = LuaScript(_read("lease_acquire.lua"))
RENEW = LuaScript(_read("lease_renew.lua"))
RELEASE = LuaScript(_read("lease_release.lua"))
HOLDERS = LuaScript(_read("lease_holders.lua"))
CHECK = LuaScript(guarded(_read("lease_check.lua")))
HEARTBEAT = LuaScript(_read("collector_heartbeat.lua"))
LIST = LuaScript(_read("collector_list.lua"))
LEAVE = LuaScript(_read("collector_leave.lua"))


@attrs.frozen
class Lease:
    """The right of ``collector_id`` to run ``device_id``, under fencing ``epoch``."""

    device_id: str
    collector_id: str
    epoch: int

    @property
    def token(self) -> str:
        """The lease key's value while this lease holds: ``"EPOCH COLLECTOR_ID"``."""
        return f"{self.epoch} {self.collector_id}"

    @classmethod
    def from_token(cls, device_id: str, token: str) -> Lease:
        """The lease a key value ``"EPOCH COLLECTOR_ID"`` stands for."""
        epoch, _, collector_id = token.partition(" ")
        return cls(device_id, collector_id, int(epoch))


@attrs.frozen
class CollectorInfo:
    """A live collector as its last heartbeat describes it."""

    collector_id: str
    devices: int
    #: Seconds since its last heartbeat, by the Redis server's clock.
    heartbeat_age: float
    #: When it started (epoch ms, its own clock).
    started_ms: int

    def to_json(self) -> dict[str, Any]:
        """The REST shape (``GET /api/v1/collectors``)."""
        return {
            "collector": self.collector_id,
            "devices": self.devices,
            "heartbeat_age": round(self.heartbeat_age, 3),
            "started_ms": self.started_ms,
        }


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))


@implementer(IClusterStore)
class ClusterStore:
    """Named cluster operations over a `RedisClient` (or a `MemoryRedis`)."""

    def __init__(self, redis: Any) -> None:
        self.redis = redis

    def when_connected(self) -> Deferred[None]:
        """Fires when Redis can be reached (at once if it can)."""
        d: Deferred[None] = self.redis.when_connected()
        return d

    # -- membership ------------------------------------------------------------------------
    def heartbeat(
        self, collector_id: str, *, devices: int, started_ms: int, ttl: float
    ) -> Deferred[int]:
        """Write ``collector_id``'s heartbeat, alive for ``ttl`` seconds; fires with the
        Redis server's time (ms)."""
        fields = json.dumps(
            {"collector": collector_id, "devices": devices, "started_ms": started_ms}
        )
        args = [keys.COLLECTOR, keys.COLLECTORS, collector_id, fields[:-1], _ms(ttl)]
        d: Deferred[Any] = HEARTBEAT(self.redis, args)
        return d.addCallback(int)

    def collectors(self) -> Deferred[list[CollectorInfo]]:
        """The live collectors (heartbeat not expired), by id."""
        d: Deferred[Any] = LIST(self.redis, [keys.COLLECTOR, keys.COLLECTORS])

        def parsed(reply: list[Any]) -> list[CollectorInfo]:
            now_ms = int(reply[0])
            found = []
            for text in reply[1:]:
                beat = json.loads(text)
                found.append(
                    CollectorInfo(
                        collector_id=beat["collector"],
                        devices=int(beat["devices"]),
                        heartbeat_age=max(0, now_ms - int(beat["at_ms"])) / 1000,
                        started_ms=int(beat["started_ms"]),
                    )
                )
            return sorted(found, key=lambda c: c.collector_id)

        return d.addCallback(parsed)

    def leave(self, collector_id: str) -> Deferred[bool]:
        """Remove ``collector_id``'s heartbeat at once (a clean stop)."""
        d: Deferred[Any] = LEAVE(self.redis, [keys.COLLECTOR, keys.COLLECTORS, collector_id])
        return d.addCallback(lambda n: int(n) == 1)

    # -- leases ----------------------------------------------------------------------------
    def acquire(self, device_id: str, collector_id: str, seconds: float) -> Deferred[Lease | None]:
        """Take ``device_id``'s lease for ``seconds`` with a new epoch; None while another
        collector holds it."""
        args = [keys.LEASE, keys.LEASE_EPOCH, device_id, collector_id, _ms(seconds)]
        d: Deferred[Any] = ACQUIRE(self.redis, args)

        def parsed(reply: list[Any]) -> Lease | None:
            epoch = int(reply[0])
            return Lease(device_id, collector_id, epoch) if epoch else None

        return d.addCallback(parsed)

    def renew(self, lease: Lease, seconds: float) -> Deferred[bool]:
        """Extend ``lease`` by ``seconds`` from now; False when it is no longer ours."""
        args = [keys.LEASE, lease.device_id, lease.token, _ms(seconds)]
        d: Deferred[Any] = RENEW(self.redis, args)
        return d.addCallback(lambda n: int(n) == 1)

    def release(self, lease: Lease) -> Deferred[bool]:
        """Give ``lease`` back; False when it was no longer ours (nothing is deleted)."""
        d: Deferred[Any] = RELEASE(self.redis, [keys.LEASE, lease.device_id, lease.token])
        return d.addCallback(lambda n: int(n) == 1)

    def is_current(self, lease: Lease) -> Deferred[bool]:
        """Whether ``lease`` is its device's lease now (`LEASE_GUARD` on its own)."""
        d: Deferred[Any] = CHECK(self.redis, [keys.LEASE, lease.device_id, lease.token])
        return d.addCallback(lambda n: int(n) == 1)

    def holders(self, device_ids: Iterable[str]) -> Deferred[Mapping[str, Lease]]:
        """The current lease of each of ``device_ids`` that has one."""
        ids = list(device_ids)
        d: Deferred[Any] = HOLDERS(self.redis, [keys.LEASE, *ids])

        def parsed(reply: list[Any]) -> Mapping[str, Lease]:
            return {
                device_id: Lease.from_token(device_id, token)
                for device_id, token in zip(ids, reply, strict=True)
                if token
            }

        return d.addCallback(parsed)
