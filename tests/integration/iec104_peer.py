"""A lib60870 (c104 2.2.1) controlled station for the IEC 104 master's interop tests.

c104 is GPLv3: a test-only dependency, imported here and in bench/, never by pydatacoll.
`C104Station` starts a `c104.Server` on 127.0.0.1 (a free port) with one or more stations.
Each station has a point of every monitor type c104 can serve (`default_points`: known
value, quality and, for CP56 types, recorded_at = BASE_TIME + type id s + CA min) and,
per command type and mode, a command point whose feedback point (IOA + 10000) takes the
commanded value on success. IOAs: 100 * type id + 1 (M_ME_NC_1: 1301-1303; commands +1
DIRECT, +2 SELECT_AND_EXECUTE). Everything the master sends is decoded from the raw
frames (`requests`, `commands`, `clock_syncs`, `counter_interrogations`,
`read_requests`, `interrogations`), each with the replies the station gave
(`Request.replies`); `frames()` has every APDU. `update_point` changes a point and sends
it spontaneously; `fail_commands` makes a command point answer ResponseState.FAILURE.
`connect_c104_client` and `poll_until` are for driving it from trial.

What c104 2.2.1 supports as server points: M_SP/DP/ST/BO_NA_1 and _TB_1, M_ME_NA/NB/NC/ND_1,
M_ME_TD/TE/TF_1, M_IT_NA_1/TB_1, M_PS_NA_1, M_EP_TD/TE/TF_1; commands C_SC/DC/RC/BO_NA_1 and
_TA_1, C_SE_NA/NB/NC_1 and C_SE_TA/TB/TC_1. Refused ("Unsupported type"): every CP24 type
(M_*_TA_1, M_EP_TA/TB/TC_1), M_EI_NA_1, and system types as points (they are built in).

Time tags. c104 takes and gives *naive local* datetimes and ignores tzinfo (an aware UTC
datetime is read as local time); on the wire CP56Time2a is UTC, day-of-week 0, IV=SU=0.
So: `to_c104_time(aware)` -> `aware.astimezone().replace(tzinfo=None)` going in, and
`from_c104_time(naive)` -> `naive.astimezone(UTC)` coming out; expected times here are
aware UTC. Checked with TZ=Asia/Tokyo: naive 05:06:07.890 on 4 March went out as
`d2 1e 06 14 03 03 1a` (20:06 UTC on the 3rd). Setting `point.value` or `point.quality`
re-stamps recorded_at with now; only `point.info = XInfo(..., recorded_at=...)` keeps a
given time (what this harness does). Millisecond resolution.

On the wire (loopback, c104.Client or a raw socket as master; "->" to the station):

STARTDT          -> 68 04 07 00 00 00   <- 68 04 0b 00 00 00
GI (QOI 20)      -> 68 0e 00 00 00 00 64 01 06 00 01 00 00 00 00 14
  <- 68 0e 00 00 02 00 64 01 07 00 01 00 00 00 00 14            ACT_CON
  <- 68 0e 02 00 02 00 01 81 14 00 01 00 d1 07 00 00            M_SP_NA_1 SQ=1 with ONE object
  <- 68 22 04 00 02 00 0b 04 14 00 01 00 0a 00 00 0a 00 00 0c 00 00 0c 00 00 ...
                                   M_ME_NB_1 IOAs 10,12,13,20: SQ=0, one ASDU per type
  <- 68 17 02 00 02 00 0d 82 14 00 01 00 0c 00 00 00 00 20 40 00 00 00 60 40 00
                                   M_ME_NC_1 IOAs 12,13: SQ=1 (VSQ 0x82)
  <- 68 15 04 00 02 00 1e 81 14 00 01 00 0a 00 00 81 d2 1e 06 05 04 03 1a
                                   M_SP_TB_1 SIQ 0x81 (IV, on), 2026-03-04 05:06:07.890 UTC
  <- 68 0e 08 00 02 00 64 01 0a 00 01 00 00 00 00 14            ACT_TERM
  One ASDU per type with COT 20; SQ=1 exactly when the type's IOAs form one run (a single
  object too), else SQ=0. Left out of a GI: M_IT_* (CI only), M_EP_* (events), and also
  M_PS_NA_1 and M_ME_ND_1 (`NOT_IN_INTERROGATION`); they can be sent spontaneously.
GI group 1       -> ... 64 01 06 00 01 00 00 00 00 15
  <- ... 64 01 47 00 01 00 00 00 00 15   negative ACT_CON, nothing else
GI unknown CA 7  <- ... 64 01 47 00 07 00 00 00 00 14 then ... 64 01 2e 00 07 00 ... 14 (COT 46)
Quality: QDS/SIQ/DIQ/QDP bits as in the standard and as c104.Quality's values; but M_BO_NA_1
  and M_BO_TB_1 always go out with QDS 00 (quality ignored), BSI little-endian
  (0xdeadbeee -> ee be ad de). BCR: CY=0x20, CA=0x40, IV=0x80 on the wire
  (`40 e2 01 00 23` = 123456, SQ 3, CY); c104's *client* reports wire CY as "Adjusted" and
  CA as "Carry" (its enum values are the raw bits, the names swapped).
  M_EP_TD_1 `0a dc 05`+CP56: ES=2, EI, 1500 ms; M_EP_TE_1 `21 20 ff ff`; M_EP_TF_1 `0e 80 fa 00`;
  M_PS_NA_1 `01 80 f0 00 10` (status 0x8001, changed 0x00f0, BL); M_ME_ND_1 `00 a0` (-0.75).
Direct C_SC_NA_1 -> 68 0e 00 00 00 00 2d 01 06 00 01 00 b9 0b 00 01
  <- 68 0e 00 00 02 00 2d 01 07 00 01 00 b9 0b 00 01            ACT_CON, no ACT_TERM
  <- 68 0e 02 00 02 00 01 01 0b 00 01 00 d1 07 00 01            related point, COT 11
  Same for every direct type; C_*_TA_1: ACT_CON echoes the CP56; the related *_TB_1 point
  carries the time of processing (now), e.g. C_SC_TA_1
  -> ... 3a 01 06 00 01 00 bb 0b 00 05 8c 23 08 07 06 05 1a  (SCO on, QU 1, 2026-05-06 07:08:09.100)
  <- ... 3a 01 07 00 01 00 bb 0b 00 05 8c 23 08 07 06 05 1a
Select/execute (SELECT_AND_EXECUTE point), C_SC_NA_1 IOA 3002:
  -> ... 2d 01 06 00 01 00 ba 0b 00 81   <- ... 2d 01 07 00 01 00 ba 0b 00 81   (no callback)
  -> ... 2d 01 06 00 01 00 ba 0b 00 01   (callback runs)
  <- ... 2d 01 07 00 01 00 ba 0b 00 01   ACT_CON
  <- ... 2d 01 0a 00 01 00 ba 0b 00 81   ACT_TERM, which echoes the *select* (S/E=1)
  <- ... 01 01 0b 00 01 00 d1 07 00 01   related point, COT 11
  C_SE_NC_1: select QOS 0x80, execute 0x00, ACT_TERM again QOS 0x80. The execute's value
  need not match the select's. Execute without select, or after select_timeout_ms:
  negative ACT_CON (`47`); on a select timeout c104 sends the ACT_TERM (S/E=1) by itself.
  Select on a DIRECT point: negative ACT_CON. C_BO_* have no S/E bit: DIRECT only.
Negative (callback returns FAILURE): direct -> only `2d 01 47 ...` (ACT_CON P/N=1);
  SBO execute -> `... 47 ...` then ACT_TERM (`0a`, S/E=1) all the same. No related point.
Unknown IOA 9999 -> `2d 01 47 00 01 00 0f 27 00 01` then `2d 01 2f 00 01 00 0f 27 00 01`
  (COT 47, P/N=0): two replies. Wrong type for an IOA (C_DC on a C_SC point): `47` then
  `2c` (COT 44). A command with COT 3: no reply at all, but the callback runs.
Deactivation (COT 8): *not* implemented as such. On a direct point
  -> ... 2d 01 08 ... b9 0b 00 01   <- ... 2d 01 07 ... b9 0b 00 01 (COT 7, not 9) and the
  command is *executed* (callback with cot DEACTIVATION, related point sent). After a
  select, COT 8 with S/E=1 gets COT 7 (S/E=1) back; COT 8 with S/E=0 executes the command
  (ACT_CON 07, ACT_TERM 0a, related point). A master must not rely on DEACT_CON.
Counter interrogation, any QCC (05, 41, 85, c5 seen):
  -> ... 65 01 06 00 01 00 00 00 00 05   <- ... 65 01 07 ... 05
  <- 68 12 .. 0f 81 25 00 01 00 a1 0f 00 40 e2 01 00 23    M_IT_NA_1, COT 37
  <- 68 19 .. 25 81 25 00 01 00 a2 0f 00 00 00 00 80 5f 8e 13 04 03 02 01 1a   M_IT_TB_1
  <- ... 65 01 0a ... 05   ACT_TERM
  RQT is ignored (group 1..4 gets every counter, still COT 37) and so is FRZ (nothing
  is frozen or reset). No server callback exists: recorded from the frames.
Clock sync       -> ... 67 01 06 00 01 00 00 00 00 e9 b0 06 06 01 0c 1a
  <- ... 67 01 07 00 01 00 00 00 00 e9 b0 06 06 01 0c 1a   ACT_CON echoing the time; no
  ACT_TERM. on_clock_sync returning FAILURE -> `67 01 47 ...`. The callback gets naive local time.
Read C_RD_NA_1   -> ... 66 01 05 00 01 00 d3 07 00
  <- ... 66 01 07 00 01 00 d3 07 00   an ACT_CON (COT 7) the standard does not have, then
  <- ... 0d 01 05 00 01 00 d3 07 00 00 00 e8 40 00   the point with COT 5.
  Unknown IOA: `66 01 47 ...` then `66 01 2f ...`.
Test command C_TS_TA_1 is echoed with COT 7 (c104's own client then logs
  "Unsupported type C_TS_TA_1"). STOPDT act -> 68 04 23 00 00 00 (con).
Spontaneous: `update_point` -> e.g. `1e 01 03 00 01 00 d2 07 00 11 ae 08 02 02 02 02 1a`.

Other c104 quirks met here: callbacks must match c104's signature exactly, *names and
annotations included*, so no `from __future__ import annotations` in this module (string
annotations are refused); StepInfo wants `state=` and ProtectionCircuitInfo
`events=`/`relay_duration_ms=` although the stubs say position/circuits/relay_operating_ms;
BinaryCounterInfo's default quality is of the wrong class (always pass one);
c104.Byte32(int) is 0 for every int below 2**31 (pass 4 little-endian bytes);
c104's client sometimes stays OPEN_MUTED (`connect_c104_client` unmutes it after 0.5 s);
for an unknown IOA its `transmit` returns True or False depending on the reply it sees first.
"""

