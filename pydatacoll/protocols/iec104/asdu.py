"""ASDU: IEC 60870-5-101/104 application service data units, pure and columnar.

An `Asdu` holds its information objects as columns (``ioas``, ``values``, ``qualities``,
``times``, ``extras``) so a whole frame decodes with one ``struct`` call and a few list
comprehensions, with no Python object per point beyond the values themselves. The same
type table drives decoding and encoding.

Meaning of the columns, per element kind (see ``TYPES``):

- monitor types: ``values`` the value (bool for single points, 0..3 for double points,
  a signed fraction for normalised values, a signed int for scaled values and counters),
  ``qualities`` a `Quality` bit set, ``extras`` the counter sequence number, the elapsed
  time of a protection event (ms), the change-detection bits of packed single points;
- commands: ``values`` the commanded value, ``qualities`` the qualifier octet with the
  value bits cleared (S/E is `SELECT`; QU and QL are in it too, see `qualifier_of`);
- system commands: ``values`` the qualifier (QOI, QCC, QRP), the test pattern, the delay
  or the test counter; C_CS_NA_1 has its time in ``times``.
"""

from __future__ import annotations

import datetime
import struct
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

import attrs

from pydatacoll.errors import AsduError, UnknownTypeError
from pydatacoll.protocols.iec104.timetags import (
    UTC,
    decode_cp24,
    decode_cp56,
    encode_cp56,
    write_cp56,
)
from pydatacoll.protocols.iec104.types import (
    COMMAND_FOR_MONITOR,
    COMMAND_TYPES,
    MONITOR_TYPES,
    SELECT,
    SELECTABLE_TYPES,
    TYPES,
    Cause,
    Quality,
    TypeId,
    TypeSpec,
    cause_name,
    command_type_for,
    group_cause,
    qualifier_of,
)

#: Names other modules import from here (defined in `types` and `timetags`).
__all__ = [
    "COMMAND_FOR_MONITOR",
    "COMMAND_TYPES",
    "IEC104",
    "MONITOR_TYPES",
    "SELECT",
    "SELECTABLE_TYPES",
    "TYPES",
    "UTC",
    "Asdu",
    "AsduParams",
    "Cause",
    "InformationObject",
    "Quality",
    "TypeId",
    "TypeSpec",
    "cause_name",
    "command_type_for",
    "decode_asdu",
    "decode_cp24",
    "decode_cp56",
    "encode_asdu",
    "encode_cp56",
    "group_cause",
    "qualifier_of",
]


# --- ASDU values -------------------------------------------------------------------------


@attrs.frozen
class AsduParams:
    """Field sizes of the ASDU header (104 uses 2, 2, 3; 101 links may use 1, 1, 2)."""

    cot_size: int = attrs.field(default=2, validator=attrs.validators.in_((1, 2)))
    ca_size: int = attrs.field(default=2, validator=attrs.validators.in_((1, 2)))
    ioa_size: int = attrs.field(default=3, validator=attrs.validators.in_((1, 2, 3)))
    #: The time zone of the station's clock: time tags are read and written in it.
    tz: datetime.tzinfo = UTC

    @property
    def header_size(self) -> int:
        """Octets of type id, VSQ, COT and common address."""
        return 2 + self.cot_size + self.ca_size


IEC104 = AsduParams()


class InformationObject(NamedTuple):
    """One information object, as `Asdu.objects` lists them."""

    ioa: int
    value: Any
    quality: int = 0
    time: datetime.datetime | None = None
    extra: Any = None


