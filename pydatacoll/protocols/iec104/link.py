"""The IEC 60870-5-104 link: APCI sequencing, k/w windows and the t1/t2/t3 timers.

`Iec104Link` is shared by both ends: our master (`client.Iec104Master`) and our RTU
simulator. It feeds bytes to the pure codecs, checks N(S)/N(R), acknowledges, runs the
timers on an injected clock and hands each decoded ASDU to `asdu_received`.

Timers are lazy: a frame only records a time stamp; the one pending call of each timer
checks the stamps when it fires and re-arms itself, so the hot path resets no timer.
"""

from __future__ import annotations

import collections
import datetime
import enum
from collections.abc import Callable
from typing import Any

import attrs
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure

from pydatacoll.errors import ApciError, AsduError, Iec104Error, UnknownTypeError
from pydatacoll.logs import RateLimitedLog
from pydatacoll.protocols.eager import write_now
from pydatacoll.protocols.iec104 import apci
from pydatacoll.protocols.iec104.apci import IFrame, SFrame, UFrame, UFunction
from pydatacoll.protocols.iec104.asdu import (
    IEC104,
    TYPES,
    Asdu,
    AsduParams,
    decode_asdu,
    encode_asdu,
)

_CP24_TYPES = frozenset(t for t, spec in TYPES.items() if spec.time == 3)
_ACT_OF_CON = {
    UFunction.STARTDT_CON: UFunction.STARTDT_ACT,
    UFunction.STOPDT_CON: UFunction.STOPDT_ACT,
    UFunction.TESTFR_CON: UFunction.TESTFR_ACT,
}


