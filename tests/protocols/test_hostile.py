"""Hostile peers against the real links, on a Clock with in-memory transports.

Each hostile behaviour of `pydatacoll.testing.hostile` runs against our Modbus poller or
IEC 104 client for a few simulated minutes: the link is closed and reopened with a delay
that keeps growing (it is never reset by a TCP connect alone), the device is not shown
online without a valid answer, and the log stays bounded.
"""

import random

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.defer import succeed
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase

from pydatacoll.model import Device, Term, TermItem
from pydatacoll.protocols.faults import LinkBackoff
from pydatacoll.protocols.iec104.apci import UFunction, encode_i, encode_u
from pydatacoll.protocols.iec104.client import Iec104Client, Iec104Master, StationParams
from pydatacoll.protocols.iec104.link import LinkState
from pydatacoll.protocols.modbus import pdu as pdus
from pydatacoll.protocols.modbus.client import ModbusClient
from pydatacoll.protocols.modbus.config import ModbusSettings, build_points
from pydatacoll.protocols.modbus.link import ModbusLink
from pydatacoll.protocols.modbus.poller import ModbusPoller
from pydatacoll.protocols.modbus.runtime import ModbusRuntime
from pydatacoll.testing.hostile import MODBUS_BEHAVIOURS, HostileFactory


class HostileEndpoint:
    """Connects each attempt to a new hostile peer through an `iosim` pump."""

    def __init__(self, clock, protocol, behaviour, **options):
        self.clock = clock
        self.hostile = HostileFactory(protocol, behaviour, clock, **options)
        self.pumps = []
        self.index = 0  # what RotatingEndpoint offers the IEC 104 client

    def connect(self, factory):
        client = factory.buildProtocol(None)
        server = self.hostile.buildProtocol(None)
        pump = iosim.connect(
            server,
            iosim.FakeTransport(server, isServer=True),
            client,
            iosim.FakeTransport(client, isServer=False),
            greet=False,
            clock=self.clock,
        )
        self.pumps.append(pump)
        return succeed(client)

    def run(self, seconds, step=0.05, each=None):
        """Advance the clock ``seconds`` in ``step``s, moving bytes after each step."""
        for _ in range(round(seconds / step)):
            self.clock.advance(step)
            for pump in list(self.pumps):
                pump.flush(advanceClock=False)
                if pump.clientIO.disconnected and pump.serverIO.disconnected:
                    self.pumps.remove(pump)
            if each is not None:
                each()


class LogCapture:
    """Our log events (pydatacoll namespaces) while a test runs."""

    def __init__(self, case):
        self.events = []
        globalLogPublisher.addObserver(self._observe)
        case.addCleanup(globalLogPublisher.removeObserver, self._observe)

    def _observe(self, event):
        if event.get("log_namespace", "").startswith("pydatacoll"):
            self.events.append(event)


def gaps(times):
    return [b - a for a, b in zip(times, times[1:], strict=False)]


MODBUS_DEVICE = {
    "id": "h1",
    "protocol": "modbus",
    "ip": "127.0.0.1",
    "timeout": 1,
    "scan_interval": 1,
    "reconnect_initial": 1,
    "reconnect_factor": 2,
    "reconnect_max": 60,
}


def modbus_runtime(clock, endpoint):
    device = Device.from_json(MODBUS_DEVICE)
    settings = ModbusSettings.from_device(device)
    terms = [Term.from_json({"id": "t1", "device_id": "h1", "address": 1})]
    items = [TermItem.from_json({"term_id": "t1", "item_id": "v", "protocol_code": 0})]
    runtime = ModbusRuntime(device, terms, items, _Sink(), clock)
    link = ModbusClient(endpoint, clock, settings, name="modbus device h1", rng=random.Random(1))
    runtime.poller = ModbusPoller(
        "h1", settings, build_points(settings, terms, items), runtime._on_batch,
        reactor=clock, link=link, start_delay=0,
    )  # fmt: skip
    return runtime


