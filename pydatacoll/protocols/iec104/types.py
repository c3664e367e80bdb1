"""IEC 60870-5-101/104 type identifications, causes, qualities and the type table.

Pure code. `TYPES` says, per type identification, how one information element is laid
out and how it maps to the columns of an `asdu.Asdu` (see that module's docstring); the
same table drives decoding and encoding. `COMMAND_FOR_MONITOR` maps a monitor type to
the command that sets it.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import attrs


class TypeId(enum.IntEnum):
    """Type identifications (IEC 60870-5-101 7.2.1, 104 table 1)."""

    M_SP_NA_1 = 1
    M_SP_TA_1 = 2
    M_DP_NA_1 = 3
    M_DP_TA_1 = 4
    M_ST_NA_1 = 5
    M_ST_TA_1 = 6
    M_BO_NA_1 = 7
    M_BO_TA_1 = 8
    M_ME_NA_1 = 9
    M_ME_TA_1 = 10
    M_ME_NB_1 = 11
    M_ME_TB_1 = 12
    M_ME_NC_1 = 13
    M_ME_TC_1 = 14
    M_IT_NA_1 = 15
    M_IT_TA_1 = 16
    M_EP_TA_1 = 17
    M_EP_TB_1 = 18
    M_EP_TC_1 = 19
    M_PS_NA_1 = 20
    M_ME_ND_1 = 21
    M_SP_TB_1 = 30
    M_DP_TB_1 = 31
    M_ST_TB_1 = 32
    M_BO_TB_1 = 33
    M_ME_TD_1 = 34
    M_ME_TE_1 = 35
    M_ME_TF_1 = 36
    M_IT_TB_1 = 37
    M_EP_TD_1 = 38
    M_EP_TE_1 = 39
    M_EP_TF_1 = 40
    C_SC_NA_1 = 45
    C_DC_NA_1 = 46
    C_RC_NA_1 = 47
    C_SE_NA_1 = 48
    C_SE_NB_1 = 49
    C_SE_NC_1 = 50
    C_BO_NA_1 = 51
    C_SC_TA_1 = 58
    C_DC_TA_1 = 59
    C_RC_TA_1 = 60
    C_SE_TA_1 = 61
    C_SE_TB_1 = 62
    C_SE_TC_1 = 63
    C_BO_TA_1 = 64
    M_EI_NA_1 = 70
    C_IC_NA_1 = 100
    C_CI_NA_1 = 101
    C_RD_NA_1 = 102
    C_CS_NA_1 = 103
    C_TS_NA_1 = 104
    C_RP_NA_1 = 105
    C_CD_NA_1 = 106
    C_TS_TA_1 = 107


class Cause(enum.IntEnum):
    """Causes of transmission (IEC 60870-5-101 7.2.3)."""

    PERIODIC = 1
    BACKGROUND = 2
    SPONTANEOUS = 3
    INITIALIZED = 4
    REQUEST = 5
    ACTIVATION = 6
    ACTIVATION_CON = 7
    DEACTIVATION = 8
    DEACTIVATION_CON = 9
    ACTIVATION_TERM = 10
    RETURN_REMOTE = 11
    RETURN_LOCAL = 12
    FILE_TRANSFER = 13
    INTERROGATED_BY_STATION = 20
    # 21..36: interrogated by group 1..16 (see `group_cause`)
    REQUESTED_BY_GENERAL_COUNTER = 37
    # 38..41: requested by counter group 1..4
    UNKNOWN_TYPE = 44
    UNKNOWN_CAUSE = 45
    UNKNOWN_COMMON_ADDRESS = 46
    UNKNOWN_IOA = 47


def group_cause(group: int) -> int:
    """The cause of objects answering interrogation of ``group`` (0 = station)."""
    return 20 + group


def cause_name(cause: int) -> str:
    """A readable name of a cause, including the group causes."""
    if 21 <= cause <= 36:
        return f"INTERROGATED_BY_GROUP_{cause - 20}"
    if 38 <= cause <= 41:
        return f"REQUESTED_BY_COUNTER_GROUP_{cause - 37}"
    try:
        return Cause(cause).name
    except ValueError:
        return f"CAUSE_{cause}"


class Quality(enum.IntFlag):
    """Quality bits of a monitored value.

    The low octet is the standard's (QDS, SIQ/DIQ flags, QDP); the higher bits carry the
    other flags the standard defines elsewhere so that none is dropped.
    """

    OV = 0x01  #: overflow
    EI = 0x08  #: elapsed time invalid (protection events)
    BL = 0x10  #: blocked
    SB = 0x20  #: substituted
    NT = 0x40  #: not topical
    IV = 0x80  #: invalid
    TRANSIENT = 0x100  #: step position in transient state (VTI)
    CY = 0x200  #: counter carry (BCR)
    CA = 0x400  #: counter adjusted (BCR)
    TIME_INVALID = 0x800  #: the time tag's IV bit, or a time tag that does not decode


#: The S/E bit of a command qualifier (1 = select, 0 = execute).
SELECT = 0x80
_QDS = 0xF1
_FLAGS = 0xF0
_QDP = 0xF8


def qualifier_of(type_id: int, qualifier: int) -> int:
    """QU (pulse qualifier, 0..31) of SCO/DCO/RCO, or QL (0..127) of a set-point QOS."""
    if type_id in (45, 46, 47, 58, 59, 60):
        return (qualifier >> 2) & 0x1F
    return qualifier & 0x7F


Columns = tuple[list[Any], list[int], list[Any] | None]
Unpacker = Callable[[Sequence[Any], int, int], Columns]
Packer = Callable[[Any, int, Any], tuple[Any, ...]]


@attrs.frozen
class TypeSpec:
    """How one type identification's information element is laid out."""

    type_id: int
    fmt: str  #: struct format of the element without IOA and time tag
    unpack: Unpacker  #: columns from the flat unpacked fields (stride, count)
    pack: Packer  #: struct fields from (value, quality, extra)
    time: int = 0  #: 0, 3 (CP24Time2a) or 7 (CP56Time2a)
    has_extra: bool = False

    @property
    def name(self) -> str:
        """The standard's mnemonic."""
        return TypeId(self.type_id).name

    @property
    def element_size(self) -> int:
        """Octets of one element, time tag included, IOA excluded."""
        return struct.calcsize("<" + self.fmt) + self.time

    @property
    def fields(self) -> int:
        """Number of struct fields of the element (time tag excluded)."""
        return len(self.fmt)  # one character per field: the formats carry no counts


