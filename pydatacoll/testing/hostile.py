"""Hostile peers: a Modbus TCP server and an IEC 104 RTU that accept our connection and
then misbehave in one chosen way, for tests, drills and benchmarks.

Run ``python -m pydatacoll.testing.hostile modbus:wrong_tid iec104:sequence ...`` (one
peer per argument, ``--port`` for the first one's port, the next ones follow; 0: any)
and point devices at them; it prints ``listening PROTOCOL:BEHAVIOUR HOST PORT`` for each
when ready, then one line per accepted connection (``connection PROTOCOL:BEHAVIOUR N at
T``) so that a test can see how often the collector comes back. Behaviours:

Modbus (the server answers every request):

- ``silent``: never answers;
- ``wrong_tid``: a well-formed answer with another transaction id;
- ``bad_length``: an MBAP header whose length field no PDU can have (0 or 300);
- ``random``: random bytes instead of the answer;
- ``drip``: the right answer, one byte per ``--drip`` seconds (default 1);
- ``wrong_unit``: the right answer from another unit id.

IEC 104 (the RTU answers STARTDT act, then):

- ``random``: random bytes instead of STARTDT con;
- ``bad_length``: a frame whose APCI length is below 4;
- ``drip``: STARTDT con, one byte per ``--drip`` seconds;
- ``sequence``: STARTDT con, then I-frames whose N(S) skips one;
- ``unknown_type``: STARTDT con, then ``--rate`` I-frames a second of type id 200;
- ``truncated``: STARTDT con, then ``--rate`` I-frames a second with an M_ME_NC_1 ASDU
  cut short (its value is missing).
"""

from __future__ import annotations

import argparse
import random
import struct
import sys
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.interfaces import IDelayedCall, IListeningPort
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.python.failure import Failure

from pydatacoll.errors import ModbusFrameError
from pydatacoll.protocols.iec104 import apci
from pydatacoll.protocols.iec104.apci import UFunction
from pydatacoll.protocols.modbus.framing import decode_adus, encode_adu

MODBUS_BEHAVIOURS = ("silent", "wrong_tid", "bad_length", "random", "drip", "wrong_unit")
IEC104_BEHAVIOURS = ("random", "bad_length", "drip", "sequence", "unknown_type", "truncated")


class HostileFactory(Factory):
    """Builds one hostile protocol per connection and remembers when each came."""

    def __init__(
        self,
        protocol: str,
        behaviour: str,
        clock: Any,
        *,
        seed: int = 0,
        drip: float = 1.0,
        rate: float = 50.0,
        announce: bool = False,
    ) -> None:
        known = MODBUS_BEHAVIOURS if protocol == "modbus" else IEC104_BEHAVIOURS
        if behaviour not in known:
            raise ValueError(f"{protocol} behaviours: {', '.join(known)}")
        self.protocol_name = protocol
        self.behaviour = behaviour
        self.clock = clock
        self.rng = random.Random(seed)
        self.drip = drip
        self.rate = rate
        self.announce = announce
        self.label = f"{protocol}:{behaviour}"
        #: When each connection was accepted (clock seconds).
        self.connections: list[float] = []
        self.open: set[Protocol] = set()

    def buildProtocol(self, addr: Any) -> Protocol:  # noqa: N802 (Twisted API)
        """A new hostile peer for this connection."""
        self.connections.append(self.clock.seconds())
        if self.announce:
            print(
                f"connection {self.label} {len(self.connections)} at {self.clock.seconds():.3f}",
                flush=True,
            )
        peer = HostileModbus(self) if self.protocol_name == "modbus" else HostileIec104(self)
        return peer