class _Sink:
    def __init__(self):
        self.samples = []

    def samples_received(self, samples):
        self.samples.extend(samples)


class ModbusHostileTests(SynchronousTestCase):
    def run_peer(self, behaviour, seconds=240):
        clock = Clock()
        log = LogCapture(self)
        endpoint = HostileEndpoint(clock, "modbus", behaviour, seed=7)
        runtime = modbus_runtime(clock, endpoint)
        runtime.startService()
        states = set()

        def look() -> None:
            state = runtime.status()["state"]
            # What the device manager's state watch asks for, cheaply: the same state.
            self.assertEqual(runtime.link_state(), state)
            states.add(state)

        endpoint.run(seconds, each=look)
        status = runtime.status()
        runtime.stopService()
        for pump in endpoint.pumps:
            pump.flush()
        return endpoint.hostile.connections, states, status, log.events, runtime

    def test_each_hostile_server_is_retried_ever_more_slowly(self):
        for behaviour in MODBUS_BEHAVIOURS:
            connections, states, status, events, runtime = self.run_peer(behaviour)
            delays = gaps(connections)
            # closed and reopened, each delay longer: the retry count survived every
            # successful TCP connect (1, 2, 4 ... s of backoff, plus the time each
            # connection lasted); never a valid answer, so never online
            # (a silent unit is also skipped for a growing period after 3 failed reads,
            # so its connections last longer and there are fewer)
            self.assertGreaterEqual(len(connections), 3, behaviour)
            self.assertLessEqual(len(connections), 12, behaviour)
            # growing (up to the 60 s cap, less up to 25 % jitter): never back to ~1 s
            self.assertEqual(delays[:4], sorted(delays[:4]), (behaviour, delays))
            self.assertTrue(all(d > 4 for d in delays[3:]), (behaviour, delays))
            self.assertGreater(delays[-1], 3 * delays[0], (behaviour, delays))
            self.assertNotIn("online", states, behaviour)
            self.assertIn(
                status["state"], ("disconnected", "connecting", "connected", "error"), behaviour
            )
            self.assertIsNotNone(status["reason"], behaviour)
            self.assertGreaterEqual(status["retries_since_healthy"], len(connections) - 1)
            # a few lines per connection (connected, why it closes, lost, the unit's
            # skip period, one line per 10 s window of bad answers): no flood
            self.assertLessEqual(len(events), 6 * len(connections), (behaviour, len(events)))
            self.assertTrue(all(q == "invalid" for q in (s.quality for s in runtime.sink.samples)))

    def test_wrong_transaction_ids_say_why(self):
        clock = Clock()
        endpoint = HostileEndpoint(clock, "modbus", "wrong_tid")
        runtime = modbus_runtime(clock, endpoint)
        runtime.startService()
        endpoint.run(2.5)
        status = runtime.status()
        self.assertEqual(status["state"], "error")
        self.assertIn("responses with unexpected transaction ids", status["reason"])
        self.assertIn("timeouts", status["reason"])
        for _ in range(200):  # the third timeout closes the link
            endpoint.run(0.05)
            status = runtime.status()
            if status["state"] != "error":
                break
        self.assertEqual(status["state"], "disconnected")
        self.assertEqual(runtime.poller.client.stats.timeouts, 3)
        self.assertIn("the last connection had no valid response", status["reason"])
        runtime.stopService()

    def test_healthy_after_ten_seconds_resets_the_backoff(self):
        """A good device that drops now and then is retried at the first delay again."""
        clock = Clock()
        link = ModbusClient(_GoodEndpoint(), clock, ModbusSettings("h"), rng=random.Random(1))
        link.startService()
        protocol = link.protocol
        for _ in range(3):  # three failed connections: the count grows
            protocol.transport.loseConnection()
            clock.advance(60)
            protocol = link.protocol
        self.assertEqual(link.backoff.failures, 3)
        d = protocol.request(1, pdus.read_request(pdus.Table.HOLDING, 0, 1))
        protocol.dataReceived(bytes.fromhex(f"{protocol._next_tid:04x}00000005010302002a"))
        self.assertEqual(self.successResultOf(d).registers, (42,))
        clock.advance(9.9)
        self.assertEqual(link.backoff.failures, 3)  # not yet
        clock.advance(0.2)
        self.assertEqual(link.backoff.failures, 0)
        link.stopService()


