"""Which collectors run which processor plugins: one heartbeat hash per plugin.

Each collector writes ``HS:PLUGIN_RUNNING:{name}`` field = its instance id, value = the
ISO 8601 time of its last report, for every plugin it runs (at start and every status
interval), and removes its own field when it stops. A reader counts the fields younger
than a few intervals: a collector that died without stopping ages out.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable
from typing import Any

from twisted.internet.defer import Deferred, gatherResults, succeed

from pydatacoll.model import iso_time
from pydatacoll.store import keys


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


def report_running(redis: Any, names: Iterable[str], instance: str, now: float) -> Deferred[Any]:
    """Say that ``instance`` runs the plugins ``names`` at ``now``."""
    stamp = str(iso_time(now))
    calls = [redis.call("hset", keys.PLUGIN_RUNNING % name, instance, stamp) for name in names]
    return gatherResults(calls, consumeErrors=True) if calls else succeed(None)


def withdraw(redis: Any, names: Iterable[str], instance: str) -> Deferred[Any]:
    """Say that ``instance`` no longer runs the plugins ``names``."""
    calls = [redis.call("hdel", keys.PLUGIN_RUNNING % name, [instance]) for name in names]
    return gatherResults(calls, consumeErrors=True) if calls else succeed(None)


def running_instances(
    redis: Any, name: str, now: float, max_age: float, exclude: str | None = None
) -> Deferred[list[str]]:
    """The instances that reported running ``name`` less than ``max_age`` seconds ago."""
    d = redis.call("hgetall", keys.PLUGIN_RUNNING % name)

    def fresh(fields: dict[str, Any]) -> list[str]:
        found = []
        for instance, stamp in (fields or {}).items():
            seconds = parse_iso(stamp)
            if instance != exclude and seconds is not None and now - seconds < max_age:
                found.append(instance)
        return sorted(found)

    return d.addCallback(fresh)
