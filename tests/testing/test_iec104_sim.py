"""Our `Iec104Master` against our RTU simulator over real loopback TCP."""

from __future__ import annotations

import datetime
from collections.abc import Callable
from typing import Any

from twisted.internet import defer, reactor, task
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.error import CannotListenError
from twisted.internet.protocol import Factory
from twisted.trial import unittest

from pydatacoll.protocols.iec104.asdu import TYPES, Asdu, Cause, Quality, TypeId
from pydatacoll.protocols.iec104.client import (
    CommandResult,
    Iec104Master,
    Outcome,
    StationParams,
)
from pydatacoll.protocols.iec104.link import LinkParams, LinkState
from pydatacoll.testing.iec104_sim import (
    Behaviour,
    CommandPoint,
    FloodConfig,
    Iec104Station,
    MonitorPoint,
    SimulatorConfig,
    StationConfig,
    StationRegistry,
    demo_config,
    start_simulator,
    start_simulators,
)

UTC = datetime.UTC
CA = 1
#: CP56Time2a tags are absolute; CP24Time2a ones must be near "now" (the master's clock).
T56 = datetime.datetime(2026, 3, 4, 5, 6, 7, 89000, tzinfo=UTC)


def _t24() -> datetime.datetime:
    now = datetime.datetime.now(UTC) - datetime.timedelta(minutes=1)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


def monitor_points(t24: datetime.datetime) -> list[MonitorPoint]:
    """One point of every monitor type, with distinct values, qualities and times.

    Each point's IOA is 100 + its type id.
    """
    iv_nt = int(Quality.IV | Quality.NT)
    qds = int(Quality.OV | Quality.SB)
    qdp = int(Quality.EI | Quality.BL)
    counter_q = int(Quality.IV | Quality.CY | Quality.CA)
    families: list[tuple[tuple[int, ...], Any, int, Any]] = [
        ((1, 2, 30), True, iv_nt, None),
        ((3, 4, 31), 2, int(Quality.BL), None),
        ((5, 6, 32), -5, int(Quality.TRANSIENT | Quality.OV), None),
        ((7, 8, 33), 0xDEADBEEF, qds, None),
        ((9, 10, 34), 0.5, qds, None),
        ((11, 12, 35), -1234, int(Quality.IV), None),
        ((13, 14, 36), 3.25, qds, None),
        ((15, 16, 37), 123456, counter_q, 3),
        ((17, 38), 2, qdp, 1500),
        ((18, 39), 0x21, qdp, 250),
        ((19, 40), 0x0F, qdp, 65000),
        ((20,), 0xA5A5, int(Quality.NT), 0x0F0F),
        ((21,), 0.25, 0, None),
    ]
    points = []
    for types, value, quality, extra in families:
        for type_id in types:
            spec = TYPES[type_id]
            time = None if not spec.time else (t24 if spec.time == 3 else T56)
            q = quality | (int(Quality.TIME_INVALID) if type_id == 30 else 0)
            groups = (2,) if type_id in (1, 13, 36) else ()
            points.append(MonitorPoint(100 + type_id, type_id, value, q, time, extra, groups))
    # Enough floats for several ASDUs of M_ME_NC_1.
    points += [MonitorPoint(1000 + i, 13, i * 0.5) for i in range(40)]
    return points


COMMANDS = (
    # command IOA, type, related monitor IOA
    CommandPoint(201, 45, monitor_ioa=101),
    CommandPoint(202, 46, monitor_ioa=103),
    CommandPoint(203, 47, monitor_ioa=105),
    CommandPoint(204, 48, monitor_ioa=109),
    CommandPoint(205, 49, monitor_ioa=111),
    CommandPoint(206, 50, monitor_ioa=113),
    CommandPoint(207, 51, monitor_ioa=107),
    CommandPoint(210, 45, Behaviour.REJECT),
    CommandPoint(211, 45, Behaviour.SILENT),
    CommandPoint(212, 46, select_before_operate=True, monitor_ioa=103),
)


