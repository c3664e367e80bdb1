"""The link protocol over a StringTransport and a Clock: matching, timeouts, late replies."""

import attrs
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.defer import CancelledError
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from pydatacoll.errors import (
    ModbusExceptionResponse,
    ModbusNotConnected,
    ModbusQueueFull,
    ModbusTimeout,
)
from pydatacoll.protocols.modbus.codec import Table
from pydatacoll.protocols.modbus.framing import decode_adus, encode_adu
from pydatacoll.protocols.modbus.link import ModbusLink


def connect(**kwargs):
    clock = Clock()
    protocol = ModbusLink(clock, **kwargs)
    transport = StringTransport()
    protocol.makeConnection(transport)
    return clock, protocol, transport


def sent(transport):
    adus, rest = decode_adus(transport.value())
    transport.clear()
    assert rest == b""
    return adus


def answer(adu, registers):
    body = b"".join(r.to_bytes(2, "big") for r in registers)
    return encode_adu(adu.transaction_id, adu.unit_id, bytes([3, len(body)]) + body)


class ClientTests(SynchronousTestCase):
    def test_read_and_rtt(self):
        clock, protocol, transport = connect()
        d = protocol.read(1, Table.HOLDING, 0, 2)
        [adu] = sent(transport)
        self.assertEqual(adu.pdu, bytes.fromhex("0300000002"))
        clock.advance(0.25)
        protocol.dataReceived(answer(adu, [7, 8]))
        self.assertEqual(self.successResultOf(d), (7, 8))
        stats = protocol.stats.snapshot()
        self.assertEqual((stats["requests"], stats["responses"], stats["rtt_last"]), (1, 1, 0.25))
        # every public counter, in field order, and nothing private
        public = [a.name for a in attrs.fields(type(protocol.stats)) if a.name[0] != "_"]
        self.assertEqual(list(stats), public)

    def test_one_in_flight_by_default(self):
        clock, protocol, transport = connect()
        d1 = protocol.read(1, Table.HOLDING, 0, 1)
        d2 = protocol.read(2, Table.HOLDING, 0, 1)
        [first] = sent(transport)
        self.assertEqual(protocol.stats.queued, 1)
        protocol.dataReceived(answer(first, [1]))
        [second] = sent(transport)
        self.assertEqual(second.unit_id, 2)
        protocol.dataReceived(answer(second, [2]))
        self.assertEqual((self.successResultOf(d1), self.successResultOf(d2)), ((1,), (2,)))

    def test_late_reply_is_discarded_not_given_to_the_next_request(self):
        clock, protocol, transport = connect(timeout=1.0)
        d1 = protocol.read(1, Table.HOLDING, 0, 1)
        d2 = protocol.read(1, Table.HOLDING, 10, 1)
        [first] = sent(transport)
        clock.advance(1.0)
        self.failureResultOf(d1, ModbusTimeout)
        [second] = sent(transport)
        # the old answer arrives now, then the right one
        protocol.dataReceived(answer(first, [111]))
        self.assertNoResult(d2)
        protocol.dataReceived(answer(second, [222]))
        self.assertEqual(self.successResultOf(d2), (222,))
        self.assertEqual(protocol.stats.late_responses, 1)
        self.assertEqual(protocol.stats.timeouts, 1)
        self.assertFalse(transport.disconnecting)
        self.assertEqual(clock.getDelayedCalls(), [])

    @settings(max_examples=50)
    @given(st.permutations(range(4)), st.integers(1, 4))
    def test_several_units_in_flight_never_cross(self, order, in_flight):
        clock, protocol, transport = connect(max_in_flight=in_flight)
        deferreds = {unit: protocol.read(unit, Table.HOLDING, 0, 1) for unit in range(4)}
        outstanding = {}
        answered = 0
        while answered < 4:
            for adu in sent(transport):
                outstanding[adu.unit_id] = adu
            self.assertLessEqual(len(outstanding), in_flight)
            unit = next(u for u in order if u in outstanding)
            protocol.dataReceived(answer(outstanding.pop(unit), [unit + 100]))
            answered += 1
        for unit, d in deferreds.items():
            self.assertEqual(self.successResultOf(d), (unit + 100,))

    def test_exception_response(self):
        clock, protocol, transport = connect()
        d = protocol.read(3, Table.HOLDING, 9999, 1)
        [adu] = sent(transport)
        protocol.dataReceived(encode_adu(adu.transaction_id, 3, b"\x83\x02"))
        error = self.failureResultOf(d, ModbusExceptionResponse).value
        self.assertEqual(
            (error.exception_code, error.unit_id, error.name), (2, 3, "illegal data address")
        )
        self.assertIn("illegal data address", str(error))
        self.assertEqual(protocol.stats.exceptions, 1)

    def test_split_and_coalesced_frames(self):
        clock, protocol, transport = connect(max_in_flight=2)
        d1 = protocol.read(1, Table.HOLDING, 0, 1)
        d2 = protocol.read(1, Table.HOLDING, 1, 1)
        a1, a2 = sent(transport)
        data = answer(a1, [5]) + answer(a2, [6])
        for i in range(len(data)):
            protocol.dataReceived(data[i : i + 1])
        self.assertEqual((self.successResultOf(d1), self.successResultOf(d2)), ((5,), (6,)))

    def test_garbage_closes_the_link_cleanly(self):
        clock, protocol, transport = connect()
        d = protocol.read(1, Table.HOLDING, 0, 1)
        sent(transport)
        protocol.dataReceived(b"\x00\x01\xde\xad\x00\x05\x01\x03\x02\x00\x01")
        self.assertTrue(transport.disconnecting)
        self.assertEqual(protocol.stats.frame_errors, 1)
        self.assertEqual(len(self.flushLoggedErrors()), 0)
        # nothing more is sent on a dying link, new requests fail fast
        self.failureResultOf(protocol.read(1, Table.HOLDING, 0, 1), ModbusNotConnected)
        protocol.connectionLost(Failure(ConnectionError("aborted")))
        self.failureResultOf(d, ModbusNotConnected)
        self.assertEqual(clock.getDelayedCalls(), [])

    @given(st.binary(min_size=1, max_size=300))
    def test_hostile_bytes(self, data):
        clock, protocol, transport = connect()
        d = protocol.read(1, Table.HOLDING, 0, 1)
        sent(transport)
        protocol.dataReceived(data)
        if transport.disconnecting:
            protocol.connectionLost(Failure(ConnectionError("aborted")))
            self.failureResultOf(d)
        else:
            self.assertTrue(d.called or protocol.stats.in_flight == 1)

    def test_unit_mismatch_is_a_frame_error(self):
        clock, protocol, transport = connect()
        d = protocol.read(1, Table.HOLDING, 0, 1)
        [adu] = sent(transport)
        protocol.dataReceived(encode_adu(adu.transaction_id, 2, b"\x03\x02\x00\x01"))
        self.assertTrue(transport.disconnecting)
        protocol.connectionLost(Failure(ConnectionError("aborted")))
        self.failureResultOf(d, ModbusNotConnected)

    def test_queue_is_bounded(self):
        clock, protocol, transport = connect(max_queue=2)
        protocol.read(1, Table.HOLDING, 0, 1)  # in flight
        protocol.read(1, Table.HOLDING, 0, 1)
        protocol.read(1, Table.HOLDING, 0, 1)
        self.failureResultOf(protocol.read(1, Table.HOLDING, 0, 1), ModbusQueueFull)
        self.assertEqual(protocol.stats.queue_full, 1)

    def test_pauses(self):
        clock, protocol, transport = connect(request_pause=0.1)
        protocol.connectionLost(Failure(ConnectionError()))
        protocol = ModbusLink(clock, connect_pause=0.5, request_pause=0.1)
        transport = StringTransport()
        protocol.makeConnection(transport)
        d1 = protocol.read(1, Table.HOLDING, 0, 1)
        d2 = protocol.read(1, Table.HOLDING, 1, 1)
        self.assertEqual(sent(transport), [])
        clock.advance(0.5)
        [first] = sent(transport)
        protocol.dataReceived(answer(first, [1]))
        self.assertEqual(sent(transport), [])
        clock.advance(0.1)
        [second] = sent(transport)
        protocol.dataReceived(answer(second, [2]))
        self.successResultOf(d1)
        self.successResultOf(d2)

    def test_silent_link_is_dropped(self):
        clock, protocol, transport = connect(timeout=1, silent_timeouts=2)
        for _ in range(3):
            protocol.read(1, Table.HOLDING, 0, 1).addErrback(lambda f: None)
        clock.advance(1)
        self.assertFalse(transport.disconnecting)
        clock.advance(1)
        self.assertTrue(transport.disconnecting)

    def test_cancel(self):
        clock, protocol, transport = connect()
        d1 = protocol.read(1, Table.HOLDING, 0, 1)
        d2 = protocol.read(1, Table.HOLDING, 1, 1)
        d2.cancel()
        d1.cancel()
        self.failureResultOf(d1, CancelledError)
        self.failureResultOf(d2, CancelledError)
        self.assertEqual(protocol.stats.queued, 0)
        [adu] = sent(transport)
        protocol.dataReceived(answer(adu, [1]))  # the cancelled request's answer: dropped
        self.assertEqual(protocol.stats.in_flight, 0)
        d3 = protocol.read(1, Table.HOLDING, 2, 1)
        [adu3] = sent(transport)
        self.assertNotEqual(adu3.transaction_id, adu.transaction_id)
        protocol.dataReceived(answer(adu3, [3]))
        self.assertEqual(self.successResultOf(d3), (3,))
