"""The collector's side of Redis: each device's configuration in one round trip, the
configuration version, device statuses, frame logs and request replies.

`DeviceStore` is all the device manager knows of Redis (`IDeviceStore`); it works over a
`pydatacoll.store.redis.RedisClient` or the in-memory `pydatacoll.testing.memory.MemoryRedis`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from importlib.resources import files
from typing import Any

import attrs
from twisted.internet.defer import Deferred
from zope.interface import implementer

from pydatacoll.model import Device, Term, TermItem, decode_fields
from pydatacoll.store import keys
from pydatacoll.store.cluster import LuaScript, guarded
from pydatacoll.store.commands import DONE_TTL_MS
from pydatacoll.store.status import write_statuses
from pydatacoll.store_interfaces import IDeviceStore

DEVICE_CONFIG_SCRIPT = (
    files("pydatacoll.store").joinpath("device_config.lua").read_text(encoding="utf-8")
)
DEVICE_CONFIG_SHA = hashlib.sha1(DEVICE_CONFIG_SCRIPT.encode()).hexdigest()
#: The fenced reply (cluster mode): published only under the current lease.
REPLY = LuaScript(guarded(files("pydatacoll.store").joinpath("reply.lua").read_text("utf-8")))
#: Cluster mode: statuses and frame logs written only under the writer's current lease.
STATUS_FENCED = LuaScript(
    guarded(files("pydatacoll.store").joinpath("status_fenced.lua").read_text("utf-8"))
)
#: A device_ctrl's answer with its audit entry (fenced in cluster mode).
CTRL_ANSWER = LuaScript(
    guarded(files("pydatacoll.store").joinpath("ctrl_answer.lua").read_text("utf-8"))
)
_TEMPLATES = (keys.DEVICE, keys.DEVICE_TERMS, keys.TERM, keys.TERM_ITEMS, keys.TERM_ITEM)


@attrs.frozen
class DeviceConfig:
    """A device with its terms and term-items, as read from Redis."""

    device: Device
    terms: tuple[Term, ...]
    term_items: tuple[TermItem, ...]

    def link_key(self) -> str:
        """What restarts the device when it changes: every device field."""
        return json.dumps(self.device.to_json(), sort_keys=True, default=str)

    def points_key(self) -> str:
        """What updates the device's points when it changes."""
        return json.dumps(
            [[t.to_json() for t in self.terms], [ti.to_json() for ti in self.term_items]],
            sort_keys=True,
            default=str,
        )


def run_script(redis: Any, sha: str, text: str, args: Sequence[Any]) -> Deferred[Any]:
    """``EVALSHA`` of a script, or ``EVAL`` of its text once Redis does not know it yet."""
    d: Deferred[Any] = redis.call("evalsha", sha, [], list(args))

    def no_script(failure: Any) -> Any:
        message = failure.getErrorMessage()
        if "NOSCRIPT" in message or "No script matching" in message:  # txredisapi's wording
            return redis.call("eval", text, [], list(args))
        return failure

    return d.addErrback(no_script)


def read_device_config(redis: Any, device_id: str) -> Deferred[DeviceConfig | None]:
    """A device with its terms and term-items (one read-only script call), or None when
    the device is not stored. A stored entity the model refuses fails the Deferred with
    the model's error."""
    d = run_script(redis, DEVICE_CONFIG_SHA, DEVICE_CONFIG_SCRIPT, [*_TEMPLATES, device_id])
    return d.addCallback(decode_device_config)


def decode_device_config(reply: Any) -> DeviceConfig | None:
    """The `DeviceConfig` of a ``device_config.lua`` reply (one JSON text, or None when
    the device is not stored); terms and term-items by id."""
    if not reply:
        return None
    found = json.loads(reply)
    device = Device.from_json(decode_fields(found["device"]))
    terms = []
    term_items = []
    # cjson encodes an empty table as {}: every level is an object.
    stored_terms = found.get("terms") or {}
    for term_id in sorted(stored_terms, key=str):
        entry = stored_terms[term_id]
        terms.append(Term.from_json(decode_fields(entry["fields"])))
        points = entry.get("points") or {}
        for item_id in sorted(points):
            term_items.append(TermItem.from_json(decode_fields(points[item_id])))
    return DeviceConfig(device, tuple(terms), tuple(term_items))