class _GoodEndpoint:
    def connect(self, factory):
        protocol = factory.buildProtocol(None)
        transport = StringTransport()
        transport.loseConnection = lambda: protocol.connectionLost(Failure(ConnectionDone()))
        protocol.makeConnection(transport)
        return succeed(protocol)


class Iec104HostileTests(SynchronousTestCase):
    def run_peer(self, behaviour, seconds=300, **options):
        clock = Clock()
        log = LogCapture(self)
        endpoint = HostileEndpoint(clock, "iec104", behaviour, seed=3, **options)
        client = Iec104Client(clock, [("127.0.0.1", 2404)], name="iec104 h1")
        client.endpoint = endpoint
        client.startService()
        states = []
        endpoint.run(seconds, step=0.02, each=lambda: states.append(client.state))
        status = client.status()
        client.stopService()
        for pump in endpoint.pumps:
            pump.flush()
        return endpoint.hostile.connections, states, status, log.events

    def test_link_faults_are_retried_ever_more_slowly(self):
        for behaviour in ("random", "bad_length", "sequence"):
            connections, states, status, events = self.run_peer(behaviour)
            delays = gaps(connections)
            self.assertGreaterEqual(len(connections), 5, behaviour)
            self.assertLessEqual(len(connections), 12, behaviour)
            # 1, 2, 4, 8, 16, 32, 60 s (+-25 %): never back to the first delay
            self.assertEqual(delays[:5], sorted(delays[:5]), (behaviour, delays))
            self.assertTrue(all(d > 10 for d in delays[4:]), (behaviour, delays))
            self.assertGreater(delays[-1], 40, (behaviour, delays))
            self.assertLessEqual(len(events), 6 * len(connections), (behaviour, len(events)))
            self.assertIsNotNone(status["last_error"], behaviour)
            if behaviour != "sequence":
                self.assertNotIn(LinkState.STARTED, states, behaviour)

    def test_a_drip_is_cut_off_by_the_timers(self):
        connections, states, status, events = self.run_peer("drip", seconds=120, drip=3.0)
        # STARTDT con dribbles in over 18 s: t1 (15 s) closes each connection first
        self.assertNotIn(LinkState.STARTED, states)
        self.assertIn("t1 expired", status["last_error"])
        self.assertLessEqual(len(connections), 6)

    def test_unknown_types_and_truncated_asdus_are_logged_at_a_bounded_rate(self):
        for behaviour, word in (("unknown_type", "unknown type"), ("truncated", "malformed")):
            connections, states, status, events = self.run_peer(behaviour, seconds=60, rate=50)
            # skipped, not a link fault: one connection, data transfer started
            self.assertEqual(len(connections), 1, behaviour)
            self.assertEqual(states[-1], LinkState.STARTED)
            self.assertGreater(status["asdus_skipped"], 2500, behaviour)
            lines = [e for e in events if word in e["log_format"]]
            # one line, then one "(N more like it in 10 s)" line per window: not 3000
            self.assertLessEqual(len(lines), 14, behaviour)
            summaries = [e for e in lines if "rate_limited_count" in e]
            self.assertGreater(sum(e["rate_limited_count"] for e in summaries), 2400, behaviour)

    def test_first_retry_is_one_second(self):
        policy = Iec104Client(Clock(), [("127.0.0.1", 2404)]).retry.delay
        firsts = [policy(1) for _ in range(50)]
        self.assertTrue(all(0.75 <= d <= 1.0 for d in firsts), firsts)
        seconds = [policy(2) for _ in range(50)]
        self.assertTrue(all(1.5 <= d <= 2.0 for d in seconds), seconds)


