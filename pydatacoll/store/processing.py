"""What the processors read and write in Redis: term-item attributes, stored samples,
formulas and their status.

Every Redis command of the formulas, limits and history processors is issued here (the
alarms in `pydatacoll.store.alarms`, the plugin status in `pydatacoll.store.plugins`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from importlib.resources import files
from typing import Any

from twisted.internet.defer import Deferred, gatherResults, inlineCallbacks
from zope.interface import implementer

from pydatacoll.model import decode_fields
from pydatacoll.store import keys
from pydatacoll.store.cluster import LuaScript, guarded
from pydatacoll.store.redis import when_connected
from pydatacoll.store_interfaces import IFormulaStore, IPointConfigStore

#: A deleted formula's status removed only while the formula does not exist.
FORMULA_STATUS_DELETE = LuaScript(
    files("pydatacoll.store").joinpath("formula_status_del.lua").read_text("utf-8")
)
#: Cluster mode: formula statuses written only under their result device's lease.
FORMULA_STATUS_FENCED = LuaScript(
    guarded(files("pydatacoll.store").joinpath("formula_status.lua").read_text("utf-8"))
)

Point = tuple[str, str, str]


def _entry_sample(entry: Any) -> dict[str, Any] | None:
    _entry_id, flat = entry
    fields = dict(zip(flat[::2], flat[1::2], strict=False))
    try:
        sample = json.loads(fields.get("sample", "null"))
    except ValueError:
        return None
    return sample if isinstance(sample, dict) else None


def _first_error(failure: Any) -> Any:
    """The failure inside a `gatherResults` failure (its first error)."""
    sub = getattr(failure.value, "subFailure", None)
    return sub if sub is not None else failure


@implementer(IPointConfigStore)
class PointConfigStore:
    """Term-item attributes and the samples stored per point (`IPointConfigStore`)."""

    def __init__(self, redis: Any) -> None:
        self.redis = redis

    def when_connected(self) -> Deferred[None]:
        """Fires once Redis can be used (at once when it can)."""
        return when_connected(self.redis)

    @inlineCallbacks
    def term_items(self) -> Any:
        """Every configured term-item's decoded fields by ``(term_id, item_id)``."""
        terms = yield self.redis.call("smembers", keys.TERMS)
        found: dict[tuple[str, str], dict[str, Any]] = {}
        for term_id in sorted(terms):
            items = sorted((yield self.redis.call("smembers", keys.TERM_ITEMS % term_id)))
            hashes = yield gatherResults(
                [self.redis.call("hgetall", keys.TERM_ITEM % (term_id, i)) for i in items],
                consumeErrors=True,
            ).addErrback(_first_error)
            for item_id, fields in zip(items, hashes, strict=True):
                if fields:
                    found[(term_id, item_id)] = decode_fields(fields)
        return found

    def term_item(self, term_id: str, item_id: str) -> Deferred[dict[str, Any]]:
        """One term-item's decoded fields ({} when it does not exist)."""
        d = self.redis.call("hgetall", keys.TERM_ITEM % (term_id, item_id))
        return d.addCallback(lambda fields: decode_fields(fields or {}))

    def latest_sample(self, point: Point) -> Deferred[dict[str, Any] | None]:
        """The newest stored sample of a point (its JSON object), or None."""
        d = self.redis.call(
            "execute_command", "XREVRANGE", keys.POINT_DATA % point, "+", "-", "COUNT", 1
        )
        return d.addCallback(lambda entries: _entry_sample(entries[0]) if entries else None)

    def latest_value(self, point: Point) -> Deferred[dict[str, Any] | None]:
        """The point's latest value as the value hash holds it (its JSON object, with a
        not-topical mark made since), or None."""
        device_id, term_id, item_id = point
        d = self.redis.call("hget", keys.DEVICE_VALUES % device_id, f"{term_id}:{item_id}")

        def decode(text: Any) -> dict[str, Any] | None:
            try:
                value = json.loads(text) if text is not None else None
            except ValueError:
                return None
            return value if isinstance(value, dict) else None

        return d.addCallback(decode)

    def sample_window(
        self, point: Point, since: float, limit: int
    ) -> Deferred[list[dict[str, Any]]]:
        """The stored samples of a point since ``since`` (epoch seconds), oldest first, at
        most ``limit`` (the newest ones)."""
        d = self.redis.call(
            "execute_command",
            "XREVRANGE",
            keys.POINT_DATA % point,
            "+",
            str(max(0, int(since * 1000))),
            "COUNT",
            limit,
        )

        def samples(entries: list[Any]) -> list[dict[str, Any]]:
            found = [_entry_sample(entry) for entry in reversed(entries or [])]
            return [s for s in found if s is not None]

        return d.addCallback(samples)


@implementer(IFormulaStore)
class FormulaStore:
    """The formula definitions and the formulas processor's status hash (`IFormulaStore`)."""

    def __init__(self, redis: Any) -> None:
        self.redis = redis

    @inlineCallbacks
    def formulas(self, limit: int) -> Any:
        """The decoded fields of at most ``limit`` formulas (the first ids in sort order),
        by id; a formula whose hash is gone is left out."""
        ids = yield self.redis.call("smembers", keys.FORMULAS)
        found: dict[str, dict[str, Any]] = {}
        for formula_id in sorted(ids)[:limit]:
            fields = yield self.redis.call("hgetall", keys.FORMULA % formula_id)
            if fields:
                found[formula_id] = decode_fields(fields)
        return found

    def formula_status(self, formula_id: str) -> Deferred[dict[str, Any] | None]:
        """The status the processor last wrote for a formula, or None."""
        d = self.redis.call("hget", keys.FORMULA_STATUS, formula_id)
        return d.addCallback(lambda text: None if text is None else json.loads(text))

    def write_formula_status(
        self,
        statuses: Mapping[str, Mapping[str, Any]],
        leases: Mapping[str, tuple[str, str]] | None = None,
    ) -> Deferred[Any]:
        """Store each formula's status (a JSON object) under its id. Cluster mode:
        ``leases`` gives each formula's ``(result device, lease token)``, and a status is
        written only while that token is the device's current lease (fires with
        ``[written, refused]``)."""
        fields = {f: json.dumps(entry, ensure_ascii=False) for f, entry in statuses.items()}
        if leases is not None:
            args: list[Any] = [keys.FORMULA_STATUS, keys.LEASE]
            for formula_id, text in fields.items():
                device_id, token = leases[formula_id]
                args += (formula_id, device_id, token, text)
            return FORMULA_STATUS_FENCED(self.redis, args)
        d: Deferred[Any] = self.redis.call("hmset", keys.FORMULA_STATUS, fields)
        return d

    def delete_formula_status(self, formula_id: str) -> Deferred[Any]:
        """Forget a deleted formula's status, unless the formula exists (again)."""
        return FORMULA_STATUS_DELETE(self.redis, [keys.FORMULA_STATUS, keys.FORMULAS, formula_id])