class Harness:
    """A simulator and masters connected to it; everything closed by `close`."""

    def __init__(self, test: unittest.TestCase) -> None:
        self.test = test
        self.port: Any = None
        self.registry: StationRegistry
        self.received: list[Asdu] = []
        self.events: list[str] = []
        self._waiters: list[tuple[Callable[[], bool], defer.Deferred[None]]] = []

    @defer.inlineCallbacks
    def start(self, config: SimulatorConfig) -> Any:
        self.port, self.registry = yield start_simulator(reactor, 0, "127.0.0.1", config)
        self.test.addCleanup(self.close)

    @defer.inlineCallbacks
    def connect(self, link: LinkParams | None = None, **station: Any) -> Any:
        """A master connected and started; GI and clock sync on start are off by default."""
        station.setdefault("interrogate_on_start", False)
        station.setdefault("clock_sync_on_start", False)
        started: defer.Deferred[None] = defer.Deferred()

        def on_event(kind: str, data: dict[str, Any]) -> None:
            self.events.append(kind)
            if kind == "started" and not started.called:
                started.callback(None)
            self._check()

        def on_data(asdu: Asdu) -> None:
            self.received.append(asdu)
            self._check()

        master = Iec104Master(
            reactor, link, StationParams(**station), on_data=on_data, on_event=on_event
        )
        self.master = master
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", self.port.getHost().port)
        yield connectProtocol(endpoint, master)
        yield started
        return master

    def until(self, predicate: Callable[[], bool], timeout: float = 5.0) -> defer.Deferred[None]:
        """Fires when ``predicate`` holds after a received ASDU or event (or at once)."""
        d: defer.Deferred[None] = defer.Deferred()
        if predicate():
            d.callback(None)
            return d
        self._waiters.append((predicate, d))
        return d.addTimeout(timeout, reactor)

    @defer.inlineCallbacks
    def poll(self, predicate: Callable[[], bool], timeout: float = 5.0) -> Any:
        """Fires when ``predicate`` holds, checked every 10 ms on the reactor."""
        deadline = reactor.seconds() + timeout
        while not predicate():
            if reactor.seconds() > deadline:
                raise defer.TimeoutError(timeout, "poll")
            yield task.deferLater(reactor, 0.01, lambda: None)

    def _check(self) -> None:
        for item in list(self._waiters):
            predicate, d = item
            if not d.called and predicate():
                self._waiters.remove(item)
                d.callback(None)

    def objects(self, cause: int) -> dict[int, tuple[Any, ...]]:
        """Received objects with ``cause``: IOA -> (type, value, quality, time, extra)."""
        found = {}
        for asdu in self.received:
            if asdu.cause == cause:
                for o in asdu.objects():
                    found[o.ioa] = (asdu.type_id, o.value, o.quality, o.time, o.extra)
        return found

    @defer.inlineCallbacks
    def close(self) -> Any:
        stations: list[Iec104Station] = list(self.registry.connections)
        closed = [c.when_closed() for c in stations]
        for conn in stations:
            conn.transport.loseConnection()
        yield defer.DeferredList(closed)
        yield self.port.stopListening()


def full_config(**changes: Any) -> SimulatorConfig:
    station = StationConfig(CA, tuple(monitor_points(_t24())), COMMANDS)
    return SimulatorConfig((station,), **changes)


def expected(points: list[MonitorPoint]) -> dict[int, tuple[Any, ...]]:
    return {
        p.ioa: (
            p.type_id,
            p.value,
            p.quality,
            p.time,
            p.extra if TYPES[p.type_id].has_extra else None,
        )
        for p in points
    }


