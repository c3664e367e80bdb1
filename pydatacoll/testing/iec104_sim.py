"""An IEC 60870-5-104 controlled station (RTU simulator) built on our own link and codecs.

`StationRegistry` holds the stations (one per common address) with their monitor points
and command points, shared by every connection; `Iec104Station` is the protocol of one
connection (the station end of `Iec104Link`); `start_simulator` listens for tests and
``python -m pydatacoll.testing.iec104_sim`` runs one from the command line.

What a station does:

- station and group interrogation: ACT_CON, the points of the group (COT 20, 21..36)
  grouped by type, several objects per ASDU (SQ=0), ACT_TERM; counters (types 15, 16
  and 37) answer counter interrogation only (COT 37, 38..41), as IEC 60870-5-101 7.4.6
  has them;
- counter interrogation: FRZ 0 (read) and 1 (freeze) send the counters, 1 and 2 advance
  their sequence number, 2 (freeze and reset) and 3 (reset) set them to zero afterwards;
  FRZ 3 sends nothing;
- clock synchronisation (the time is recorded), read (COT 5, or a negative reply with COT
  47 for an unknown IOA), test command, reset process, delay acquisition;
- process commands 45..51 and 58..64, direct or select-before-operate, each command
  point configured to accept, reject (negative ACT_CON) or not answer; an accepted
  execute updates the related monitor point and sends it with COT 11 (return remote),
  then ACT_TERM when the point asks for it;
- M_EI_NA_1 after STARTDT (optional), spontaneous changes (COT 3) on request;
- a flood mode: SQ=1 M_ME_NC_1 frames of 48 points as fast as the acknowledgements of the
  master open the k window.

Every ASDU of the control direction is recorded in a bounded deque (the oldest records
are dropped past ``SimulatorConfig.record_size``; ``StationRegistry.records_dropped``
counts them).
"""

from __future__ import annotations

import argparse
import collections
import datetime
import enum
import random
import struct
import sys
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import attrs
from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IListeningPort, IReactorTCP, IReactorTime
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python.failure import Failure

from pydatacoll.protocols.iec104.asdu import (
    COMMAND_TYPES,
    IEC104,
    TYPES,
    Asdu,
    AsduParams,
    Cause,
    TypeId,
    encode_asdu,
)
from pydatacoll.protocols.iec104.link import Iec104Link, LinkParams, LinkState, SendQueueFull
from pydatacoll.protocols.iec104.station import (
    COUNTER_TYPES,
    GLOBAL_ADDRESS,
    objects_per_asdu,
)

#: Points per flood APDU: 6 header octets + 3 IOA octets + 48 x 5 octets = 249 = MAX_ASDU.
FLOOD_POINTS_PER_FRAME = 48

_SINGLE = frozenset({1, 2, 30})
_DOUBLE = frozenset({3, 4, 31})
_STEP = frozenset({5, 6, 32})
_BITSTRING = frozenset({7, 8, 33})
_NORMALISED = frozenset({9, 10, 34, 21})
_SCALED = frozenset({11, 12, 35})
_FLOAT = frozenset({13, 14, 36})


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


@attrs.define
class _Selection:
    base: int
    value: Any
    at: float


class Station:
    """One station's points (mutable, shared by the connections of a `StationRegistry`)."""

    def __init__(self, config: StationConfig) -> None:
        self.common_address = config.common_address
        self.end_of_init = config.end_of_init
        self.points: dict[int, PointState] = {}
        for p in config.points:
            if p.ioa in self.points:
                raise ValueError(f"CA {self.common_address}: IOA {p.ioa} configured twice")
            self.points[p.ioa] = PointState(
                p.ioa, p.type_id, p.value, p.quality, p.time, p.extra, p.groups, p.counter_group
            )
        self.commands: dict[int, CommandPoint] = {}
        for c in config.commands:
            if c.ioa in self.commands:
                raise ValueError(f"CA {self.common_address}: command IOA {c.ioa} twice")
            if c.monitor_ioa is not None and c.monitor_ioa not in self.points:
                raise ValueError(f"command IOA {c.ioa}: no monitor point {c.monitor_ioa}")
            self.commands[c.ioa] = c
        #: The time of the last clock synchronisation received.
        self.clock_synced: datetime.datetime | None = None
        self.resets = 0


