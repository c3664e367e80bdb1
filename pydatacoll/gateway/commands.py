"""Commands from an upstream master, through the same round trip as REST device_ctrl.

`CommandPath.execute` publishes a ``CHANNEL:DEVICE_CTRL`` request (``client`` = the
master's address, ``token_id`` = ``gateway:{id}``), waits for the collector running the
device on this process's reply channel, and appends the outcome to the same audit stream
(``XS:CTRL_LOG``) as the API does, whatever the outcome. Only ``confirmed`` and
``terminated`` (the field device confirmed) are a positive answer upstream.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger

from pydatacoll import errors
from pydatacoll.api.replies import DeviceAnswer, ReplyTimeout
from pydatacoll.gateway.model import GatewayPoint
from pydatacoll.model import OUTCOME_STATUS, iso_time
from pydatacoll.protocols.iec104.station import CommandAnswer, CommandRequest
from pydatacoll.store import keys
from pydatacoll.store.gateway import GatewayStore


class CommandPath:
    """device_ctrl for the gateways: publish, await the reply, audit."""

    log = Logger()

    def __init__(self, store: GatewayStore, replies: Any, clock: Any, log_length: int) -> None:
        self.store = store
        self.replies = replies
        self.clock = clock
        self.log_length = log_length

    @defer.inlineCallbacks
    def execute(
        self, gateway_id: str, point: GatewayPoint, request: CommandRequest, timeout: float
    ) -> Any:
        """Run one command; fires with a `CommandAnswer` (never fails)."""
        request_id = uuid.uuid4().hex
        ids = {"device_id": point.device_id, "term_id": point.term_id, "item_id": point.item_id}
        select = True if request.selected else None
        token_id = f"gateway:{gateway_id}"
        entry = {
            "time": iso_time(self.clock.seconds()),
            "request_id": request_id,
            "client": request.peer,
            "token_id": token_id,
            **ids,
            "value": json.dumps(request.value),
            "select": json.dumps(select),
        }
        self.log.info(
            "gateway {gateway_id}: command {request_id} from {peer}: IOA {ioa} -> "
            "{device_id}:{term_id}:{item_id} = {value} select={select}",
            gateway_id=gateway_id,
            request_id=request_id,
            peer=request.peer,
            ioa=point.ioa,
            value=request.value,
            select=select,
            **ids,
        )
        outcome, message, cause = yield self._round_trip(
            request_id, ids, request, select, timeout, token_id
        )
        status = OUTCOME_STATUS.get(outcome, 503)
        fields = dict(
            entry, outcome=outcome, status=str(status), message=message[:500], cause=cause or ""
        )
        try:
            yield self.store.append_ctrl_log(fields, self.log_length)
        except Exception:
            self.log.failure("gateway command audit entry not written: {entry}", entry=fields)
        ok = outcome in ("confirmed", "terminated")
        return CommandAnswer(ok, f"{outcome}: {message}" if message else outcome)

    @defer.inlineCallbacks
    def _round_trip(
        self,
        request_id: str,
        ids: dict[str, str],
        request: CommandRequest,
        select: bool | None,
        timeout: float,
        token_id: str,
    ) -> Any:
        try:
            waiting = self.replies.wait(request_id, timeout)
        except errors.ApiError as exc:
            return "unavailable", exc.message, None
        message = {
            "request_id": request_id,
            **ids,
            "value": request.value,
            "select": select,
            "client": request.peer,
            "token_id": token_id,
            "reply_to": self.replies.reply_channel(request_id),
            "deadline": self.clock.seconds() + timeout,
        }
        try:
            receivers = yield self.store.publish(keys.DEVICE_CTRL, message)
        except Exception as exc:
            waiting.cancel()
            waiting.addErrback(lambda f: None)
            return "unavailable", f"the command was not sent: {exc}", None
        if not receivers:
            waiting.cancel()
            waiting.addErrback(lambda f: None)
            return "unavailable", "no collector is running; nothing was sent", None
        try:
            reply = yield waiting
        except ReplyTimeout:
            return (
                "timeout",
                f"no answer within {timeout:g} s; the command may still have been executed",
                None,
            )
        answer = DeviceAnswer.from_reply(request_id, reply)
        return answer.outcome, answer.message, answer.cause
