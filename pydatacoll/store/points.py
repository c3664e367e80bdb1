"""Reads of the configured points, their latest values and the devices' states, for
processors that mirror the collector elsewhere (the MQTT plugin)."""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.defer import DeferredList, inlineCallbacks

from pydatacoll.model import decode_fields
from pydatacoll.store import keys


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
