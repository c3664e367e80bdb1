"""What an IEC 104 controlled station serves, as values: pure code.

Its points (`StationPoint`) and their current values (`PointValue`), the spontaneous
`Event` queue (bounded `EventQueue`), the commands it is asked to run (`CommandRequest`,
`CommandAnswer`), and the conversions from our values and qualities to monitor-type
values and quality bits. `station.Iec104Outstation` serves them on a link.
"""

from __future__ import annotations

import collections
import datetime
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import attrs

from pydatacoll.protocols.iec104.apci import MAX_ASDU
from pydatacoll.protocols.iec104.asdu import (
    IEC104,
    TYPES,
    Asdu,
    AsduParams,
    Cause,
    Quality,
    TypeId,
)

#: Monitor types that answer counter interrogation rather than station interrogation.
COUNTER_TYPES = frozenset({15, 16, 37})
#: The global common address (IEC 60870-5-101 7.2.4): every station answers.
GLOBAL_ADDRESS = 0xFFFF
#: The time-tagged (CP56Time2a) twin of each untimed monitor type.
TIMED_TWIN = {1: 30, 3: 31, 5: 32, 7: 33, 9: 34, 11: 35, 13: 36, 15: 37}
_UNTIMED = {timed: untimed for untimed, timed in TIMED_TWIN.items()}
#: Interrogation replies waiting for the window per connection; more are refused.
MAX_JOBS = 8
#: Commands waiting for their field device per connection; more are refused.
MAX_COMMANDS = 32


