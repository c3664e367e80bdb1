"""The protocol of one connection to the IEC 104 RTU simulator: `Iec104Station`, the
controlled station's end of `Iec104Link` over a shared `iec104_sim.StationRegistry`
(see `iec104_sim` for what a station does)."""

from __future__ import annotations

import collections
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import attrs
from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from pydatacoll.protocols.iec104.asdu import (
    COMMAND_TYPES,
    Asdu,
    Cause,
    TypeId,
)
from pydatacoll.protocols.iec104.link import Iec104Link, LinkState, SendQueueFull
from pydatacoll.protocols.iec104.station import (
    COUNTER_TYPES,
    GLOBAL_ADDRESS,
)
from pydatacoll.testing.iec104_sim_config import (
    BITSTRING_TYPES,
    DOUBLE_TYPES,
    FLOAT_TYPES,
    NORMALISED_TYPES,
    SCALED_TYPES,
    SINGLE_TYPES,
    STEP_TYPES,
    Behaviour,
    CommandPoint,
    PointState,
    ReceivedCommand,
)

if TYPE_CHECKING:
    from pydatacoll.testing.iec104_sim import Station, StationRegistry


@attrs.define
class _Selection:
    base: int
    value: Any
    at: float


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
        if t in SINGLE_TYPES:
            new: Any = bool(value)
        elif t in DOUBLE_TYPES:
            new = int(value) & 3
        elif t in STEP_TYPES:
            if command.type_id == TypeId.C_RC_NA_1:  # 1 = next step lower, 2 = higher
                new = max(-64, min(63, point.value + (1 if value == 2 else -1)))
            else:
                new = int(value)
        elif t in NORMALISED_TYPES:
            new = max(-1.0, min(32767 / 32768, float(value)))
        elif t in SCALED_TYPES:
            new = int(round(value))
        elif t in FLOAT_TYPES:
            new = float(value)
        elif t in BITSTRING_TYPES:
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
