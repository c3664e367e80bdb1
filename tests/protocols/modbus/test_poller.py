"""The poller and its supervised client connection, over StringTransports and a Clock."""

import random
import struct

from twisted.internet.defer import succeed
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from pydatacoll.errors import ModbusVerifyError, NotFound, ValidationError
from pydatacoll.model import Device, Term, TermItem
from pydatacoll.protocols.modbus import poller as poll
from pydatacoll.protocols.modbus.client import ModbusClient
from pydatacoll.protocols.modbus.config import ModbusSettings, build_points
from pydatacoll.protocols.modbus.framing import decode_adus, encode_adu


class FakeDevice:
    """Answers FC1/3/5/6/15/16/22 from memory; units in ``silent`` never answer."""

    def __init__(self):
        self.registers = {}
        self.coils = {}
        self.silent = set()
        self.refuse = set()  # addresses that give exception 2
        self.log = []

    def pump(self, transport, protocol):
        while transport.value():
            adus, rest = decode_adus(transport.value())
            transport.clear()
            for adu in adus:
                self.log.append((adu.unit_id, adu.pdu))
                if adu.unit_id in self.silent:
                    continue
                protocol.dataReceived(encode_adu(adu.transaction_id, adu.unit_id, self.answer(adu)))

    def answer(self, adu):
        fc, address = adu.pdu[0], int.from_bytes(adu.pdu[1:3], "big")
        if fc in (1, 3):
            count = int.from_bytes(adu.pdu[3:5], "big")
            if any(a in self.refuse for a in range(address, address + count)):
                return bytes([fc | 0x80, 2])
            if fc == 1:
                bits = [self.coils.get(address + i, False) for i in range(count)]
                data = bytes(
                    sum(1 << j for j, b in enumerate(bits[i : i + 8]) if b)
                    for i in range(0, count, 8)
                )
            else:
                regs = [self.registers.get(address + i, 0) for i in range(count)]
                data = struct.pack(f">{count}H", *regs)
            return bytes([fc, len(data)]) + data
        if fc == 5:
            self.coils[address] = adu.pdu[3] == 0xFF
        elif fc == 6:
            self.registers[address] = int.from_bytes(adu.pdu[3:5], "big")
        elif fc == 16:
            count = int.from_bytes(adu.pdu[3:5], "big")
            for i in range(count):
                self.registers[address + i] = int.from_bytes(adu.pdu[6 + 2 * i : 8 + 2 * i], "big")
            return adu.pdu[:5]
        elif fc == 22:
            and_mask, or_mask = struct.unpack(">HH", adu.pdu[3:7])
            current = self.registers.get(address, 0)
            self.registers[address] = (current & and_mask) | (or_mask & ~and_mask & 0xFFFF)
        return adu.pdu