def objects_per_asdu(type_id: int, params: AsduParams = IEC104) -> int:
    """How many objects of ``type_id`` fit one ASDU (SQ=0) within the APDU limit."""
    size = params.ioa_size + TYPES[type_id].element_size
    return min(127, (MAX_ASDU - params.header_size) // size)


def grouped_asdus(
    type_id: int,
    cause: int,
    common_address: int,
    objects: Sequence[tuple[int, Any, int, datetime.datetime | None, Any]],
    params: AsduParams = IEC104,
) -> Iterator[Asdu]:
    """ASDUs of one type carrying ``objects`` (ioa, value, quality, time, extra), SQ=0."""
    spec = TYPES[type_id]
    per_asdu = objects_per_asdu(type_id, params)
    for i in range(0, len(objects), per_asdu):
        chunk = objects[i : i + per_asdu]
        yield Asdu(
            type_id,
            cause,
            common_address,
            [o[0] for o in chunk],
            [o[1] for o in chunk],
            [o[2] for o in chunk],
            [o[3] for o in chunk] if spec.time else None,
            [o[4] for o in chunk] if spec.has_extra else None,
        )


@attrs.frozen
class StationPoint:
    """One point of a station as the master sees it."""

    ioa: int
    #: The monitor type interrogation and read answer with; spontaneous data uses it
    #: when it has a CP56Time2a tag (30..37), else its CP56 twin (`TIMED_TWIN`).
    type_id: int
    groups: tuple[int, ...] = ()
    counter_group: int = 0
    #: The command type accepted for this IOA (45..51), or None: commands are refused.
    command_type: int | None = None


@attrs.frozen(slots=True)
class PointValue:
    """A point's current value in the station's image (``time`` in epoch seconds)."""

    value: Any
    quality: int = 0
    time: float | None = None


@attrs.frozen(slots=True)
class Event:
    """A change to send spontaneously."""

    ioa: int
    type_id: int  #: the time-tagged type
    value: Any
    quality: int
    time: float


@attrs.frozen
class CommandRequest:
    """A command from the master, as the database receives it."""

    point: StationPoint
    type_id: int
    value: Any
    #: True: the master selected the point first (select-before-operate).
    selected: bool
    #: The master's address (who, for the audit log).
    peer: str


@attrs.frozen
class CommandAnswer:
    """The database's answer to a command: confirmed by the field device or not."""

    ok: bool
    message: str = ""


def command_value(type_id: int, value: Any) -> Any:
    """The value of a command as PyDataColl's device_ctrl takes it.

    Single commands give 0/1, double commands 0 (OFF, DCO 1) or 1 (ON, DCO 2) and
    None for the states the standard forbids (0, 3); regulating steps give 1 (lower) or
    2 (higher); set-points and bitstrings their value.
    """
    base = type_id - 13 if type_id >= 58 else type_id
    if base == TypeId.C_SC_NA_1:
        return 1 if value else 0
    if base == TypeId.C_DC_NA_1:
        return {1: 0, 2: 1}.get(int(value))
    if base == TypeId.C_RC_NA_1:
        return int(value) if int(value) in (1, 2) else None
    return value


class EventQueue:
    """Spontaneous events of one connection, bounded.

    Overflow policy: past ``size`` events the *oldest* is dropped and counted
    (``dropped``); the newest value of every point therefore always gets through, and a
    master that missed events learns the current state with its next interrogation.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self.events: collections.deque[Event] = collections.deque()
        self.dropped = 0

    def __len__(self) -> int:
        return len(self.events)

    def extend(self, events: Iterable[Event]) -> int:
        """Queue ``events``; how many older ones were dropped to make room."""
        queue = self.events
        dropped = 0
        for event in events:
            if len(queue) >= self.size:
                queue.popleft()
                dropped += 1
            queue.append(event)
        self.dropped += dropped
        return dropped

    def take(self, params: AsduParams) -> Asdu | None:
        """The oldest events of one type as one spontaneous ASDU (None when empty)."""
        chunk = self.take_events(params)
        return events_asdu(chunk, 0, params) if chunk else None

    def take_events(self, params: AsduParams) -> list[Event]:
        """The oldest events of one type, as many as one ASDU carries."""
        queue = self.events
        if not queue:
            return []
        first = queue[0]
        limit = objects_per_asdu(first.type_id, params)
        chunk = [queue.popleft()]
        while queue and len(chunk) < limit and queue[0].type_id == first.type_id:
            chunk.append(queue.popleft())
        return chunk

    def requeue(self, events: list[Event]) -> int:
        """Put events back in front (sent, never acknowledged); how many were dropped.

        The bound holds: past it the oldest go, which are these.
        """
        queue = self.events
        room = self.size - len(queue)
        keep = events[-room:] if room > 0 else []
        queue.extendleft(reversed(keep))
        dropped = len(events) - len(keep)
        self.dropped += dropped
        return dropped

    def clear(self) -> None:
        """Forget every queued event (not counted as dropped)."""
        self.events.clear()


def events_asdu(chunk: list[Event], common_address: int, params: AsduParams) -> Asdu:
    """One spontaneous ASDU (COT 3, CP56Time2a) of events of one type."""
    tz = params.tz
    type_id = chunk[0].type_id
    return Asdu(
        type_id,
        Cause.SPONTANEOUS,
        common_address,
        [e.ioa for e in chunk],
        [e.value for e in chunk],
        [e.quality for e in chunk],
        [datetime.datetime.fromtimestamp(e.time, tz) for e in chunk],
        [None] * len(chunk) if TYPES[type_id].has_extra else None,
    )


def quality_bits(quality: str, flags: Iterable[str]) -> int:
    """IEC 104 quality bits of a PyDataColl sample's quality and flags."""
    bits = 0
    for flag in flags:
        bit = _FLAG_BITS.get(flag)
        if bit is not None:
            bits |= bit
    if quality == "invalid":
        bits |= Quality.IV
    elif quality == "questionable" and not bits & (Quality.NT | Quality.SB | Quality.BL):
        bits |= Quality.NT
    return bits


_FLAG_BITS = {
    "IV": Quality.IV,
    "NT": Quality.NT,
    "SB": Quality.SB,
    "BL": Quality.BL,
    "OV": Quality.OV,
    "CY": Quality.CY,
    "CA": Quality.CA,
}


def monitor_value(type_id: int, value: Any) -> tuple[Any, int]:
    """A sample value as an object of monitor ``type_id`` and the quality bits it adds.

    A value that cannot be shown (text on a float point, out of range) becomes the type's
    zero with IV, or the nearest limit with OV.
    """
    base = _UNTIMED.get(type_id, type_id)
    try:
        if base == 1:
            return bool(value), 0
        if base == 3:
            if isinstance(value, bool):
                return (2 if value else 1), 0
            number = int(value)
            return (number if 0 <= number <= 3 else 0), (0 if 0 <= number <= 3 else Quality.IV)
        if isinstance(value, bool):
            value = int(value)
        if base == 5:
            return _clamp(round(float(value)), -64, 63)
        if base == 7:
            return int(value) & 0xFFFFFFFF, 0
        if base == 9:
            return _clamp(float(value), -1.0, 32767 / 32768)
        if base == 11:
            return _clamp(round(float(value)), -32768, 32767)
        if base == 13:
            real = float(value)
            if abs(real) > _FLOAT32_MAX:
                return _clamp(real, -_FLOAT32_MAX, _FLOAT32_MAX)
            return real, 0
        if base == 15:
            return _clamp(round(float(value)), -(2**31), 2**31 - 1)
    except (TypeError, ValueError, OverflowError):
        pass
    return (False if base == 1 else 0), Quality.IV


_FLOAT32_MAX = 3.4028234663852886e38


def _clamp(value: Any, low: Any, high: Any) -> tuple[Any, int]:
    if value != value:  # NaN
        return 0, Quality.IV
    if value < low:
        return low, Quality.OV
    if value > high:
        return high, Quality.OV
    return value, 0


#: The quality of a point whose device is not online, or whose value is unknown.
NOT_TOPICAL = int(Quality.NT | Quality.IV)