class _Hostile(Protocol):
    def __init__(self, factory: HostileFactory) -> None:
        self.hostile = factory
        self.behaviour = factory.behaviour
        self.clock = factory.clock
        self._buffer = b""
        self._timers: list[IDelayedCall] = []
        self._outgoing = bytearray()

    def connectionMade(self) -> None:  # noqa: N802 (Twisted API)
        self.hostile.open.add(self)

    def connectionLost(self, reason: Failure = connectionDone) -> None:  # noqa: N802
        self.hostile.open.discard(self)
        for timer in self._timers:
            if timer.active():
                timer.cancel()
        self._timers.clear()

    def _later(self, delay: float, call: Any, *args: Any) -> None:
        self._timers = [t for t in self._timers if t.active()]
        self._timers.append(self.clock.callLater(delay, call, *args))

    def _drip(self, data: bytes) -> None:
        """Send ``data`` one byte per ``drip`` seconds."""
        self._outgoing += data
        if len(self._outgoing) == len(data):
            self._later(self.hostile.drip, self._drip_one)

    def _drip_one(self) -> None:
        if not self._outgoing or self.transport is None:
            return
        self.transport.write(bytes(self._outgoing[:1]))
        del self._outgoing[:1]
        if self._outgoing:
            self._later(self.hostile.drip, self._drip_one)

    def _random(self, size: int) -> bytes:
        return bytes(self.hostile.rng.getrandbits(8) for _ in range(size))


class HostileModbus(_Hostile):
    """A Modbus TCP server that answers every request in its own wrong way."""

    def dataReceived(self, data: bytes) -> None:  # noqa: N802 (Twisted API)
        self._buffer += data
        try:
            adus, self._buffer = decode_adus(self._buffer)
        except ModbusFrameError:
            self.transport.loseConnection()  # type: ignore[union-attr]
            return
        for adu in adus:
            self._answer(adu.transaction_id, adu.unit_id, adu.pdu)

    def _answer(self, tid: int, unit: int, pdu: bytes) -> None:
        right = _modbus_response(pdu)
        behaviour = self.behaviour
        assert self.transport is not None
        if behaviour == "silent":
            return
        if behaviour == "wrong_tid":
            self.transport.write(encode_adu(tid ^ 0x8000, unit, right))
        elif behaviour == "bad_length":
            length = self.hostile.rng.choice((0, 300))
            self.transport.write(struct.pack(">HHHB", tid, 0, length, unit) + right)
        elif behaviour == "random":
            self.transport.write(self._random(self.hostile.rng.randint(1, 64)))
        elif behaviour == "drip":
            self._drip(encode_adu(tid, unit, right))
        elif behaviour == "wrong_unit":
            self.transport.write(encode_adu(tid, (unit + 1) & 0xFF, right))


def _modbus_response(pdu: bytes) -> bytes:
    """A correct answer of zeros (reads) or the echo (writes) to a request PDU."""
    function = pdu[0]
    if function in (1, 2, 3, 4) and len(pdu) >= 5:
        count = int.from_bytes(pdu[3:5], "big")
        size = (count + 7) // 8 if function in (1, 2) else 2 * count
        return bytes((function, size)) + bytes(size)
    return pdu[:5]


