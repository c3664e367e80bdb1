"""Alarms in Redis: the active-alarm hash, the alarm log stream and the alarm channel.

Written by the limits processor (one script call per event, `alarm_event.lua`), read back
by it at start and by the REST API.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from importlib.resources import files
from typing import Any

from twisted.internet.defer import Deferred, maybeDeferred
from zope.interface import implementer

from pydatacoll.store import keys
from pydatacoll.store.cluster import LuaScript, guarded
from pydatacoll.store_interfaces import IAlarmStore

SCRIPT = files("pydatacoll.store").joinpath("alarm_event.lua").read_text(encoding="utf-8")
SHA = hashlib.sha1(SCRIPT.encode()).hexdigest()
#: Cluster mode: the same, written only under the device's lease the event was judged under.
FENCED = LuaScript(
    guarded(files("pydatacoll.store").joinpath("alarm_fence.lua").read_text("utf-8") + SCRIPT)
)
#: Cluster mode: the clear of an alarm whose device was deleted, written once.
ORPHAN = LuaScript(
    files("pydatacoll.store").joinpath("alarm_orphan.lua").read_text("utf-8") + SCRIPT
)


def alarm_field(event: Mapping[str, Any]) -> str:
    """The active-alarm hash field of an event: ``device:term:item:kind``."""
    return f"{event['device_id']}:{event['term_id']}:{event['item_id']}:{event['kind']}"


@implementer(IAlarmStore)
class AlarmStore:
    """The active alarms and the alarm log (`IAlarmStore`)."""

    def __init__(self, redis: Any) -> None:
        self.redis = redis

    def active_alarms(self) -> Deferred[dict[str, dict[str, Any]]]:
        """The raised alarms not cleared yet: their last raise event by hash field
        (``device:term:item:kind``); an entry that is not a JSON object is left out."""
        d = self.redis.call("hgetall", keys.ALARMS)

        def decode(fields: Mapping[str, str] | None) -> dict[str, dict[str, Any]]:
            active = {}
            for field, text in (fields or {}).items():
                try:
                    event = json.loads(text)
                except ValueError:
                    continue
                if isinstance(event, dict):
                    active[field] = event
            return active

        return d.addCallback(decode)

    def record_event(
        self, event: Mapping[str, Any], log_length: int, token: str | None = None
    ) -> Deferred[Any]:
        """Append an event (``event["event"]`` "raise" or "clear") to the log (about
        ``log_length`` kept), set or clear its active alarm, publish it with its log id.
        Cluster mode: with the ``token`` of the device's lease the event was judged
        under, only while it is still current and the device still configured (fires
        with 0 when not, else 1)."""
        text = json.dumps(event, ensure_ascii=False)
        args = [str(log_length), text, event["event"], alarm_field(event), keys.ALARM]
        script_keys = [keys.ALARM_LOG, keys.ALARMS]
        if token is not None:
            device_id = str(event["device_id"])
            fenced = [*args, keys.LEASE % device_id, token, keys.DEVICES, device_id]
            return self._run(FENCED, script_keys, fenced)
        d: Deferred[Any] = maybeDeferred(self.redis.call, "evalsha", SHA, script_keys, args)

        def no_script(failure: Any) -> Any:
            message = failure.getErrorMessage()
            if "NOSCRIPT" in message or "No script matching" in message:
                return self.redis.call("eval", SCRIPT, script_keys, args)
            return failure

        return d.addErrback(no_script)

    def clear_orphan(self, event: Mapping[str, Any], log_length: int) -> Deferred[Any]:
        """Cluster mode: the clear ``event`` of an alarm whose device is no longer
        configured (deleted), written only while that is so and the alarm still active:
        every collector may send it, the first writes it (fires with 1, the others 0)."""
        text = json.dumps(event, ensure_ascii=False)
        device_id = str(event["device_id"])
        args = [str(log_length), text, "clear", alarm_field(event), keys.ALARM]
        return self._run(ORPHAN, [keys.ALARM_LOG, keys.ALARMS], [*args, keys.DEVICES, device_id])

    def _run(self, script: LuaScript, script_keys: list[str], args: list[str]) -> Deferred[Any]:
        d: Deferred[Any] = maybeDeferred(self.redis.call, "evalsha", script.sha, script_keys, args)

        def no_script(failure: Any) -> Any:
            message = failure.getErrorMessage()
            if "NOSCRIPT" in message or "No script matching" in message:
                return self.redis.call("eval", script.text, script_keys, args)
            return failure

        return d.addErrback(no_script)
