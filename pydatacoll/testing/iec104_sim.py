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

import collections
import datetime
import random
import struct
import sys
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import attrs
from twisted.internet import defer
from twisted.internet.interfaces import IListeningPort, IReactorTCP, IReactorTime
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python.failure import Failure

from pydatacoll.protocols.iec104.asdu import (
    TYPES,
    Asdu,
    AsduParams,
    Cause,
    TypeId,
    encode_asdu,
)
from pydatacoll.protocols.iec104.link import LinkParams, LinkState
from pydatacoll.protocols.iec104.station import (
    objects_per_asdu,
)
from pydatacoll.testing.iec104_sim_cli import (  # noqa: F401 (re-exported)
    DEMO_COMMANDS,
    HelpFormatter,
    demo_config,
    parser,
    points_help,
)
from pydatacoll.testing.iec104_sim_config import (  # noqa: F401 (re-exported)
    BITSTRING_TYPES,
    DOUBLE_TYPES,
    FLOAT_TYPES,
    FLOOD_POINTS_PER_FRAME,
    NORMALISED_TYPES,
    SCALED_TYPES,
    SINGLE_TYPES,
    STEP_TYPES,
    Behaviour,
    CommandPoint,
    FloodConfig,
    MonitorPoint,
    PointState,
    ReceivedCommand,
    SimulatorConfig,
    StationConfig,
)
from pydatacoll.testing.iec104_sim_station import (
    Iec104Station,
)


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


def start_simulators(
    reactor: Any,
    port: int,
    count: int,
    interface: str = "127.0.0.1",
    config: SimulatorConfig | None = None,
) -> defer.Deferred[list[tuple[IListeningPort, StationRegistry]]]:
    """Listen on ``count`` consecutive ports from ``port`` (0: ``count`` free ports), each
    with its own `StationRegistry` (a change sent to one port's connections only); fires
    with a (port, registry) per port, in port order. All or nothing: a port that cannot
    be listened on closes the others and fails."""
    results: list[tuple[IListeningPort, StationRegistry]] = []
    for n in range(count):
        d = start_simulator(reactor, port + n if port else 0, interface, config)
        failure: list[Any] = []
        d.addCallbacks(results.append, failure.append)  # start_simulator fires at once
        if failure:
            stopped = [defer.maybeDeferred(lst.stopListening) for lst, _registry in results]
            closed = defer.DeferredList(stopped, consumeErrors=True)
            error: Failure = failure[0]
            return closed.addCallback(_fail_with, error)
    return defer.succeed(results)


def _fail_with(_result: Any, failure: Failure) -> Failure:
    return failure


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

    cli = parser()
    args = cli.parse_args(argv)
    if args.ports < 1 or (args.ports > 1 and not args.port):
        cli.error("--ports N needs N >= 1 and, above 1, a --port other than 0")
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
    if args.ports > 1:
        raise_nofile_limit()
    d = start_simulators(reactor, args.port, args.ports, args.interface, config)

    def started(results: list[tuple[IListeningPort, StationRegistry]]) -> defer.Deferred[None]:
        registries = [registry for _listening, registry in results]
        address: Any = results[0][0].getHost()
        log.info(
            "iec104 simulator listening on {host}:{port} (CA {ca}, {points} points{flood}{ports})",
            host=address.host,
            port=address.port,
            ca=args.ca,
            points=args.points,
            flood=", flood" if flood else "",
            ports=f", {args.ports} ports: {address.port}..{address.port + args.ports - 1}"
            if args.ports > 1
            else "",
        )
        sys.stdout.flush()
        if args.spontaneous_interval > 0 and args.points > 0:
            rng = random.Random(0)

            def change() -> None:
                try:
                    registry = rng.choice(registries)
                    ioa = rng.randint(1, args.points)
                    registry.update(args.ca, ioa, round(rng.uniform(-1000, 1000), 3))
                except Exception:
                    log.failure("spontaneous change failed")

            LoopingCall(change).start(args.spontaneous_interval, now=False)
        return defer.Deferred()  # never fires: runs until SIGINT/SIGTERM

    return d.addCallback(started)


def raise_nofile_limit() -> int:
    """Raise this process's soft limit of open files to its hard limit; the new soft limit."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return soft


if __name__ == "__main__":
    from twisted.internet.task import react

    react(main, (sys.argv[1:],))