import datetime
import struct
import threading
from dataclasses import dataclass, field, replace
from typing import Any

import c104
from twisted.internet import defer, task
from twisted.logger import Logger

from pydatacoll.testing.redis import free_port

UTC = datetime.UTC

#: Base of the known recorded_at times: each time-tagged point gets BASE_TIME + type id seconds.
BASE_TIME = datetime.datetime(2026, 3, 4, 5, 6, 7, 890000, tzinfo=UTC)

_TYPE_NAMES = {t.value: name for name, t in c104.Type.__members__.items()}

#: Monitor types c104 2.2.1 accepts as server points (it refuses every CP24 *_TA_1 type,
#: M_EP_TA/TB/TC_1 and M_EI_NA_1 with "Unsupported type").
MONITOR_TYPES = (
    "M_SP_NA_1",
    "M_DP_NA_1",
    "M_ST_NA_1",
    "M_BO_NA_1",
    "M_ME_NA_1",
    "M_ME_NB_1",
    "M_ME_NC_1",
    "M_IT_NA_1",
    "M_PS_NA_1",
    "M_ME_ND_1",
    "M_SP_TB_1",
    "M_DP_TB_1",
    "M_ST_TB_1",
    "M_BO_TB_1",
    "M_ME_TD_1",
    "M_ME_TE_1",
    "M_ME_TF_1",
    "M_IT_TB_1",
    "M_EP_TD_1",
    "M_EP_TE_1",
    "M_EP_TF_1",
)

