"""IEC 104 requests and their results as values: what a master asks and how it ended.

Pure code (no Twisted): the `CommandResult` every request of `master.Iec104Master` fires
with, the `StationParams` of the stations behind a link, and the builders of the
activation ASDUs of system and process commands.
"""

from __future__ import annotations

import datetime
import enum
from collections.abc import Callable
from typing import Any

import attrs

from pydatacoll.protocols.iec104.asdu import (
    COMMAND_TYPES,
    SELECT,
    SELECTABLE_TYPES,
    Asdu,
    Cause,
    TypeId,
    cause_name,
)


class Outcome(enum.Enum):
    """How a request ended."""

    CONFIRMED = "confirmed"  #: positive ACT_CON (or the reply to a read)
    TERMINATED = "terminated"  #: ACT_TERM after a positive ACT_CON
    NEGATIVE = "negative"  #: negative confirmation, or a COT 44..47 reply
    TIMEOUT = "timeout"  #: no (complete) answer in time
    LINK_DOWN = "link_down"  #: no started link, or it went down while waiting
    BUSY = "busy"  #: a request for the same point (or service) is in flight
    REFUSED = "refused"  #: the request cannot be sent (bad value, queue full)


@attrs.frozen
class CommandResult:
    """The outcome of a request; ``cause`` is the cause of the reply that decided it."""

    outcome: Outcome
    message: str = ""
    cause: int | None = None
    reply: Asdu | None = None
    #: Objects received in answer to an interrogation.
    objects: int = 0

    @property
    def ok(self) -> bool:
        """Whether the station confirmed (or terminated) the request."""
        return self.outcome in (Outcome.CONFIRMED, Outcome.TERMINATED)

    def to_json(self) -> dict[str, Any]:
        """The result as a JSON object."""
        body: dict[str, Any] = {"outcome": self.outcome.value, "message": self.message}
        if self.cause is not None:
            body["cause"] = cause_name(self.cause)
        return body


@attrs.frozen
class StationParams:
    """What the master does with the stations behind the link (times in seconds)."""

    #: Common addresses of the stations (the terms of the device).
    common_addresses: tuple[int, ...] = (1,)
    #: Interrogate each station when data transfer starts (and after M_EI_NA_1).
    interrogate_on_start: bool = True
    #: 0 = station interrogation; 1..16 = groups; each is asked in turn.
    interrogation_groups: tuple[int, ...] = (0,)
    #: Periodic interrogation (0 = never).
    interrogation_interval: float = 0.0
    interrogation_timeout: float = 60.0
    #: Periodic counter interrogation (0 = never), with its QCC (RQT 5 = general, FRZ 0).
    counter_interval: float = 0.0
    counter_qcc: int = 5
    #: Clock synchronisation when data transfer starts, and periodically (0 = never).
    clock_sync_on_start: bool = True
    clock_sync_interval: float = 0.0
    command_timeout: float = 10.0
    #: Wait for ACT_TERM after a command's positive ACT_CON.
    wait_termination: bool = False
    originator: int = 0

    def __attrs_post_init__(self) -> None:
        for group in self.interrogation_groups:
            if not 0 <= group <= 16:
                raise ValueError(f"interrogation group {group} is not in 0..16")
        if not 0 <= self.counter_qcc <= 255:
            raise ValueError("counter_qcc must be one octet")


#: Command value conventions: double and regulating-step commands take 1/2 (or bools).
_DOUBLE = {False: 1, True: 2}
_TIMED = {45: 58, 46: 59, 47: 60, 48: 61, 49: 62, 50: 63, 51: 64}


def system_asdu(type_id: int, common_address: int, value: int, originator: int = 0) -> Asdu:
    """The activation ASDU of a system command (interrogation, clock sync, test, ...)
    at IOA 0 with its one qualifier ``value``."""
    return Asdu(type_id, Cause.ACTIVATION, common_address, [0], [value], [0], originator=originator)


