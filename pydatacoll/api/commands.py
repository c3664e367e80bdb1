"""The device_call and device_ctrl routes (over `pydatacoll.control.commander.Commander`:
requests to the collector running a device, over Redis pub/sub and back, and the audit
log of every command) and the audit log's route."""

from __future__ import annotations

import json
import uuid
from typing import Any

from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.python.failure import Failure

from pydatacoll import errors
from pydatacoll.api.core import ApiCore
from pydatacoll.api.plumbing import (
    MAX_SAMPLES,
    client_address,
    int_arg,
    json_response,
    routes,
    time_arg,
)
from pydatacoll.control.replies import DeviceAnswer
from pydatacoll.model import normalize_id


@routes.route("/api/v1/<any(device_call,device_ctrl):action>", methods=["POST"])
@inlineCallbacks
def device_request(self: ApiCore, request: Any, action: str) -> Any:
    """Read a point now / command a point, through the collector running its device.

    The round trip runs to its end (reply or timeout, and the audit entry) even if
    the client goes away; the answer's outcome gives the HTTP status.
    """
    request_id = uuid.uuid4().hex
    try:
        body = self.read_body(request)
        if not isinstance(body, dict):
            raise errors.ValidationError("the request must be a JSON object")
        ids = {
            name: normalize_id(body.get(name), name) for name in ("device_id", "term_id", "item_id")
        }
        if action == "device_call":
            work = self.commander.device_call(request_id, ids)
        else:
            work = self.commander.device_ctrl(
                request_id, ids, body, client_address(request), self.token_id
            )
        answer = yield _detached(work)
    except DeviceAnswer:
        raise
    except errors.ApiError as e:
        # Every answer of these routes has the DeviceAnswer shape (which includes the
        # error shape): the outcome of a request the API refused is the error code.
        if isinstance(e, errors.Unauthorized):
            request.setHeader(b"WWW-Authenticate", b'Bearer realm="pydatacoll"')
        raise DeviceAnswer.refusal(request_id, e) from None
    return json_response(request, answer.status, answer.to_json())


@routes.route("/api/v1/device_ctrl/log", methods=["GET"])
@inlineCallbacks
def device_ctrl_log(self: ApiCore, request: Any) -> Any:
    """The device_ctrl audit log, newest first (``?limit=``, ``?since=``, ``?until=``)."""
    self.check_read(request)
    limit = int_arg(request, "limit", 100, 1, MAX_SAMPLES)
    since = time_arg(request, "since")
    until = time_arg(request, "until")
    entries = yield self.events.read_audit(limit, since, until)
    return json_response(request, 200, [_audit_entry(e) for e in entries])


def _audit_entry(entry: Any) -> dict[str, Any]:
    entry_id, stored = entry
    fields: dict[str, Any] = dict(stored)
    for name in ("value", "select"):
        try:
            fields[name] = json.loads(fields.get(name, "null"))
        except ValueError:
            pass
    if str(fields.get("status", "")).isdigit():
        fields["status"] = int(fields["status"])
    fields["cause"] = fields.get("cause") or None
    return {"id": entry_id, **fields}


def _detached(work: Deferred[Any]) -> Deferred[Any]:
    """A Deferred following ``work``; cancelling it (client gone) leaves ``work`` running."""
    result: Deferred[Any] = Deferred()

    def forward(outcome: Any) -> None:
        if result.called:
            return
        if isinstance(outcome, Failure):
            result.errback(outcome)
        else:
            result.callback(outcome)

    work.addBoth(forward)
    return result