def _col(flat: Sequence[Any], stride: int, offset: int) -> Sequence[Any]:
    return flat[offset::stride] if stride > 1 else flat


def _u_siq(flat: Sequence[Any], stride: int, base: int) -> Columns:
    c = _col(flat, stride, base)
    return [bool(v & 1) for v in c], [v & _FLAGS for v in c], None


def _u_diq(flat: Sequence[Any], stride: int, base: int) -> Columns:
    c = _col(flat, stride, base)
    return [v & 3 for v in c], [v & _FLAGS for v in c], None


def _u_vti(flat: Sequence[Any], stride: int, base: int) -> Columns:
    v = _col(flat, stride, base)
    q = _col(flat, stride, base + 1)
    return (
        [((x & 0x7F) ^ 0x40) - 0x40 for x in v],
        [(y & _QDS) | (0x100 if x & 0x80 else 0) for x, y in zip(v, q, strict=True)],
        None,
    )


def _u_value_qds(scale: float | None) -> Unpacker:
    def unpack(flat: Sequence[Any], stride: int, base: int) -> Columns:
        v = _col(flat, stride, base)
        q = _col(flat, stride, base + 1)
        values = [x / scale for x in v] if scale else list(v)
        return values, [y & _QDS for y in q], None

    return unpack


def _u_bcr(flat: Sequence[Any], stride: int, base: int) -> Columns:
    v = _col(flat, stride, base)
    f = _col(flat, stride, base + 1)
    return (
        list(v),
        [(x & 0x80) | (0x400 if x & 0x40 else 0) | (0x200 if x & 0x20 else 0) for x in f],
        [x & 0x1F for x in f],
    )


def _u_scd(flat: Sequence[Any], stride: int, base: int) -> Columns:
    st = _col(flat, stride, base)
    cd = _col(flat, stride, base + 1)
    q = _col(flat, stride, base + 2)
    return list(st), [y & _QDS for y in q], list(cd)


def _u_nva_only(flat: Sequence[Any], stride: int, base: int) -> Columns:
    v = _col(flat, stride, base)
    return [x / 32768 for x in v], [0] * len(v), None


def _u_sep(flat: Sequence[Any], stride: int, base: int) -> Columns:
    s = _col(flat, stride, base)
    return [x & 3 for x in s], [x & _QDP for x in s], list(_col(flat, stride, base + 1))


def _u_spe(flat: Sequence[Any], stride: int, base: int) -> Columns:
    # SPE/OCI, QDP, CP16Time2a (relay duration / operating time)
    e = _col(flat, stride, base)
    q = _col(flat, stride, base + 1)
    return list(e), [x & _QDP for x in q], list(_col(flat, stride, base + 2))


def _u_coi(flat: Sequence[Any], stride: int, base: int) -> Columns:
    c = _col(flat, stride, base)
    return [x & 0x7F for x in c], [0] * len(c), [bool(x & 0x80) for x in c]


