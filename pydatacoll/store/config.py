"""The configuration store: entities in Redis hashes, changed atomically by a Lua script."""

from __future__ import annotations

import hashlib
import json
import re
from importlib.resources import files
from typing import Any

from twisted.internet.defer import Deferred, inlineCallbacks
from zope.interface import implementer

from pydatacoll.errors import ApiError, Conflict, NotFound, ValidationError
from pydatacoll.store import keys
from pydatacoll.store.devices import DeviceConfig, read_device_config, run_script
from pydatacoll.store.redis import RedisClient
from pydatacoll.store_interfaces import IConfigStore

_SCRIPT = files("pydatacoll.store").joinpath("config.lua").read_text(encoding="utf-8")
#: A set's members as one JSON text (5,000 device ids: one bulk string to parse, not
#: 5,000 elements one reactor call each in txredisapi).
MEMBERS_SCRIPT = files("pydatacoll.store").joinpath("members.lua").read_text(encoding="utf-8")
MEMBERS_SHA = hashlib.sha1(MEMBERS_SCRIPT.encode()).hexdigest()
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
#: The set of the ids hanging on an entity (`ConfigStore.child_ids`).
_CHILDREN = {"device": keys.DEVICE_TERMS, "term": keys.TERM_ITEMS}


def natural_key(text: str) -> list[Any]:
    """Sort ids the way people count: 2 before 10."""
    return [int(part) if part.isdigit() else part for part in _DIGITS.split(text)]


@implementer(IConfigStore)
class ConfigStore:
    """Reads and atomic changes of the configured entities (devices, terms, items,
    term-items, formulas, gateways) and the change log (`IConfigStore`)."""

    def __init__(self, redis: RedisClient) -> None:
        self.redis = redis

    def list_ids(self, entity: str) -> Deferred[list[str]]:
        """Every id of an entity type, in natural order."""
        d = run_script(self.redis, MEMBERS_SHA, MEMBERS_SCRIPT, [ENTITY_SETS[entity]])
        return d.addCallback(lambda text: sorted(json.loads(text), key=natural_key))

    def get_fields(self, entity: str, entity_id: str) -> Deferred[dict[str, str]]:
        """The stored hash (name -> JSON text) of an entity; empty when missing."""
        return self.redis.call("hgetall", ENTITY_KEYS[entity] % entity_id)

    def get_term_item_fields(self, term_id: str, item_id: str) -> Deferred[dict[str, str]]:
        """The stored hash of a term-item; empty when missing."""
        return self.redis.call("hgetall", keys.TERM_ITEM % (term_id, item_id))

    def entity_exists(self, entity: str, entity_id: str) -> Deferred[bool]:
        """Whether an entity (device, term, item, formula, gateway) is stored."""
        d: Deferred[Any] = self.redis.call("exists", ENTITY_KEYS[entity] % entity_id)
        return d.addCallback(bool)

    @inlineCallbacks
    def child_ids(self, entity: str, entity_id: str) -> Any:
        """The ids hanging on an entity, in natural order: a device's terms, a term's
        items; None when the entity is missing."""
        found = yield self.entity_exists(entity, entity_id)
        if not found:
            return None
        ids = yield self.redis.call("smembers", _CHILDREN[entity] % entity_id)
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

    # --- i12dev ---
    def read_device_config(self, device_id: str) -> Deferred[DeviceConfig | None]:
        """A device with its terms and term-items in one round trip (a read-only script),
        or None when it is not stored (see `pydatacoll.store.devices.read_device_config`)."""
        return read_device_config(self.redis, device_id)


class RetryChange(Exception):
    """An update raced another change of the same entity; read again and retry."""
