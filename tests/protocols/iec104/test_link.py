"""The link: STARTDT, windows, acknowledgements, timers and sequence errors."""

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from pydatacoll.protocols.iec104.apci import (
    IFrame,
    SFrame,
    UFrame,
    UFunction,
    decode_apdus,
    encode_i,
    encode_s,
    encode_u,
)
from pydatacoll.protocols.iec104.asdu import Asdu, encode_asdu
from pydatacoll.protocols.iec104.link import Iec104Link, LinkParams, LinkState, SendQueueFull

POINT = encode_asdu(Asdu(13, 3, 1, [1], [1.0], [0]))


class Recorder(Iec104Link):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.asdus = []
        self.opened = 0
        self.lost = []

    def asdu_received(self, asdu):
        self.asdus.append(asdu)

    def window_open(self):
        self.opened += 1

    def link_lost(self, reason):
        self.lost.append(reason)


def connect(params=None):
    clock = Clock()
    link = Recorder(clock, params or LinkParams())
    transport = StringTransport()
    link.makeConnection(transport)
    return clock, link, transport


def sent(transport):
    frames, used = decode_apdus(transport.value())
    assert used == len(transport.value())
    transport.clear()
    return frames


def started(params=None):
    clock, link, transport = connect(params)
    link.start_data_transfer()
    link.dataReceived(encode_u(UFunction.STARTDT_CON))
    transport.clear()
    return clock, link, transport


class StartTests(SynchronousTestCase):
    def test_startdt_confirmed(self):
        clock, link, transport = connect()
        link.start_data_transfer()
        self.assertEqual(sent(transport), [UFrame(UFunction.STARTDT_ACT)])
        self.assertEqual(link.state, LinkState.STOPPED)
        link.dataReceived(encode_u(UFunction.STARTDT_CON))
        self.assertEqual(link.state, LinkState.STARTED)

    def test_startdt_not_confirmed_in_t1_closes(self):
        clock, link, transport = connect()
        link.start_data_transfer()
        clock.advance(14.9)
        self.assertFalse(transport.disconnecting)
        clock.advance(0.2)
        self.assertTrue(transport.disconnecting)
        self.assertIn("STARTDT_ACT", link.counters.last_error)

    def test_i_frames_wait_for_startdt(self):
        clock, link, transport = connect()
        link.send_asdu(POINT)
        self.assertEqual(sent(transport), [])
        link.start_data_transfer()
        link.dataReceived(encode_u(UFunction.STARTDT_CON))
        self.assertEqual(sent(transport), [UFrame(UFunction.STARTDT_ACT), IFrame(0, 0, POINT)])

    def test_station_answers_startdt_testfr_stopdt(self):
        clock, link, transport = connect()
        link.dataReceived(encode_u(UFunction.STARTDT_ACT) + encode_u(UFunction.TESTFR_ACT))
        self.assertEqual(
            sent(transport), [UFrame(UFunction.STARTDT_CON), UFrame(UFunction.TESTFR_CON)]
        )
        self.assertEqual(link.state, LinkState.STARTED)
        link.dataReceived(encode_i(0, 0, POINT) + encode_u(UFunction.STOPDT_ACT))
        # The pending I-frame is acknowledged before STOPDT is confirmed.
        self.assertEqual(sent(transport), [SFrame(1), UFrame(UFunction.STOPDT_CON)])
        self.assertEqual(link.state, LinkState.STOPPED)