@implementer(IDeviceStore)
class DeviceStore:
    """See the module docstring; ``redis`` is the shared client (or a stand-in)."""

    def __init__(self, redis: Any) -> None:
        self.redis = redis

    @property
    def connected(self) -> bool:
        """Whether Redis can be reached now."""
        return bool(self.redis.connected)

    def when_connected(self) -> Deferred[None]:
        """Fires when Redis can be reached (at once if it can)."""
        d: Deferred[None] = self.redis.when_connected()
        return d

    def config_version(self) -> Deferred[str | None]:
        """STR:CONFIG_VERSION as text, None before the first change."""
        d: Deferred[Any] = self.redis.call("get", keys.CONFIG_VERSION)
        return d.addCallback(lambda version: None if version is None else str(version))

    def device_ids(self) -> Deferred[set[str]]:
        """Every configured device id."""
        d: Deferred[Any] = self.redis.call("smembers", keys.DEVICES)
        return d.addCallback(lambda ids: set(ids or ()))

    def read_device_config(self, device_id: str) -> Deferred[DeviceConfig | None]:
        """See `read_device_config`."""
        return read_device_config(self.redis, device_id)

    def write_statuses(self, statuses: Mapping[str, str]) -> Deferred[Any]:
        """HSET each device's JSON status and PUBLISH it on its status channel (one call)."""
        return write_statuses(self.redis, statuses)

    def write_fenced(
        self, entries: Mapping[str, tuple[str, str | None, Sequence[str]]], keep: int
    ) -> Deferred[Any]:
        """Cluster mode: per device ``(token, JSON status or None, frame log lines)``,
        each written (and the status published) only while ``token`` is the device's
        current lease; the frame log trimmed to its last ``keep`` lines. One call; fires
        with ``[statuses written, devices refused]``."""
        args: list[Any] = [
            keys.DEVICE_STATUS,
            keys.DEVICE_STATUS_CHANNEL,
            keys.LEASE,
            keys.FRAME_LOG,
            keep,
        ]
        for device_id, (token, status, frames) in entries.items():
            args += (device_id, token, status or "", len(frames), *frames)
        return STATUS_FENCED(self.redis, args)

    def append_frames(self, device_id: str, frames: Sequence[str], keep: int) -> Deferred[Any]:
        """RPUSH ``frames`` to the device's frame log, then LTRIM it to its last ``keep``."""
        key = keys.FRAME_LOG % device_id
        d: Deferred[Any] = self.redis.call("rpush", key, list(frames))
        return d.addCallback(lambda _: self.redis.call("ltrim", key, -keep, -1))

    def publish_reply(
        self,
        channel: str,
        body: Mapping[str, Any],
        device_id: str | None = None,
        token: str | None = None,
    ) -> Deferred[Any]:
        """PUBLISH the JSON text of ``body`` on ``channel`` (a request's ``reply_to``);
        with a lease ``token`` (cluster mode) only while it is ``device_id``'s current
        lease (fires with -1, nothing published, when it is not)."""
        text = json.dumps(body, default=str)
        if token is not None and device_id is not None:
            return REPLY(self.redis, [keys.LEASE % device_id, token, channel, text])
        d: Deferred[Any] = self.redis.call("publish", channel, text)
        return d

    def answer_ctrl(
        self,
        request_id: str,
        channel: str,
        body: Mapping[str, Any],
        audit: Mapping[str, str],
        max_length: int,
        device_id: str | None = None,
        token: str | None = None,
        done_ttl_ms: int = DONE_TTL_MS,
    ) -> Deferred[Any]:
        """PUBLISH a device_ctrl's answer and append its audit entry, in one script call
        (``store/ctrl_answer.lua``): the entry only if the API has not settled the request
        as timed out first (the done key kept ``done_ttl_ms``); with a lease ``token``
        only under ``device_id``'s current lease (fires with -1, nothing written, when it
        is not)."""
        text = json.dumps(body, default=str)
        lease = keys.LEASE % device_id if token is not None and device_id is not None else ""
        args: list[Any] = [lease, token or "", channel, text, keys.CTRL_DONE % request_id]
        args += [max(1, int(done_ttl_ms)), keys.CTRL_LOG, max_length]
        for name, value in audit.items():
            args += [name, value]
        return CTRL_ANSWER(self.redis, args)