#: Types c104 2.2.1 leaves out of a general interrogation: counters (CI only), protection
#: events (spontaneous only, as the standard has it), and also M_PS_NA_1 and M_ME_ND_1.
NOT_IN_INTERROGATION = frozenset(
    {"M_IT_NA_1", "M_IT_TB_1", "M_PS_NA_1", "M_ME_ND_1", "M_EP_TD_1", "M_EP_TE_1", "M_EP_TF_1"}
)

#: Command type -> the monitor type of its feedback (related) point.
COMMAND_FEEDBACK = {
    "C_SC_NA_1": "M_SP_NA_1",
    "C_DC_NA_1": "M_DP_NA_1",
    "C_RC_NA_1": "M_ST_NA_1",
    "C_SE_NA_1": "M_ME_NA_1",
    "C_SE_NB_1": "M_ME_NB_1",
    "C_SE_NC_1": "M_ME_NC_1",
    "C_BO_NA_1": "M_BO_NA_1",
    "C_SC_TA_1": "M_SP_TB_1",
    "C_DC_TA_1": "M_DP_TB_1",
    "C_RC_TA_1": "M_ST_TB_1",
    "C_SE_TA_1": "M_ME_TD_1",
    "C_SE_TB_1": "M_ME_TE_1",
    "C_SE_TC_1": "M_ME_TF_1",
    "C_BO_TA_1": "M_BO_TB_1",
}

#: Bitstring commands carry no S/E bit, so c104 can never select them: DIRECT only.
_DIRECT_ONLY = {"C_BO_NA_1", "C_BO_TA_1"}

DIRECT = c104.CommandMode.DIRECT
SELECT_AND_EXECUTE = c104.CommandMode.SELECT_AND_EXECUTE

# Quality bits as on the wire (QDS/SIQ/DIQ/QDP and BCR); c104.Quality uses the same values.
IV, NT, SB, BL, EI, OV = 0x80, 0x40, 0x20, 0x10, 0x08, 0x01
BCR_IV, BCR_CA, BCR_CY = 0x80, 0x40, 0x20

# Value, quality and extras of the monitor points; numeric values are shifted by the
# common address so that a master mixing up stations is caught.
_TIMED = {"M_SP_TB_1", "M_DP_TB_1", "M_ST_TB_1", "M_BO_TB_1", "M_ME_TD_1", "M_ME_TE_1"}
_TIMED |= {"M_ME_TF_1", "M_IT_TB_1", "M_EP_TD_1", "M_EP_TE_1", "M_EP_TF_1"}