@attrs.frozen
class LinkParams:
    """Link parameters (IEC 60870-5-104 5.2, 5.5 and 9.6); times in seconds."""

    k: int = attrs.field(default=12, validator=attrs.validators.in_(range(1, 32768)))
    w: int = attrs.field(default=8, validator=attrs.validators.in_(range(1, 32768)))
    t0: float = 30.0
    t1: float = 15.0
    t2: float = 10.0
    t3: float = 20.0
    #: I-frames waiting for the k window; past it `send_asdu` refuses (`SendQueueFull`).
    send_queue: int = 256

    def __attrs_post_init__(self) -> None:
        if self.w > self.k:
            raise ValueError(f"w ({self.w}) must not exceed k ({self.k})")
        for name in ("t0", "t1", "t2", "t3"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        if self.t2 >= self.t1:
            raise ValueError(f"t2 ({self.t2}) must be less than t1 ({self.t1})")


class LinkState(enum.Enum):
    """Where a link is: connecting (TCP), stopped (no data transfer), started."""

    CONNECTING = "connecting"
    STOPPED = "stopped"
    STARTED = "started"
    CLOSED = "closed"


class SendQueueFull(Iec104Error):
    """More I-frames wait for the k window than the link's ``send_queue`` allows."""


@attrs.define
class LinkCounters:
    """What a link has done, for the device status."""

    frames_received: int = 0
    frames_sent: int = 0
    asdus_received: int = 0
    points_received: int = 0
    asdus_skipped: int = 0
    sequence_errors: int = 0
    timeouts: int = 0
    last_error: str | None = None

    def snapshot(self) -> dict[str, Any]:
        """The counters as a JSON object."""
        return attrs.asdict(self)


class Iec104Link(Protocol):
    """One end of an IEC 104 connection (see the module docstring)."""

    log = Logger()
    #: Frames go out at once (`write_now`, with TCP_NODELAY), not on the next reactor
    #: turn: the controlling station's commands and acknowledgements must not wait for
    #: the rest of a turn's work (nor for Nagle's algorithm: an S-frame held until the
    #: previous one is acknowledged stalls the station's k window). An outstation that
    #: streams data keeps Twisted's buffered writes: a turn's frames leave in one send.
    eager = False

    def __init__(
        self,
        clock: IReactorTime,
        params: LinkParams | None = None,
        asdu_params: AsduParams = IEC104,
        name: str = "iec104",
        counters: LinkCounters | None = None,
        limiter: RateLimitedLog | None = None,
    ) -> None:
        self.clock = clock
        self.params = params or LinkParams()
        self.asdu_params = asdu_params
        self.name = name
        self.counters = counters if counters is not None else LinkCounters()
        #: Per-frame complaints (skipped ASDUs...) are rate-limited: a peer sending 50 bad
        #: frames a second writes one line per window, not 50. Shared across reconnects
        #: when the supervisor passes its own; flushed when the connection closes.
        self.limiter = limiter if limiter is not None else RateLimitedLog(self.log, clock)
        self.state = LinkState.CONNECTING
        #: Optional observer of every frame: (direction "rx"/"tx", octets).
        self.frame_observer: Callable[[str, bytes], None] | None = None
        self._buffer = bytearray()
        self._send_seq = 0  # N(S) of our next I-frame
        self._recv_seq = 0  # N(S) we expect next = N(R) we send
        self._acked = 0  # oldest of our I-frames not acknowledged
        self._sent_times: collections.deque[float] = collections.deque()  # per unacked frame
        self._queue: collections.deque[bytes] = collections.deque()
        self._unacked_received = 0  # I-frames received since we last sent N(R)
        self._first_unacked_at = 0.0
        self._last_rx = 0.0
        self._last_tx = 0.0
        self._u_pending: dict[UFunction, float] = {}  # act sent -> when, awaiting con
        self._timers: dict[str, IDelayedCall] = {}
        self._closing = False

    # --- Protocol --------------------------------------------------------------------

    def connectionMade(self) -> None:
        if self.eager:
            no_delay = getattr(self.transport, "setTcpNoDelay", None)
            if no_delay is not None:
                no_delay(True)
        now = self.clock.seconds()
        self._last_rx = self._last_tx = now
        self.state = LinkState.STOPPED
        self._arm("t3", self.params.t3, self._t3_fired)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.state = LinkState.CLOSED
        for call in self._timers.values():
            if call.active():
                call.cancel()
        self._timers.clear()
        self._queue.clear()
        # The counts of this connection's complaints are logged with its end (and no
        # summary timer outlives it).
        self.limiter.flush()
        self.link_lost(reason)

    def dataReceived(self, data: bytes) -> None:
        if self._closing:
            return
        buffer = self._buffer
        buffer += data
        try:
            frames, used = apci.decode_apdus(buffer)
        except ApciError as exc:
            self._fail(f"bad APCI: {exc}; {bytes(exc.data).hex(' ')}")
            return
        if not frames:
            return
        if self.frame_observer is not None:
            pos = 0
            while pos < used:
                stop = pos + 2 + buffer[pos + 1]
                self.frame_observer("rx", bytes(buffer[pos:stop]))
                pos = stop
        del buffer[:used]
        self._last_rx = self.clock.seconds()
        self.counters.frames_received += len(frames)
        for frame in frames:
            if self._closing:
                return
            if type(frame) is IFrame:
                self._i_frame(frame)
            elif type(frame) is SFrame:
                self._acknowledged(frame.recv_seq)
            else:
                self._u_frame(frame)  # type: ignore[arg-type]

    # --- receiving -------------------------------------------------------------------

    def _i_frame(self, frame: IFrame) -> None:
        if frame.send_seq != self._recv_seq:
            self.counters.sequence_errors += 1
            self._fail(f"sequence error: N(S) {frame.send_seq}, expected {self._recv_seq}")
            return
        if not self._acknowledged(frame.recv_seq):
            return
        self._recv_seq = (self._recv_seq + 1) % apci.SEQ_MODULO
        if self._unacked_received == 0:
            self._first_unacked_at = self._last_rx
            self._arm("t2", self.params.t2, self._t2_fired)
        self._unacked_received += 1
        if self._unacked_received >= self.params.w:
            self._send_s()
        self.counters.asdus_received += 1
        try:
            data = frame.asdu
            # Only CP24Time2a types need the current time (for their hour).
            now = self._now() if data[0] in _CP24_TYPES else None
            asdu = decode_asdu(data, self.asdu_params, now)
        except UnknownTypeError as exc:
            # Not a link fault: a station may send types we do not decode (private ones).
            self.counters.asdus_skipped += 1
            self.limiter.emit(
                LogLevel.info,
                "unknown_type",
                "{name}: skipped an ASDU of unknown type {type_id}: {hex}",
                name=self.name,
                type_id=exc.type_id,
                hex=frame.asdu.hex(" "),
            )
            return
        except AsduError as exc:
            # The framing is intact (the APCI length held): the next frame is sound.
            self.counters.asdus_skipped += 1
            self.counters.last_error = str(exc)
            self.limiter.emit(
                LogLevel.warn,
                "malformed",
                "{name}: skipped a malformed ASDU: {error}: {hex}",
                name=self.name,
                error=str(exc),
                hex=frame.asdu.hex(" "),
            )
            return
        self.counters.points_received += len(asdu.ioas)
        self.asdu_received(asdu)

    def _acknowledged(self, recv_seq: int) -> bool:
        """Take the peer's N(R); a value outside our unacknowledged frames closes the link."""
        outstanding = apci.seq_distance(self._acked, self._send_seq)
        done = apci.seq_distance(self._acked, recv_seq)
        if done > outstanding:
            self.counters.sequence_errors += 1
            self._fail(
                f"sequence error: N(R) {recv_seq} acknowledges frames not sent "
                f"(unacknowledged {self._acked}..{self._send_seq})"
            )
            return False
        if done:
            self._acked = recv_seq
            for _ in range(done):
                self._sent_times.popleft()
            self._flush_queue()
            if self._window_free() and not self._queue:
                self.window_open()
        return True

    def _u_frame(self, frame: UFrame) -> None:
        function = frame.function
        if function is UFunction.TESTFR_ACT:
            self._send_u(UFunction.TESTFR_CON)
        elif function is UFunction.STARTDT_ACT:
            self._send_u(UFunction.STARTDT_CON)
            self._started()
        elif function is UFunction.STOPDT_ACT:
            # Acknowledge what we received, then confirm (IEC 60870-5-104 5.3).
            if self._unacked_received:
                self._send_s()
            self._send_u(UFunction.STOPDT_CON)
            self.state = LinkState.STOPPED
            self.data_transfer_stopped()
        else:
            act = _ACT_OF_CON[function]
            if self._u_pending.pop(act, None) is None:
                self.log.info(
                    "{name}: unexpected {function}", name=self.name, function=function.name
                )
                return
            if act is UFunction.STARTDT_ACT:
                self._started()
            elif act is UFunction.STOPDT_ACT:
                self.state = LinkState.STOPPED
                self.data_transfer_stopped()

    def _started(self) -> None:
        if self.state is LinkState.STARTED:
            return
        self.state = LinkState.STARTED
        self._flush_queue()
        self.data_transfer_started()

    # --- sending ---------------------------------------------------------------------

    def start_data_transfer(self) -> None:
        """Send STARTDT act (the master does this once connected)."""
        self._send_u(UFunction.STARTDT_ACT)

    def stop_data_transfer(self) -> None:
        """Send STOPDT act; new I-frames wait until data transfer starts again."""
        self._send_u(UFunction.STOPDT_ACT)

    def send_asdu(self, asdu: Asdu | bytes) -> None:
        """Send an ASDU now, or queue it while the k window is full or transfer is stopped."""
        data = asdu if isinstance(asdu, bytes) else encode_asdu(asdu, self.asdu_params)
        if self.state is LinkState.CLOSED or self._closing:
            raise Iec104Error("the link is closed")
        if self._queue or not self._can_send_i():
            if len(self._queue) >= self.params.send_queue:
                raise SendQueueFull(f"{len(self._queue)} I-frames already wait for the window")
            self._queue.append(data)
            return
        self._write_i(data)

    def window_free(self) -> int:
        """How many I-frames can go out now without waiting."""
        if self.state is not LinkState.STARTED or self._closing:
            return 0
        return max(0, self.params.k - apci.seq_distance(self._acked, self._send_seq)) - len(
            self._queue
        )

    def _can_send_i(self) -> bool:
        return self.state is LinkState.STARTED and self._window_free()

    def _window_free(self) -> bool:
        return apci.seq_distance(self._acked, self._send_seq) < self.params.k

    def _flush_queue(self) -> None:
        queue = self._queue
        while queue and self._can_send_i() and not self._closing:
            self._write_i(queue.popleft())

    def _write_i(self, data: bytes) -> None:
        now = self.clock.seconds()
        if not self._sent_times:
            self._arm("t1", self.params.t1, self._t1_fired)
        self._sent_times.append(now)
        frame = apci.encode_i(self._send_seq, self._recv_seq, data)
        self._send_seq = (self._send_seq + 1) % apci.SEQ_MODULO
        self._unacked_received = 0  # the I-frame carries our N(R)
        self._write(frame, now)

    def _send_s(self) -> None:
        self._unacked_received = 0
        self._write(apci.encode_s(self._recv_seq), self.clock.seconds())

    def _send_u(self, function: UFunction) -> None:
        now = self.clock.seconds()
        if function.value in (0x07, 0x13, 0x43):  # an act: t1 runs until its con
            self._u_pending[function] = now
            self._arm("t1", self.params.t1, self._t1_fired)
        self._write(apci.encode_u(function), now)

    def _write(self, frame: bytes, now: float) -> None:
        if self.transport is None or self._closing:
            return
        self._last_tx = now
        self.counters.frames_sent += 1
        if self.frame_observer is not None:
            self.frame_observer("tx", frame)
        if self.eager:
            write_now(self.transport, frame)
        else:
            self.transport.write(frame)

    # --- timers ----------------------------------------------------------------------

    def _arm(self, name: str, delay: float, fire: Callable[[], None]) -> None:
        call = self._timers.get(name)
        if call is not None and call.active():
            return
        self._timers[name] = self.clock.callLater(delay, self._fire, name, fire)

    def _fire(self, name: str, fire: Callable[[], None]) -> None:
        self._timers.pop(name, None)
        if self._closing or self.state is LinkState.CLOSED:
            return
        fire()

    def _t1_fired(self) -> None:
        now = self.clock.seconds()
        t1 = self.params.t1
        first_i = self._sent_times[0] if self._sent_times else None
        stamps = [*self._u_pending.values(), *([first_i] if first_i is not None else [])]
        oldest = min(stamps, default=None)
        if oldest is None:
            return
        if now - oldest >= t1:
            self.counters.timeouts += 1
            what = "confirmation of " + ", ".join(f.name for f in self._u_pending)
            if first_i == oldest:
                what = f"acknowledgement of I-frame {self._acked}"
            self._fail(f"t1 expired ({t1:g} s) waiting for the {what}")
            return
        self._arm("t1", oldest + t1 - now, self._t1_fired)

    def _t2_fired(self) -> None:
        if self._unacked_received:
            self._send_s()

    def _t3_fired(self) -> None:
        now = self.clock.seconds()
        idle = now - max(self._last_rx, self._last_tx)
        t3 = self.params.t3
        if idle >= t3:
            if UFunction.TESTFR_ACT not in self._u_pending:
                self._send_u(UFunction.TESTFR_ACT)
            idle = 0.0
        self._arm("t3", max(t3 - idle, 0.001), self._t3_fired)

    # --- closing ---------------------------------------------------------------------

    def _fail(self, reason: str) -> None:
        """Close the link because of ``reason`` (logged; the supervisor reconnects)."""
        if self._closing:
            return
        self._closing = True
        self.counters.last_error = reason
        self.log.warn("{name}: closing the link: {reason}", name=self.name, reason=reason)
        if self.transport is not None:
            self.transport.loseConnection()

    def close(self, reason: str = "closed by request") -> None:
        """Close the link on purpose."""
        if self._closing:
            return
        self._closing = True
        self.log.info("{name}: {reason}", name=self.name, reason=reason)
        if self.transport is not None:
            self.transport.loseConnection()

    def _now(self) -> datetime.datetime:
        return datetime.datetime.fromtimestamp(self.clock.seconds(), self.asdu_params.tz)

    # --- for subclasses --------------------------------------------------------------

    def asdu_received(self, asdu: Asdu) -> None:
        """A decoded ASDU arrived."""

    def data_transfer_started(self) -> None:
        """STARTDT was confirmed (master) or received (station)."""

    def data_transfer_stopped(self) -> None:
        """STOPDT was confirmed or received."""

    def window_open(self) -> None:
        """Acknowledgements freed the k window and nothing is queued."""

    def link_lost(self, reason: Failure) -> None:
        """The connection is gone."""
