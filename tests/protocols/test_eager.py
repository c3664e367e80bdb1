"""`write_now`: a frame goes out at once on an idle TCP connection, in order otherwise."""

from __future__ import annotations

import socket

from twisted.internet import main, tcp
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.trial.unittest import SynchronousTestCase

from pydatacoll.protocols.eager import write_now
from pydatacoll.protocols.modbus import pdu as pdus
from pydatacoll.protocols.modbus.codec import Table
from pydatacoll.protocols.modbus.link import ModbusLink


class WriteNowTests(SynchronousTestCase):
    def setUp(self) -> None:
        ours, self.peer = socket.socketpair()
        self.addCleanup(ours.close)
        self.addCleanup(self.peer.close)
        self.peer.settimeout(1.0)
        self.reactor = MemoryReactorClock()
        self.transport = tcp.Connection(ours, Protocol(), self.reactor)
        self.transport.connected = True

    def received(self, size: int = 100) -> bytes:
        return self.peer.recv(size)

    def test_idle_connection_sends_at_once(self) -> None:
        write_now(self.transport, b"\x00\x01frame")
        self.assertEqual(self.received(), b"\x00\x01frame")
        # nothing buffered, the reactor never asked to watch for writability
        self.assertEqual(self.reactor.getWriters(), [])
        self.assertEqual(self.transport.dataBuffer, b"")
        self.assertEqual(self.transport._tempDataLen, 0)

    def test_behind_buffered_bytes_it_waits_its_turn(self) -> None:
        self.transport.write(b"first")
        write_now(self.transport, b"second")
        self.assertIn(self.transport, self.reactor.getWriters())
        self.peer.setblocking(False)
        with self.assertRaises(BlockingIOError):
            self.peer.recv(100)
        self.transport.doWrite()
        self.peer.setblocking(True)
        self.assertEqual(self.received(), b"firstsecond")

    def test_rest_of_a_partial_send_is_buffered(self) -> None:
        self.transport.writeSomeData = lambda data: 3  # type: ignore[method-assign]
        write_now(self.transport, b"abcdefgh")
        self.assertEqual(self.transport._tempDataBuffer, [b"defgh"])
        self.assertIn(self.transport, self.reactor.getWriters())

    def test_lost_connection_is_left_to_the_reactor(self) -> None:
        self.transport.writeSomeData = lambda data: main.CONNECTION_LOST  # type: ignore[method-assign]
        write_now(self.transport, b"abc")
        self.assertEqual(self.transport._tempDataBuffer, [b"abc"])
        self.assertIn(self.transport, self.reactor.getWriters())

    def test_closing_connection_writes_as_before(self) -> None:
        self.transport.disconnecting = True
        write_now(self.transport, b"abc")
        self.assertEqual(self.transport._tempDataBuffer, [b"abc"])

    def test_aborted_connection_sends_nothing_more(self) -> None:
        self.transport.abortConnection()
        write_now(self.transport, b"abc")
        self.peer.setblocking(False)
        with self.assertRaises(BlockingIOError):
            self.peer.recv(100)

    def test_other_transports_write(self) -> None:
        transport = StringTransport()
        write_now(transport, b"abc")
        self.assertEqual(transport.value(), b"abc")

    def test_modbus_requests_go_out_at_once(self) -> None:
        """The Modbus link sends a request in the call that makes it (no reactor turn)."""
        link = ModbusLink(Clock(), timeout=1.0)
        self.transport.protocol = link
        link.makeConnection(self.transport)
        link.request(1, pdus.read_request(Table.HOLDING, 0, 30))
        self.assertEqual(self.received(), bytes.fromhex("0001 0000 0006 01 03 0000 001e"))
        self.assertEqual(self.reactor.getWriters(), [])