def _u_command(mask: int) -> Unpacker:
    def unpack(flat: Sequence[Any], stride: int, base: int) -> Columns:
        c = _col(flat, stride, base)
        values = [bool(x & 1) for x in c] if mask == 1 else [x & mask for x in c]
        return values, [x & ~mask & 0xFF for x in c], None

    return unpack


def _u_setpoint(scale: float | None) -> Unpacker:
    def unpack(flat: Sequence[Any], stride: int, base: int) -> Columns:
        v = _col(flat, stride, base)
        values = [x / scale for x in v] if scale else list(v)
        return values, list(_col(flat, stride, base + 1)), None

    return unpack


def _u_plain(flat: Sequence[Any], stride: int, base: int) -> Columns:
    v = _col(flat, stride, base)
    return list(v), [0] * len(v), None


def _nva(value: float) -> int:
    raw = round(value * 32768)
    if not -32768 <= raw <= 32767:
        raise ValueError(f"normalised value {value} is outside -1 .. 1-2**-15")
    return raw


def _p_siq(v: Any, q: int, e: Any) -> tuple[Any, ...]:
    return ((1 if v else 0) | (q & _FLAGS),)


def _p_diq(v: Any, q: int, e: Any) -> tuple[Any, ...]:
    return ((int(v) & 3) | (q & _FLAGS),)


def _p_vti(v: Any, q: int, e: Any) -> tuple[Any, ...]:
    if not -64 <= v <= 63:
        raise ValueError(f"step position {v} is outside -64 .. 63")
    return ((v & 0x7F) | (0x80 if q & 0x100 else 0), q & _QDS)


def _p_bsi(v: Any, q: int, e: Any) -> tuple[Any, ...]:
    return (v, q & _QDS)


def _p_nva(v: Any, q: int, e: Any) -> tuple[Any, ...]:
    return (_nva(v), q & _QDS)


def _p_bcr(v: Any, q: int, e: Any) -> tuple[Any, ...]:
    flags = (q & 0x80) | (0x40 if q & 0x400 else 0) | (0x20 if q & 0x200 else 0)
    return (v, flags | ((e or 0) & 0x1F))


def _p_scd(v: Any, q: int, e: Any) -> tuple[Any, ...]:
    return (v, e or 0, q & _QDS)


def _p_nva_only(v: Any, q: int, e: Any) -> tuple[Any, ...]:
    return (_nva(v),)


def _p_sep(v: Any, q: int, e: Any) -> tuple[Any, ...]:
    return ((int(v) & 3) | (q & _QDP), e or 0)


def _p_spe(v: Any, q: int, e: Any) -> tuple[Any, ...]:
    return (v, q & _QDP, e or 0)


def _p_coi(v: Any, q: int, e: Any) -> tuple[Any, ...]:
    return ((v & 0x7F) | (0x80 if e else 0),)


def _p_command(mask: int) -> Packer:
    def pack(v: Any, q: int, e: Any) -> tuple[Any, ...]:
        value = (1 if v else 0) if mask == 1 else int(v) & mask
        return (value | (q & ~mask & 0xFF),)

    return pack


def _p_setpoint(nva: bool) -> Packer:
    def pack(v: Any, q: int, e: Any) -> tuple[Any, ...]:
        return (_nva(v) if nva else v, q & 0xFF)

    return pack


def _p_plain(v: Any, q: int, e: Any) -> tuple[Any, ...]:
    return (v,)


def _p_none(v: Any, q: int, e: Any) -> tuple[Any, ...]:
    return ()


def _spec(
    type_id: int, fmt: str, unpack: Unpacker, pack: Packer, time: int = 0, extra: bool = False
) -> TypeSpec:
    return TypeSpec(type_id, fmt, unpack, pack, time, extra)


def _monitor(
    ids: Iterable[tuple[int, int]], fmt: str, unpack: Unpacker, pack: Packer, extra: bool = False
) -> list[TypeSpec]:
    return [_spec(t, fmt, unpack, pack, time, extra) for t, time in ids]


_COMMAND_SCO = _u_command(1), _p_command(1)
_COMMAND_DCO = _u_command(3), _p_command(3)