def monitor_io_address(type_name: str, index: int = 1) -> int:
    """The IOA of a monitor point: 100 * type id + index (M_ME_NC_1 has 1301..1303)."""
    return 100 * getattr(c104.Type, type_name).value + index


def command_io_address(type_name: str, mode: c104.CommandMode = DIRECT) -> int:
    """The IOA of a command point: 100 * type id + 1 (DIRECT) or + 2 (SELECT_AND_EXECUTE)."""
    return 100 * getattr(c104.Type, type_name).value + (1 if mode == DIRECT else 2)


def feedback_io_address(command_io_address: int) -> int:
    """The IOA of the monitor point a command point updates (command IOA + 10000)."""
    return command_io_address + 10000


@dataclass(frozen=True)
class MonitorPoint:
    """What a master must decode for one monitor point: value, wire quality bits, UTC time."""

    common_address: int
    io_address: int
    type_name: str
    value: bool | int | float
    quality: int = 0
    recorded_at: datetime.datetime | None = None
    transient: bool | None = None  # M_ST_*: VTI bit 8
    sequence: int | None = None  # M_IT_*: BCR sequence number
    elapsed_ms: int | None = None  # M_EP_TD/TE/TF_1: CP16 elapsed/duration/operating time
    changed: int | None = None  # M_PS_NA_1: the change-detection bits

    @property
    def type_id(self) -> int:
        """The ASDU type identification."""
        return int(getattr(c104.Type, self.type_name).value)


@dataclass(frozen=True)
class Reply:
    """One ASDU the station sent back to a request: its COT and P/N bit."""

    cot: int
    negative: bool


@dataclass(frozen=True)
class Request:
    """An ASDU the master sent (type id >= 45), decoded from the wire, with the replies seen."""

    type_name: str
    cot: int
    common_address: int
    io_address: int
    originator_address: int
    value: bool | int | float | None = None  # command value (DCO/RCO state as int)
    select: bool | None = None  # the S/E bit of SCO/DCO/RCO/QOS
    qualifier: int | None = None  # QU of SCO/DCO/RCO, QL of QOS, QOI, QCC, ...
    time: datetime.datetime | None = None  # CP56Time2a as an aware UTC datetime
    raw: bytes = b""
    replies: tuple[Reply, ...] = ()

    @property
    def type_id(self) -> int:
        """The ASDU type identification."""
        return int(getattr(c104.Type, self.type_name).value)

    @property
    def rqt(self) -> int | None:
        """Counter interrogation request qualifier (QCC bits 1-6)."""
        return None if self.qualifier is None else self.qualifier & 0x3F

    @property
    def frz(self) -> int | None:
        """Counter interrogation freeze qualifier (QCC bits 7-8)."""
        return None if self.qualifier is None else self.qualifier >> 6

    @property
    def positive(self) -> bool | None:
        """True/False for the first confirmation (COT 7 or 9) seen, None before it."""
        for reply in self.replies:
            if reply.cot in (7, 9):
                return not reply.negative
        return None

    @property
    def terminated(self) -> bool:
        """Whether an ACT_TERM (COT 10) was seen."""
        return any(reply.cot == 10 for reply in self.replies)


@dataclass(frozen=True)
class Frame:
    """One APDU on the wire, seen from the station: "rx" (from the master) or "tx"."""

    direction: str
    data: bytes

    @property
    def is_asdu(self) -> bool:
        """Whether this is an I-frame (carries an ASDU)."""
        return len(self.data) > 6 and not self.data[2] & 0x01


@dataclass
class _Pending:
    request: Request
    replies: list[Reply] = field(default_factory=list)


def to_c104_time(moment: datetime.datetime) -> datetime.datetime:
    """An aware datetime as c104 wants it: naive local time (c104 ignores tzinfo)."""
    if moment.tzinfo is None:
        raise ValueError("give an aware datetime")
    return moment.astimezone().replace(tzinfo=None)


def from_c104_time(moment: datetime.datetime | None) -> datetime.datetime | None:
    """A naive local datetime from c104 as an aware UTC datetime."""
    return None if moment is None else moment.astimezone(UTC)


