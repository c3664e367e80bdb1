"""Logs an operator can read: no debug chatter, no Twisted retry lines, repeats counted."""

from twisted.internet.defer import fail
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import Logger, LogLevel, formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from pydatacoll.logs import RateLimitedLog, logger
from pydatacoll.model import Device
from pydatacoll.protocols.iec104.apci import UFunction, encode_u
from pydatacoll.protocols.iec104.client import Iec104Client
from pydatacoll.protocols.modbus.client import ModbusClient
from pydatacoll.protocols.modbus.config import ModbusSettings


class Captured:
    """Every event the global publisher sees (what twistd would write) during a test."""

    def __init__(self, test):
        self.events = []
        globalLogPublisher.addObserver(self.events.append)
        test.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def lines(self, level=None):
        return [formatEvent(e) for e in self.events if level is None or e.get("log_level") == level]


class Example:
    log = logger()


class LoggerTests(SynchronousTestCase):
    def test_debug_is_dropped_info_goes_through(self):
        captured = Captured(self)
        Example().log.debug("routine {what}", what="interrogation sent")
        Example().log.info("state {what}", what="online")
        self.assertEqual(captured.lines(), ["state online"])


class RateLimitTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.captured = Captured(self)
        self.limited = RateLimitedLog(Logger(namespace="test"), self.clock, interval=10)
        self.addCleanup(self.limited.stop)

    def test_repeats_become_one_line_with_a_count_and_the_last_state(self):
        for n in range(100):
            what = "congested" if n % 2 == 0 else "caught up"
            self.limited.emit(LogLevel.info, "ingest", "ingest {what}", what=what)
            self.clock.advance(0.01)
        self.assertEqual(self.captured.lines(), ["ingest congested"])
        self.clock.advance(10)
        self.assertEqual(
            self.captured.lines(),
            ["ingest congested", "ingest caught up (99 more like it in 10 s)"],
        )
        # quiet for an interval: the next one is written at once, without a count
        self.clock.advance(30)
        self.limited.emit(LogLevel.info, "ingest", "ingest {what}", what="congested")
        self.assertEqual(self.captured.lines()[-1], "ingest congested")
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_keys_are_separate_and_bounded(self):
        limited = RateLimitedLog(Logger(namespace="test"), self.clock, interval=10, max_keys=2)
        for key in ("a", "b", "c", "a"):
            limited.emit(LogLevel.info, key, "points updated {key}", key=key)
        # "a" was forgotten when "c" came, so it is written again
        self.assertEqual(len(self.captured.lines()), 4)
        limited.emit(LogLevel.info, "c", "points updated {key}", key="c")
        limited.stop()
        self.assertEqual(self.clock.getDelayedCalls(), [])


class _RefusingEndpoint:
    def __init__(self):
        self.attempts = 0

    def connect(self, factory):
        self.attempts += 1
        return fail(ConnectionRefusedError())


class OfflineDeviceTests(SynchronousTestCase):
    def test_an_unreachable_modbus_device_writes_nothing_per_retry(self):
        captured = Captured(self)
        clock = Clock()
        device = Device.from_json(
            {"id": "m1", "protocol": "modbus", "ip": "127.0.0.1", "reconnect_initial": 1}
        )
        endpoint = _RefusingEndpoint()
        link = ModbusClient(endpoint, clock, ModbusSettings.from_device(device))
        link.startService()
        for _ in range(20):
            clock.advance(60)
        self.assertGreater(endpoint.attempts, 10)
        self.assertEqual(captured.lines(), [])
        self.assertEqual(link.stats.state, "disconnected")
        link.stopService()

    def test_retries_write_nothing_and_commands_are_not_debug_chatter(self):
        """An unreachable IEC 104 device: no "Starting factory", no "Scheduling retry";
        a started link sends its clock sync and interrogation without a debug line."""
        captured = Captured(self)
        reactor = MemoryReactorClock()
        client = Iec104Client(reactor, [("127.0.0.1", 2404)], retry=lambda n: 2.0)
        client.startService()
        for _attempt in range(5):
            connector = reactor.tcpClients[-1][2]
            connector.clientConnectionFailed(None, Failure(ConnectionRefusedError()))
            reactor.advance(2.0)
        self.assertEqual(len(reactor.tcpClients), 6)
        self.assertEqual(captured.lines(), [])
        protocol = reactor.tcpClients[-1][2].buildProtocol(None)
        protocol.makeConnection(StringTransport())
        protocol.dataReceived(encode_u(UFunction.STARTDT_CON))
        self.assertEqual(captured.lines(LogLevel.debug), [])
        client.stopService()