class StationRegistry:
    """The stations of a simulator and their connections (see the module docstring)."""

    log = Logger()

    def __init__(self, clock: IReactorTime, config: SimulatorConfig | None = None) -> None:
        self.clock = clock
        self.config = config or SimulatorConfig()
        self.stations: dict[int, Station] = {}
        for sc in self.config.stations:
            if sc.common_address in self.stations:
                raise ValueError(f"common address {sc.common_address} configured twice")
            self.stations[sc.common_address] = Station(sc)
        for station in self.stations.values():  # fail now, not in the middle of a GI
            for p in station.points.values():
                encode_asdu(self._point_asdu(station, [p], Cause.SPONTANEOUS), self.asdu_params)
        #: Received commands, the newest last; bounded (the oldest are dropped).
        self.records: collections.deque[ReceivedCommand] = collections.deque(
            maxlen=self.config.record_size
        )
        self.records_dropped = 0
        #: Spontaneous ASDUs not sent because a connection's send queue was full.
        self.spontaneous_dropped = 0
        self.connections: list[Iec104Station] = []
        self.flood_frames_sent = 0
        self._flood_frames = self._build_flood() if self.config.flood else []

    @property
    def asdu_params(self) -> AsduParams:
        """The ASDU field sizes of every connection."""
        return self.config.asdu_params

    # --- public API ------------------------------------------------------------------

    def point(self, common_address: int, ioa: int) -> PointState:
        """The current state of a monitor point (KeyError if there is none)."""
        return self.stations[common_address].points[ioa]

    def update(
        self,
        common_address: int,
        ioa: int,
        value: Any,
        quality: int | None = None,
        time: datetime.datetime | None = None,
        extra: Any = None,
        cause: int = Cause.SPONTANEOUS,
    ) -> Asdu:
        """Change a monitor point and send it to every started connection with ``cause``."""
        station = self.stations[common_address]
        point = station.points[ioa]
        new = attrs.evolve(
            point,
            value=value,
            quality=point.quality if quality is None else quality,
            time=time,
            extra=point.extra if extra is None else extra,
        )
        asdu = self._point_asdu(station, [new], cause)
        data = encode_asdu(asdu, self.asdu_params)  # refuse a bad value before storing it
        point.value, point.quality, point.time, point.extra = (
            new.value,
            new.quality,
            time,
            new.extra,
        )
        self.broadcast(data)
        return asdu

    def send_end_of_init(self, common_address: int, coi: int = 0) -> None:
        """Send M_EI_NA_1 (a station restart) to every started connection."""
        self.broadcast(encode_asdu(self._end_of_init(common_address, coi), self.asdu_params))

    def set_behaviour(self, common_address: int, ioa: int, **changes: Any) -> CommandPoint:
        """Change a command point's configuration (behaviour, terminate, ...)."""
        station = self.stations[common_address]
        station.commands[ioa] = attrs.evolve(station.commands[ioa], **changes)
        return station.commands[ioa]

    def received(
        self, common_address: int | None = None, type_id: int | None = None
    ) -> list[ReceivedCommand]:
        """The recorded commands, optionally of one station and one type."""
        return [
            r
            for r in self.records
            if (common_address is None or r.common_address == common_address)
            and (type_id is None or r.type_id == type_id)
        ]

    def broadcast(self, data: bytes) -> None:
        """Send an encoded ASDU to every started connection (dropped where queues are full)."""
        for conn in list(self.connections):
            if conn.state is LinkState.STARTED:
                conn.send_safely(data)

    def build_protocol(self) -> Iec104Station:
        """A protocol for one new connection."""
        return Iec104Station(self)

    # --- internals -------------------------------------------------------------------

    def _record(self, record: ReceivedCommand) -> None:
        if len(self.records) == self.records.maxlen:
            self.records_dropped += 1
        self.records.append(record)

    def _now(self) -> datetime.datetime:
        return datetime.datetime.fromtimestamp(self.clock.seconds(), self.asdu_params.tz)

    def _point_asdu(self, station: Station, points: Sequence[PointState], cause: int) -> Asdu:
        spec = TYPES[points[0].type_id]
        now = self._now() if spec.time else None
        return Asdu(
            points[0].type_id,
            cause,
            station.common_address,
            [p.ioa for p in points],
            [p.value for p in points],
            [p.quality for p in points],
            [p.time or now for p in points] if spec.time else None,
            [p.extra for p in points] if spec.has_extra else None,
        )

    def _end_of_init(self, common_address: int, coi: int) -> Asdu:
        return Asdu(
            TypeId.M_EI_NA_1, Cause.INITIALIZED, common_address, [0], [coi], [0], None, [False]
        )

    def _grouped(
        self, station: Station, points: Iterable[PointState], cause: int
    ) -> Iterator[Asdu]:
        """ASDUs of ``points``, one type per ASDU, as many objects as fit (SQ=0)."""
        by_type: dict[int, list[PointState]] = {}
        for p in sorted(points, key=lambda p: (p.type_id, p.ioa)):
            by_type.setdefault(p.type_id, []).append(p)
        for type_id, members in by_type.items():
            per_asdu = objects_per_asdu(type_id, self.asdu_params)
            for i in range(0, len(members), per_asdu):
                yield self._point_asdu(station, members[i : i + per_asdu], cause)

    def _build_flood(self) -> list[bytes]:
        """Pre-encoded flood ASDUs, cycled: the simulator must not be the bottleneck."""
        flood = self.config.flood
        assert flood is not None
        n = FLOOD_POINTS_PER_FRAME
        chunks = flood.chunks
        variants = max(2, min(64, 8192 // chunks))
        params = self.asdu_params
        head = struct.Struct("<BBBB").pack  # type, VSQ, COT, OA; then CA and first IOA
        body = struct.Struct("<" + "fB" * n)
        frames = []
        for v in range(variants):
            for c in range(chunks):
                first = 1 + c * n
                fields: list[Any] = []
                for ioa in range(first, first + n):
                    fields += (ioa + v * 0.25, 0)
                frames.append(
                    head(TypeId.M_ME_NC_1, 0x80 | n, Cause.PERIODIC, 0)[: 2 + params.cot_size]
                    + flood.common_address.to_bytes(params.ca_size, "little")
                    + first.to_bytes(params.ioa_size, "little")
                    + body.pack(*fields)
                )
        return frames


class Iec104Station(Iec104Link):
    """The controlled station's end of one connection (see the module docstring)."""

    log = Logger()

    def __init__(self, registry: StationRegistry) -> None:
        config = registry.config
        super().__init__(registry.clock, config.link, config.asdu_params, name="iec104 sim")
        self.registry = registry
        self._selected: dict[tuple[int, int], _Selection] = {}
        # Replies that wait for the k window; bounded by config.max_jobs.
        self._jobs: collections.deque[Iterator[Asdu]] = collections.deque()
        self._flooding = False
        self._flood_index = 0
        self._flood_started = 0.0
        self._flood_call: IDelayedCall | None = None
        #: Flood frames sent on this connection.
        self.flood_frames = 0
        self._closed: list[defer.Deferred[None]] = []

    def when_closed(self) -> defer.Deferred[None]:
        """A Deferred that fires once this connection is gone."""
        if self.state is LinkState.CLOSED:
            return defer.succeed(None)
        d: defer.Deferred[None] = defer.Deferred()
        self._closed.append(d)
        return d

    # --- link events -----------------------------------------------------------------

    def connectionMade(self) -> None:
        super().connectionMade()
        self.registry.connections.append(self)

    def link_lost(self, reason: Failure) -> None:
        if self in self.registry.connections:
            self.registry.connections.remove(self)
        self._jobs.clear()
        self._flooding = False
        if self._flood_call is not None and self._flood_call.active():
            self._flood_call.cancel()
        waiting, self._closed = self._closed, []
        for d in waiting:
            d.callback(None)

    def data_transfer_started(self) -> None:
        for station in self.registry.stations.values():
            if station.end_of_init is not None:
                self.send_safely(
                    self.registry._end_of_init(station.common_address, station.end_of_init)
                )
        flood = self.registry.config.flood
        if flood is not None and self._flood_call is None:
            self._flood_call = self.clock.callLater(flood.delay, self._start_flood)
        self._pump()

    def _start_flood(self) -> None:
        if self.state is not LinkState.STARTED:
            return
        self._flooding = True
        self._flood_started = self.clock.seconds()
        self.log.info("{name}: flood started", name=self.name)
        self._pump()

    def window_open(self) -> None:
        self._pump()

    # --- sending ---------------------------------------------------------------------

    def send_safely(self, asdu: Asdu | bytes) -> bool:
        """`send_asdu`, logging (not raising) when the send queue is full."""
        try:
            self.send_asdu(asdu)
        except SendQueueFull:
            self.registry.spontaneous_dropped += 1
            self.log.warn("{name}: send queue full, an ASDU dropped", name=self.name)
            return False
        return True

    def _reply(self, asdu: Asdu, cause: int, negative: bool = False) -> None:
        self.send_safely(attrs.evolve(asdu, cause=cause, negative=negative))

    def _add_job(self, job: Iterator[Asdu]) -> bool:
        if len(self._jobs) >= self.registry.config.max_jobs:
            return False
        self._jobs.append(job)
        self._pump()
        return True

    def _pump(self) -> None:
        """Send queued replies, then flood frames, while the k window has room."""
        jobs = self._jobs
        free = self.window_free()
        while jobs and free > 0:
            asdu = next(jobs[0], None)
            if asdu is None:
                jobs.popleft()
                continue
            self.send_asdu(asdu)
            free -= 1
        if self._flooding and free > 0 and not jobs:
            self._flood(free)

    def _flood(self, free: int) -> None:
        flood = self.registry.config.flood
        assert flood is not None
        done = False
        if flood.duration and self.clock.seconds() - self._flood_started >= flood.duration:
            free, done = 0, True
        if flood.frames and flood.frames - self.flood_frames <= free:
            free, done = flood.frames - self.flood_frames, True
        frames = self.registry._flood_frames
        index = self._flood_index
        send = self.send_asdu
        for _ in range(free):
            send(frames[index])
            index += 1
            if index == len(frames):
                index = 0
        self._flood_index = index
        self.flood_frames += free
        self.registry.flood_frames_sent += free
        if done:
            self._flooding = False
            self.log.info(
                "{name}: flood done: {frames} frames in {seconds:.3f} s",
                name=self.name,
                frames=self.flood_frames,
                seconds=self.clock.seconds() - self._flood_started,
            )

    # --- receiving -------------------------------------------------------------------

    def asdu_received(self, asdu: Asdu) -> None:
        type_id = asdu.type_id
        if type_id in COMMAND_TYPES:
            answer = self._process_command(asdu)
        elif type_id >= 100:
            answer = self._system_command(asdu)
        else:
            self.log.info("{name}: {asdu} ignored", name=self.name, asdu=asdu.describe())
            return
        qualifier = asdu.qualities[0] if asdu.qualities else 0
        self.registry._record(
            ReceivedCommand(
                self.clock.seconds(),
                asdu.common_address,
                type_id,
                asdu.cause,
                asdu.ioas[0] if asdu.ioas else 0,
                asdu.values[0] if asdu.values else None,
                qualifier,
                asdu.select,
                asdu.times[0] if asdu.times else None,
                answer,
                asdu,
            )
        )

    def _stations(self, common_address: int) -> list[Station]:
        stations = self.registry.stations
        if common_address == GLOBAL_ADDRESS:
            return list(stations.values())
        return [stations[common_address]] if common_address in stations else []

    def _system_command(self, asdu: Asdu) -> str:
        type_id = asdu.type_id
        ca = asdu.common_address
        stations = self._stations(ca)
        if type_id == TypeId.C_RD_NA_1:
            return self._read(asdu, stations)
        if not stations:
            self._reply(asdu, Cause.UNKNOWN_COMMON_ADDRESS, negative=True)
            return "negative"
        if type_id == TypeId.C_CD_NA_1 and asdu.cause == Cause.SPONTANEOUS:
            return "ignored"  # the transmission delay of C_CD_NA_1 is not answered
        if asdu.cause != Cause.ACTIVATION:
            self._reply(asdu, Cause.UNKNOWN_CAUSE, negative=True)
            return "negative"
        if type_id == TypeId.C_IC_NA_1:
            return self._interrogation(asdu, stations)
        if type_id == TypeId.C_CI_NA_1:
            return self._counter_interrogation(asdu, stations)
        if type_id == TypeId.C_CS_NA_1:
            for station in stations:
                station.clock_synced = asdu.times[0] if asdu.times else None
        elif type_id == TypeId.C_RP_NA_1:
            for station in stations:
                station.resets += 1
        elif type_id not in (TypeId.C_TS_NA_1, TypeId.C_TS_TA_1, TypeId.C_CD_NA_1):
            self._reply(asdu, Cause.UNKNOWN_TYPE, negative=True)
            return "negative"
        for station in stations:
            self._reply(
                attrs.evolve(asdu, common_address=station.common_address), Cause.ACTIVATION_CON
            )
        return "confirmed"

    def _read(self, asdu: Asdu, stations: list[Station]) -> str:
        if len(stations) != 1:
            self._reply(asdu, Cause.UNKNOWN_COMMON_ADDRESS, negative=True)
            return "negative"
        station = stations[0]
        point = station.points.get(asdu.ioas[0]) if asdu.ioas else None
        if point is None:
            self._reply(asdu, Cause.UNKNOWN_IOA, negative=True)
            return "negative"
        self.send_safely(self.registry._point_asdu(station, [point], Cause.REQUEST))
        return "confirmed"

    def _interrogation(self, asdu: Asdu, stations: list[Station]) -> str:
        qoi = asdu.values[0]
        if not 20 <= qoi <= 36:
            self._reply(asdu, Cause.ACTIVATION_CON, negative=True)
            return "negative"
        group = qoi - 20

        def members(station: Station) -> list[PointState]:
            return [
                p
                for p in station.points.values()
                if p.type_id not in COUNTER_TYPES and (group == 0 or group in p.groups)
            ]

        return self._interrogation_job(asdu, stations, members, qoi)

    def _counter_interrogation(self, asdu: Asdu, stations: list[Station]) -> str:
        qcc = asdu.values[0]
        rqt, frz = qcc & 0x3F, qcc >> 6
        if not 1 <= rqt <= 5:
            self._reply(asdu, Cause.ACTIVATION_CON, negative=True)
            return "negative"

        def members(station: Station) -> list[PointState]:
            counters = [
                p
                for p in station.points.values()
                if p.type_id in COUNTER_TYPES and (rqt == 5 or p.counter_group == rqt)
            ]
            if frz in (1, 2):  # freeze: a new sequence number
                for p in counters:
                    p.extra = ((p.extra or 0) + 1) & 0x1F
            return counters

        def after(station: Station) -> None:
            if frz in (2, 3):
                for p in station.points.values():
                    if p.type_id in COUNTER_TYPES and (rqt == 5 or p.counter_group == rqt):
                        p.value = 0

        return self._interrogation_job(asdu, stations, members, 37 + rqt % 5, after, frz == 3)

    def _interrogation_job(
        self,
        asdu: Asdu,
        stations: list[Station],
        members: Any,
        cause: int,
        after: Any = None,
        silent: bool = False,
    ) -> str:
        registry = self.registry

        def job() -> Iterator[Asdu]:
            for station in stations:
                request = attrs.evolve(asdu, common_address=station.common_address)
                yield attrs.evolve(request, cause=Cause.ACTIVATION_CON)
                points = members(station)
                if not silent:
                    yield from registry._grouped(station, points, cause)
                if after is not None:
                    after(station)
                yield attrs.evolve(request, cause=Cause.ACTIVATION_TERM)

        if not self._add_job(job()):
            self._reply(asdu, Cause.ACTIVATION_CON, negative=True)
            return "negative"
        return "terminated"

    def _process_command(self, asdu: Asdu) -> str:
        ca = asdu.common_address
        station = self.registry.stations.get(ca)
        if station is None:
            self._reply(asdu, Cause.UNKNOWN_COMMON_ADDRESS, negative=True)
            return "negative"
        if len(asdu.ioas) != 1:
            self._reply(asdu, Cause.UNKNOWN_CAUSE, negative=True)
            return "negative"
        ioa = asdu.ioas[0]
        point = station.commands.get(ioa)
        cause = asdu.cause
        con = Cause.DEACTIVATION_CON if cause == Cause.DEACTIVATION else Cause.ACTIVATION_CON
        if point is None:
            self._reply(asdu, Cause.UNKNOWN_IOA, negative=True)
            return "negative"
        base = asdu.type_id - 13 if asdu.type_id >= 58 else asdu.type_id
        if base != point.type_id:
            self._reply(asdu, Cause.UNKNOWN_TYPE, negative=True)
            return "negative"
        if cause not in (Cause.ACTIVATION, Cause.DEACTIVATION):
            self._reply(asdu, Cause.UNKNOWN_CAUSE, negative=True)
            return "negative"
        key = (ca, ioa)
        if cause == Cause.DEACTIVATION:
            selected = self._selected.pop(key, None) is not None
            self._reply(asdu, con, negative=not selected)
            return "confirmed" if selected else "negative"
        if point.behaviour is Behaviour.SILENT:
            return "silent"
        if point.behaviour is Behaviour.REJECT:
            self._reply(asdu, con, negative=True)
            return "negative"
        value = asdu.values[0]
        if asdu.select:
            self._selected[key] = _Selection(base, value, self.clock.seconds())
            self._reply(asdu, con)
            return "confirmed"
        selection = self._selected.pop(key, None)  # an execute ends any selection
        if point.select_before_operate:
            timeout = self.registry.config.select_timeout
            if (
                selection is None
                or selection.base != base
                or selection.value != value
                or self.clock.seconds() - selection.at > timeout
            ):
                self._reply(asdu, con, negative=True)
                return "negative"
        self._reply(asdu, con)
        if point.monitor_ioa is not None:
            self._apply(station, point, asdu)
        if point.terminate:
            self._reply(asdu, Cause.ACTIVATION_TERM)
            return "terminated"
        return "confirmed"

    def _apply(self, station: Station, command: CommandPoint, asdu: Asdu) -> None:
        """Update the command's monitor point and send it with COT 11 (return remote)."""
        assert command.monitor_ioa is not None
        point = station.points[command.monitor_ioa]
        value = asdu.values[0]
        t = point.type_id
        if t in _SINGLE:
            new: Any = bool(value)
        elif t in _DOUBLE:
            new = int(value) & 3
        elif t in _STEP:
            if command.type_id == TypeId.C_RC_NA_1:  # 1 = next step lower, 2 = higher
                new = max(-64, min(63, point.value + (1 if value == 2 else -1)))
            else:
                new = int(value)
        elif t in _NORMALISED:
            new = max(-1.0, min(32767 / 32768, float(value)))
        elif t in _SCALED:
            new = int(round(value))
        elif t in _FLOAT:
            new = float(value)
        elif t in _BITSTRING:
            new = int(value) & 0xFFFFFFFF
        else:
            new = value
        try:
            self.registry.update(
                station.common_address, point.ioa, new, time=None, cause=Cause.RETURN_REMOTE
            )
        except ValueError as exc:
            self.log.warn(
                "{name}: IOA {ioa} not updated: {error}", name=self.name, ioa=point.ioa, error=exc
            )


class SimulatorFactory(Factory):
    """Builds an `Iec104Station` per connection, all sharing one `StationRegistry`."""

    def __init__(self, registry: StationRegistry) -> None:
        self.registry = registry

    def buildProtocol(self, addr: Any) -> Iec104Station:
        return self.registry.build_protocol()


def start_simulator(
    reactor: Any,
    port: int = 0,
    interface: str = "127.0.0.1",
    config: SimulatorConfig | None = None,
) -> defer.Deferred[tuple[IListeningPort, StationRegistry]]:
    """Listen on ``interface:port`` (0 = a free port); fires with (port, registry)."""
    registry = StationRegistry(reactor, config)
    tcp: IReactorTCP = reactor
    try:
        factory: Any = SimulatorFactory(registry)
        listening = tcp.listenTCP(port, factory, interface=interface)
    except Exception:
        return defer.fail()
    return defer.succeed((listening, registry))


# --- command line ------------------------------------------------------------------------

#: Demo command points of the command line station: (command IOA, type, monitor IOA, type).
_DEMO_COMMANDS = (
    (20001, TypeId.C_SC_NA_1, 10001, TypeId.M_SP_NA_1),
    (20002, TypeId.C_DC_NA_1, 10002, TypeId.M_DP_NA_1),
    (20003, TypeId.C_SE_NC_1, 10003, TypeId.M_ME_NC_1),
)


def demo_config(
    common_address: int = 1,
    points: int = 100,
    flood: FloodConfig | None = None,
    link: LinkParams | None = None,
    end_of_init: int | None = None,
) -> SimulatorConfig:
    """The command line station: float points at IOAs 1..points, three demo commands."""
    monitor = [
        MonitorPoint(ioa, TypeId.M_ME_NC_1, float(ioa), groups=(1,)) for ioa in range(1, points + 1)
    ]
    commands = []
    for cmd_ioa, cmd_type, mon_ioa, mon_type in _DEMO_COMMANDS:
        monitor.append(MonitorPoint(mon_ioa, mon_type, 1 if mon_type == TypeId.M_DP_NA_1 else 0))
        commands.append(CommandPoint(cmd_ioa, cmd_type, monitor_ioa=mon_ioa))
    station = StationConfig(common_address, tuple(monitor), tuple(commands), end_of_init)
    return SimulatorConfig((station,), link or LinkParams(), flood=flood)


class _HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Keeps the point table's layout and shows every option's default."""


def points_help() -> str:
    """The points of the command line station, for ``--help`` (and README)."""
    lines = [
        "points of the station (common address --ca):",
        "  IOA 1..N (--points)  M_ME_NC_1 (13) short float, value = IOA, group 1",
    ]
    for cmd_ioa, cmd_type, mon_ioa, mon_type in _DEMO_COMMANDS:
        lines.append(
            f"  IOA {cmd_ioa}  {cmd_type.name} ({int(cmd_type)}, or {int(cmd_type) + 13} with "
            f"time tag) command; an accepted execute sets IOA {mon_ioa} {mon_type.name} "
            f"({int(mon_type)}) and sends it (COT 11)"
        )
    lines.append(
        "commands are direct or select-before-operate, confirmed (ACT_CON) then\n"
        "terminated (ACT_TERM); a command to another IOA is refused (COT 47)"
    )
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pydatacoll.testing.iec104_sim",
        description="An IEC 60870-5-104 controlled station (RTU simulator).",
        epilog=points_help(),
        formatter_class=_HelpFormatter,
    )
    parser.add_argument("--interface", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=2404, help="TCP port (0 = a free one)")
    parser.add_argument("--ca", type=int, default=1, help="common address")
    parser.add_argument("--points", type=int, default=100, help="float points at IOA 1..N")
    parser.add_argument("--flood", action="store_true", help="flood SQ=1 float frames")
    parser.add_argument("--flood-frames", type=int, default=0, help="stop after N (0: never)")
    parser.add_argument("--flood-duration", type=float, default=0.0, help="stop after S s")
    parser.add_argument("--flood-delay", type=float, default=0.0, help="start S s after STARTDT")
    parser.add_argument(
        "--spontaneous-interval", type=float, default=0.0, help="change a point every S s"
    )
    parser.add_argument("--end-of-init", type=int, default=None, help="send M_EI_NA_1, COI")
    parser.add_argument("-k", type=int, default=12, help="k: unacknowledged I-frames")
    parser.add_argument("-w", type=int, default=8, help="w: I-frames before an S-frame")
    parser.add_argument("--debug", action="store_true", help="log at debug level")
    return parser


def main(reactor: Any, argv: Sequence[str] | None = None) -> defer.Deferred[None]:
    """Run the simulator until the process is stopped (for `twisted.internet.task.react`)."""
    from twisted.internet.task import LoopingCall
    from twisted.logger import (
        FilteringLogObserver,
        LogLevel,
        LogLevelFilterPredicate,
        globalLogBeginner,
        textFileLogObserver,
    )

    args = _parser().parse_args(argv)
    level = LogLevel.debug if args.debug else LogLevel.info
    globalLogBeginner.beginLoggingTo(
        [
            FilteringLogObserver(
                textFileLogObserver(sys.stdout),
                [LogLevelFilterPredicate(defaultLogLevel=level)],
            )
        ],
        redirectStandardIO=False,
    )
    log = Logger(namespace="iec104_sim")
    flood = (
        FloodConfig(args.ca, args.points, args.flood_frames, args.flood_duration, args.flood_delay)
        if args.flood
        else None
    )
    config = demo_config(
        args.ca, args.points, flood, LinkParams(k=args.k, w=args.w), args.end_of_init
    )
    d = start_simulator(reactor, args.port, args.interface, config)

    def started(result: tuple[IListeningPort, StationRegistry]) -> defer.Deferred[None]:
        listening, registry = result
        address: Any = listening.getHost()
        log.info(
            "iec104 simulator listening on {host}:{port} (CA {ca}, {points} points{flood})",
            host=address.host,
            port=address.port,
            ca=args.ca,
            points=args.points,
            flood=", flood" if flood else "",
        )
        sys.stdout.flush()
        if args.spontaneous_interval > 0 and args.points > 0:
            rng = random.Random(0)

            def change() -> None:
                try:
                    ioa = rng.randint(1, args.points)
                    registry.update(args.ca, ioa, round(rng.uniform(-1000, 1000), 3))
                except Exception:
                    log.failure("spontaneous change failed")

            LoopingCall(change).start(args.spontaneous_interval, now=False)
        return defer.Deferred()  # never fires: runs until SIGINT/SIGTERM

    return d.addCallback(started)


if __name__ == "__main__":
    from twisted.internet.task import react

    react(main, (sys.argv[1:],))