class InterrogationTests(unittest.TestCase):
    """Station, group and counter interrogation, read, clock sync, spontaneous changes."""

    @defer.inlineCallbacks
    def setUp(self) -> Any:
        self.h = Harness(self)
        yield self.h.start(full_config())
        self.points = list(self.h.registry.config.stations[0].points)
        self.master = yield self.h.connect()

    @defer.inlineCallbacks
    def test_station_interrogation(self) -> Any:
        """Every point but the counters comes back exactly, grouped by type, SQ=0."""
        result = yield self.master.interrogate(CA)
        self.assertEqual(result.outcome, Outcome.TERMINATED)
        want = expected([p for p in self.points if p.type_id not in (15, 16, 37)])
        got = self.h.objects(Cause.INTERROGATED_BY_STATION)
        self.assertEqual(got, want)
        self.assertEqual(result.objects, len(want))
        replies = [a for a in self.h.received if a.cause == 20]
        self.assertFalse(any(a.sequence for a in replies))
        self.assertEqual(len({a.type_id for a in replies}), len({w[0] for w in want.values()}))
        self.assertIn(30, [len(a.ioas) for a in replies if a.type_id == 13])  # 30 per ASDU

    @defer.inlineCallbacks
    def test_group_interrogation(self) -> Any:
        """Group 2 answers only its points, with COT 22."""
        result = yield self.master.interrogate(CA, 2)
        self.assertEqual(result.outcome, Outcome.TERMINATED)
        got = self.h.objects(22)
        self.assertEqual(got, expected([p for p in self.points if 2 in p.groups]))
        self.assertEqual(sorted(got), [101, 113, 136])
        self.assertEqual(self.h.objects(20), {})

    @defer.inlineCallbacks
    def test_interrogation_of_an_unknown_station(self) -> Any:
        """An unknown common address is refused with COT 46."""
        result = yield self.master.interrogate(7)
        self.assertEqual((result.outcome, result.cause), (Outcome.NEGATIVE, 46))

    @defer.inlineCallbacks
    def test_counter_interrogation(self) -> Any:
        """General (COT 37) and group (COT 38) requests; freeze-and-reset zeroes them."""
        counters = expected([p for p in self.points if p.type_id in (15, 16, 37)])
        result = yield self.master.counter_interrogate(CA)
        self.assertEqual(result.outcome, Outcome.TERMINATED)
        self.assertEqual(self.h.objects(37), counters)
        self.h.registry.point(CA, 115).counter_group = 1
        result = yield self.master.counter_interrogate(CA, request=1)
        self.assertEqual(result.outcome, Outcome.TERMINATED)
        self.assertEqual(sorted(self.h.objects(38)), [115])
        del self.h.received[:]
        result = yield self.master.counter_interrogate(CA, request=5, freeze=2)
        self.assertEqual(result.outcome, Outcome.TERMINATED)
        frozen = self.h.objects(37)
        self.assertEqual(frozen[115][1], 123456)
        self.assertEqual(frozen[115][4], 4)  # the sequence number advanced with the freeze
        self.assertEqual(self.h.registry.point(CA, 115).value, 0)
        records = self.h.registry.received(CA, TypeId.C_CI_NA_1)
        self.assertEqual([r.value for r in records], [5, 1, 5 | 2 << 6])

    @defer.inlineCallbacks
    def test_clock_sync(self) -> Any:
        """The simulator confirms and records the time."""
        when = datetime.datetime(2026, 5, 6, 7, 8, 9, 123000, tzinfo=UTC)
        result = yield self.master.clock_sync(CA, when)
        self.assertEqual(result.outcome, Outcome.CONFIRMED)
        self.assertEqual(self.h.registry.stations[CA].clock_synced, when)
        self.assertEqual(self.h.registry.received(CA, 103)[0].time, when)

    @defer.inlineCallbacks
    def test_read(self) -> Any:
        """A known IOA answers with COT 5; an unknown one is refused with COT 47."""
        result = yield self.master.read(CA, 113)
        self.assertEqual(result.outcome, Outcome.CONFIRMED)
        self.assertEqual(result.reply.cause, Cause.REQUEST)
        self.assertEqual(list(result.reply.values), [3.25])
        result = yield self.master.read(CA, 4242)
        self.assertEqual((result.outcome, result.cause), (Outcome.NEGATIVE, 47))

    @defer.inlineCallbacks
    def test_system_commands(self) -> Any:
        """Test command, reset process and delay acquisition are confirmed and recorded."""
        for call in (self.master.test_command, self.master.reset_process):
            result = yield call(CA)
            self.assertEqual(result.outcome, Outcome.CONFIRMED)
        result = yield self.master.delay_acquisition(CA, 150)
        self.assertEqual(result.outcome, Outcome.CONFIRMED)
        types = [r.type_id for r in self.h.registry.records]
        self.assertEqual(types, [107, 105, 106])
        self.assertEqual(self.h.registry.stations[CA].resets, 1)
        self.assertEqual(self.h.registry.records[-1].value, 150)

    @defer.inlineCallbacks
    def test_spontaneous(self) -> Any:
        """`update` changes the point and sends it with COT 3."""
        self.h.registry.update(CA, 113, 7.5, int(Quality.NT))
        yield self.h.until(lambda: 113 in self.h.objects(Cause.SPONTANEOUS))
        self.assertEqual(self.h.objects(3)[113], (13, 7.5, int(Quality.NT), None, None))
        self.assertEqual(self.h.registry.point(CA, 113).value, 7.5)
        self.h.registry.update(CA, 136, 1.5, time=T56)
        yield self.h.until(lambda: 136 in self.h.objects(Cause.SPONTANEOUS))
        self.assertEqual(self.h.objects(3)[136][3], T56)

    def test_bad_point_is_refused_at_start(self) -> None:
        """A value the codec cannot carry fails when the registry is built."""
        bad = StationConfig(CA, (MonitorPoint(1, 9, 2.0),))
        self.assertRaises(ValueError, StationRegistry, reactor, SimulatorConfig((bad,)))


