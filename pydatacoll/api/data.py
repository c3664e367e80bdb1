"""Routes of the collected data: a point's samples (Redis, then the history database),
the latest values and the status of a device."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from twisted.internet.defer import inlineCallbacks

from pydatacoll import errors
from pydatacoll.api.core import ApiCore
from pydatacoll.api.plumbing import (
    INTEGER,
    MAX_INDEX,
    MAX_SAMPLES,
    int_arg,
    json_response,
    routes,
    time_arg,
)
from pydatacoll.devices.manager import STALE_AFTER
from pydatacoll.model import decode_fields
from pydatacoll.store.config import natural_key

_POINT = "/api/v1/devices/<device_id>/terms/<term_id>/items/<item_id>"


@routes.route(_POINT + "/datas", methods=["GET"])
@inlineCallbacks
def get_datas(self: ApiCore, request: Any, device_id: str, term_id: str, item_id: str) -> Any:
    """A point's samples, newest first (``?limit=``, ``?since=``, ``?until=``)."""
    self.check_read(request)
    limit = int_arg(request, "limit", 1000, 1, MAX_SAMPLES)
    since = time_arg(request, "since")
    until = time_arg(request, "until")
    yield self.term_item_fields(term_id, item_id, device_id)
    point = (device_id, term_id, item_id)
    samples = yield self.points.read_samples(point, limit, since, until)
    if self.history is not None and len(samples) < limit:
        # Redis keeps the newest samples only: the older part of the range is in the
        # history database (strictly before the oldest one Redis gave, no duplicates).
        older = until
        if samples and samples[-1].get("receive_time"):
            oldest = datetime.fromisoformat(samples[-1]["receive_time"]).timestamp()
            older = int(oldest * 1000) - 1
        rows = yield _history_samples(self, point, since, older, limit - len(samples))
        samples.extend(rows)
    return json_response(request, 200, samples)


@inlineCallbacks
def _history_samples(
    self: ApiCore, point: Any, since: int | None, until: int | None, limit: int
) -> Any:
    try:
        samples = yield self.history.read_samples(point, since, until, limit)
    except Exception as exc:
        # The samples Redis has are still worth answering with: say what is missing.
        self.log.warn("history database not readable: {error}", error=exc)
        return []
    return list(samples)


@routes.route(_POINT + "/datas/<index>", methods=["GET"])
@inlineCallbacks
def get_data(
    self: ApiCore, request: Any, device_id: str, term_id: str, item_id: str, index: str
) -> Any:
    """One sample by its index in the list ``datas`` answers (newest first): 0 is the
    newest, 1 the one before it; -1 the oldest kept, -2 the one after it."""
    self.check_read(request)
    if not INTEGER.match(index):
        raise errors.ValidationError("index must be an integer", field="index")
    position = int(index)
    if abs(position) > MAX_INDEX:
        raise errors.ValidationError(
            f"index must be from -{MAX_INDEX} to {MAX_INDEX}", field="index"
        )
    yield self.term_item_fields(term_id, item_id, device_id)
    sample = yield self.points.sample_at((device_id, term_id, item_id), position)
    if sample is None:
        raise errors.NotFound("no sample at this index", field="index")
    return json_response(request, 200, sample)


@routes.route("/api/v1/devices/<device_id>/values", methods=["GET"])
@inlineCallbacks
def device_values(self: ApiCore, request: Any, device_id: str) -> Any:
    """The latest sample of every point of a device: ``{"term_id:item_id": sample}``."""
    self.check_read(request)
    yield self.device_fields(device_id)
    values = yield self.points.device_values(device_id)
    return json_response(request, 200, {k: values[k] for k in sorted(values, key=natural_key)})


@routes.route("/api/v1/devices/<device_id>/status", methods=["GET"])
@inlineCallbacks
def device_status(self: ApiCore, request: Any, device_id: str) -> Any:
    """The collector's status of a device; ``"state": "unknown"`` before it wrote one,
    ``"stale": true`` when no collector has refreshed it for ``STALE_AFTER`` s."""
    self.check_read(request)
    fields = yield self.device_fields(device_id)
    text = yield self.points.device_status_text(device_id)
    status: Any = None
    if text is not None:
        try:
            status = json.loads(text)
        except ValueError:
            status = None
    if not isinstance(status, dict):
        status = {
            "device_id": device_id,
            "protocol": decode_fields(fields).get("protocol"),
            "state": "unknown",
            "since": None,
            "last_error": None if text is None else "the stored status is not a JSON object",
            "counters": {},
            "points_updated": 0,
            "last_value_time": None,
            "collector": None,
        }
    else:
        status["stale"] = is_stale(self.clock.seconds(), status.get("updated"))
    return json_response(request, 200, status)


def is_stale(now: float, updated: Any) -> bool:
    """Whether no collector has refreshed a status for ``STALE_AFTER`` seconds (its
    collector stopped or lost Redis: the state it says is not known to be true)."""
    try:
        written = datetime.fromisoformat(updated).timestamp()
    except (TypeError, ValueError):
        return True
    return bool(now - written > STALE_AFTER)