class WindowTests(SynchronousTestCase):
    def test_k_limits_unacknowledged_frames(self):
        clock, link, transport = started(LinkParams(k=3, w=2))
        for _ in range(5):
            link.send_asdu(POINT)
        self.assertEqual([f.send_seq for f in sent(transport)], [0, 1, 2])
        self.assertEqual(link.window_free(), -2)
        link.dataReceived(encode_s(2))
        self.assertEqual([f.send_seq for f in sent(transport)], [3, 4])
        link.dataReceived(encode_s(5))
        self.assertEqual(link.window_free(), 3)
        self.assertEqual(link.opened, 1)

    def test_send_queue_is_bounded(self):
        clock, link, transport = started(LinkParams(k=1, w=1, send_queue=2))
        link.send_asdu(POINT)
        link.send_asdu(POINT)
        link.send_asdu(POINT)
        self.assertRaises(SendQueueFull, link.send_asdu, POINT)

    def test_acknowledge_after_w_frames(self):
        clock, link, transport = started(LinkParams(k=12, w=8))
        link.dataReceived(b"".join(encode_i(i, 0, POINT) for i in range(7)))
        self.assertEqual(sent(transport), [])
        link.dataReceived(encode_i(7, 0, POINT))
        self.assertEqual(sent(transport), [SFrame(8)])
        self.assertEqual(len(link.asdus), 8)

    def test_t2_acknowledges_a_quiet_link(self):
        clock, link, transport = started()
        link.dataReceived(encode_i(0, 0, POINT))
        clock.advance(9.9)
        self.assertEqual(sent(transport), [])
        clock.advance(0.2)
        self.assertEqual(sent(transport), [SFrame(1)])

    def test_our_i_frame_carries_the_acknowledgement(self):
        clock, link, transport = started()
        link.dataReceived(encode_i(0, 0, POINT))
        link.send_asdu(POINT)
        self.assertEqual(sent(transport), [IFrame(0, 1, POINT)])
        clock.advance(11)
        self.assertEqual(sent(transport), [])

    def test_sequence_numbers_wrap(self):
        clock, link, transport = started(LinkParams(k=12, w=1))
        link._recv_seq = 32767
        link.dataReceived(encode_i(32767, 0, POINT) + encode_i(0, 0, POINT))
        self.assertEqual(sent(transport), [SFrame(0), SFrame(1)])
        self.assertFalse(transport.disconnecting)


class TimerTests(SynchronousTestCase):
    def test_t1_unacknowledged_i_frame_closes(self):
        clock, link, transport = started()
        link.send_asdu(POINT)
        clock.advance(10)
        link.dataReceived(encode_u(UFunction.TESTFR_ACT))  # traffic does not acknowledge
        clock.advance(5.1)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(link.counters.timeouts, 1)

    def test_t1_restarts_per_frame(self):
        clock, link, transport = started()
        link.send_asdu(POINT)
        clock.advance(10)
        link.send_asdu(POINT)
        link.dataReceived(encode_s(1))
        clock.advance(10)
        self.assertFalse(transport.disconnecting)
        clock.advance(5.1)
        self.assertTrue(transport.disconnecting)

    def test_t3_sends_test_frames_on_an_idle_link(self):
        clock, link, transport = started()
        clock.advance(19)
        link.dataReceived(encode_u(UFunction.TESTFR_CON))
        clock.advance(19)
        self.assertEqual(sent(transport), [])
        clock.advance(1.1)
        self.assertEqual(sent(transport), [UFrame(UFunction.TESTFR_ACT)])
        link.dataReceived(encode_u(UFunction.TESTFR_CON))
        clock.advance(15.1)
        self.assertFalse(transport.disconnecting)

    def test_test_frame_not_confirmed_closes(self):
        clock, link, transport = started()
        clock.advance(20.1)
        clock.advance(15.1)
        self.assertTrue(transport.disconnecting)

    def test_timers_are_cancelled_on_close(self):
        clock, link, transport = started()
        link.send_asdu(POINT)
        link.connectionLost()
        self.assertEqual(clock.getDelayedCalls(), [])
        self.assertEqual(len(link.lost), 1)

    def test_parameters_are_checked(self):
        self.assertRaises(ValueError, LinkParams, k=4, w=8)
        self.assertRaises(ValueError, LinkParams, t1=5, t2=10)
        self.assertRaises(ValueError, LinkParams, t3=0)


