"""In-memory doubles for the gateway's unit tests: no redis-server, no real socket.

- `Reactor`: a `MemoryReactorClock` whose TCP ports can be dialled (`dial`) through
  `twisted.test.iosim` pumps, and which refuses to listen twice on one port.
- `MemoryReplies`: the `ReplyListener` side of device_ctrl over `MemoryRedis`.
- `Master`: an IEC 104 master that records what it receives.
"""

import json

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.error import CannotListenError, ConnectionDone
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from twisted.test import iosim

from pydatacoll.control.replies import ReplyTimeout
from pydatacoll.protocols.iec104.link import Iec104Link, LinkParams
from pydatacoll.store import keys


class _Port:
    def __init__(self, reactor, port):
        self.reactor = reactor
        self.port = port

    def getHost(self):  # noqa: N802 (Twisted API)
        return IPv4Address("TCP", "127.0.0.1", self.port)

    def stopListening(self):  # noqa: N802 (Twisted API)
        self.reactor.listening.pop(self.port, None)


class Reactor(MemoryReactorClock):
    """Ports that can be dialled; a port in use cannot be listened on again."""

    def __init__(self):
        super().__init__()
        self.listening = {}
        self.pumps = []
        self._peers = 40000

    def listenTCP(self, port, factory, backlog=50, interface=""):  # noqa: N802 (Twisted API)
        if port in self.listening:
            raise CannotListenError(interface, port, OSError(98, "Address already in use"))
        self.listening[port] = factory
        return _Port(self, port)

    def dial(self, port, client, host="127.0.0.1"):
        """Connect ``client`` to what listens on ``port`` (refused: closed at once)."""
        self._peers += 1
        peer = IPv4Address("TCP", host, self._peers)
        server = self.listening[port].buildProtocol(peer)
        client_transport = iosim.FakeTransport(client, False, peer, self.listening_address(port))
        if server is None:  # the factory refuses: the connection is closed at once
            client.makeConnection(client_transport)
            client.connectionLost(Failure(ConnectionDone("closed by the listener")))
            return
        server_transport = iosim.FakeTransport(server, True, self.listening_address(port), peer)
        self.pumps.append(iosim.connect(server, server_transport, client, client_transport))
        self.flush()

    def listening_address(self, port):
        return IPv4Address("TCP", "127.0.0.1", port)

    def flush(self):
        """Move every byte (and every close) in flight, until nothing moves."""
        moved = True
        while moved:
            moved = False
            for pump in list(self.pumps):
                if pump.pump():
                    moved = True
            self.advance(0)

    def wait(self, seconds, step=0.1):
        """Let ``seconds`` pass, moving bytes at every step."""
        for _ in range(round(seconds / step)):
            self.advance(step)
            self.flush()


class MemoryReplies:
    """`ReplyListener`'s ``wait``/``reply_channel`` on a clock; the test's collector hands
    each reply it publishes to ``deliver``."""

    subscribed = True

    def __init__(self, clock):
        self.clock = clock
        self.pending = {}

    def reply_channel(self, request_id):
        return keys.REPLY % ("memory", request_id)

    def wait(self, request_id, timeout):
        def cancel(_):
            entry = self.pending.pop(request_id, None)
            if entry is not None and entry[1].active():
                entry[1].cancel()

        d = Deferred(cancel)
        self.pending[request_id] = (d, self.clock.callLater(timeout, self._expire, request_id))
        return d

    def _expire(self, request_id):
        d, _ = self.pending.pop(request_id)
        d.errback(ReplyTimeout(request_id))

    def deliver(self, channel, message):
        """A message published on ``channel``: the reply of a waiting request, if any."""
        for request_id, (d, timer) in list(self.pending.items()):
            if channel == self.reply_channel(request_id):
                del self.pending[request_id]
                timer.cancel()
                d.callback(json.loads(message))


class Master(Iec104Link):
    """A master of the tests: records ASDUs and the loss of the link."""

    def __init__(self, clock, start=True):
        super().__init__(clock, LinkParams(w=1))  # acknowledges every I-frame at once
        self.asdus = []
        self.lost = Deferred()
        self.start = start

    def connectionMade(self):  # noqa: N802 (Twisted API)
        super().connectionMade()
        if self.start:
            self.start_data_transfer()

    def asdu_received(self, asdu):
        self.asdus.append(asdu)

    def link_lost(self, reason):
        if not self.lost.called:
            self.lost.callback(None)

    def events(self):
        """The spontaneous ASDUs received (cause 3)."""
        return [a for a in self.asdus if a.cause == 3]
