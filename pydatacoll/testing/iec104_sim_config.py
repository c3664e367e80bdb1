"""The configuration of the IEC 104 RTU simulator (`iec104_sim`): stations, monitor and
command points, flood mode, and what a connection records."""

from __future__ import annotations

import datetime
import enum
from typing import Any

import attrs

from pydatacoll.protocols.iec104.asdu import (
    COMMAND_TYPES,
    IEC104,
    TYPES,
    Asdu,
    AsduParams,
    TypeId,
)
from pydatacoll.protocols.iec104.link import LinkParams

#: Points per flood APDU: 6 header octets + 3 IOA octets + 48 x 5 octets = 249 = MAX_ASDU.
FLOOD_POINTS_PER_FRAME = 48

SINGLE_TYPES = frozenset({1, 2, 30})
DOUBLE_TYPES = frozenset({3, 4, 31})
STEP_TYPES = frozenset({5, 6, 32})
BITSTRING_TYPES = frozenset({7, 8, 33})
NORMALISED_TYPES = frozenset({9, 10, 34, 21})
SCALED_TYPES = frozenset({11, 12, 35})
FLOAT_TYPES = frozenset({13, 14, 36})


class Behaviour(enum.Enum):
    """What a command point does with an activation."""

    ACCEPT = "accept"  #: positive ACT_CON, the related point updated, ACT_TERM (optional)
    REJECT = "reject"  #: negative ACT_CON
    SILENT = "silent"  #: no answer at all (the master times out)


@attrs.frozen
class MonitorPoint:
    """The configuration of one monitor point (its initial value)."""

    ioa: int
    type_id: int
    value: Any = 0
    quality: int = 0
    #: The time tag of time-tagged types; None = the station's clock when sent.
    time: datetime.datetime | None = None
    #: Counter sequence number, protection-event elapsed time, packed change bits.
    extra: Any = None
    #: Interrogation groups 1..16 the point also answers (station interrogation: all).
    groups: tuple[int, ...] = ()
    #: Counter group 1..4 (0 = answers the general counter interrogation only).
    counter_group: int = 0

    def __attrs_post_init__(self) -> None:
        if self.type_id not in TYPES or not (self.type_id < 45):
            raise ValueError(f"type {self.type_id} is not a monitor type")
        if any(not 1 <= g <= 16 for g in self.groups):
            raise ValueError(f"IOA {self.ioa}: interrogation groups are 1..16")
        if not 0 <= self.counter_group <= 4:
            raise ValueError(f"IOA {self.ioa}: counter groups are 1..4")


@attrs.frozen
class CommandPoint:
    """The configuration of one command point (types 45..51; the time-tagged twins too)."""

    ioa: int
    type_id: int
    behaviour: Behaviour = Behaviour.ACCEPT
    #: An execute must follow a select of the same point and value.
    select_before_operate: bool = False
    #: Send ACT_TERM after a successful execute.
    terminate: bool = True
    #: The monitor point an accepted execute updates (and sends with COT 11).
    monitor_ioa: int | None = None

    def __attrs_post_init__(self) -> None:
        if self.type_id not in COMMAND_TYPES or self.type_id >= 58:
            raise ValueError(f"type {self.type_id} is not a process command type 45..51")


@attrs.frozen
class StationConfig:
    """One station (common address) of the simulator."""

    common_address: int = 1
    points: tuple[MonitorPoint, ...] = ()
    commands: tuple[CommandPoint, ...] = ()
    #: COI of the M_EI_NA_1 sent after STARTDT (None = none is sent).
    end_of_init: int | None = None


@attrs.frozen
class FloodConfig:
    """Flood mode: SQ=1 M_ME_NC_1 frames of 48 points, IOAs from 1, values changing."""

    common_address: int = 1
    #: IOAs 1..points, rounded up to a multiple of 48.
    points: int = FLOOD_POINTS_PER_FRAME
    #: Stop after this many frames (0 = no limit).
    frames: int = 0
    #: Stop after this many seconds (0 = no limit).
    duration: float = 0.0
    #: Seconds between STARTDT and the first frame (lets a master set itself up first).
    delay: float = 0.0

    @property
    def chunks(self) -> int:
        """Frames of 48 points it takes to send every IOA once."""
        return max(1, -(-self.points // FLOOD_POINTS_PER_FRAME))


@attrs.frozen
class SimulatorConfig:
    """The whole simulator: stations, link parameters, flood, bounds."""

    stations: tuple[StationConfig, ...] = (StationConfig(),)
    link: LinkParams = LinkParams()
    asdu_params: AsduParams = IEC104
    flood: FloodConfig | None = None
    #: Seconds a select stays valid for its execute.
    select_timeout: float = 30.0
    #: Records kept of received commands (the oldest are dropped past it).
    record_size: int = 1000
    #: Interrogation replies waiting for the window, per connection; more are refused.
    max_jobs: int = 32


@attrs.define
class PointState:
    """The current state of a monitor point (mutable: the station owns it)."""

    ioa: int
    type_id: int
    value: Any
    quality: int
    time: datetime.datetime | None
    extra: Any
    groups: tuple[int, ...]
    counter_group: int


@attrs.frozen
class ReceivedCommand:
    """One ASDU of the control direction as the simulator received it, and its answer."""

    received_at: float
    common_address: int
    type_id: int
    cause: int
    ioa: int
    value: Any
    #: The qualifier octet (S/E, QU or QL bits), or 0.
    qualifier: int
    select: bool
    time: datetime.datetime | None
    #: "confirmed", "terminated", "negative", "silent" or "ignored".
    answer: str
    asdu: Asdu = attrs.field(repr=False)

    @property
    def type_name(self) -> str:
        """The mnemonic of the type identification."""
        return TypeId(self.type_id).name
