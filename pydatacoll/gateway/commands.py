"""Commands from an upstream master, through the one command path of REST device_ctrl.

`CommandPath.execute` runs `pydatacoll.control.commander.Commander.device_ctrl`
(``client`` = the master's address, ``token_id`` = ``gateway:{id}``, the gateway's own
command timeout): the point is checked, a ``CHANNEL:DEVICE_CTRL`` request published, the
collector running the device awaited on this process's reply channel, and the outcome
appended to the audit stream (``XS:CTRL_LOG``) as for the API, whatever the outcome.
Only ``confirmed`` and ``terminated`` (the field device confirmed) are a positive answer
upstream.
"""

from __future__ import annotations

import uuid
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger

from pydatacoll import errors
from pydatacoll.gateway.model import GatewayPoint
from pydatacoll.interfaces import ICommander
from pydatacoll.protocols.iec104.station import CommandAnswer, CommandRequest

#: The outcomes that are a positive answer upstream.
POSITIVE = ("confirmed", "terminated")


class CommandPath:
    """device_ctrl for the gateways, through ``commander`` (an `ICommander`)."""

    log = Logger()

    def __init__(self, commander: ICommander) -> None:
        self.commander = commander

    @defer.inlineCallbacks
    def execute(
        self, gateway_id: str, point: GatewayPoint, request: CommandRequest, timeout: float
    ) -> Any:
        """Run one command; fires with a `CommandAnswer` (never fails)."""
        request_id = uuid.uuid4().hex
        ids = {"device_id": point.device_id, "term_id": point.term_id, "item_id": point.item_id}
        select = True if request.selected else None
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
        try:
            answer = yield self.commander.device_ctrl(
                request_id,
                ids,
                {"value": request.value, "select": select},
                request.peer,
                f"gateway:{gateway_id}",
                timeout=timeout,
            )
        except errors.ApiError as e:  # a DeviceAnswer that is not 2xx, or a refusal
            outcome, message = getattr(e, "outcome", e.code), e.message
        except Exception:
            self.log.failure("gateway {gateway_id}: command failed", gateway_id=gateway_id)
            outcome, message = "failed", "internal error"
        else:
            outcome, message = answer.outcome, answer.message
        ok = outcome in POSITIVE
        return CommandAnswer(ok, f"{outcome}: {message}" if message else outcome)
