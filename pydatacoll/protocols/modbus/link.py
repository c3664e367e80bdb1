"""The Modbus TCP link: the `Protocol` of one connection; framing in, transactions matched,
Deferreds out.

The protocol sends `pdu.Request` values to unit ids, matches responses by MBAP
transaction id, times each request out on the injected clock and discards a late
response (its transaction id is no longer pending, so it cannot answer a newer request).
At most ``max_in_flight`` requests are outstanding; the others wait in a queue bounded by
``max_queue`` (overflow policy: the new request fails at once with `ModbusQueueFull`).
Bytes that do not frame or decode close the link (logged with their hex); the
supervisor (`client.ModbusClient`) reconnects.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

import attrs
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import LogLevel
from twisted.python.failure import Failure

from pydatacoll.errors import (
    ModbusExceptionResponse,
    ModbusFrameError,
    ModbusNotConnected,
    ModbusQueueFull,
    ModbusTimeout,
)
from pydatacoll.logs import RateLimitedLog, logger
from pydatacoll.protocols.eager import write_now
from pydatacoll.protocols.modbus import pdu as pdus
from pydatacoll.protocols.modbus.codec import Table
from pydatacoll.protocols.modbus.framing import decode_adus, encode_adu


@attrs.define
class LinkCounters:
    """Counters of one device link, kept across reconnects; `snapshot` is a plain dict."""

    state: str = "stopped"
    connects: int = 0
    reconnects: int = 0
    requests: int = 0
    responses: int = 0
    timeouts: int = 0
    exceptions: int = 0
    frame_errors: int = 0
    late_responses: int = 0
    #: Responses whose transaction id was never sent (or long forgotten): a peer fault.
    unexpected_responses: int = 0
    #: Whether the current connection has had a valid response (one matched to its
    #: request, an exception response included): until then the device is not online.
    answered: bool = False
    #: Why the last connection without a valid response was not good (None once answered).
    reason: str | None = None
    queue_full: int = 0
    not_connected: int = 0
    rtt_last: float | None = None
    rtt_avg: float | None = None
    rtt_max: float | None = None
    last_error: str | None = None
    last_error_time: float | None = None
    last_response_time: float | None = None
    queued: int = 0
    in_flight: int = 0

    def record_rtt(self, rtt: float) -> None:
        """Update the round-trip figures (``rtt_avg`` is an EWMA over ~16 responses)."""
        self.rtt_last = rtt
        self.rtt_avg = rtt if self.rtt_avg is None else self.rtt_avg + (rtt - self.rtt_avg) / 16
        self.rtt_max = rtt if self.rtt_max is None else max(self.rtt_max, rtt)

    def record_error(self, message: str, when: float) -> None:
        """Remember the last error and when it happened."""
        self.last_error = message
        self.last_error_time = when

    def snapshot(self) -> dict[str, Any]:
        """The counters as a plain dict (JSON-ready)."""
        # every device's status, every 2 s: the public field names are listed once
        # (attrs.asdict with a filter walked and tested every field each time)
        return {name: getattr(self, name) for name in _SNAPSHOT_FIELDS}

    # counters at the start of the current connection: what went wrong on it since
    _at_connect: tuple[int, int, int, int] = (0, 0, 0, 0)

    def connected(self) -> None:
        """A new connection: nothing answered on it yet."""
        self.answered = False
        self._at_connect = self._problem_counts()

    def _problem_counts(self) -> tuple[int, int, int, int]:
        return (self.timeouts, self.late_responses, self.unexpected_responses, self.frame_errors)

    def problems(self) -> str | None:
        """What went wrong on the current connection, in words (None: nothing yet)."""
        now = self._problem_counts()
        names = ("timeouts", "late responses", "responses with unexpected transaction ids",
                 "bad frames")  # fmt: skip
        parts = [
            f"{after - before} {name}"
            for name, before, after in zip(names, self._at_connect, now, strict=True)
            if after > before
        ]
        return ", ".join(parts) or None


#: The counters `LinkCounters.snapshot` gives: its fields but the private ones, in order.
_SNAPSHOT_FIELDS = tuple(a.name for a in attrs.fields(LinkCounters) if not a.name.startswith("_"))


@attrs.define(eq=False)
class _Transaction:
    unit_id: int
    request: pdus.Request
    deferred: Deferred[pdus.Response]
    transaction_id: int = 0
    sent_at: float = 0.0
    timer: IDelayedCall | None = None


class ModbusLink(Protocol):
    """One Modbus TCP connection to a device (several unit ids may share it)."""

    log = logger()  # drops debug

    def __init__(
        self,
        clock: IReactorTime,
        *,
        timeout: float = 1.0,
        max_in_flight: int = 1,
        max_queue: int = 256,
        request_pause: float = 0.0,
        connect_pause: float = 0.0,
        silent_timeouts: int = 3,
        stats: LinkCounters | None = None,
        name: str = "modbus",
        limiter: RateLimitedLog | None = None,
    ) -> None:
        self.clock = clock
        self.timeout = timeout
        self.max_in_flight = max(1, max_in_flight)
        self.max_queue = max_queue
        self.request_pause = request_pause
        self.connect_pause = connect_pause
        #: Consecutive timeouts without a valid response (one matched to a pending
        #: request): a half-open link, or a peer that does not answer what we ask.
        self.silent_timeouts = silent_timeouts
        self.stats = stats if stats is not None else LinkCounters()
        self.name = name
        self.connected = False
        self._buffer = b""
        self._queue: deque[_Transaction] = deque()
        self._pending: dict[int, _Transaction] = {}
        self._next_tid = 0
        self._hold: IDelayedCall | None = None
        self._silent = 0
        #: Transaction ids that timed out lately: their answers are late, not unexpected.
        self._expired: deque[int] = deque(maxlen=64)
        self.on_connection_lost: Callable[[Failure], None] | None = None
        #: Called once, at the first valid response of this connection.
        self.on_answer: Callable[[], None] | None = None
        #: Called with ``("tx" | "rx", frame)`` for every ADU sent or received.
        self.frame_observer: Callable[[str, bytes], None] | None = None
        self.limiter = limiter if limiter is not None else RateLimitedLog(self.log, clock)

    # Twisted's Protocol interface

    def connectionMade(self) -> None:
        """Start sending (after ``connect_pause``, for devices that need a moment)."""
        self.connected = True
        transport: Any = self.transport  # a TCP transport (ITCPTransport)
        if hasattr(transport, "setTcpKeepAlive"):
            transport.setTcpKeepAlive(True)
        if self.connect_pause > 0:
            self._hold_for(self.connect_pause)

    def dataReceived(self, data: bytes) -> None:
        """Frame, match and deliver responses; bad bytes close the link."""
        self._buffer += data
        try:
            adus, self._buffer = decode_adus(self._buffer)
            observer = self.frame_observer
            for adu in adus:
                if observer is not None:
                    observer("rx", encode_adu(adu.transaction_id, adu.unit_id, adu.pdu))
                self._response(adu.transaction_id, adu.unit_id, adu.pdu)
        except ModbusFrameError as e:
            self._frame_error(e)
            return
        self._send_more()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        """Fail every queued and pending request: their answers can no longer come."""
        self.connected = False
        self.limiter.flush()  # this connection's complaints are counted with its end
        if not self.stats.answered:
            problems = self.stats.problems()
            self.stats.reason = (
                f"the last connection had no valid response ({problems or 'no answer'})"
            )
        if self._hold is not None and self._hold.active():
            self._hold.cancel()
        self._hold = None
        error = ModbusNotConnected(f"link lost: {reason.getErrorMessage()}")
        waiting = list(self._pending.values()) + list(self._queue)
        self._pending.clear()
        self._queue.clear()
        self._update_depths()
        for transaction in waiting:
            if transaction.timer is not None and transaction.timer.active():
                transaction.timer.cancel()
            transaction.deferred.errback(Failure(error))
        if self.on_connection_lost is not None:
            self.on_connection_lost(reason)

    # public commands

    def request(self, unit_id: int, request: pdus.Request) -> Deferred[pdus.Response]:
        """Send ``request`` to ``unit_id``; fires with the `pdu.Response`.

        Fails with `ModbusExceptionResponse`, `ModbusTimeout`, `ModbusQueueFull`,
        `ModbusNotConnected` or `ModbusFrameError`.
        """
        if not self.connected:
            self.stats.not_connected += 1
            return _failed(ModbusNotConnected("not connected"))
        if len(self._queue) >= self.max_queue:
            self.stats.queue_full += 1
            return _failed(ModbusQueueFull(f"{self.max_queue} requests are already queued"))
        transaction = _Transaction(unit_id, request, Deferred(self._cancel))
        self._queue.append(transaction)
        self._send_more()
        self._update_depths()
        return transaction.deferred

    def read(self, unit_id: int, table: Table, address: int, count: int) -> Deferred[Any]:
        """FC1/2/3/4; fires with a tuple of registers or of bools."""
        d = self.request(unit_id, pdus.read_request(table, address, count))
        return d.addCallback(lambda r: r.bits if table.is_bits else r.registers)

    def write_coil(self, unit_id: int, address: int, value: bool) -> Deferred[pdus.Response]:
        """FC5."""
        return self.request(unit_id, pdus.write_coil(address, value))

    def write_register(self, unit_id: int, address: int, value: int) -> Deferred[pdus.Response]:
        """FC6."""
        return self.request(unit_id, pdus.write_register(address, value))

    def write_coils(self, unit_id: int, address: int, values: list[bool]) -> Deferred[Any]:
        """FC15."""
        return self.request(unit_id, pdus.write_coils(address, values))

    def write_registers(self, unit_id: int, address: int, values: list[int]) -> Deferred[Any]:
        """FC16."""
        return self.request(unit_id, pdus.write_registers(address, values))

    def mask_write_register(
        self, unit_id: int, address: int, and_mask: int, or_mask: int
    ) -> Deferred[pdus.Response]:
        """FC22."""
        return self.request(unit_id, pdus.mask_write_register(address, and_mask, or_mask))

    # internals

    def _send_more(self) -> None:
        while (
            self.connected
            and self._queue
            and len(self._pending) < self.max_in_flight
            and self._hold is None
        ):
            transaction = self._queue.popleft()
            tid = self._new_tid()
            transaction.transaction_id = tid
            transaction.sent_at = self.clock.seconds()
            transaction.timer = self.clock.callLater(self.timeout, self._timed_out, tid)
            self._pending[tid] = transaction
            self.stats.requests += 1
            assert self.transport is not None
            frame = encode_adu(tid, transaction.unit_id, transaction.request.pdu)
            if self.frame_observer is not None:
                self.frame_observer("tx", frame)
            write_now(self.transport, frame)  # not on the next reactor turn
            if self.request_pause > 0:
                # the pause runs from the answer, see _done; nothing else goes out meanwhile
                break
        self._update_depths()

    def _new_tid(self) -> int:
        # skip ids still pending; with at most max_in_flight pending this ends quickly
        while True:
            self._next_tid = (self._next_tid + 1) & 0xFFFF
            if self._next_tid not in self._pending:
                return self._next_tid

    def _response(self, tid: int, unit_id: int, data: bytes) -> None:
        transaction = self._pending.get(tid)
        if transaction is None:
            # late (timed out, cancelled) or never asked for: never give it to anyone else
            if tid in self._expired:
                # An answer after the timeout is no valid answer either: a device that is
                # always late is reconnected like a silent one, its status says "late".
                self.stats.late_responses += 1
                self.log.debug("{name}: discarded late response {tid}", name=self.name, tid=tid)
                return
            # Never sent: the peer is not answering our requests. Its requests time
            # out, and ``silent_timeouts`` of them close the link.
            self.stats.unexpected_responses += 1
            self.limiter.emit(
                LogLevel.warn,
                "unexpected_tid",
                "{name}: discarded a response with transaction id {tid}, never sent",
                name=self.name,
                tid=tid,
            )
            return
        if unit_id != transaction.unit_id:
            raise ModbusFrameError(
                f"transaction {tid} was for unit {transaction.unit_id}, answered by {unit_id}",
                offset=6,
                data=data,
            )
        response = pdus.decode_response(transaction.request, data)
        del self._pending[tid]
        self._silent = 0
        if not self.stats.answered:
            self.stats.answered = True
            self.stats.reason = None
            if self.on_answer is not None:
                self.on_answer()
        now = self.clock.seconds()
        if transaction.timer is not None and transaction.timer.active():
            transaction.timer.cancel()
        self.stats.responses += 1
        self.stats.last_response_time = now
        self.stats.record_rtt(now - transaction.sent_at)
        self._done()
        if response.exception_code is None:
            transaction.deferred.callback(response)
            return
        self.stats.exceptions += 1
        error = ModbusExceptionResponse(
            transaction.request.function_code, response.exception_code, transaction.unit_id
        )
        self.stats.record_error(str(error), now)
        transaction.deferred.errback(Failure(error))

    def _timed_out(self, tid: int) -> None:
        transaction = self._pending.pop(tid, None)
        if transaction is None:
            return
        self._expired.append(tid)
        self.stats.timeouts += 1
        message = f"unit {transaction.unit_id}: no response in {self.timeout:g} s"
        self.stats.record_error(message, self.clock.seconds())
        self._silent += 1
        self._done()
        transaction.deferred.errback(Failure(ModbusTimeout(message)))
        if self.silent_timeouts and self._silent >= self.silent_timeouts and self.connected:
            self.log.warn(
                "{name}: {count} timeouts with no valid response ({problems}), closing the link",
                name=self.name,
                count=self._silent,
                problems=self.stats.problems(),
            )
            self._abort()
            return
        self._send_more()

    def _done(self) -> None:
        if self.request_pause > 0 and self.connected:
            self._hold_for(self.request_pause)

    def _hold_for(self, delay: float) -> None:
        if self._hold is not None and self._hold.active():
            self._hold.cancel()
        self._hold = self.clock.callLater(delay, self._release)

    def _release(self) -> None:
        self._hold = None
        self._send_more()

    def _cancel(self, deferred: Deferred[Any]) -> None:
        # A cancelled request leaves the queue; if it was sent, its slot stays taken until
        # its answer or timeout so the transaction id cannot be reused meanwhile.
        for transaction in self._queue:
            if transaction.deferred is deferred:
                self._queue.remove(transaction)
                break
        for transaction in self._pending.values():
            if transaction.deferred is deferred:
                transaction.deferred = Deferred()
                transaction.deferred.addErrback(lambda _: None)
                break
        self._update_depths()
        deferred.errback(Failure(CancelledError()))

    def _frame_error(self, error: ModbusFrameError) -> None:
        self.stats.frame_errors += 1
        self.stats.record_error(str(error), self.clock.seconds())
        self.log.error(
            "{name}: closing the link on a bad frame: {error}; bytes: {hex}",
            name=self.name,
            error=str(error),
            hex=error.data.hex(" "),
        )
        self._buffer = b""
        self.connected = False  # nothing more goes out on this transport
        self._abort()

    def _abort(self) -> None:
        transport: Any = self.transport  # TCP transports can abort (ITCPTransport)
        if transport is not None:
            transport.abortConnection()

    def _update_depths(self) -> None:
        self.stats.queued = len(self._queue)
        self.stats.in_flight = len(self._pending)


def _failed(error: Exception) -> Deferred[Any]:
    d: Deferred[Any] = Deferred()
    d.errback(Failure(error))
    return d
