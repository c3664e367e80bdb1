"""Store-and-forward: records wait here, in order, until the broker confirms them.

A record is a short JSON array (a sample, a device state, an alarm, a command result;
see `pydatacoll.processing.mqtt.records`); it is encoded into MQTT messages only when it
is sent, so Sparkplug sequence numbers and aliases belong to the connection that carries
it. Two modes, as the history plugin's writer (docs/mqtt.rst):

- *direct*: records wait in a bounded memory queue and are sent with at most ``window``
  unconfirmed at a time; a record leaves once all its messages are confirmed (PUBACK);
- *spooling*: while the broker is unreachable, at start, or when the memory queue is
  full, every record goes to the on-disk spool (fsynced JSON-line segments, the history
  plugin's `Spool`); once the link is up the spool is sent in order, batch by batch, a
  batch committed (the spool's cursor moved) only when every record in it is confirmed;
  then back to direct mode.

Overflow: past ``queue_records`` waiting to be written to disk, or past the spool's
bounds, the newest records are dropped and counted. Disk work runs in one thread.
"""

from __future__ import annotations

import functools
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.logger import Logger
from twisted.python.failure import Failure

from pydatacoll.processing.spool import Spool, SpoolBatch, SpoolWriter

Record = tuple[Any, ...]
#: send(record, historical) -> a Deferred firing when every message of it is confirmed.
Send = Callable[[Record, bool], Deferred[None]]


class _Sent:
    """One record in flight."""

    __slots__ = ("record", "done")

    def __init__(self, record: Record) -> None:
        self.record = record
        self.done = False


class _Batch:
    """Records read from the spool; committed once every one is confirmed."""

    def __init__(self, read: SpoolBatch) -> None:
        self.read = read
        self.acked = [False] * len(read.rows)
        self.next = 0  # first row not sent on the current connection

    @property
    def complete(self) -> bool:
        return all(self.acked)