@attrs.frozen(eq=False)
class Asdu:
    """An ASDU with its information objects as columns (see the module docstring)."""

    type_id: int
    cause: int
    common_address: int
    ioas: Sequence[int]
    values: Sequence[Any]
    qualities: Sequence[int]
    times: Sequence[datetime.datetime | None] | None = None
    extras: Sequence[Any] | None = None
    negative: bool = False
    test: bool = False
    originator: int = 0
    #: SQ: the objects have consecutive IOAs and only the first is sent.
    sequence: bool = False

    @classmethod
    def build(
        cls,
        type_id: int,
        cause: int,
        common_address: int,
        objects: Iterable[InformationObject | tuple[Any, ...]],
        **flags: Any,
    ) -> Asdu:
        """An ASDU from objects (`InformationObject` or plain tuples of its fields)."""
        items = [o if isinstance(o, InformationObject) else InformationObject(*o) for o in objects]
        spec = TYPES.get(type_id)
        timed = spec is not None and spec.time > 0
        return cls(
            type_id,
            cause,
            common_address,
            [o.ioa for o in items],
            [o.value for o in items],
            [o.quality for o in items],
            [o.time for o in items] if timed else None,
            [o.extra for o in items] if spec is not None and spec.has_extra else None,
            **flags,
        )

    def __len__(self) -> int:
        return len(self.ioas)

    def objects(self) -> list[InformationObject]:
        """The information objects as rows."""
        n = len(self.ioas)
        times = self.times if self.times is not None else [None] * n
        extras = self.extras if self.extras is not None else [None] * n
        return [
            InformationObject(*row)
            for row in zip(self.ioas, self.values, self.qualities, times, extras, strict=True)
        ]

    def header(self) -> tuple[Any, ...]:
        """The header fields, for comparisons."""
        return (
            self.type_id,
            self.cause,
            self.common_address,
            self.negative,
            self.test,
            self.originator,
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Asdu):
            return NotImplemented
        return self.header() == other.header() and self.objects() == other.objects()

    def __hash__(self) -> int:
        return hash(self.header())

    @property
    def type_name(self) -> str:
        """The mnemonic of the type identification."""
        try:
            return TypeId(self.type_id).name
        except ValueError:
            return f"TYPE_{self.type_id}"

    @property
    def select(self) -> bool:
        """Whether a command ASDU is a select (S/E = 1)."""
        return self.type_id in SELECTABLE_TYPES and bool(
            self.qualities and self.qualities[0] & SELECT
        )

    def describe(self) -> str:
        """A short text for logs: type, cause, flags, common address, object count."""
        flags = "".join(f for f, on in ((" negative", self.negative), (" test", self.test)) if on)
        return (
            f"{self.type_name} {cause_name(self.cause)}{flags} CA {self.common_address} "
            f"OA {self.originator}, {len(self.ioas)} objects"
        )


# --- decoding ----------------------------------------------------------------------------

_IOA_FMT = {1: "B", 2: "H", 3: "HB"}
_STRUCTS: dict[tuple[int, int, bool, int], struct.Struct] = {}
_CP56 = "HBBBBB"
_CP24 = "HB"


def _layout(spec: TypeSpec, count: int, sequence: bool, ioa_size: int) -> struct.Struct:
    key = (spec.type_id, count, sequence, ioa_size)
    s = _STRUCTS.get(key)
    if s is None:
        time_fmt = _CP56 if spec.time == 7 else _CP24 if spec.time == 3 else ""
        one = spec.fmt + time_fmt
        fmt = "<" + (one * count if sequence else (_IOA_FMT[ioa_size] + one) * count)
        s = struct.Struct(fmt)
        if len(_STRUCTS) < 4096:  # bounded: counts are at most 127 per type and layout
            _STRUCTS[key] = s
    return s


