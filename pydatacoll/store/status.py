"""Device statuses into Redis: ``HS:DEVICE_STATUS:{id}`` and its channel, one script call."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from importlib.resources import files
from typing import Any

from twisted.internet.defer import Deferred

from pydatacoll.store import keys

_SCRIPT = files("pydatacoll.store").joinpath("status.lua").read_text(encoding="utf-8")
_SHA = hashlib.sha1(_SCRIPT.encode()).hexdigest()


def write_statuses(redis: Any, statuses: Mapping[str, str]) -> Deferred[Any]:
    """HSET each device's JSON status (field ``status``) and PUBLISH it on
    ``keys.DEVICE_STATUS_CHANNEL``; one ``EVALSHA`` (``EVAL`` once if not cached)."""
    args: list[Any] = [keys.DEVICE_STATUS, keys.DEVICE_STATUS_CHANNEL]
    for device_id, text in statuses.items():
        args += (device_id, text)
    d: Deferred[Any] = redis.call("evalsha", _SHA, [], args)

    def no_script(failure: Any) -> Any:
        message = failure.getErrorMessage()
        if "NOSCRIPT" in message or "No script matching" in message:
            return redis.call("eval", _SCRIPT, [], args)
        return failure

    return d.addErrback(no_script)
