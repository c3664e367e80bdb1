"""Events: the device_ctrl audit log (written by the API) and the alarms' reads."""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.defer import Deferred
from zope.interface import implementer

from pydatacoll.store import keys
from pydatacoll.store.commands import append_audit
from pydatacoll.store.streams import read_stream
from pydatacoll.store_interfaces import IEventStore


@implementer(IEventStore)
class EventStore:
    """The command audit stream and the alarms' reads, on a `RedisClient` (`IEventStore`).

    The alarms are written by the limits plugin; the API only reads them here.
    """

    def __init__(self, redis: Any) -> None:
        self.redis = redis

    def append_audit(self, fields: dict[str, str], max_length: int) -> Deferred[str]:
        """Append one command to the audit stream, kept to ``max_length`` entries; fires
        with the entry's id."""
        return append_audit(self.redis, fields, max_length)

    def read_audit(
        self, limit: int, since_ms: int | None, until_ms: int | None
    ) -> Deferred[list[tuple[str, dict[str, str]]]]:
        """Audit entries (id, fields), newest first, in an arrival-time range (ms)."""
        return read_stream(self.redis, keys.CTRL_LOG, limit, since_ms, until_ms)

    def active_alarms(self) -> Deferred[dict[str, Any]]:
        """The active alarms: ``{"device:term:item:kind": raise event}`` (an entry that is
        not JSON is left out)."""
        d = self.redis.call("hgetall", keys.ALARMS)
        return d.addCallback(_decoded)

    def alarm_history(
        self, limit: int, since_ms: int | None, until_ms: int | None
    ) -> Deferred[list[dict[str, Any]]]:
        """Alarm events (raise and clear) with their stream id, newest first, in an
        arrival-time range (ms); an entry that is not a JSON object is left out."""
        d = read_stream(self.redis, keys.ALARM_LOG, limit, since_ms, until_ms)
        return d.addCallback(_events)


def _decoded(fields: dict[str, str] | None) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for name, text in (fields or {}).items():
        try:
            found[str(name)] = json.loads(text)
        except ValueError:
            continue
    return found


def _events(entries: list[tuple[str, dict[str, str]]]) -> list[dict[str, Any]]:
    events = []
    for entry_id, fields in entries:
        try:
            event = json.loads(fields.get("event", "null"))
        except ValueError:
            continue
        if isinstance(event, dict):
            events.append({"id": entry_id, **event})
    return events
