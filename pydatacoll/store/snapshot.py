"""The whole configuration read at once, for export and for planning an import."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from importlib.resources import files
from typing import Any

import attrs
from twisted.internet.defer import Deferred
from zope.interface import implementer

from pydatacoll.store import keys
from pydatacoll.store.redis import RedisClient
from pydatacoll.store_interfaces import ISnapshotReader

_SCRIPT = files("pydatacoll.store").joinpath("config_dump.lua").read_text(encoding="utf-8")
#: The script's SHA1 (`pydatacoll.testing.memory` emulates it under this name).
SHA = hashlib.sha1(_SCRIPT.encode()).hexdigest()
#: The configuration entities, in the order they depend on each other.
ENTITY_ORDER = ("device", "term", "item", "term_item", "formula")


@attrs.frozen
class ConfigSnapshot:
    """Every entity's stored hash (field -> JSON text) by entity and key, and the version.

    Term-items are keyed ``"term_id:item_id"``; ``version`` is STR:CONFIG_VERSION as
    text (``""`` before the first change).
    """

    version: str
    entities: Mapping[str, Mapping[str, Mapping[str, str]]]

    def count(self) -> int:
        """How many entities there are in all."""
        return sum(len(stored) for stored in self.entities.values())


@implementer(ISnapshotReader)
class SnapshotReader:
    """Reads the whole configuration in one atomic, read-only script."""

    def __init__(self, redis: RedisClient) -> None:
        self.redis = redis

    def read(self) -> Deferred[ConfigSnapshot]:
        """The configuration as it is now (entities whose hash is gone left out)."""
        request = json.dumps({"k": keys.lua_templates()})
        d = self.redis.call("eval", _SCRIPT, [], [request])
        return d.addCallback(_snapshot)


def read_snapshot(redis: RedisClient) -> Deferred[ConfigSnapshot]:
    """One atomic read of the whole configuration (a read-only script)."""
    return SnapshotReader(redis).read()


def _snapshot(reply: Any) -> ConfigSnapshot:
    data = json.loads(reply)
    return ConfigSnapshot(
        version=str(data["version"]),
        entities={name: data[name] for name in ENTITY_ORDER},
    )
