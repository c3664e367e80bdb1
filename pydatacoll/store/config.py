"""The configuration store: entities in Redis hashes, changed atomically by a Lua script."""

from __future__ import annotations

import json
import re
from importlib.resources import files
from typing import Any

from twisted.internet.defer import Deferred, inlineCallbacks

from pydatacoll.errors import ApiError, Conflict, NotFound, ValidationError
from pydatacoll.store import keys
from pydatacoll.store.devices import DeviceConfig, read_device_config
from pydatacoll.store.redis import RedisClient

_SCRIPT = files("pydatacoll.store").joinpath("config.lua").read_text(encoding="utf-8")
_ERRORS: dict[int, type[ApiError]] = {400: ValidationError, 404: NotFound, 409: Conflict}
#: How often an update that raced another change is read and tried again.
MAX_RETRIES = 5
_DIGITS = re.compile(r"(\d+)")

ENTITY_KEYS = {
    "device": keys.DEVICE,
    "term": keys.TERM,
    "item": keys.ITEM,
    "formula": keys.FORMULA,
    "gateway": keys.GATEWAY,
}
ENTITY_SETS = {
    "device": keys.DEVICES,
    "term": keys.TERMS,
    "item": keys.ITEMS,
    "formula": keys.FORMULAS,
    "gateway": keys.GATEWAYS,
}


def natural_key(text: str) -> list[Any]:
    """Sort ids the way people count: 2 before 10."""
    return [int(part) if part.isdigit() else part for part in _DIGITS.split(text)]


class ConfigStore:
    """Reads and atomic changes of devices, terms, items and term-items."""

    def __init__(self, redis: RedisClient) -> None:
        self.redis = redis

    def list_ids(self, entity: str) -> Deferred[list[str]]:
        """Every id of an entity type, in natural order."""
        d = self.redis.call("smembers", ENTITY_SETS[entity])
        return d.addCallback(lambda ids: sorted(ids, key=natural_key))

    def get_fields(self, entity: str, entity_id: str) -> Deferred[dict[str, str]]:
        """The stored hash (name -> JSON text) of an entity; empty when missing."""
        return self.redis.call("hgetall", ENTITY_KEYS[entity] % entity_id)

    def get_term_item_fields(self, term_id: str, item_id: str) -> Deferred[dict[str, str]]:
        """The stored hash of a term-item; empty when missing."""
        return self.redis.call("hgetall", keys.TERM_ITEM % (term_id, item_id))

    def exists(self, key: str) -> Deferred[bool]:
        """Whether a key exists."""
        return self.redis.call("exists", key).addCallback(bool)

    @inlineCallbacks
    def members(self, owner_key: str, set_key: str) -> Any:
        """The members of ``set_key`` in natural order, or None when ``owner_key`` is missing."""
        found = yield self.exists(owner_key)
        if not found:
            return None
        ids = yield self.redis.call("smembers", set_key)
        return sorted(ids, key=natural_key)

    @inlineCallbacks
    def apply(
        self,
        ops: list[dict[str, Any]],
        *,
        check_only: bool = False,
        expect_version: str | None = None,
    ) -> Any:
        """Run ``ops`` in one atomic script; the stored entities after, as JSON objects.

        Raises the `ApiError` the script reports (404, 409, 400) with the element index;
        ``{"retry"}`` (an update raced another change, or the configuration version is
        no longer ``expect_version``) surfaces as `RetryChange`. ``check_only`` runs the
        checks and writes nothing (fires with ``[]``).
        """
        script_request: dict[str, Any] = {
            "k": keys.lua_templates(),
            "c": keys.CHANGE_CHANNELS,
            "ops": ops,
        }
        if check_only:
            script_request["check_only"] = True
        if expect_version is not None:
            script_request["version"] = expect_version
        request = json.dumps(script_request, ensure_ascii=False)
        reply = yield self.redis.call("eval", _SCRIPT, [], [request])
        result = json.loads(reply)
        if result.get("retry"):
            raise RetryChange()
        if "error" in result:
            error_type = _ERRORS.get(result["error"], ApiError)
            raise error_type(result["message"], field=result["field"], index=result["index"])
        return result["results"]

    def read_stream(
        self, key: str, limit: int, since_ms: int | None, until_ms: int | None
    ) -> Deferred[list[tuple[str, dict[str, str]]]]:
        """A stream's entries (id, fields), newest first, in an arrival-time range (ms)."""
        high = str(until_ms) if until_ms is not None else "+"
        low = str(since_ms) if since_ms is not None else "-"
        d = self.redis.call("execute_command", "XREVRANGE", key, high, low, "COUNT", limit)
        return d.addCallback(
            lambda entries: [
                (entry_id, dict(zip(flat[::2], flat[1::2], strict=False)))
                for entry_id, flat in entries
            ]
        )

    def read_samples(
        self, point: tuple[str, str, str], limit: int, since_ms: int | None, until_ms: int | None
    ) -> Deferred[list[Any]]:
        """A point's stored samples, newest first."""
        d = self.read_stream(keys.POINT_DATA % point, limit, since_ms, until_ms)
        return d.addCallback(lambda entries: [_json_field(f, "sample") for _, f in entries])

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
        if len(entries) <= position:
            return None
        return _sample(entries[position])

    def publish(self, channel: str, message: dict[str, Any]) -> Deferred[int]:
        """Publish a JSON message; fires with the number of subscribers that got it."""
        return self.redis.call("publish", channel, json.dumps(message, ensure_ascii=False))

    # --- i12dev ---
    def read_device_config(self, device_id: str) -> Deferred[DeviceConfig | None]:
        """A device with its terms and term-items in one round trip (a read-only script),
        or None when it is not stored (see `pydatacoll.store.devices.read_device_config`)."""
        return read_device_config(self.redis, device_id)


class RetryChange(Exception):
    """An update raced another change of the same entity; read again and retry."""


def _sample(entry: Any) -> Any:
    _entry_id, flat = entry
    return _json_field(dict(zip(flat[::2], flat[1::2], strict=False)), "sample")


def _json_field(fields: dict[str, str], name: str) -> Any:
    try:
        return json.loads(fields.get(name, "null"))
    except ValueError:
        return None