#: (command IOA, type, value, monitor IOA, monitor value expected afterwards)
CASES = [
    (201, 45, True, 101, True),
    (202, 46, 1, 103, 1),
    (203, 47, 2, 105, -4),  # one step higher from -5
    (204, 48, -0.25, 109, -0.25),
    (205, 49, 4321, 111, 4321),
    (206, 50, -12.5, 113, -12.5),
    (207, 51, 0x12345678, 107, 0x12345678),
]


class CommandTests(unittest.TestCase):
    """Process commands, direct and select-before-operate, with and without time tags."""

    @defer.inlineCallbacks
    def setUp(self) -> Any:
        self.h = Harness(self)
        yield self.h.start(full_config())
        self.master = yield self.h.connect(wait_termination=True, command_timeout=0.5)

    @defer.inlineCallbacks
    def _commands(self, select: bool, timestamp: bool) -> Any:
        registry = self.h.registry
        for ioa, type_id, value, monitor, after in CASES:
            if select and type_id == 51:
                continue  # bitstrings have no S/E bit
            del self.h.received[:]
            result: CommandResult = yield self.master.command(
                CA, ioa, type_id, value, select=select, timestamp=timestamp
            )
            self.assertEqual(result.outcome, Outcome.TERMINATED, (ioa, result))
            sent_type = type_id + 13 if timestamp else type_id
            records = registry.received(CA, sent_type)[-2 if select else -1 :]
            self.assertEqual([r.select for r in records], [True, False] if select else [False])
            for r in records:
                self.assertEqual((r.ioa, r.value), (ioa, value))
                self.assertEqual(r.time is not None, timestamp)
            self.assertEqual(records[-1].answer, "terminated")
            self.assertEqual(registry.point(CA, monitor).value, after)
            self.assertEqual(self.h.objects(Cause.RETURN_REMOTE)[monitor][1], after)
            registry.point(CA, 105).value = -5

    def test_direct(self) -> Any:
        """Direct execute of every command type."""
        return self._commands(select=False, timestamp=False)

    def test_direct_with_time_tag(self) -> Any:
        """Direct execute of every time-tagged command type (58..64)."""
        return self._commands(select=False, timestamp=True)

    def test_select_before_operate(self) -> Any:
        """Select then execute of every selectable command type."""
        return self._commands(select=True, timestamp=False)

    def test_select_before_operate_with_time_tag(self) -> Any:
        """Select then execute of every selectable time-tagged type."""
        return self._commands(select=True, timestamp=True)

    @defer.inlineCallbacks
    def test_sbo_point_refuses_a_direct_execute(self) -> Any:
        """An SBO point refuses an execute without select, or with another value."""
        result = yield self.master.command(CA, 212, 46, 2)
        self.assertEqual(result.outcome, Outcome.NEGATIVE)
        result = yield self.master.select(CA, 212, 46, 2)
        self.assertEqual(result.outcome, Outcome.CONFIRMED)
        result = yield self.master.command(CA, 212, 46, 1)
        self.assertEqual(result.outcome, Outcome.NEGATIVE)
        result = yield self.master.command(CA, 212, 46, 2, select=True)
        self.assertEqual(result.outcome, Outcome.TERMINATED)
        self.assertEqual(self.h.registry.point(CA, 103).value, 2)

    @defer.inlineCallbacks
    def test_rejected(self) -> Any:
        """A rejecting point answers a negative ACT_CON: NEGATIVE, never confirmed."""
        for select in (False, True):
            result = yield self.master.command(CA, 210, 45, True, select=select)
            self.assertEqual(result.outcome, Outcome.NEGATIVE)
            self.assertFalse(result.ok)
            self.assertEqual(result.cause, Cause.ACTIVATION_CON)
            self.assertTrue(result.reply.negative)
        self.assertEqual([r.answer for r in self.h.registry.received(CA, 45)], ["negative"] * 2)

    @defer.inlineCallbacks
    def test_unknown_ioa_and_station(self) -> Any:
        """An unknown command IOA is refused with COT 47, an unknown station with 46."""
        result = yield self.master.command(CA, 999, 45, True)
        self.assertEqual((result.outcome, result.cause), (Outcome.NEGATIVE, 47))
        result = yield self.master.command(9, 201, 45, True)
        self.assertEqual((result.outcome, result.cause), (Outcome.NEGATIVE, 46))

    @defer.inlineCallbacks
    def test_silent(self) -> Any:
        """A silent point never answers: the master times out; the command is recorded."""
        result = yield self.master.command(CA, 211, 45, True)
        self.assertEqual(result.outcome, Outcome.TIMEOUT)
        self.assertEqual(self.h.registry.received(CA, 45)[-1].answer, "silent")

    @defer.inlineCallbacks
    def test_deactivation_after_select(self) -> Any:
        """Select, then deactivate: DEACT_CON; the execute that follows is refused."""
        result = yield self.master.select(CA, 212, 46, 2)
        self.assertEqual(result.outcome, Outcome.CONFIRMED)
        result = yield self.master.deactivate(CA, 212, 46, 2)
        self.assertEqual((result.outcome, result.cause), (Outcome.CONFIRMED, 9))
        result = yield self.master.command(CA, 212, 46, 2)
        self.assertEqual(result.outcome, Outcome.NEGATIVE)
        causes = [r.cause for r in self.h.registry.received(CA, 46)]
        self.assertEqual(causes, [6, 8, 6])
        self.assertEqual(self.h.registry.point(CA, 103).value, 2)  # unchanged

    @defer.inlineCallbacks
    def test_busy(self) -> Any:
        """A second command on the same point while the first is in flight is BUSY."""
        first = self.master.command(CA, 201, 45, False)
        second = yield self.master.command(CA, 201, 45, True)
        self.assertEqual(second.outcome, Outcome.BUSY)
        result = yield first
        self.assertEqual(result.outcome, Outcome.TERMINATED)
        self.assertEqual([r.value for r in self.h.registry.received(CA, 45)], [False])

    @defer.inlineCallbacks
    def test_no_termination(self) -> Any:
        """A point configured without ACT_TERM: the master times out waiting for it."""
        self.h.registry.set_behaviour(CA, 201, terminate=False)
        result = yield self.master.command(CA, 201, 45, True)
        self.assertEqual(result.outcome, Outcome.TIMEOUT)
        self.assertEqual(self.h.registry.received(CA, 45)[-1].answer, "confirmed")

    @defer.inlineCallbacks
    def test_record_is_bounded(self) -> Any:
        """Past ``record_size`` the oldest records are dropped and counted."""
        h = Harness(self)
        yield h.start(full_config(record_size=2))
        master = yield h.connect()
        for value in (True, False, True):
            result = yield master.command(CA, 201, 45, value)
            self.assertTrue(result.ok)
        self.assertEqual([r.value for r in h.registry.records], [False, True])
        self.assertEqual(h.registry.records_dropped, 1)