class FakeEndpoint:
    """Connects each protocol to a new StringTransport; fails while ``down`` is set."""

    def __init__(self):
        self.connections = []
        self.down = False
        self.attempts = 0

    def connect(self, factory):
        self.attempts += 1
        if self.down:
            from twisted.internet.defer import fail

            return fail(ConnectionRefusedError("down"))
        protocol = factory.buildProtocol(None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        self.connections.append((transport, protocol))
        return succeed(protocol)


def make_poller(extra_device=None, items=None, terms=None, **kwargs):
    device = Device.from_json(
        {"id": "d1", "protocol": "modbus", "ip": "127.0.0.1", **(extra_device or {})}
    )
    settings = ModbusSettings.from_device(device)
    terms = terms or [Term.from_json({"id": "t1", "device_id": "d1", "address": 1})]
    items = [TermItem.from_json({"term_id": "t1", **i}) for i in items or []]
    points = build_points(settings, terms, items)
    clock = Clock()
    endpoint = FakeEndpoint()
    link = ModbusClient(endpoint, clock, settings, rng=random.Random(1))
    batches = []
    poller = poll.ModbusPoller(
        "d1", settings, points, batches.append, reactor=clock, link=link, **kwargs
    )
    return poller, clock, endpoint, batches


ITEMS = [
    {"item_id": "v", "protocol_code": 0, "data_type": "uint16", "coefficient": 0.1},
    {"item_id": "f", "protocol_code": 1, "data_type": "float32", "byte_order": "CDAB"},
    {"item_id": "b", "protocol_code": 3, "data_type": "bool", "bit": 2},
]


class PollerTests(SynchronousTestCase):
    def setUp(self):
        self.device = FakeDevice()
        self.device.registers.update({0: 2305, 1: 0, 2: 0x4148, 3: 0b100})

    def pump(self, endpoint):
        for transport, protocol in endpoint.connections:
            self.device.pump(transport, protocol)

    def test_a_refused_point_is_isolated_and_the_others_poll(self):
        self.device.registers.update({4: 4, 5: 5})
        self.device.refuse = {4}
        items = [{"item_id": f"r{a}", "protocol_code": a} for a in (3, 4, 5)]
        poller, clock, endpoint, batches = make_poller(items=items, start_delay=0.5)
        poller.startService()
        clock.advance(0.5)
        self.pump(endpoint)
        # the merged read 3..5 is refused: it is split in one read per point
        self.assertEqual([b.qualities for b in batches], [("exception",) * 3])
        for _ in range(2):
            clock.advance(1)
            self.pump(endpoint)
        latest = {v.key: v for b in batches for v in b.point_values()}
        self.assertEqual(latest["t1:r3"].value, 0b100)
        self.assertEqual(latest["t1:r5"].value, 5)
        self.assertEqual(latest["t1:r4"].quality, "exception")
        self.assertEqual(list(poller.refused), ["t1:r4"])
        self.assertIn("holding 4", poller.refused["t1:r4"])
        # the device gains the register: the point is read again and leaves the list
        self.device.refuse = set()
        clock.advance(1)
        self.pump(endpoint)
        self.assertEqual(poller.refused, {})
        self.assertEqual(batches[-1].point_values()[0].value, 5)

    def test_polls_one_merged_read_per_interval(self):
        poller, clock, endpoint, batches = make_poller(items=ITEMS, start_delay=0.5)
        poller.startService()
        clock.advance(0.5)
        self.pump(endpoint)
        [batch] = batches
        self.assertEqual(
            (batch.unit_id, batch.table, batch.address, batch.count), (1, "holding", 0, 4)
        )
        values = {v.key: (v.value, v.quality) for v in batch.point_values()}
        self.assertEqual(values["t1:f"], (12.5, "good"))
        self.assertEqual(values["t1:b"], (True, "good"))
        self.assertAlmostEqual(values["t1:v"][0], 230.5)
        for _ in range(4):
            clock.advance(1.0)
            self.pump(endpoint)
        self.assertEqual(len(batches), 5)
        self.assertEqual(len(self.device.log), 5)
        self.assertEqual(poller.stats()["link"]["responses"], 5)
        d = poller.stopService()
        [(transport, protocol)] = endpoint.connections
        self.assertTrue(transport.disconnecting)
        protocol.connectionLost(Failure(ConnectionDone()))
        self.successResultOf(d)
        self.assertEqual(poller.client.stats.state, "stopped")
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_start_is_staggered_by_device_id(self):
        poller, clock, endpoint, batches = make_poller(items=ITEMS)
        poller.startService()
        [call] = [c for c in clock.getDelayedCalls() if c.func == poller._tick]
        self.assertTrue(0 <= call.getTime() < 1.0)
        others = set()
        for i in range(20):
            other = poll.ModbusPoller(f"dev{i}", poller.settings, [], list.append, reactor=clock,
                                     link=poller.link)  # fmt: skip
            other.schedules = {1.0: poll._Schedule(1.0, [])}
            other.startService()
            others.add(round(other.schedules[1.0].next_due, 3))
        self.assertGreater(len(others), 15)

    def test_overrun_is_counted_not_stacked(self):
        poller, clock, endpoint, batches = make_poller({"timeout": 5}, items=ITEMS, start_delay=0)
        poller.startService()
        clock.advance(0)
        [(transport, protocol)] = endpoint.connections
        first = transport.value()
        for _ in range(3):
            clock.advance(1.0)
        self.assertEqual(transport.value(), first)  # nothing more was sent
        self.assertEqual(poller.stats()["scans"]["1.0"]["overruns"], 3)
        self.device.pump(transport, protocol)
        clock.advance(1.0)
        self.device.pump(transport, protocol)
        self.assertEqual(len(batches), 2)

    def test_failing_unit_backs_off_without_slowing_the_other(self):
        terms = [
            Term.from_json({"id": "t1", "device_id": "d1", "address": 1}),
            Term.from_json({"id": "t2", "device_id": "d1", "address": 2}),
        ]
        items = ITEMS + [{"item_id": "x", "protocol_code": 0}]
        items[-1]["term_id"] = "t2"
        poller, clock, endpoint, batches = make_poller(
            {"timeout": 0.2, "degrade_after": 2, "degrade_time": 5, "silent_timeouts": 0},
            items=items[:3],
            terms=terms,
            start_delay=0,
        )
        poller.points.update(
            {p.key: p for p in build_points(poller.settings, terms, [TermItem.from_json(items[3])])}
        )
        poller.__init__("d1", poller.settings, list(poller.points.values()), batches.append,
                        reactor=clock, link=poller.link, start_delay=0)  # fmt: skip
        self.device.silent.add(2)
        poller.startService()
        for _ in range(15):
            clock.advance(0.1)
            self.pump(endpoint)
        good = [b for b in batches if b.unit_id == 1]
        bad = [b for b in batches if b.unit_id == 2]
        self.assertTrue(all(b.qualities[0] == "good" for b in good))
        self.assertEqual([b.qualities[0] for b in bad], ["timeout", "timeout"])
        self.assertIn("2", poller.stats()["degraded_units"])
        asked = len([u for u, _ in self.device.log if u == 2])
        for _ in range(30):
            clock.advance(0.1)
            self.pump(endpoint)
        self.assertEqual(len([u for u, _ in self.device.log if u == 2]), asked)  # skipped
        self.assertGreaterEqual(len([b for b in batches if b.unit_id == 1]), 4)
        self.device.silent.clear()
        for _ in range(30):
            clock.advance(0.1)
            self.pump(endpoint)
        self.assertEqual(batches[-1].qualities[0], "good")
        self.assertEqual(poller.stats()["degraded_units"], {})

    def test_refused_gap_splits_the_read(self):
        items = [{"item_id": "a", "protocol_code": 0}, {"item_id": "b", "protocol_code": 3}]
        poller, clock, endpoint, batches = make_poller(items=items, start_delay=0)
        self.device.refuse.add(1)
        poller.startService()
        clock.advance(0)
        self.pump(endpoint)
        self.assertEqual(batches[0].qualities[0], "exception")
        clock.advance(1)
        self.pump(endpoint)
        self.assertEqual([(b.address, b.count) for b in batches[1:]], [(0, 1), (3, 1)])
        self.assertTrue(all(b.qualities[0] == "good" for b in batches[1:]))

    def test_not_connected_and_reconnect(self):
        poller, clock, endpoint, batches = make_poller(items=ITEMS, start_delay=0.5)
        endpoint.down = True
        poller.startService()
        clock.advance(0.5)
        self.assertEqual(batches[-1].qualities[0], "not_connected")
        self.assertEqual(poller.client.stats.state, "disconnected")
        self.assertIn("connect failed", poller.client.stats.last_error)
        endpoint.down = False
        clock.advance(1.0)  # first retry after about 1 s
        self.pump(endpoint)
        self.assertEqual(poller.client.stats.state, "connected")
        self.assertEqual(batches[-1].qualities[0], "good")
        transport, protocol = endpoint.connections[-1]
        protocol.connectionLost(Failure(ConnectionResetError()))
        self.assertEqual(poller.client.stats.state, "disconnected")
        for _ in range(3):
            clock.advance(1.0)
            self.pump(endpoint)
        self.assertEqual(poller.client.stats.reconnects, 1)
        self.assertEqual(batches[-1].qualities[0], "good")

    def test_callback_errors_do_not_stop_polling(self):
        poller, clock, endpoint, batches = make_poller(items=ITEMS, start_delay=0)
        calls = []

        def broken(batch):
            calls.append(batch)
            raise RuntimeError("boom")

        poller.on_batch = broken
        poller.startService()
        for _ in range(3):
            clock.advance(1)
            self.pump(endpoint)
        self.assertEqual(len(calls), 3)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 3)

    def test_read_and_write_points(self):
        items = ITEMS + [
            {"item_id": "c", "protocol_code": 7, "code_type": "coil"},
            {"item_id": "i", "protocol_code": 9, "code_type": "input"},
            {"item_id": "d", "protocol_code": 20, "data_type": "float64", "byte_order": "DCBA"},
        ]
        poller, clock, endpoint, batches = make_poller(items=items, start_delay=100)
        poller.startService()
        d = poller.read_point("t1:f")
        self.pump(endpoint)
        self.assertEqual(self.successResultOf(d).value, 12.5)
        for key, value in (("t1:f", -3.25), ("t1:v", 240.1), ("t1:b", False), ("t1:c", True),
                           ("t1:d", 1e100)):  # fmt: skip
            d = poller.write_point(key, value, verify=True)
            self.pump(endpoint)
            self.assertEqual(self.successResultOf(d).value, value, key)
        functions = [pdu[0] for _, pdu in self.device.log]
        self.assertEqual(functions, [3, 16, 3, 6, 3, 22, 3, 5, 1, 16, 3])
        self.assertEqual(self.device.registers[3], 0)
        # 240.1 through coefficient 0.1 is the register 2401, and reads back as 240.1
        d = poller.write_point("t1:v", 240.1, verify=False)
        self.pump(endpoint)
        self.assertEqual(self.successResultOf(d).value, 240.1)
        self.assertEqual(self.device.registers[0], 2401)
        self.failureResultOf(poller.write_point("t1:i", 1), ValidationError)
        self.failureResultOf(poller.write_point("t1:v", 1e9), ValidationError)
        self.failureResultOf(poller.read_point("nope"), NotFound)
        # a device that silently ignores the write fails verification
        original = self.device.answer

        def ignore_writes(adu):
            if adu.pdu[0] == 6:
                return adu.pdu
            return original(adu)

        self.device.answer = ignore_writes
        d = poller.write_point("t1:v", 5.0, verify=True)
        self.pump(endpoint)
        self.failureResultOf(d, ModbusVerifyError)