class Outbox:
    """See the module docstring. ``send`` is only called while `up` is true."""

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        spool: Spool,
        send: Send,
        *,
        queue_records: int = 100000,
        window: int = 100,
        batch_records: int | None = None,
    ) -> None:
        self.reactor = reactor
        self.spool = spool
        self.send = send
        self.queue_records = queue_records
        self.window = window
        self.batch_records = batch_records or max(window * 4, 1000)
        self.up = False
        self.running = False
        self._queue: deque[Record] = deque()
        self._inflight: deque[_Sent] = deque()
        self._unconfirmed = 0
        self._spooling = True  # until the spool is known to be empty
        self._batch: _Batch | None = None
        self._reading = False
        self._committing = False
        self._generation = 0
        self._ready: Deferred[Any] | None = None
        self._pumping = False
        self._pump_again = False
        self.counters = {"queued": 0, "sent": 0, "confirmed": 0, "spooled": 0, "resent": 0}
        self.dropped = {"queue_full": 0, "spool_full": 0, "unencodable": 0}
        self.spool_writer = SpoolWriter(
            reactor,
            spool,
            label="mqtt",
            unit="records",
            counters=self.counters,
            dropped=self.dropped,
            appended=self._appended,
        )
        #: Records on their way to the spool (spooling mode), at most queue_records.
        self._pending = self.spool_writer.pending

    @property
    def spool_peak(self) -> int:
        """The most records the spool held unsent."""
        return self.spool_writer.peak

    # -- life -----------------------------------------------------------------------

    def start(self) -> Deferred[Any]:
        """Open the spool (in its thread)."""
        self.running = True
        self._ready = self.spool_writer.start()
        self._ready.addCallback(lambda _: self._pump())
        self._ready.addErrback(lambda f: self.log.failure("mqtt: cannot open the spool", f))
        return self._ready

    @inlineCallbacks
    def stop(self) -> Any:
        """Everything not confirmed goes to the spool, then the spool closes (once)."""
        ready, self._ready = self._ready, None
        if ready is None:
            return
        self.up = False
        self.running = False
        yield ready
        if not self._spooling:
            self._pending.extendleft(reversed(self._take_direct()))
        yield self.spool_writer.close()

    # -- input ----------------------------------------------------------------------

    def put(self, records: Sequence[Record]) -> None:
        """Queue records in order; never blocks (bounded, see the module docstring)."""
        if not records:
            return
        self.counters["queued"] += len(records)
        if not self._spooling:
            if len(self._queue) + len(records) <= self.queue_records:
                self._queue.extend(records)
                self._pump()
                return
            self._start_spooling("the memory queue is full")
        room = self.queue_records - len(self._pending)
        if room < len(records):
            self.dropped["queue_full"] += len(records) - max(room, 0)
            records = records[: max(room, 0)]
        self._pending.extend(records)
        self._flush()

    # -- link -----------------------------------------------------------------------

    def link_up(self) -> None:
        """The link is ready for records (after the births of a new connection)."""
        self.up = True
        self._generation += 1
        if self._batch is not None:
            self._batch.next = 0  # re-send what the lost connection did not confirm
        self._pump()

    def link_down(self, reason: str = "the broker is unreachable") -> None:
        """The link is lost: what was not confirmed is owed again, in order, via disk."""
        self.up = False
        self._generation += 1
        self._unconfirmed = 0
        if not self._spooling:
            self._start_spooling(reason)

    # -- status ---------------------------------------------------------------------

    @property
    def mode(self) -> str:
        return "spooling" if self._spooling else "direct"

    @property
    def waiting(self) -> int:
        """Records in memory (queued, in flight, or on their way to disk)."""
        return len(self._queue) + len(self._inflight) + len(self._pending)

    @property
    def in_flight(self) -> int:
        return self._unconfirmed

    @property
    def idle(self) -> bool:
        """Nothing waits anywhere (memory, disk, in flight)."""
        return (
            not self._spooling
            and not self._queue
            and not self._inflight
            and not self._pending
            and not self.spool_writer.appending
        )

    # -- internals ------------------------------------------------------------------

    def _take_direct(self) -> list[Record]:
        records = [s.record for s in self._inflight if not s.done] + list(self._queue)
        self._inflight.clear()
        self._queue.clear()
        self._unconfirmed = 0
        return records

    def _start_spooling(self, reason: str) -> None:
        if self._spooling:
            return
        self._spooling = True
        self.log.warn("mqtt: spooling to disk: {reason}", reason=reason)
        self._pending.extendleft(reversed(self._take_direct()))
        self._flush()

    def _flush(self) -> None:
        if self.running:
            self.spool_writer.flush()

    def _appended(self) -> None:
        """An append is done: the next records may go, the spool may be sent."""
        if self.running:
            self._flush()
            self._pump()

    def _pump(self) -> None:
        """Send what may be sent now (not re-entered: a confirmation that fires at once
        makes the running pass go round again)."""
        if self._pumping:
            self._pump_again = True
            return
        self._pumping = True
        try:
            self._pump_again = True
            while self._pump_again:
                self._pump_again = False
                self._pump_once()
        finally:
            self._pumping = False

    def _pump_once(self) -> None:
        if not self.up or not self.running:
            return
        if self._spooling:
            self._pump_spool()
            return
        while self._unconfirmed < self.window and self._queue:
            sent = _Sent(self._queue.popleft())
            self._inflight.append(sent)
            self._send(sent.record, False, functools.partial(self._direct_confirmed, sent))

    def _send(self, record: Record, historical: bool, confirmed: Callable[[], None]) -> None:
        generation = self._generation
        try:
            d = self.send(record, historical)
        except Exception:
            self.log.failure("mqtt: cannot encode a record; dropped: {record}", record=record)
            self.dropped["unencodable"] += 1
            confirmed()
            return
        self._unconfirmed += 1
        self.counters["sent"] += 1

        def ok(_: Any) -> None:
            if generation == self._generation:
                self._unconfirmed -= 1
                self.counters["confirmed"] += 1
                confirmed()

        d.addCallbacks(ok, lambda f: None)  # a lost link is handled by link_down

    def _direct_confirmed(self, sent: _Sent) -> None:
        sent.done = True
        while self._inflight and self._inflight[0].done:
            self._inflight.popleft()
        self._pump()

    def _pump_spool(self) -> None:
        batch = self._batch
        if batch is None:
            if not self._reading and not self._committing:
                self._read()
            return
        rows = batch.read.rows
        while self._unconfirmed < self.window and batch.next < len(rows):
            index = batch.next
            batch.next += 1
            if batch.acked[index]:
                continue
            self._send(
                tuple(rows[index]), True, functools.partial(self._row_confirmed, batch, index)
            )
        if batch.complete and not self._committing:
            self._commit(batch)

    def _read(self) -> None:
        self._reading = True
        d = self.spool_writer.call(self.spool.read, self.batch_records)

        def got(read: SpoolBatch | None) -> None:
            self._reading = False
            if read is None:
                if not self._pending and not self.spool_writer.appending and self.up:
                    self._spooling = False
                    self.log.info("mqtt: spool empty, sending directly again")
                    self._pump()
                return
            self._batch = _Batch(read)
            self._pump()

        def failed(failure: Failure) -> None:
            self._reading = False
            self.log.failure("mqtt: cannot read the spool", failure)

        d.addCallbacks(got, failed)

    def _row_confirmed(self, batch: _Batch, index: int) -> None:
        batch.acked[index] = True
        self._pump()

    def _commit(self, batch: _Batch) -> None:
        self._committing = True
        d = self.spool_writer.call(self.spool.commit, batch.read.end, len(batch.read.rows))

        def committed(_: Any) -> None:
            self._committing = False
            if self._batch is batch:
                self._batch = None
            self._pump()

        def failed(failure: Failure) -> None:
            self._committing = False
            self.log.failure("mqtt: cannot commit the spool", failure)

        d.addCallbacks(committed, failed)