def decode_asdu(
    data: bytes,
    params: AsduParams = IEC104,
    now: datetime.datetime | None = None,
) -> Asdu:
    """The ASDU in ``data``; `AsduError` (or `UnknownTypeError`) when it does not decode.

    ``now`` (aware) resolves the hour of CP24Time2a tags; it defaults to the current time.
    """
    size = len(data)
    hsize = params.header_size
    if size < hsize:
        raise AsduError(f"ASDU of {size} octets is shorter than its header", offset=size, data=data)
    type_id = data[0]
    spec = TYPES.get(type_id)
    if spec is None:
        raise UnknownTypeError(type_id, data=data)
    vsq = data[1]
    count = vsq & 0x7F
    sequence = bool(vsq & 0x80)
    cot = data[2]
    originator = data[3] if params.cot_size == 2 else 0
    ca = data[2 + params.cot_size]
    if params.ca_size == 2:
        ca |= data[3 + params.cot_size] << 8
    ioa_size = params.ioa_size
    pos = hsize
    if count == 0:
        if size != pos:
            raise AsduError("ASDU with no objects has trailing octets", offset=pos, data=data)
        return Asdu(
            type_id,
            cot & 0x3F,
            ca,
            [],
            [],
            [],
            None,
            None,
            bool(cot & 0x40),
            bool(cot & 0x80),
            originator,
            sequence,
        )
    if sequence:
        if size < pos + ioa_size:
            raise AsduError("ASDU too short for its first IOA", offset=pos, data=data)
        first = int.from_bytes(data[pos : pos + ioa_size], "little")
        pos += ioa_size
    layout = _layout(spec, count, sequence, ioa_size)
    if size - pos != layout.size:
        raise AsduError(
            f"{spec.name} with {count} objects needs {layout.size + pos} octets, not {size}",
            offset=pos,
            data=data,
        )
    flat = layout.unpack_from(data, pos)
    ioa_fields = 0 if sequence else (2 if ioa_size == 3 else 1)
    nfields = len(spec.fmt)
    time_fields = 6 if spec.time == 7 else 2 if spec.time == 3 else 0
    stride = ioa_fields + nfields + time_fields
    if sequence:
        ioas: Sequence[int] = range(first, first + count)
    elif ioa_size == 3:
        ioas = [lo | hi << 16 for lo, hi in zip(flat[0::stride], flat[1::stride], strict=True)]
    else:
        ioas = list(flat[0::stride])
    if nfields:
        values, qualities, extras = spec.unpack(flat, stride, ioa_fields)
    else:  # C_RD_NA_1, C_CS_NA_1: no element besides the time tag
        values, qualities, extras = [None] * count, [0] * count, None
    times: list[datetime.datetime | None] | None = None
    if time_fields:
        times = []
        tbase = ioa_fields + nfields
        tz = params.tz
        if time_fields == 2:
            reference = (now or datetime.datetime.now(tz)).astimezone(tz)
        for i in range(count):
            o = i * stride + tbase
            if time_fields == 6:
                ms, minute, hour, day, month, year = flat[o : o + 6]
                when, invalid = decode_cp56(ms, minute, hour, day, month, year, tz)
            else:
                when, invalid = decode_cp24(flat[o], flat[o + 1], reference)
            times.append(when)
            if invalid:
                qualities[i] |= Quality.TIME_INVALID
    return Asdu(
        type_id,
        cot & 0x3F,
        ca,
        ioas,
        values,
        qualities,
        times,
        extras,
        bool(cot & 0x40),
        bool(cot & 0x80),
        originator,
        sequence,
    )


# --- encoding ----------------------------------------------------------------------------


def encode_asdu(asdu: Asdu, params: AsduParams = IEC104) -> bytes:
    """The octets of ``asdu``; `ValueError` when it cannot be encoded."""
    spec = TYPES.get(asdu.type_id)
    if spec is None:
        raise ValueError(f"cannot encode type identification {asdu.type_id}")
    count = len(asdu.ioas)
    if count > 127:
        raise ValueError(f"an ASDU carries at most 127 objects, not {count}")
    if not 0 <= asdu.cause <= 63:
        raise ValueError(f"cause {asdu.cause} is outside 0..63")
    ioa_max = 1 << (8 * params.ioa_size)
    ca_max = 1 << (8 * params.ca_size)
    if not 0 <= asdu.common_address < ca_max:
        raise ValueError(
            f"common address {asdu.common_address} does not fit {params.ca_size} octets"
        )
    sequence = asdu.sequence and count > 0
    if sequence:
        first = asdu.ioas[0]
        if list(asdu.ioas) != list(range(first, first + count)):
            raise ValueError("SQ=1 needs consecutive IOAs")
    head = bytearray((asdu.type_id, count | (0x80 if sequence else 0)))
    head.append(asdu.cause | (0x40 if asdu.negative else 0) | (0x80 if asdu.test else 0))
    if params.cot_size == 2:
        head.append(asdu.originator & 0xFF)
    head += asdu.common_address.to_bytes(params.ca_size, "little")
    if sequence:
        head += first.to_bytes(params.ioa_size, "little")
    times = asdu.times
    extras = asdu.extras
    fields: list[Any] = []
    cp = bytearray(7)
    try:
        for i in range(count):
            if not sequence:
                ioa = asdu.ioas[i]
                if not 0 <= ioa < ioa_max:
                    raise ValueError(f"IOA {ioa} does not fit {params.ioa_size} octets")
                if params.ioa_size == 3:
                    fields += (ioa & 0xFFFF, ioa >> 16)
                else:
                    fields.append(ioa)
            q = asdu.qualities[i]
            fields += spec.pack(asdu.values[i], q, extras[i] if extras is not None else None)
            if spec.time:
                when = times[i] if times is not None else None
                if when is None:
                    raise ValueError(f"{spec.name} needs a time tag")
                write_cp56(when, params.tz, bool(q & Quality.TIME_INVALID), cp)
                fields += struct.unpack_from("<" + (_CP56 if spec.time == 7 else _CP24), cp)
        body = _layout(spec, count, sequence, params.ioa_size).pack(*fields)
    except (struct.error, OverflowError) as exc:
        raise ValueError(f"{spec.name}: {exc}") from None
    return bytes(head) + body
