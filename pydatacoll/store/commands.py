"""The command path's side of Redis (`ICommandStore`): each device_call/device_ctrl
request sent in one round trip (``store/ctrl_request.lua``: the point's lookups and the
PUBLISH), and the audit entries of device_ctrl.

`pydatacoll.control.commander.Commander` runs on it. Give it a connection of its own
(`pydatacoll.store.redis.RedisClient.dedicated`): then a command never waits on a
pooled connection behind other traffic, only for what Redis runs at that moment.
"""

from __future__ import annotations

import json
from importlib.resources import files
from typing import Any

from twisted.internet.defer import Deferred
from zope.interface import implementer

from pydatacoll.store import keys
from pydatacoll.store.cluster import LuaScript
from pydatacoll.store_interfaces import ICommandStore

REQUEST = LuaScript(files("pydatacoll.store").joinpath("ctrl_request.lua").read_text("utf-8"))
SETTLE = LuaScript(files("pydatacoll.store").joinpath("ctrl_settle.lua").read_text("utf-8"))
#: Milliseconds a device_ctrl's answer is kept at its done key (``keys.CTRL_DONE``).
DONE_TTL_MS = 60000


@implementer(ICommandStore)
class CommandStore:
    """See the module docstring; ``redis`` is a `RedisClient` (or a stand-in)."""

    def __init__(self, redis: Any) -> None:
        self.redis = redis

    def send_request(
        self, ids: dict[str, str], channel: str, message: dict[str, Any]
    ) -> Deferred[tuple[str | None, int]]:
        """Publish ``message`` on ``channel`` if the point ``ids`` (device_id, term_id,
        item_id) exists; fires with ``(None, subscribers that heard it)``, or with
        ``(field, 0)`` naming the first id not stored (then nothing was published)."""
        device_id, term_id, item_id = ids["device_id"], ids["term_id"], ids["item_id"]
        args = [
            keys.DEVICE % device_id,
            keys.TERM % term_id,
            keys.ITEM % item_id,
            keys.TERM_ITEM % (term_id, item_id),
            device_id,
            channel,
            json.dumps(message, ensure_ascii=False),
        ]
        return REQUEST(self.redis, args).addCallback(_decode)

    def settle(self, request_id: str) -> Deferred[str | None]:
        """The API's wait for a device_ctrl's answer timed out: None when the API is first
        to settle it (the API audits the timeout), else the collector's JSON answer, which
        came first and is audited already (``store/ctrl_settle.lua``)."""
        d = SETTLE(self.redis, [keys.CTRL_DONE % request_id, DONE_TTL_MS])
        return d.addCallback(lambda r: r if isinstance(r, str) and r != "timeout" else None)

    def append_audit(self, fields: dict[str, str], max_length: int) -> Deferred[str]:
        """Append one command to the audit stream, kept to ``max_length`` entries; fires
        with the entry's id."""
        return append_audit(self.redis, fields, max_length)


def append_audit(redis: Any, fields: dict[str, str], max_length: int) -> Deferred[str]:
    """``XADD`` one entry to the device_ctrl audit stream (``MAXLEN = max_length``)."""
    flat: list[str] = []
    for name, text in fields.items():
        flat += [name, str(text)]
    d: Deferred[Any] = redis.call(
        "execute_command", "XADD", keys.CTRL_LOG, "MAXLEN", "=", max_length, "*", *flat
    )
    return d.addCallback(str)


def _decode(reply: Any) -> tuple[str | None, int]:
    code, value = reply
    if int(code) == 0:
        return None, int(value)
    return str(value.decode() if isinstance(value, bytes) else value), 0