class HostileIec104(_Hostile):
    """An IEC 104 controlled station that answers STARTDT act in its own wrong way."""

    def __init__(self, factory: HostileFactory) -> None:
        super().__init__(factory)
        self._buffer_i = bytearray()
        self._send_seq = 0
        self._recv_seq = 0

    def dataReceived(self, data: bytes) -> None:  # noqa: N802 (Twisted API)
        self._buffer_i += data
        try:
            frames, used = apci.decode_apdus(self._buffer_i)
        except Exception:
            self.transport.loseConnection()  # type: ignore[union-attr]
            return
        del self._buffer_i[:used]
        for frame in frames:
            if isinstance(frame, apci.IFrame):
                self._recv_seq = (self._recv_seq + 1) % apci.SEQ_MODULO
            elif isinstance(frame, apci.UFrame):
                self._u_frame(frame.function)

    def _u_frame(self, function: UFunction) -> None:
        assert self.transport is not None
        if function is UFunction.TESTFR_ACT:
            self.transport.write(apci.encode_u(UFunction.TESTFR_CON))
            return
        if function is not UFunction.STARTDT_ACT:
            return
        con = apci.encode_u(UFunction.STARTDT_CON)
        behaviour = self.behaviour
        if behaviour == "random":
            self.transport.write(self._random(self.hostile.rng.randint(1, 64)))
        elif behaviour == "bad_length":
            self.transport.write(bytes((apci.START, 2, 0x0B, 0)))
        elif behaviour == "drip":
            self._drip(con)
        else:
            self.transport.write(con)
            if behaviour == "sequence":
                self._send_seq = 5  # the first I-frame should carry N(S) 0
                self._i_frame(_measurement(1001, 1.5))
            else:
                self._later(0, self._flood)

    def _flood(self) -> None:
        if self.behaviour == "unknown_type":
            asdu = bytes((200, 1, 3, 0, 1, 0, 0xE9, 0x03, 0x00, 0x00))
        else:  # truncated: M_ME_NC_1 with its IOA but no value or quality
            asdu = bytes((13, 1, 3, 0, 1, 0, 0xE9, 0x03, 0x00))
        self._i_frame(asdu)
        self._later(1.0 / self.hostile.rate, self._flood)

    def _i_frame(self, asdu: bytes) -> None:
        assert self.transport is not None
        self.transport.write(apci.encode_i(self._send_seq, self._recv_seq, asdu))
        self._send_seq = (self._send_seq + 1) % apci.SEQ_MODULO


def _measurement(ioa: int, value: float) -> bytes:
    """An M_ME_NC_1 ASDU, spontaneous, common address 1."""
    return bytes((13, 1, 3, 0, 1, 0)) + ioa.to_bytes(3, "little") + struct.pack("<fB", value, 0)


def listen(
    reactor: Any, protocol: str, behaviour: str, port: int = 0, **options: Any
) -> Deferred[tuple[IListeningPort, HostileFactory]]:
    """Listen on 127.0.0.1:``port`` (0: any); fires with the port and the factory."""
    factory = HostileFactory(protocol, behaviour, reactor, **options)
    d = TCP4ServerEndpoint(reactor, port, interface="127.0.0.1").listen(factory)
    return d.addCallback(lambda listening: (listening, factory))


def main(argv: list[str] | None = None) -> None:
    """The command line (see the module docstring)."""
    parser = argparse.ArgumentParser(
        prog="python -m pydatacoll.testing.hostile", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "peers", nargs="+", help="PROTOCOL:BEHAVIOUR, e.g. modbus:wrong_tid iec104:sequence"
    )
    parser.add_argument("--port", type=int, default=0, help="of the first peer (0: any)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--drip", type=float, default=1.0, help="seconds per byte")
    parser.add_argument("--rate", type=float, default=50.0, help="bad frames per second")
    args = parser.parse_args(argv)
    from twisted.internet import reactor
    from twisted.internet.defer import gatherResults

    listening = []
    for index, spec in enumerate(args.peers):
        protocol, _, behaviour = spec.partition(":")
        if protocol not in ("modbus", "iec104"):
            parser.error(f"{spec}: the protocol is modbus or iec104")
        try:
            factory = HostileFactory(
                protocol, behaviour, reactor, seed=args.seed + index, drip=args.drip,
                rate=args.rate, announce=True,
            )  # fmt: skip
        except ValueError as e:
            parser.error(f"{spec}: {e}")
        factory.label = spec
        port = args.port + index if args.port else 0
        endpoint = TCP4ServerEndpoint(reactor, port, interface="127.0.0.1")
        listening.append(endpoint.listen(factory))

    def ready(ports: list[IListeningPort]) -> None:
        for spec, port in zip(args.peers, ports, strict=True):
            address: Any = port.getHost()
            print(f"listening {spec} 127.0.0.1 {address.port}", flush=True)

    def failed(failure: Failure) -> None:
        print(failure.getErrorMessage(), file=sys.stderr)
        reactor.stop()  # type: ignore[attr-defined]

    gatherResults(listening, consumeErrors=True).addCallbacks(ready, failed)
    reactor.run()  # type: ignore[attr-defined]


if __name__ == "__main__":
    main()