class SequenceErrorTests(SynchronousTestCase):
    def test_wrong_send_sequence_closes(self):
        clock, link, transport = started()
        link.dataReceived(encode_i(1, 0, POINT))
        self.assertTrue(transport.disconnecting)
        self.assertEqual(link.counters.sequence_errors, 1)
        self.assertEqual(link.asdus, [])

    def test_acknowledging_unsent_frames_closes(self):
        clock, link, transport = started()
        link.send_asdu(POINT)
        link.dataReceived(encode_s(2))
        self.assertTrue(transport.disconnecting)

    def test_nothing_is_handled_after_closing(self):
        clock, link, transport = started()
        link.dataReceived(encode_i(5, 0, POINT) + encode_i(0, 0, POINT))
        self.assertEqual(link.asdus, [])

    def test_unknown_and_malformed_asdus_are_skipped(self):
        clock, link, transport = started()
        link.dataReceived(
            encode_i(0, 0, bytes.fromhex("7a 01 03 00 01 00 00 00 00 00"))
            + encode_i(1, 0, bytes.fromhex("0d 05 03 00 01 00"))
            + encode_i(2, 0, POINT)
        )
        self.assertFalse(transport.disconnecting)
        self.assertEqual(len(link.asdus), 1)
        self.assertEqual(link.counters.asdus_skipped, 2)


class HostileBytesTests(SynchronousTestCase):
    """Whatever arrives, the link either handles it or closes cleanly; nothing raises."""

    @settings(max_examples=300, deadline=None)
    @given(st.lists(st.binary(max_size=80), max_size=6))
    def test_random_bytes(self, chunks):
        clock, link, transport = started()
        for chunk in chunks:
            link.dataReceived(chunk)
        clock.advance(60)

    @settings(max_examples=300, deadline=None)
    @given(st.data())
    def test_mutated_valid_traffic(self, data):
        clock, link, transport = started()
        stream = bytearray(
            b"".join(encode_i(i, 0, POINT) for i in range(10)) + encode_u(UFunction.TESTFR_ACT)
        )
        for _ in range(data.draw(st.integers(1, 5))):
            stream[data.draw(st.integers(0, len(stream) - 1))] = data.draw(st.integers(0, 255))
        cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=4)))
        for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True):
            link.dataReceived(bytes(stream[a:b]))
        if transport.disconnecting:
            self.assertIsNotNone(link.counters.last_error)
        link.connectionLost()
        self.assertEqual(clock.getDelayedCalls(), [])


class EagerTests(SynchronousTestCase):
    """The controlling station sends at once with TCP_NODELAY, on a real loopback TCP
    connection (an S-frame held by Nagle's algorithm stalls the station's k window); an
    outstation keeps Twisted's buffered writes (a turn's frames leave in one send)."""

    def test_master_sends_at_once_with_nodelay_outstation_buffers(self):
        import socket

        from twisted.internet import tcp
        from twisted.internet.testing import MemoryReactorClock

        from pydatacoll.protocols.iec104.master import Iec104Master
        from pydatacoll.protocols.iec104.station import Iec104Outstation

        s_frame = b"\x68\x04\x01\x00\x00\x00"
        for cls, eager in ((Iec104Master, True), (Iec104Outstation, False)):
            listener = socket.create_server(("127.0.0.1", 0))
            self.addCleanup(listener.close)
            peer = socket.create_connection(listener.getsockname())
            self.addCleanup(peer.close)
            ours, _ = listener.accept()
            self.addCleanup(ours.close)
            link = cls(Clock()) if eager else cls(Clock(), None)  # no database: none read
            transport = tcp.Connection(ours, link, MemoryReactorClock())
            transport.connected = True
            link.makeConnection(transport)
            nodelay = ours.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
            self.assertEqual(bool(nodelay), eager, cls.__name__)
            sent_before = len(transport._tempDataBuffer)
            link._write(s_frame, 0.0)
            if eager:
                peer.settimeout(1.0)
                received = b""
                while not received.endswith(s_frame):
                    received += peer.recv(100)  # after what connectionMade sent, if any
                self.assertEqual(len(transport._tempDataBuffer), sent_before)
            else:
                self.assertEqual(transport._tempDataBuffer[-1], s_frame)  # the next turn