class BackoffTests(SynchronousTestCase):
    def test_exponential_capped_with_jitter(self):
        device = Device.from_json(
            {"id": "d1", "protocol": "modbus", "ip": "127.0.0.1", "reconnect_max": 30}
        )
        settings = ModbusSettings.from_device(device)
        self.assertEqual((settings.reconnect_initial, settings.reconnect_factor), (1.0, 2.0))
        link = ModbusClient(FakeEndpoint(), Clock(), settings, rng=random.Random(3))
        policy = link.backoff.delay
        delays = [policy(n) for n in range(1, 12)]
        for n, delay in enumerate(delays, 1):
            nominal = min(30.0, 2.0 ** (n - 1))
            self.assertTrue(0.75 * nominal <= delay <= nominal, (n, delay))
        self.assertLessEqual(policy(10_000), 30.0)


class InputAndFrameTests(SynchronousTestCase):
    """The engine's side of `IDeviceRuntime.pause_input` and the device's frame log."""

    def setUp(self):
        self.device = FakeDevice()
        self.device.registers.update({0: 2305, 1: 0, 2: 0x4148, 3: 0b100})

    def pump(self, endpoint):
        for transport, protocol in endpoint.connections:
            self.device.pump(transport, protocol)

    def test_paused_input_skips_polls_until_resumed(self):
        poller, clock, endpoint, batches = make_poller(items=ITEMS, start_delay=0)
        poller.startService()
        clock.advance(0)
        self.pump(endpoint)
        self.assertEqual(len(batches), 1)
        poller.pause_input()
        for _ in range(3):
            clock.advance(1.0)
            self.pump(endpoint)
        self.assertEqual(len(batches), 1)
        self.assertEqual(len(self.device.log), 1)
        self.assertEqual(poller.stats()["scans"]["1.0"]["paused_scans"], 3)
        self.assertTrue(poller.stats()["input_paused"])
        # a single-point read still goes out while the polls are paused
        read = poller.read_point("t1:v")
        self.pump(endpoint)
        self.assertAlmostEqual(self.successResultOf(read).value, 230.5)
        poller.resume_input()
        clock.advance(1.0)
        self.pump(endpoint)
        self.assertEqual(len(batches), 2)
        self.assertFalse(poller.stats()["input_paused"])

    def test_frames_are_reported_both_ways(self):
        frames = []
        device = Device.from_json({"id": "d1", "protocol": "modbus", "ip": "127.0.0.1"})
        settings = ModbusSettings.from_device(device)
        terms = [Term.from_json({"id": "t1", "device_id": "d1", "address": 1})]
        items = [TermItem.from_json({"term_id": "t1", **i}) for i in ITEMS]
        clock = Clock()
        endpoint = FakeEndpoint()
        link = ModbusClient(
            endpoint, clock, settings, frame_observer=lambda d, f: frames.append((d, f))
        )
        batches = []
        poller = poll.ModbusPoller(
            "d1", settings, build_points(settings, terms, items), batches.append,
            reactor=clock, link=link, start_delay=0,
        )  # fmt: skip
        poller.startService()
        clock.advance(0)
        [(transport, protocol)] = endpoint.connections
        request = transport.value()
        self.pump(endpoint)
        self.assertEqual([d for d, _ in frames], ["tx", "rx"])
        self.assertEqual(frames[0][1], request)
        [response], rest = decode_adus(frames[1][1])
        self.assertEqual((response.unit_id, response.pdu[0], rest), (1, 3, b""))
        self.assertEqual(len(batches), 1)

    def test_a_failing_frame_observer_does_not_stop_the_link(self):
        def broken(direction, frame):
            raise RuntimeError("observer bug")

        device = Device.from_json({"id": "d1", "protocol": "modbus", "ip": "127.0.0.1"})
        settings = ModbusSettings.from_device(device)
        terms = [Term.from_json({"id": "t1", "device_id": "d1", "address": 1})]
        items = [TermItem.from_json({"term_id": "t1", **i}) for i in ITEMS]
        clock = Clock()
        endpoint = FakeEndpoint()
        link = ModbusClient(endpoint, clock, settings, frame_observer=broken)
        batches = []
        poller = poll.ModbusPoller(
            "d1", settings, build_points(settings, terms, items), batches.append,
            reactor=clock, link=link, start_delay=0,
        )  # fmt: skip
        poller.startService()
        clock.advance(0)
        self.pump(endpoint)
        self.assertEqual([b.qualities[0] for b in batches], ["good"])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 2)