TYPES: dict[int, TypeSpec] = {
    spec.type_id: spec
    for spec in [
        *_monitor([(1, 0), (2, 3), (30, 7)], "B", _u_siq, _p_siq),
        *_monitor([(3, 0), (4, 3), (31, 7)], "B", _u_diq, _p_diq),
        *_monitor([(5, 0), (6, 3), (32, 7)], "BB", _u_vti, _p_vti),
        *_monitor([(7, 0), (8, 3), (33, 7)], "IB", _u_value_qds(None), _p_bsi),
        *_monitor([(9, 0), (10, 3), (34, 7)], "hB", _u_value_qds(32768), _p_nva),
        *_monitor([(11, 0), (12, 3), (35, 7)], "hB", _u_value_qds(None), _p_bsi),
        *_monitor([(13, 0), (14, 3), (36, 7)], "fB", _u_value_qds(None), _p_bsi),
        *_monitor([(15, 0), (16, 3), (37, 7)], "iB", _u_bcr, _p_bcr, extra=True),
        *_monitor([(17, 3), (38, 7)], "BH", _u_sep, _p_sep, extra=True),
        *_monitor([(18, 3), (39, 7), (19, 3), (40, 7)], "BBH", _u_spe, _p_spe, extra=True),
        _spec(20, "HHB", _u_scd, _p_scd, extra=True),
        _spec(21, "h", _u_nva_only, _p_nva_only),
        _spec(70, "B", _u_coi, _p_coi, extra=True),
        *(_spec(t, "B", *_COMMAND_SCO, time) for t, time in ((45, 0), (58, 7))),
        *(_spec(t, "B", *_COMMAND_DCO, time) for t, time in ((46, 0), (59, 7), (47, 0), (60, 7))),
        *(
            _spec(t, "hB", _u_setpoint(32768), _p_setpoint(True), tm)
            for t, tm in ((48, 0), (61, 7))
        ),
        *(
            _spec(t, "hB", _u_setpoint(None), _p_setpoint(False), tm)
            for t, tm in ((49, 0), (62, 7))
        ),
        *(
            _spec(t, "fB", _u_setpoint(None), _p_setpoint(False), tm)
            for t, tm in ((50, 0), (63, 7))
        ),
        *(_spec(t, "I", _u_plain, _p_plain, time) for t, time in ((51, 0), (64, 7))),
        _spec(100, "B", _u_plain, _p_plain),
        _spec(101, "B", _u_plain, _p_plain),
        _spec(102, "", _u_plain, _p_none),
        _spec(103, "", _u_plain, _p_none, 7),
        _spec(104, "H", _u_plain, _p_plain),
        _spec(105, "B", _u_plain, _p_plain),
        _spec(106, "H", _u_plain, _p_plain),
        _spec(107, "H", _u_plain, _p_plain, 7),
    ]
}

#: Types whose objects are monitored values (the ones that become samples).
MONITOR_TYPES = frozenset(t for t in TYPES if t < 45 or t == 70) - {70}
#: Process commands (45..64).
COMMAND_TYPES = frozenset(t for t in TYPES if 45 <= t <= 64)
#: Commands whose qualifier has an S/E bit (all but the bitstring commands).
SELECTABLE_TYPES = COMMAND_TYPES - {51, 64}

#: The command that sets a monitored point, by its monitor type: a point configured once
#: with the type it reports (``code_type`` 36, a float with time tag) is commanded with
#: the matching command (63, a short-float set-point with time tag). Documented in
#: docs/iec104.rst.
COMMAND_FOR_MONITOR: dict[int, int] = {
    1: 45,  # M_SP_NA_1 -> C_SC_NA_1
    2: 58,  # M_SP_TA_1 -> C_SC_TA_1
    30: 58,  # M_SP_TB_1 -> C_SC_TA_1
    3: 46,  # M_DP_NA_1 -> C_DC_NA_1
    4: 59,  # M_DP_TA_1 -> C_DC_TA_1
    31: 59,  # M_DP_TB_1 -> C_DC_TA_1
    5: 47,  # M_ST_NA_1 -> C_RC_NA_1
    6: 60,  # M_ST_TA_1 -> C_RC_TA_1
    32: 60,  # M_ST_TB_1 -> C_RC_TA_1
    7: 51,  # M_BO_NA_1 -> C_BO_NA_1
    8: 64,  # M_BO_TA_1 -> C_BO_TA_1
    33: 64,  # M_BO_TB_1 -> C_BO_TA_1
    9: 48,  # M_ME_NA_1 -> C_SE_NA_1
    21: 48,  # M_ME_ND_1 -> C_SE_NA_1
    10: 61,  # M_ME_TA_1 -> C_SE_TA_1
    34: 61,  # M_ME_TD_1 -> C_SE_TA_1
    11: 49,  # M_ME_NB_1 -> C_SE_NB_1
    12: 62,  # M_ME_TB_1 -> C_SE_TB_1
    35: 62,  # M_ME_TE_1 -> C_SE_TB_1
    13: 50,  # M_ME_NC_1 -> C_SE_NC_1
    14: 63,  # M_ME_TC_1 -> C_SE_TC_1
    36: 63,  # M_ME_TF_1 -> C_SE_TC_1
}


def command_type_for(code_type: int) -> int | None:
    """The command type that sets a point of ``code_type``: a command type stays as it
    is, a monitor type maps through `COMMAND_FOR_MONITOR`; None when there is none."""
    if code_type in COMMAND_TYPES:
        return code_type
    return COMMAND_FOR_MONITOR.get(code_type)
