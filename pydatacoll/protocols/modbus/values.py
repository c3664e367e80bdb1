"""What the Modbus poller hands on, and the requests of single points: pure code.

`ReadBatch` is the result of one planned read (values and qualities as parallel
tuples); `decode_read` turns a response's registers or bits into scaled values;
`quality_of` names what a failed read means; `single_read`, `response_data` and
`write_request` serve one point's read and write.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import attrs
from twisted.python.failure import Failure

from pydatacoll.errors import (
    ModbusExceptionResponse,
    ModbusFrameError,
    ModbusQueueFull,
    ModbusTimeout,
    ValidationError,
)
from pydatacoll.protocols.modbus import pdu as pdus
from pydatacoll.protocols.modbus.codec import scale
from pydatacoll.protocols.modbus.config import ModbusPoint
from pydatacoll.protocols.modbus.planner import PlannedRead

GOOD = "good"
#: Decoded but not a number (a NaN or infinite float).
INVALID = "invalid"
TIMEOUT = "timeout"
#: The device answered with a Modbus exception.
EXCEPTION = "exception"
NOT_CONNECTED = "not_connected"
BAD_FRAME = "bad_frame"
#: The connection's request queue was full.
OVERLOAD = "overload"


@attrs.frozen
class PointValue:
    """One point's value (scaled, or None unless quality is good) and when it was read."""

    key: str
    value: Any
    quality: str
    time: float


@attrs.frozen
class ReadBatch:
    """The values of one read, from one response (or failure), as parallel tuples.

    ``keys[i]`` (``term_id:item_id``) has ``values[i]`` (scaled; None unless good) and
    ``qualities[i]``. Parallel tuples rather than an object per point keep the hot path
    lean; `point_values` gives `PointValue` objects for code that prefers them. ``ids``
    holds the keys split into ``(term_id, item_id)`` (the planned read's, split once
    when it was planned); empty when the maker of the batch did not give them.
    """

    device_id: str
    unit_id: int
    table: str
    address: int
    count: int
    #: When the request went out and when the response (or the failure) came.
    sent_at: float
    time: float
    keys: tuple[str, ...]
    values: tuple[Any, ...]
    qualities: tuple[str, ...]
    error: str | None = None
    ids: tuple[tuple[str, str], ...] = ()

    def point_values(self) -> tuple[PointValue, ...]:
        """One `PointValue` per point."""
        return tuple(
            PointValue(k, v, q, self.time)
            for k, v, q in zip(self.keys, self.values, self.qualities, strict=True)
        )


def decode_read(read: PlannedRead, data: Sequence[Any]) -> tuple[tuple[Any, ...], tuple[str, ...]]:
    """The scaled values of a read's registers (or bits) and their qualities."""
    offsets = read.word_offsets
    if offsets is not None:  # registers as they are (integers: always finite)
        if read.whole_words:
            return tuple(data), read.all_good
        return tuple([data[offset] for offset in offsets]), read.all_good
    values: list[Any] = []
    append = values.append
    invalid = False
    for point, offset in read.points:
        value = point.format.decode(data, offset)
        if point.coefficient is not None or point.base_val is not None:
            value = scale(value, point.coefficient, point.base_val)
        if value.__class__ is float and not math.isfinite(value):
            invalid = True
        append(value)
    if not invalid:
        return tuple(values), read.all_good
    qualities = tuple(INVALID if _not_finite(v) else GOOD for v in values)
    return tuple(None if _not_finite(v) else v for v in values), qualities


def _not_finite(value: Any) -> bool:
    return isinstance(value, float) and not math.isfinite(value)


def point_value(read: PlannedRead, data: Sequence[Any], when: float) -> PointValue:
    """The `PointValue` of a single-point read."""
    values, qualities = decode_read(read, data)
    return PointValue(read.keys[0], values[0], qualities[0], when)


def quality_of(failure: Failure) -> str:
    """The quality a failed read gives its points."""
    error = failure.value
    if isinstance(error, ModbusTimeout):
        return TIMEOUT
    if isinstance(error, ModbusExceptionResponse):
        return EXCEPTION
    if isinstance(error, ModbusQueueFull):
        return OVERLOAD
    if isinstance(error, ModbusFrameError):
        return BAD_FRAME
    return NOT_CONNECTED


def single_read(point: ModbusPoint) -> PlannedRead:
    """The read of one point on its own."""
    return PlannedRead(
        point.unit_id, point.table, point.address, point.width, point.scan_interval, ((point, 0),)
    )


def response_data(response: pdus.Response, point: ModbusPoint) -> Sequence[Any]:
    """The bits or registers of a response to a read of ``point``."""
    return response.bits if point.table.is_bits else response.registers


def write_request(point: ModbusPoint, words: list[int], single: bool) -> pdus.Request:
    """The write of ``words`` to ``point`` (FC5/6/15/16/22; ``single``: FC5/6 when
    one coil or register)."""
    if point.table.is_bits:
        if single:
            return pdus.write_coil(point.address, bool(words[0]))
        return pdus.write_coils(point.address, [bool(words[0])])
    if point.format.bit is not None:
        mask = 1 << point.format.bit
        return pdus.mask_write_register(point.address, ~mask & 0xFFFF, mask if words[0] else 0)
    if point.width == 1 and single:
        return pdus.write_register(point.address, words[0])
    if point.width > pdus.MAX_WRITE_REGISTERS:
        raise ValidationError(
            f"a point of {point.width} registers is too long to write", field="count"
        )
    return pdus.write_registers(point.address, words)