class InitialisationTests(unittest.TestCase):
    """M_EI_NA_1 after STARTDT and on request."""

    @defer.inlineCallbacks
    def test_end_of_init_triggers_interrogation(self) -> Any:
        """A station restart (M_EI_NA_1) makes the master interrogate again."""
        h = Harness(self)
        station = StationConfig(CA, (MonitorPoint(1, 13, 1.5),), end_of_init=0)
        yield h.start(SimulatorConfig((station,)))
        yield h.connect(interrogate_on_start=True)
        yield h.until(lambda: "initialised" in h.events and 1 in h.objects(20))
        gi = len(h.registry.received(CA, TypeId.C_IC_NA_1))
        del h.received[:]
        h.registry.send_end_of_init(CA, 2)
        yield h.until(lambda: 1 in h.objects(20))
        self.assertEqual(len(h.registry.received(CA, TypeId.C_IC_NA_1)), gi + 1)
        self.assertEqual(h.events.count("initialised"), 2)


class FloodTests(unittest.TestCase):
    """The flood: SQ=1 float frames as fast as the master acknowledges."""

    @defer.inlineCallbacks
    def test_flood(self) -> Any:
        """Every frame arrives, the master acknowledges them all, no timer expires."""
        frames = 2000
        link = LinkParams(t1=5.0, t2=0.05, t3=10.0)
        h = Harness(self)
        yield h.start(SimulatorConfig(flood=FloodConfig(CA, 96, frames=frames), link=link))
        master = yield h.connect(link)
        yield h.until(lambda: master.counters.asdus_received >= frames, timeout=10)
        (station,) = h.registry.connections
        yield h.poll(lambda: station.window_free() == link.k)  # all acknowledged
        yield task.deferLater(reactor, 0.1, lambda: None)  # t2 has fired: nothing more comes
        self.assertEqual(station.flood_frames, frames)
        self.assertEqual(h.registry.flood_frames_sent, frames)
        self.assertEqual(master.counters.asdus_received, frames)
        self.assertEqual(master.counters.points_received, frames * 48)
        for counters in (master.counters, station.counters):
            self.assertEqual((counters.timeouts, counters.sequence_errors), (0, 0))
        self.assertEqual(master.state, LinkState.STARTED)
        self.assertTrue(all(a.sequence and len(a.ioas) == 48 for a in h.received))
        self.assertEqual({a.ioas[0] for a in h.received}, {1, 49})
        first = [a.values[0] for a in h.received if a.ioas[0] == 1]
        self.assertGreater(len(set(first)), 1)  # the values change
        self.assertEqual(station.window_free(), link.k)

    @defer.inlineCallbacks
    def test_flood_delay(self) -> Any:
        """With a delay, the flood starts that long after STARTDT, and stops at its count."""
        h = Harness(self)
        yield h.start(SimulatorConfig(flood=FloodConfig(CA, 48, frames=10, delay=0.1)))
        started = reactor.seconds()  # before STARTDT: the connect may return late on a busy
        master = yield h.connect()  # machine, the delay already running
        yield h.until(lambda: master.counters.asdus_received == 10)
        self.assertGreaterEqual(reactor.seconds() - started, 0.09)
        self.assertEqual(h.registry.connections[0].flood_frames, 10)


