"""Which collectors run which processor plugins: one heartbeat hash per plugin.

Each collector writes ``HS:PLUGIN_RUNNING:{name}`` field = its instance id, value = the
ISO 8601 time of its last report, for every plugin it runs (at start and every status
interval), and removes its own field when it stops. A reader counts the fields younger
than a few intervals: a collector that died without stopping ages out. The plugin status
hash (``HS:PLUGIN_STATUS``, one JSON text per plugin) is written here too.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable, Mapping
from typing import Any

from twisted.internet.defer import Deferred, gatherResults, succeed
from zope.interface import implementer

from pydatacoll.model import iso_time
from pydatacoll.store import keys
from pydatacoll.store.redis import when_connected
from pydatacoll.store_interfaces import IPluginStatusStore


def parse_iso(text: Any) -> float | None:
    """The epoch seconds of an ISO 8601 text, or None when it is not one."""
    if not isinstance(text, str):
        return None
    try:
        moment = datetime.datetime.fromisoformat(text)
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    return moment.timestamp()


@implementer(IPluginStatusStore)
class PluginStatusStore:
    """The plugin status hash and the per-plugin heartbeats (`IPluginStatusStore`)."""

    def __init__(self, redis: Any) -> None:
        self.redis = redis

    def when_connected(self) -> Deferred[None]:
        """Fires once Redis can be used (at once when it can)."""
        return when_connected(self.redis)

    def write_status(self, statuses: Mapping[str, str]) -> Deferred[Any]:
        """Store each plugin's status JSON text in ``HS:PLUGIN_STATUS``."""
        d: Deferred[Any] = self.redis.call("hmset", keys.PLUGIN_STATUS, dict(statuses))
        return d

    def report_running(self, names: Iterable[str], instance: str, now: float) -> Deferred[Any]:
        """Say that ``instance`` runs the plugins ``names`` at ``now``."""
        stamp = str(iso_time(now))
        calls = [
            self.redis.call("hset", keys.PLUGIN_RUNNING % name, instance, stamp) for name in names
        ]
        if not calls:
            return succeed(None)
        gathered: Deferred[Any] = gatherResults(calls, consumeErrors=True)
        return gathered

    def withdraw(self, names: Iterable[str], instance: str) -> Deferred[Any]:
        """Say that ``instance`` no longer runs the plugins ``names``."""
        calls = [self.redis.call("hdel", keys.PLUGIN_RUNNING % name, [instance]) for name in names]
        if not calls:
            return succeed(None)
        gathered: Deferred[Any] = gatherResults(calls, consumeErrors=True)
        return gathered

    def running_instances(
        self, name: str, now: float, max_age: float, exclude: str | None = None
    ) -> Deferred[list[str]]:
        """The instances that reported running ``name`` less than ``max_age`` seconds ago."""
        d = self.redis.call("hgetall", keys.PLUGIN_RUNNING % name)

        def fresh(fields: dict[str, Any]) -> list[str]:
            found = []
            for instance, stamp in (fields or {}).items():
                seconds = parse_iso(stamp)
                if instance != exclude and seconds is not None and now - seconds < max_age:
                    found.append(instance)
            return sorted(found)

        return d.addCallback(fresh)
