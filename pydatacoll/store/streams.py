"""Reads of Redis streams shared by the point and event stores."""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.defer import Deferred


def read_stream(
    redis: Any, key: str, limit: int, since_ms: int | None, until_ms: int | None
) -> Deferred[list[tuple[str, dict[str, str]]]]:
    """A stream's entries (id, fields), newest first, in an arrival-time range (ms)."""
    high = str(until_ms) if until_ms is not None else "+"
    low = str(since_ms) if since_ms is not None else "-"
    d: Deferred[Any] = redis.call("execute_command", "XREVRANGE", key, high, low, "COUNT", limit)
    return d.addCallback(lambda entries: [_entry(entry) for entry in entries or ()])


def _entry(entry: Any) -> tuple[str, dict[str, str]]:
    entry_id, flat = entry
    return str(entry_id), dict(zip(flat[::2], flat[1::2], strict=False))


def json_field(fields: dict[str, str], name: str) -> Any:
    """Field ``name`` decoded from JSON (None when absent or not JSON)."""
    try:
        return json.loads(fields.get(name, "null"))
    except ValueError:
        return None
