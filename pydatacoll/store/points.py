"""Points: their latest values, stored samples and statuses (`PointStore`, the API's
view), and the reads of processors that mirror the collector elsewhere (the MQTT plugin)."""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.defer import Deferred, DeferredList, inlineCallbacks
from zope.interface import implementer

from pydatacoll.model import decode_fields
from pydatacoll.store import keys
from pydatacoll.store.streams import json_field, read_stream
from pydatacoll.store_interfaces import IPointStore


@inlineCallbacks
def load_points(redis: Any) -> Any:
    """Every term-item as ``{(device_id, term_id, item_id): fields}`` (decoded JSON
    fields); a term-item without a device is left out."""
    points: dict[tuple[str, str, str], dict[str, Any]] = {}
    terms = yield redis.call("smembers", keys.TERMS)
    for term_id in sorted(terms):
        items = sorted((yield redis.call("smembers", keys.TERM_ITEMS % term_id)))
        hashes = yield DeferredList(
            [redis.call("hgetall", keys.TERM_ITEM % (term_id, item_id)) for item_id in items],
            fireOnOneErrback=True,
            consumeErrors=True,
        )
        for item_id, (_ok, fields) in zip(items, hashes, strict=True):
            body = decode_fields(fields or {})
            device_id = body.get("device_id")
            if device_id is not None:
                points[(str(device_id), str(term_id), str(item_id))] = body
    return points


@inlineCallbacks
def latest_values(redis: Any, device_id: str) -> Any:
    """The latest sample of each point of a device: ``{(term_id, item_id): sample JSON}``."""
    fields = yield redis.call("hgetall", keys.DEVICE_VALUES % device_id)
    values: dict[tuple[str, str], dict[str, Any]] = {}
    for name, text in (fields or {}).items():
        term_id, _, item_id = str(name).partition(":")
        try:
            sample = json.loads(text)
        except (TypeError, ValueError):
            continue
        if isinstance(sample, dict):
            values[(term_id, item_id)] = sample
    return values


@inlineCallbacks
def device_states(redis: Any, device_ids: Any) -> Any:
    """``{device_id: state}`` from each device's status hash ("unknown" without one)."""
    ids = list(device_ids)
    replies = yield DeferredList(
        [redis.call("hget", keys.DEVICE_STATUS % device_id, "status") for device_id in ids],
        fireOnOneErrback=True,
        consumeErrors=True,
    )
    states = {}
    for device_id, (_ok, text) in zip(ids, replies, strict=True):
        state = "unknown"
        if text is not None:
            try:
                body = json.loads(text)
                state = str(body.get("state", "unknown")) if isinstance(body, dict) else state
            except ValueError:
                pass
        states[device_id] = state
    return states


@inlineCallbacks
def config_version(redis: Any) -> Any:
    """The configuration version (``STR:CONFIG_VERSION``), or None before any change."""
    text = yield redis.call("get", keys.CONFIG_VERSION)
    return None if text is None else int(text)


@implementer(IPointStore)
class PointStore:
    """Latest values, stored samples, device and formula statuses, and the request
    channels, on a `RedisClient` (`IPointStore`)."""

    def __init__(self, redis: Any) -> None:
        self.redis = redis

    def device_values(self, device_id: str) -> Deferred[dict[str, Any]]:
        """The latest sample of every point of a device, ``{"term_id:item_id": sample}``
        (a stored text that is not JSON stays text)."""
        d = self.redis.call("hgetall", keys.DEVICE_VALUES % device_id)
        return d.addCallback(lambda fields: decode_fields(fields or {}))

    def device_status_text(self, device_id: str) -> Deferred[str | None]:
        """The status text the collector last wrote for a device (None: none yet)."""
        d: Deferred[str | None] = self.redis.call("hget", keys.DEVICE_STATUS % device_id, "status")
        return d

    def formula_status_text(self, formula_id: str) -> Deferred[str | None]:
        """The state text the formulas plugin last wrote for a formula (None: none yet)."""
        d: Deferred[str | None] = self.redis.call("hget", keys.FORMULA_STATUS, formula_id)
        return d

    def read_samples(
        self, point: tuple[str, str, str], limit: int, since_ms: int | None, until_ms: int | None
    ) -> Deferred[list[Any]]:
        """A point's stored samples, newest first, in an arrival-time range (ms)."""
        d = read_stream(self.redis, keys.POINT_DATA % point, limit, since_ms, until_ms)
        return d.addCallback(lambda entries: [json_field(f, "sample") for _, f in entries])

    @inlineCallbacks
    def sample_at(self, point: tuple[str, str, str], index: int) -> Any:
        """The sample at ``index`` in the newest-first order of `read_samples` (0 = the
        newest, -1 = the oldest kept), or None."""
        key = keys.POINT_DATA % point
        if index >= 0:
            entries = yield self.redis.call(
                "execute_command", "XREVRANGE", key, "+", "-", "COUNT", index + 1
            )
            position = index
        else:
            entries = yield self.redis.call(
                "execute_command", "XRANGE", key, "-", "+", "COUNT", -index
            )
            position = -index - 1
        if len(entries or ()) <= position:
            return None
        _entry_id, flat = entries[position]
        return json_field(dict(zip(flat[::2], flat[1::2], strict=False)), "sample")

    def publish(self, channel: str, message: dict[str, Any]) -> Deferred[int]:
        """Publish a JSON message; fires with the number of subscribers that got it."""
        d: Deferred[int] = self.redis.call(
            "publish", channel, json.dumps(message, ensure_ascii=False)
        )
        return d