class DemoConfigTests(unittest.SynchronousTestCase):
    """The command line station."""

    def test_demo_config(self) -> None:
        """N float points and three demo command points with their monitor points."""
        config = demo_config(points=10, end_of_init=0)
        registry = StationRegistry(task.Clock(), config)
        station = registry.stations[1]
        self.assertEqual(len(station.points), 13)
        self.assertEqual(sorted(station.commands), [20001, 20002, 20003])


class ManyPortsTest(unittest.TestCase):
    """`start_simulators`: one station per port, a change reaching that port's links only."""

    @defer.inlineCallbacks
    def test_each_port_has_its_own_station(self) -> Any:
        started = yield start_simulators(reactor, 0, 3, "127.0.0.1", demo_config(CA, 2))
        for listening, _registry in started:
            self.addCleanup(listening.stopListening)
        self.assertEqual(len(started), 3)
        ports = {listening.getHost().port for listening, _registry in started}
        self.assertEqual(len(ports), 3)
        registries = [registry for _listening, registry in started]
        self.assertEqual(len({id(r) for r in registries}), 3)
        masters = []
        received: list[list[Asdu]] = [[], [], []]
        for n, (listening, _registry) in enumerate(started):
            ready: defer.Deferred[None] = defer.Deferred()

            def on_event(kind: str, data: dict[str, Any], ready: Any = ready) -> None:
                if kind == "started" and not ready.called:
                    ready.callback(None)

            master = Iec104Master(
                reactor,
                None,
                StationParams(interrogate_on_start=False, clock_sync_on_start=False),
                on_data=received[n].append,
                on_event=on_event,
            )
            endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", listening.getHost().port)
            yield connectProtocol(endpoint, master)
            yield ready
            self.addCleanup(master.transport.loseConnection)
            masters.append(master)
        registries[1].update(CA, 2, 42.5)
        for _ in range(100):
            if received[1]:
                break
            yield task.deferLater(reactor, 0.01, lambda: None)
        yield task.deferLater(reactor, 0.05, lambda: None)
        self.assertEqual([len(r) for r in received], [0, 1, 0])
        self.assertEqual(received[1][0].values[0], 42.5)

    @defer.inlineCallbacks
    def test_a_busy_port_fails_all(self) -> Any:
        # A free port whose next one can be taken here: the second of the two.
        for _attempt in range(20):
            free = reactor.listenTCP(0, Factory(), interface="127.0.0.1")
            base = free.getHost().port
            try:
                taken = reactor.listenTCP(base + 1, Factory(), interface="127.0.0.1")
            except CannotListenError:
                yield free.stopListening()
                continue
            yield free.stopListening()
            break
        else:
            self.fail("no two consecutive free ports")
        self.addCleanup(taken.stopListening)
        try:
            yield start_simulators(reactor, base, 2, "127.0.0.1", demo_config(CA, 2))
        except CannotListenError:
            pass
        else:
            self.fail("listening on a taken port succeeded")
        # The first port was closed again: it can be listened on.
        again = reactor.listenTCP(base, Factory(), interface="127.0.0.1")
        yield again.stopListening()
