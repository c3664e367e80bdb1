"""device_call and device_ctrl: requests to the collector running a device, over Redis
pub/sub and back, and the audit log of every command."""

from __future__ import annotations

import json
import uuid
from typing import Any

from twisted.internet.defer import CancelledError, Deferred, inlineCallbacks
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
from pydatacoll.api.replies import DeviceAnswer, ReplyTimeout
from pydatacoll.model import iso_time, normalize_id
from pydatacoll.store import keys


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
            work = _round_trip(self, action, request_id, ids, {})
        else:
            work = send_ctrl(self, request_id, ids, body, client_address(request))
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


@inlineCallbacks
def send_ctrl(
    self: ApiCore,
    request_id: str,
    ids: dict[str, str],
    body: dict[str, Any],
    client: str,
    token_id: str | None = None,
    refused: str | None = None,
) -> Any:
    """Validate, send and audit one command; every outcome gets its audit entry.

    Fires with the `DeviceAnswer` or fails with the `errors.ApiError` the route would
    answer; ``refused`` (a reason) audits the command as refused without sending it.
    """
    token_id = token_id or self.token_id
    entry = {
        "time": iso_time(self.clock.seconds()),
        "request_id": request_id,
        "client": client,
        "token_id": token_id,
        **ids,
        "value": _short_json(body.get("value")),
        "select": _short_json(body.get("select")),
    }
    try:
        value = body.get("value")
        # JSON true/false go to the driver as they are: a coil or an IEC 104 single
        # command takes them, a double command maps them to 2/1, others to 1/0.
        if not isinstance(value, (bool, int, float, str)) or (
            isinstance(value, str) and len(value) > 256
        ):
            raise errors.ValidationError(
                "value must be a number, true/false, or a short string", field="value"
            )
        select = body.get("select")  # None: the term-item's default mode
        if select is not None and not isinstance(select, bool):
            raise errors.ValidationError("select must be true, false or null", field="select")
        if refused is not None:
            raise DeviceAnswer(request_id, "refused", refused)
        extra = {"value": value, "select": select, "client": client, "token_id": token_id}
        answer = yield _round_trip(self, "device_ctrl", request_id, ids, extra)
    except errors.ApiError as e:
        outcome = e.outcome if isinstance(e, DeviceAnswer) else e.code
        yield _audit(self, entry, outcome, e.status, e.message, getattr(e, "cause", None))
        raise
    except Exception:
        yield _audit(self, entry, "failed", 500, "internal error", None)
        raise
    yield _audit(self, entry, answer.outcome, answer.status, answer.message, answer.cause)
    return answer


@inlineCallbacks
def _round_trip(
    self: ApiCore, action: str, request_id: str, ids: dict[str, str], extra: dict[str, Any]
) -> Any:
    """Publish one request and await its own reply: a `DeviceAnswer` (raised if not 2xx)."""
    yield self.term_item_fields(ids["term_id"], ids["item_id"], ids["device_id"])
    if self.replies is None:
        raise DeviceAnswer(request_id, "unavailable", "device requests are not served here")
    timeout = self.settings.device_timeout
    waiting = self.replies.wait(request_id, timeout)  # before publishing: no reply missed
    message = {
        "request_id": request_id,
        **ids,
        **extra,
        "reply_to": self.replies.reply_channel(request_id),
        "deadline": self.clock.seconds() + timeout,
    }
    channel = keys.DEVICE_CALL if action == "device_call" else keys.DEVICE_CTRL
    try:
        receivers = yield self.points.publish(channel, message)
    except BaseException:
        _forget(waiting)
        raise
    if not receivers:
        _forget(waiting)
        raise DeviceAnswer(request_id, "unavailable", "no collector is running; nothing was sent")
    try:
        reply = yield waiting
    except ReplyTimeout:
        maybe = "; the command may still have been executed" if action == "device_ctrl" else ""
        raise DeviceAnswer(
            request_id, "timeout", f"no answer from the collector within {timeout:g} s{maybe}"
        ) from None
    answer = DeviceAnswer.from_reply(request_id, reply)
    if action == "device_ctrl" and answer.outcome == "refused":
        answer.field = "value"  # the collector cannot send this value to this point
    if answer.status >= 400:
        raise answer
    return answer


@inlineCallbacks
def _audit(
    self: ApiCore, entry: dict[str, Any], outcome: str, status: int, message: str, cause: Any
) -> Any:
    """Append one command to the bounded audit stream; a failure is logged, not raised."""
    if self.metrics is not None:
        self.metrics.commands.labels(outcome).inc()
    fields = dict(
        entry, outcome=outcome, status=str(status), message=message[:500], cause=cause or ""
    )
    try:
        yield self.events.append_audit(
            {name: str(text) for name, text in fields.items()}, self.settings.ctrl_log_length
        )
    except Exception:
        self.log.failure("device_ctrl audit entry not written: {entry}", entry=fields)
    # One line per command, with its outcome (the collector does not log it again).
    self.log.info(
        "device_ctrl {request_id} from {client} (token {token_id}): "
        "{device_id}:{term_id}:{item_id} = {value} select={select}: "
        "{outcome} ({status}) {message}",
        **{k: v for k, v in entry.items() if k != "time"},  # "time" is the logger's
        outcome=outcome,
        status=status,
        message=message,
    )


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


def _short_json(value: Any) -> str:
    """A value as JSON text of at most 256 characters (audit fields)."""
    try:
        text = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError, RecursionError):
        text = json.dumps(repr(value))
    return text[:256]


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


def _forget(waiting: Deferred[Any]) -> None:
    waiting.addErrback(lambda f: f.trap(CancelledError))
    waiting.cancel()


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
