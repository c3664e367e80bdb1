"""Redis reads of the live views: the event stream's catch-up and the metrics' statuses."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from twisted.internet.defer import Deferred, DeferredList, inlineCallbacks
from zope.interface import implementer

from pydatacoll.store import keys
from pydatacoll.store_interfaces import ILiveStore


@implementer(ILiveStore)
class LiveStore:
    """Reads for `pydatacoll.api.stream` and `pydatacoll.metrics`, on a `RedisClient`
    (`ILiveStore`)."""

    def __init__(self, redis: Any) -> None:
        self.redis = redis

    def server_time_ms(self) -> Deferred[int]:
        """Redis' own clock in milliseconds (the clock of every stream entry id)."""
        d = self.redis.call("execute_command", "TIME")
        return d.addCallback(lambda reply: int(reply[0]) * 1000 + int(reply[1]) // 1000)

    def last_entry_id(self, key: str) -> Deferred[str | None]:
        """The id of a stream's newest entry (None: empty or absent)."""
        d = self.redis.call("execute_command", "XREVRANGE", key, "+", "-", "COUNT", 1)
        return d.addCallback(lambda entries: str(entries[0][0]) if entries else None)

    def entries_from(self, key: str, start: str, limit: int) -> Deferred[list[tuple[str, Any]]]:
        """The newest ``limit`` entries at or after ``start`` (an XRANGE bound: ``ms``,
        ``ms-seq`` or ``(ms-seq``), oldest first, as (id, {field: value})."""
        d = self.redis.call("execute_command", "XREVRANGE", key, "+", start, "COUNT", limit)
        return d.addCallback(
            lambda entries: [
                (str(entry_id), dict(zip(flat[::2], flat[1::2], strict=False)))
                for entry_id, flat in reversed(entries or [])
            ]
        )

    def device_ids(self) -> Deferred[list[str]]:
        """Every configured device id."""
        d = self.redis.call("smembers", keys.DEVICES)
        return d.addCallback(lambda ids: sorted(str(i) for i in ids or ()))

    def point_ids(self, device_id: str) -> Deferred[list[tuple[str, str]]]:
        """(term_id, item_id) of every point of a device that has a value."""
        d = self.redis.call("hkeys", keys.DEVICE_VALUES % device_id)
        return d.addCallback(
            lambda fields: [
                (term, item) for term, _, item in (str(f).partition(":") for f in fields or ())
            ]
        )

    @inlineCallbacks
    def statuses(self, device_ids: Iterable[str]) -> Any:
        """Device id -> the status object the collector last wrote (devices without one,
        or with one that is not a JSON object, are left out)."""
        ids = list(device_ids)
        replies = yield DeferredList(
            [self.redis.call("hget", keys.DEVICE_STATUS % i, "status") for i in ids],
            consumeErrors=True,
        )
        found: dict[str, dict[str, Any]] = {}
        for device_id, (ok, text) in zip(ids, replies, strict=True):
            if not ok:
                text.raiseException()
            if text is None:
                continue
            try:
                status = json.loads(text)
            except ValueError:
                continue
            if isinstance(status, dict):
                found[device_id] = status
        return found

    @inlineCallbacks
    def plugin_statuses(self) -> Any:
        """Plugin name -> the state the collector last wrote to HS:PLUGIN_STATUS."""
        fields = yield self.redis.call("hgetall", keys.PLUGIN_STATUS)
        found: dict[str, dict[str, Any]] = {}
        for name, text in (fields or {}).items():
            try:
                status = json.loads(text)
            except ValueError:
                continue
            if isinstance(status, dict):
                found[str(name)] = status
        return found