def _utc_now_ms() -> datetime.datetime:
    now = datetime.datetime.now(UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


def decode_cp56(data: bytes) -> datetime.datetime:
    """CP56Time2a (7 octets) as an aware UTC datetime; IV/SU and day of week ignored."""
    ms = data[0] | data[1] << 8
    return datetime.datetime(
        2000 + (data[6] & 0x7F),
        data[5] & 0x0F,
        data[4] & 0x1F,
        data[3] & 0x1F,
        data[2] & 0x3F,
        ms // 1000,
        ms % 1000 * 1000,
        tzinfo=UTC,
    )


def _decode_request(data: bytes) -> Request | None:
    """Decode the master-to-station ASDUs this harness records; None for anything else."""
    if len(data) < 15 or data[0] != 0x68 or data[2] & 0x01:
        return None
    type_id = data[6]
    if type_id < 45 or type_id not in _TYPE_NAMES:
        return None
    ca = data[10] | data[11] << 8
    ioa = data[12] | data[13] << 8 | data[14] << 16
    body = data[15:]
    fields: dict[str, Any] = {}
    timed = False
    if type_id in (45, 58):
        fields = dict(value=bool(body[0] & 1), qualifier=(body[0] >> 2) & 0x1F)
        fields["select"] = bool(body[0] & 0x80)
        timed, body = type_id == 58, body[1:]
    elif type_id in (46, 47, 59, 60):
        fields = dict(value=body[0] & 3, qualifier=(body[0] >> 2) & 0x1F)
        fields["select"] = bool(body[0] & 0x80)
        timed, body = type_id in (59, 60), body[1:]
    elif type_id in (48, 49, 61, 62):
        (raw,) = struct.unpack_from("<h", body)
        fields = dict(value=raw / 32768 if type_id in (48, 61) else raw)
        fields.update(qualifier=body[2] & 0x7F, select=bool(body[2] & 0x80))
        timed, body = type_id in (61, 62), body[3:]
    elif type_id in (50, 63):
        (real,) = struct.unpack_from("<f", body)
        fields = dict(value=real, qualifier=body[4] & 0x7F, select=bool(body[4] & 0x80))
        timed, body = type_id == 63, body[5:]
    elif type_id in (51, 64):
        (bits,) = struct.unpack_from("<I", body)
        fields = dict(value=bits)
        timed, body = type_id == 64, body[4:]
    elif type_id in (100, 101, 105):  # QOI, QCC, QRP
        fields = dict(qualifier=body[0])
    elif type_id == 103:
        timed = True
    elif type_id == 107:  # TSC then CP56
        fields = dict(value=body[0] | body[1] << 8)
        timed, body = True, body[2:]
    if timed and len(body) >= 7:
        fields["time"] = decode_cp56(body[:7])
    return Request(
        type_name=_TYPE_NAMES[type_id],
        cot=data[8] & 0x3F,
        common_address=ca,
        io_address=ioa,
        originator_address=data[9],
        raw=bytes(data),
        **fields,
    )


def _make_info(point: MonitorPoint) -> c104.Information:
    """The c104 Information object carrying exactly `point`'s value, quality and time."""
    name = point.type_name
    recorded = None if point.recorded_at is None else to_c104_time(point.recorded_at)
    quality = c104.Quality(point.quality)
    if name.startswith("M_SP"):
        return c104.SingleInfo(on=bool(point.value), quality=quality, recorded_at=recorded)
    if name.startswith("M_DP"):
        state = c104.Double(int(point.value))
        return c104.DoubleInfo(state=state, quality=quality, recorded_at=recorded)
    if name.startswith("M_ST"):
        # The stub and docstring say `position`; c104 2.2.1's binding wants `state`.
        return c104.StepInfo(
            state=c104.Int7(int(point.value)),
            transient=bool(point.transient),
            quality=quality,
            recorded_at=recorded,
        )
    if name.startswith("M_BO"):
        # c104.Byte32(int) yields 0 for every int below 2**31; bytes are read little-endian.
        blob = c104.Byte32(int(point.value).to_bytes(4, "little"))
        return c104.BinaryInfo(blob=blob, quality=quality, recorded_at=recorded)
    if name in ("M_ME_NA_1", "M_ME_ND_1", "M_ME_TD_1"):
        actual = c104.NormalizedFloat(float(point.value))
        return c104.NormalizedInfo(actual=actual, quality=quality, recorded_at=recorded)
    if name in ("M_ME_NB_1", "M_ME_TE_1"):
        actual = c104.Int16(int(point.value))
        return c104.ScaledInfo(actual=actual, quality=quality, recorded_at=recorded)
    if name in ("M_ME_NC_1", "M_ME_TF_1"):
        return c104.ShortInfo(actual=float(point.value), quality=quality, recorded_at=recorded)
    if name.startswith("M_IT"):
        # c104.BinaryCounterQuality's numeric values are not the wire bits (Carry is 64,
        # Adjusted 32), and its default argument is of the wrong class: always pass one.
        counter_quality = c104.BinaryCounterQuality()
        for bit, flag in (
            (BCR_IV, c104.BinaryCounterQuality.Invalid),
            (BCR_CA, c104.BinaryCounterQuality.Adjusted),
            (BCR_CY, c104.BinaryCounterQuality.Carry),
        ):
            if point.quality & bit:
                counter_quality |= flag
        return c104.BinaryCounterInfo(
            counter=int(point.value),
            sequence=c104.UInt5(point.sequence or 0),
            quality=counter_quality,
            recorded_at=recorded,
        )
    elapsed = c104.UInt16(point.elapsed_ms or 0)
    if name == "M_EP_TD_1":
        state = c104.EventState(int(point.value))
        return c104.ProtectionEventInfo(
            state=state, elapsed_ms=elapsed, quality=quality, recorded_at=recorded
        )
    if name == "M_EP_TE_1":
        events = c104.StartEvents(int(point.value))
        return c104.ProtectionStartInfo(
            events=events, relay_duration_ms=elapsed, quality=quality, recorded_at=recorded
        )
    if name == "M_EP_TF_1":
        circuits = c104.OutputCircuits(int(point.value))
        # Stub and docstring say `circuits`/`relay_operating_ms`; the binding differs.
        return c104.ProtectionCircuitInfo(
            events=circuits, relay_duration_ms=elapsed, quality=quality, recorded_at=recorded
        )
    if name == "M_PS_NA_1":
        return c104.StatusAndChanged(
            status=c104.PackedSingle(int(point.value)),
            changed=c104.PackedSingle(point.changed or 0),
            quality=quality,
        )
    raise ValueError(f"no monitor type {name}")


def default_points(common_address: int) -> list[MonitorPoint]:
    """One point of every supported monitor type (three consecutive M_ME_NC_1) for a station."""
    ca = common_address

    def timed(name: str) -> datetime.datetime | None:
        if name not in _TIMED:
            return None
        return BASE_TIME + datetime.timedelta(seconds=getattr(c104.Type, name).value, minutes=ca)

    def point(name: str, value: Any, quality: int = 0, index: int = 1, **extra: Any):
        return MonitorPoint(
            ca, monitor_io_address(name, index), name, value, quality, timed(name), **extra
        )

    return [
        point("M_SP_NA_1", True),
        point("M_DP_NA_1", 2, quality=NT),
        point("M_ST_NA_1", -5 - ca, transient=True),
        point("M_BO_NA_1", 0xDEADBEEF - ca),  # c104 always sends QDS 0 for bitstrings
        point("M_ME_NA_1", 0.5, quality=SB),
        point("M_ME_NB_1", -1234 - ca, quality=OV),
        point("M_ME_NC_1", 12.5 + ca, index=1),
        point("M_ME_NC_1", -0.25, index=2, quality=IV),
        point("M_ME_NC_1", 1e6 + ca, index=3, quality=NT | SB),
        point("M_IT_NA_1", 123456 + ca, quality=BCR_CY, sequence=3),
        point("M_PS_NA_1", 0x8001, quality=BL, changed=0x00F0),
        point("M_ME_ND_1", -0.75),
        point("M_SP_TB_1", False, quality=IV | BL),
        point("M_DP_TB_1", 1, quality=SB),
        point("M_ST_TB_1", 63, quality=OV, transient=False),
        point("M_BO_TB_1", 0x01020304 + ca),
        point("M_ME_TD_1", -1.0, quality=OV),
        point("M_ME_TE_1", 32767, quality=IV),
        point("M_ME_TF_1", -273.125 - ca, quality=SB | OV),
        point("M_IT_TB_1", -2147483648, quality=BCR_CA | BCR_IV, sequence=31),
        point("M_EP_TD_1", 2, quality=EI, elapsed_ms=1500),
        point("M_EP_TE_1", 0x21, quality=SB, elapsed_ms=65535),
        point("M_EP_TF_1", 0x0E, quality=IV, elapsed_ms=250),
    ]


def _feedback_value(command: c104.Point, previous: MonitorPoint) -> bool | int | float:
    """The feedback point's new value after a successful command."""
    value = command.value
    name = command.type.name
    if name.startswith("C_SC"):
        return bool(value)
    if name.startswith("C_DC"):
        return int(value.value)
    if name.startswith("C_RC"):
        step = 1 if value == c104.Step.HIGHER else -1 if value == c104.Step.LOWER else 0
        return max(-64, min(63, int(previous.value) + step))
    if name.startswith("C_BO"):
        return int.from_bytes(bytes(value), "little")
    if name in ("C_SE_NB_1", "C_SE_TB_1"):
        return int(value)
    return float(value)


class C104Station:
    """A lib60870 (c104) controlled station on 127.0.0.1 to test a master against.

    Every station (common address) gets `default_points` plus (unless `with_commands` is
    false) for each command type and mode a command point whose feedback point is
    updated (and sent with COT 11) on success. Everything the master sends is decoded
    from the wire and recorded; the recorders are safe to read from any thread (c104
    calls back on its own threads).
    """

    log = Logger()

    def __init__(
        self,
        common_addresses: tuple[int, ...] = (1,),
        port: int | None = None,
        tick_rate_ms: int = 50,
        select_timeout_ms: int = 2000,
        with_commands: bool = True,
    ) -> None:
        self.host = "127.0.0.1"
        self.port = port or free_port()
        self.common_addresses = tuple(common_addresses)
        self.with_commands = with_commands
        self._lock = threading.Lock()
        self._expected: dict[tuple[int, int], MonitorPoint] = {}
        self._requests: list[_Pending] = []
        self._frames: list[Frame] = []
        self._clock_syncs: list[datetime.datetime] = []
        self._failing: set[tuple[int, int]] = set()
        self.clock_sync_response = c104.ResponseState.SUCCESS
        self.server = c104.Server(
            ip=self.host,
            port=self.port,
            tick_rate_ms=tick_rate_ms,
            select_timeout_ms=select_timeout_ms,
            max_connections=0,
        )
        self.server.on_receive_raw(callable=self._on_receive_raw)
        self.server.on_send_raw(callable=self._on_send_raw)
        self.server.on_clock_sync(callable=self._on_clock_sync)
        self.stations: dict[int, c104.Station] = {}
        for ca in self.common_addresses:
            self._add_station(ca)

    def _add_station(self, ca: int) -> None:
        station = self.server.add_station(common_address=ca)
        self.stations[ca] = station
        for point in default_points(ca):
            self._add_monitor(station, point)
        if not self.with_commands:
            return
        for command_type, feedback_type in COMMAND_FEEDBACK.items():
            modes = (DIRECT,) if command_type in _DIRECT_ONLY else (DIRECT, SELECT_AND_EXECUTE)
            for mode in modes:
                ioa = command_io_address(command_type, mode)
                initial = 0.0 if feedback_type.startswith("M_ME_N") else 0
                if feedback_type.startswith("M_ME_T") and feedback_type != "M_ME_TE_1":
                    initial = 0.0
                feedback = MonitorPoint(
                    ca,
                    feedback_io_address(ioa),
                    feedback_type,
                    False if feedback_type.startswith("M_SP") else initial,
                    recorded_at=BASE_TIME if feedback_type in _TIMED else None,
                    transient=False if feedback_type.startswith("M_ST") else None,
                )
                if feedback_type.startswith("M_DP"):
                    feedback = replace(feedback, value=1)  # OFF
                self._add_monitor(station, feedback)
                command = station.add_point(
                    io_address=ioa,
                    type=getattr(c104.Type, command_type),
                    related_io_address=feedback.io_address,
                    related_io_autoreturn=True,
                    command_mode=mode,
                )
                command.on_receive(callable=self._on_command)

    def _add_monitor(self, station: c104.Station, point: MonitorPoint) -> None:
        c104_point = station.add_point(
            io_address=point.io_address, type=getattr(c104.Type, point.type_name)
        )
        c104_point.info = _make_info(point)
        self._expected[(point.common_address, point.io_address)] = point

    # -- life cycle

    def start(self) -> None:
        """Listen (c104 starts its own threads)."""
        self.server.start()
        self.log.info("c104 station listening on {host}:{port}", host=self.host, port=self.port)

    def stop(self) -> None:
        """Close the server socket and end c104's threads."""
        if self.server.is_running:
            self.server.stop()

    # -- the points

    def expected_points(self, common_address: int | None = None) -> list[MonitorPoint]:
        """Every monitor point (including command feedback points) as a master must see it."""
        with self._lock:
            points = list(self._expected.values())
        if common_address is not None:
            points = [p for p in points if p.common_address == common_address]
        return sorted(points, key=lambda p: (p.common_address, p.io_address))

    def expected(self, common_address: int, io_address: int) -> MonitorPoint:
        """The monitor point as a master must see it now."""
        with self._lock:
            return self._expected[(common_address, io_address)]

    def c104_point(self, common_address: int, io_address: int) -> c104.Point:
        """The underlying c104 point (for scenarios this class does not cover)."""
        return self.stations[common_address].get_point(io_address=io_address)

    def update_point(
        self,
        common_address: int,
        io_address: int,
        value: bool | int | float,
        quality: int | None = None,
        recorded_at: datetime.datetime | None = None,
        transmit: c104.Cot | None = c104.Cot.SPONTANEOUS,
        **extra: Any,
    ) -> MonitorPoint:
        """Give a monitor point a new value (quality, time) and send it with `transmit`.

        A time-tagged point without `recorded_at` is stamped now (UTC, milliseconds).
        """
        with self._lock:
            old = self._expected[(common_address, io_address)]
            if old.recorded_at is not None and recorded_at is None:
                recorded_at = _utc_now_ms()
            new = replace(
                old,
                value=value,
                quality=old.quality if quality is None else quality,
                recorded_at=recorded_at if old.recorded_at is not None else None,
                **extra,
            )
            self._expected[(common_address, io_address)] = new
        # Never call into c104 holding the lock: its threads take it in the raw callbacks.
        self.c104_point(common_address, io_address).info = _make_info(new)
        if transmit is not None:
            self.c104_point(common_address, io_address).transmit(cause=transmit)
        return new

    def transmit(
        self, common_address: int, io_address: int, cause: c104.Cot = c104.Cot.SPONTANEOUS
    ) -> bool:
        """Send a monitor point as it is (value, quality and time unchanged)."""
        return bool(self.c104_point(common_address, io_address).transmit(cause=cause))

    def fail_commands(self, common_address: int, io_address: int, failing: bool = True) -> None:
        """Make a command point answer negatively (ResponseState.FAILURE) or not."""
        with self._lock:
            if failing:
                self._failing.add((common_address, io_address))
            else:
                self._failing.discard((common_address, io_address))

    # -- the recorders

    def requests(self, type_prefix: str = "") -> list[Request]:
        """Every request the master sent (type id >= 45), oldest first, with replies so far."""
        with self._lock:
            return [
                replace(p.request, replies=tuple(p.replies))
                for p in self._requests
                if p.request.type_name.startswith(type_prefix)
            ]

    def commands(self) -> list[Request]:
        """Process commands (45-51, 58-64), selects and deactivations included."""
        return [r for r in self.requests("C_") if 45 <= r.type_id <= 64]

    def clock_syncs(self) -> list[Request]:
        """C_CS_NA_1 requests; `time` is the master's clock as an aware UTC datetime."""
        return self.requests("C_CS_NA_1")

    def clock_sync_callbacks(self) -> list[datetime.datetime]:
        """The times c104's on_clock_sync callback was given, as aware UTC datetimes."""
        with self._lock:
            return list(self._clock_syncs)

    def counter_interrogations(self) -> list[Request]:
        """C_CI_NA_1 requests; see `Request.rqt` and `Request.frz`."""
        return self.requests("C_CI_NA_1")

    def interrogations(self) -> list[Request]:
        """C_IC_NA_1 requests."""
        return self.requests("C_IC_NA_1")

    def read_requests(self) -> list[Request]:
        """C_RD_NA_1 requests."""
        return self.requests("C_RD_NA_1")

    def frames(self) -> list[Frame]:
        """Every APDU received and sent, in order."""
        with self._lock:
            return list(self._frames)

    def sent_asdus(self) -> list[bytes]:
        """The I-frames the station sent, in order (APCI included: the ASDU starts at 6)."""
        return [f.data for f in self.frames() if f.direction == "tx" and f.is_asdu]

    # -- c104 callbacks (c104's threads; the signatures must match c104's exactly)

    def _on_receive_raw(self, server: c104.Server, data: bytes) -> None:
        request = _decode_request(data)
        with self._lock:
            self._frames.append(Frame("rx", bytes(data)))
            if request is not None:
                self._requests.append(_Pending(request))

    def _on_send_raw(self, server: c104.Server, data: bytes) -> None:
        with self._lock:
            self._frames.append(Frame("tx", bytes(data)))
            reply = _decode_request(data)
            if reply is None:
                return
            for pending in reversed(self._requests):
                asked = pending.request
                if (asked.type_name, asked.common_address, asked.io_address) == (
                    reply.type_name,
                    reply.common_address,
                    reply.io_address,
                ):
                    pending.replies.append(Reply(reply.cot, bool(data[8] & 0x40)))
                    break

    def _on_clock_sync(
        self, server: c104.Server, ip: str, date_time: datetime.datetime
    ) -> c104.ResponseState:
        with self._lock:
            self._clock_syncs.append(date_time.astimezone(UTC))
        return self.clock_sync_response

    def _on_command(
        self, point: c104.Point, previous_info: c104.Information, message: c104.IncomingMessage
    ) -> c104.ResponseState:
        ca = message.common_address
        with self._lock:
            if (ca, point.io_address) in self._failing:
                return c104.ResponseState.FAILURE
        feedback_ioa = point.related_io_address
        try:
            old = self.expected(ca, feedback_ioa)
            value = _feedback_value(point, old)
            self.update_point(ca, feedback_ioa, value, transmit=None)
        except Exception:
            self.log.failure("command on {ioa}: feedback failed", ioa=point.io_address)
            return c104.ResponseState.FAILURE
        return c104.ResponseState.SUCCESS


@defer.inlineCallbacks
def connect_c104_client(
    clock,
    host: str,
    port: int,
    init: c104.Init = c104.Init.NONE,
    command_timeout_ms: int = 5000,
    tick_rate_ms: int = 50,
    timeout: float = 5.0,
):
    """Fire with a started c104 master (client, connection) that has done STARTDT.

    Works around c104 2.2.1's client sometimes staying OPEN_MUTED (no STARTDT) by
    calling `unmute()` when it is still muted after half a second.
    """
    client = c104.Client(tick_rate_ms=tick_rate_ms, command_timeout_ms=command_timeout_ms)
    connection = client.add_connection(ip=host, port=port, init=init)
    client.start()
    unmute_at = clock.seconds() + 0.5

    def started():
        if connection.state == c104.ConnectionState.OPEN:
            return True
        if connection.state == c104.ConnectionState.OPEN_MUTED and clock.seconds() > unmute_at:
            C104Station.log.info("c104 client still muted after 0.5 s: unmute()")
            connection.unmute()
        return False

    try:
        yield poll_until(clock, started, timeout)
    except Exception:
        client.stop()
        raise
    return client, connection


def poll_until(clock, predicate, timeout: float = 5.0, interval: float = 0.01) -> defer.Deferred:
    """A Deferred firing with predicate()'s first truthy result; TimeoutError after `timeout`."""

    @defer.inlineCallbacks
    def poll():
        deadline = clock.seconds() + timeout
        while True:
            result = predicate()
            if result:
                return result
            if clock.seconds() > deadline:
                raise TimeoutError(f"{predicate!r} still false after {timeout}s")
            yield task.deferLater(clock, interval, lambda: None)

    return poll()