def command_asdu(
    common_address: int,
    ioa: int,
    type_id: int,
    value: Any,
    qualifier: int,
    timestamp: bool | None,
    now: Callable[[], datetime.datetime],
    originator: int = 0,
) -> Asdu:
    """The activation ASDU of a process command (45..51, 58..64); `ValueError` says
    why the value or qualifier cannot be sent. ``timestamp`` None keeps the type,
    True/False picks its time-tagged/untagged twin; ``now`` gives the time tag."""
    base = type_id - 13 if type_id >= 58 else type_id
    if base not in _TIMED or type_id not in COMMAND_TYPES:
        raise ValueError(f"type {type_id} is not a process command (45..51, 58..64)")
    if timestamp is not None:
        type_id = _TIMED[base] if timestamp else base
    if base == 45:
        if not isinstance(value, (bool, int)) or value not in (0, 1):
            raise ValueError("a single command takes true or false")
        value = bool(value)
    elif base in (46, 47):
        value = _DOUBLE.get(value, value) if isinstance(value, bool) else value
        if not isinstance(value, int) or value not in (1, 2):
            raise ValueError("double and step commands take 1 (off/lower) or 2 (on/higher)")
    elif base == 48:
        if not isinstance(value, (int, float)) or not -1.0 <= value <= 32767 / 32768:
            raise ValueError("a normalised set-point is in -1 .. 1-2**-15")
    elif base == 49:
        if not isinstance(value, int) or not -32768 <= value <= 32767:
            raise ValueError("a scaled set-point is an integer in -32768..32767")
    elif base == 50:
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise ValueError("a float set-point takes a number")
        value = float(value)
    elif base == 51:
        if not isinstance(value, int) or not 0 <= value <= 0xFFFFFFFF:
            raise ValueError("a bitstring command takes an integer in 0..2**32-1")
    if base in (45, 46, 47):
        if not 0 <= qualifier <= 31:
            raise ValueError("QU is 0..31")
        q = qualifier << 2
    elif base == 51:
        q = 0
    else:
        if not 0 <= qualifier <= 127:
            raise ValueError("QL is 0..127")
        q = qualifier
    times = [now()] if type_id >= 58 else None
    return Asdu(
        type_id,
        Cause.ACTIVATION,
        common_address,
        [ioa],
        [value],
        [q],
        times,
        originator=originator,
    )


def selected(request: Asdu) -> Asdu | CommandResult:
    """The select (S/E bit set) of a command, or REFUSED for a type that has none."""
    if request.type_id not in SELECTABLE_TYPES:
        return CommandResult(Outcome.REFUSED, f"{request.type_name} has no select")
    return attrs.evolve(request, qualities=[request.qualities[0] | SELECT])


def clock_sync_asdu(common_address: int, when: datetime.datetime, originator: int = 0) -> Asdu:
    """C_CS_NA_1 activation with the time ``when``."""
    return Asdu(
        TypeId.C_CS_NA_1, Cause.ACTIVATION, common_address, [0], [None], [0], [when],
        originator=originator,
    )  # fmt: skip


def read_asdu(common_address: int, ioa: int, originator: int = 0) -> Asdu:
    """C_RD_NA_1 read request of one IOA."""
    return Asdu(
        TypeId.C_RD_NA_1, Cause.REQUEST, common_address, [ioa], [None], [0],
        originator=originator,
    )  # fmt: skip


def ts_command_asdu(
    common_address: int, counter: int, when: datetime.datetime, originator: int = 0
) -> Asdu:
    """C_TS_TA_1 test command with its test sequence counter and time tag (C_TS_NA_1 is
    not used by 104)."""
    return Asdu(
        TypeId.C_TS_TA_1, Cause.ACTIVATION, common_address, [0], [counter], [0], [when],
        originator=originator,
    )  # fmt: skip


def refusal(kind: str, reply: Asdu) -> CommandResult:
    """The result of a negative confirmation or a COT 44..47 reply to a ``kind`` request."""
    negative = " (negative)" if reply.negative else ""
    return CommandResult(
        Outcome.NEGATIVE,
        f"{kind} refused: {cause_name(reply.cause)}{negative}",
        reply.cause,
        reply,
    )