class BackoffTests(SynchronousTestCase):
    def test_count_grows_until_healthy(self):
        clock = Clock()
        policy = LinkBackoff(lambda n: float(n), clock, healthy_after=10)
        self.assertEqual([policy(1), policy(1), policy(1)], [1.0, 2.0, 3.0])
        policy.good_exchange()
        clock.advance(5)
        policy.link_lost()  # up only 5 s after the good exchange: not healthy
        clock.advance(20)
        self.assertEqual(policy(1), 4.0)
        policy.good_exchange()
        clock.advance(10)
        self.assertEqual(policy(1), 1.0)


class RateLimitFlushTests(SynchronousTestCase):
    def test_flush_writes_the_counts_of_a_closed_connection(self):
        from twisted.logger import Logger, LogLevel

        from pydatacoll.logs import RateLimitedLog

        clock = Clock()
        log = LogCapture(self)
        limiter = RateLimitedLog(Logger(namespace="pydatacoll.test"), clock, interval=10)
        for n in range(50):
            limiter.emit(LogLevel.warn, "bad", "bad frame {n}", n=n)
            clock.advance(0.1)
        self.assertEqual([e["n"] for e in log.events], [0])
        limiter.flush()  # the link closed before the window ended
        self.assertEqual((log.events[-1]["n"], log.events[-1]["rate_limited_count"]), (49, 49))
        self.assertEqual(clock.getDelayedCalls(), [])
        limiter.emit(LogLevel.warn, "bad", "bad frame {n}", n=50)  # a new connection
        self.assertEqual(log.events[-1]["n"], 50)


class RandomBytesTests(SynchronousTestCase):
    """Random bytes from a peer close the link cleanly: no exception, no stray timer."""

    @settings(max_examples=300, deadline=None)
    @given(st.binary(min_size=1, max_size=600))
    def test_modbus(self, garbage):
        clock = Clock()
        protocol = ModbusLink(clock)
        transport = StringTransport()
        transport.abortConnection = transport.loseConnection
        protocol.makeConnection(transport)
        d = protocol.request(1, pdus.read_request(pdus.Table.HOLDING, 0, 1))
        protocol.dataReceived(garbage)
        if not transport.disconnecting:
            # nothing that frames as garbage yet: it is waiting for the rest of a frame
            # or the bytes were well-formed frames for other transactions
            self.assertLess(len(protocol._buffer), 7 + 254)
        else:
            protocol.connectionLost(Failure(ConnectionDone()))
            self.assertEqual(clock.getDelayedCalls(), [])
        clock.advance(10)
        self.assertTrue(d.called)
        d.addErrback(lambda f: None)

    @settings(max_examples=300, deadline=None)
    @given(st.binary(min_size=1, max_size=600))
    def test_iec104(self, garbage):
        clock = Clock()
        master = Iec104Master(
            clock, station=StationParams(clock_sync_on_start=False, interrogate_on_start=False)
        )
        transport = StringTransport()
        master.makeConnection(transport)
        master.dataReceived(encode_u(UFunction.STARTDT_CON))
        self.assertIs(master.state, LinkState.STARTED)
        master.dataReceived(garbage)
        if transport.disconnecting:
            master.connectionLost(Failure(ConnectionDone()))
            self.assertEqual(clock.getDelayedCalls(), [])
        else:
            # well-formed frames, or the start of one: t1/t3 still guard the link
            self.assertTrue(clock.getDelayedCalls())

    def test_iec104_garbage_after_good_frames(self):
        clock = Clock()
        master = Iec104Master(clock)
        transport = StringTransport()
        master.makeConnection(transport)
        master.dataReceived(
            encode_u(UFunction.STARTDT_CON)
            + encode_i(0, 0, bytes([200, 1, 3, 0, 1, 0, 1, 0, 0, 0]))
        )
        self.assertFalse(transport.disconnecting)
        master.dataReceived(b"\x00garbage")
        self.assertTrue(transport.disconnecting)
