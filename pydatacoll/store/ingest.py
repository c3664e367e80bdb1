"""The ingest path: samples into Redis in batches, with bounds for overload and outages.

Every batch is one ``EVALSHA`` of ``store/ingest.lua``: per sample it sets the point's
latest value (``HS:VALUE:{device}``) and appends it to the point's bounded history
(``XS:DATA:...``); each device's samples go to
``CHANNEL:DEVICE_SAMPLES:{device}`` in messages of at most ``MESSAGE_SAMPLES``, and with
``[collector] publish_points`` also one by one to their point's ``CHANNEL:DEVICE_DATA``.
A few small batches (``BATCH``) are in flight on the path's own connection, so no script
holds Redis for long. The command is built here in RESP form (`RedisClient.call_encoded`):
txredisapi's encoding of each argument cost more than the rest of the collector.

Samples wait in memory as they arrived and are encoded only when their batch is written.
There are two bounds:

- *Overload* (Redis is up but slower than the devices): above ``HIGH_WATER`` waiting
  samples, the devices are asked to pause their input (`pause_input`; an IEC 104 link
  then stops reading, so the RTU's own k window holds its data back and nothing is lost).
  They resume below ``LOW_WATER``.
- *Outage* (Redis unreachable): the devices are not paused, so their links stay
  supervised. At most ``[collector] buffer_samples`` samples wait; past that the *oldest*
  are dropped and counted, because the newest values matter most to a control room. They
  are written in arrival order once Redis is back.

When a device goes offline or cannot run, `RedisIngest.mark_not_topical` queues a mark
in the same stream: the script then flags the latest sample of each of the device's
points ``NT`` (not topical), after every sample of that device that arrived before the
mark and before any that arrives after it. At most one mark per device waits (a newer one
replaces it); marks are never dropped by the outage bound.

The script checks a sample's point owner (one ``HGET``) only when the stored version is
not ``settled_version`` or its device is in ``unsettled`` (`pydatacoll.devices.reconcile`).

In cluster mode (docs/cluster.rst) each device's segment of a batch carries the token of
the lease under which its collector runs it (``token_of(device_id)``, read when the batch
is sent); the script (`pydatacoll.store.cluster.guarded`) refuses a segment whose token
is not the device's current lease, and those samples (and marks) are counted ``fenced``
and never retried: a collector that was paused or cut off past its lease cannot write
over the device's new owner.

A point's history is trimmed (``XTRIM MAXLEN ~ history_length``) after its first sample
and then every few (`pydatacoll.store.history_trim`: the bound that keeps).

On shutdown the samples still waiting are written first, for up to ``FLUSH_TIMEOUT``
seconds.
"""

from __future__ import annotations

import collections
import math
from collections.abc import Callable, Sequence
from typing import Any

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger
from zope.interface import implementer

from pydatacoll.interfaces import IIngest
from pydatacoll.model import Sample
from pydatacoll.retry import Backoff
from pydatacoll.store.history_trim import TrimSchedule
from pydatacoll.store.ingest_script import (
    _EVAL_HEAD,
    _EVALSHA_HEAD,
    _TEMPLATES_BULK,
    _segments,
)
from pydatacoll.store.redis import bulk
from pydatacoll.store.sample_text import _Times, encode

#: Samples per script call: large enough to amortise the round trip, small enough that
#: one call holds Redis for about a millisecond only (a command of another client waits
#: at most that long behind the ingest).
BATCH = 250
#: Script calls in flight on the ingest connection: the next batches are encoded while
#: Redis runs the previous ones (one connection keeps them in order).
IN_FLIGHT = 8
#: Samples per message on CHANNEL:DEVICE_SAMPLES: one message stays within Lua's string
#: buffer (8 KiB), which keeps its assembly linear (store/ingest.lua).
MESSAGE_SAMPLES = 40
#: Seconds a partial batch waits for more samples: many small reads (500 Modbus devices)
#: then share one script call instead of one each.
LINGER = 0.02
HIGH_WATER = 20000
LOW_WATER = 5000
FLUSH_TIMEOUT = 5.0
#: Seconds before a failed batch is written again, doubling up to RETRY_MAX.
RETRY_INITIAL = 0.5
RETRY_MAX = 5.0

#: Points whose RESP arguments are kept (then the cache starts again).
PREFIXES = 100_000
_MESSAGE_SAMPLES_BULK, _PUBLISH_POINTS, _EMPTY = bulk(str(MESSAGE_SAMPLES)), bulk("1"), bulk("")

_INF = math.inf
#: The token of a device whose lease this collector does not hold (cluster mode): it
#: never matches a lease (``"EPOCH COLLECTOR_ID"``), so the script refuses its samples.
NO_LEASE = "-"


@implementer(IIngest)
class RedisIngest(Service):
    """Writes samples to Redis in batches (see the module docstring)."""

    log = Logger()

    def __init__(
        self,
        redis: Any,
        reactor: Any,
        history_length: int,
        buffer_samples: int,
        on_congestion: Callable[[bool], None] | None = None,
        token_of: Callable[[str], str] | None = None,
        publish_points: bool = False,
    ) -> None:
        self.redis = redis
        self.clock = reactor
        self.history_length = history_length
        self.buffer: collections.deque[Sample] = collections.deque()
        self.buffer_limit = buffer_samples
        self.high_water = min(HIGH_WATER, buffer_samples)
        self.low_water = min(LOW_WATER, self.high_water // 2)
        #: Called with True to pause the devices' input, False to resume it.
        self.on_congestion = on_congestion
        #: Cluster mode: device id -> the token of its lease (`NO_LEASE` when not held);
        #: None: no lease check.
        self.token_of = token_of
        #: The configuration version the collector runs at ("" while it is catching up).
        self.settled_version = ""
        #: Devices a change touched that the collector has not applied yet.
        self.unsettled: set[str] = set()
        #: Each sample also on its point's channel (``[collector] publish_points``).
        self.publish_points = publish_points
        self.congested = False
        #: While a command is in flight (`hold`): no new script is sent.
        self.holding = False
        self.written = 0
        self.skipped = 0
        self.fenced = 0
        self.dropped = 0
        self.failures = 0
        self.pauses = 0
        #: Called with (samples, seconds) after each batch written (the metrics).
        self.observe_batch: Callable[[int, float], None] | None = None
        self._times = _Times()
        #: (term_id, item_id) -> the point's field and ids arguments (store/ingest.lua) in
        #: RESP form (at most PREFIXES).
        self._prefixes: dict[tuple[str, str], str] = {}
        self.trims = TrimSchedule(history_length)
        #: `settled_version` when the trim counts were last started again: a change to
        #: the configuration may have moved a term's history to another device and back.
        self._trims_settled = ""
        #: Batches sent and not yet answered, oldest first: (samples, Deferred).
        #: ... and the marks they carry: (samples, Deferred, [(number, device_id)]).
        self._in_flight: collections.deque[
            tuple[list[Sample], defer.Deferred[Any], list[tuple[int, str]]]
        ] = collections.deque()
        self._retry: IDelayedCall | None = None
        self.backoff = Backoff(RETRY_INITIAL, RETRY_MAX)
        self._linger: IDelayedCall | None = None
        self._awaiting_connection = False
        #: Samples ever queued; the oldest in the buffer is number appended - len(buffer).
        self._appended = 0
        #: Pending not-topical marks: device id -> the number of samples queued before it.
        self._marks: dict[str, int] = {}
        self.marks = 0
        #: `drained` waiters: (samples that must be answered, Deferred, timeout call).
        self._drain_waiters: list[tuple[int, defer.Deferred[None], IDelayedCall]] = []

    def samples_received(self, samples: Sequence[Sample]) -> None:
        """Queue a batch and start writing; never blocks."""
        buffer = self.buffer
        buffer.extend(samples)
        self._appended += len(samples)
        excess = len(buffer) - self.buffer_limit
        if excess > 0:
            for _ in range(excess):
                buffer.popleft()
            self.dropped += excess
        if len(buffer) > self.high_water and not self.congested and self.redis.connected:
            self._congestion(True)
        self._kick()

    def mark_not_topical(self, device_id: str) -> None:
        """Flag the latest value of each of the device's points NT, in sample order."""
        self._marks.pop(device_id, None)  # the newer mark covers everything the older did
        self._marks[device_id] = self._appended
        self._kick()

    def drained(self, timeout: float) -> defer.Deferred[None]:
        """Fires once every sample queued so far has been answered by Redis (written,
        skipped or fenced), or after ``timeout`` seconds: a collector that hands a device
        over writes that device's last samples under its lease before releasing it."""
        target = self._appended
        if self._answered() >= target:
            return defer.succeed(None)
        d: defer.Deferred[None] = defer.Deferred()
        call = self.clock.callLater(timeout, self._drain_timeout, d)
        self._drain_waiters.append((target, d, call))
        if self.holding:
            self._kick()  # held back for a command: a hand-over is not
        return d

    def _answered(self) -> int:
        """Samples queued and answered by Redis (neither waiting nor in flight)."""
        in_flight = sum(len(batch) for batch, _, _ in self._in_flight)
        return self._appended - len(self.buffer) - in_flight

    def _drain_timeout(self, d: defer.Deferred[None]) -> None:
        self._drain_waiters = [w for w in self._drain_waiters if w[1] is not d]
        d.callback(None)

    def _wake_drained(self) -> None:
        answered = self._answered()
        ready = [w for w in self._drain_waiters if w[0] <= answered]
        if ready:
            self._drain_waiters = [w for w in self._drain_waiters if w[0] > answered]
            for _, d, call in ready:
                if call.active():
                    call.cancel()
                d.callback(None)

    def hold(self, holding: bool) -> None:
        """Send no new script while ``holding`` (a command is in flight: it finds Redis
        free, `pydatacoll.control.priority`); the scripts in flight still complete, and
        the samples wait in the buffer, up to half its high water (the congestion that
        pauses pollers is never brought on by a hold). A hand-over waiting in `drained`
        is not held, nor the last writes of a stopping ingest."""
        self.holding = holding and bool(self.running)
        if not holding:
            self._kick()

    def _kick(self) -> None:
        buffer = self.buffer
        if self._retry is None and self.running and self._linger is None:
            if len(buffer) >= BATCH or self.congested:
                self._write()
            elif not self._in_flight:
                self._linger = self.clock.callLater(LINGER, self._lingered)
            # else: the reply to the batch in flight writes what has come meanwhile

    def _lingered(self) -> None:
        self._linger = None
        self._write()

    def _congestion(self, congested: bool) -> None:
        self.congested = congested
        if congested:
            self.pauses += 1
        if self.on_congestion is not None:
            try:
                self.on_congestion(congested)
            except Exception:
                self.log.failure("pausing or resuming the devices")

    def _write(self) -> None:
        self._retry = None
        # A failure (even at once, Redis being away) schedules a retry and ends the loop.
        try:
            while (
                (self.buffer or self._marks)
                and (
                    not self.holding
                    or self._drain_waiters  # a hand-over is not held back
                    or len(self.buffer) >= self.high_water // 2  # nor congestion brought on
                )
                and len(self._in_flight) < IN_FLIGHT
                and self._retry is None
            ):
                self._send()
        except Exception:
            # A bug (a sample that cannot be encoded): that batch is lost and logged; the
            # path goes on with the next one rather than stop writing for good.
            self.log.failure("ingest: a batch could not be sent")
            self.trims.forget()  # its trim requests with it
            if self.running and self._retry is None:
                self._retry = self.clock.callLater(self.backoff.peek(), self._write)

    def _send(self) -> None:
        count = min(BATCH, len(self.buffer))
        first = self._appended - len(self.buffer)
        marks: list[tuple[int, str]] = []
        if self._marks:
            marks = sorted((n, d) for d, n in self._marks.items() if n <= first + count)
            for _, device_id in marks:
                del self._marks[device_id]
        batch = [self.buffer.popleft() for _ in range(count)]
        segments: list[tuple[str, list[Sample] | None]]
        if not marks:
            groups: dict[str, list[Sample]] = {}
            for sample in batch:
                group = groups.get(sample.device_id)
                if group is None:
                    group = groups[sample.device_id] = []
                group.append(sample)
            segments = list(groups.items())
        else:
            segments = _segments(batch, first, marks)
        body, argc = self._encode(segments)
        d = self.redis.call_encoded(f"*{argc + 3}\r\n{_EVALSHA_HEAD}{body}".encode())
        entry = (batch, d, marks)
        self._in_flight.append(entry)  # before the callbacks: they may run at once
        d.addErrback(self._no_script, body, argc)
        if self.observe_batch is not None:
            d.addCallback(self._observe, len(batch), self.clock.seconds())
        d.addCallbacks(self._written, self._failed, callbackArgs=(entry,), errbackArgs=(entry,))
        d.addErrback(self._loop_error)

    def _token(self, device_id: str) -> str:
        """The lease token a device's samples are written under ("": no check)."""
        return "" if self.token_of is None else self.token_of(device_id)

    def _encode(self, segments: list[tuple[str, list[Sample] | None]]) -> tuple[str, int]:
        """The script's arguments in RESP form, and their number."""
        unsettled = self.unsettled
        checked = " ".join(d for d, _ in segments if d in unsettled) if unsettled else ""
        parts = [
            _TEMPLATES_BULK,
            bulk(str(self.history_length)),
            bulk(self.settled_version),
            _MESSAGE_SAMPLES_BULK,
            _PUBLISH_POINTS if self.publish_points else _EMPTY,
            bulk(checked),
        ]
        argc = len(parts)
        times = self._times
        token = self._token
        prefixes = self._prefixes
        if len(prefixes) > PREFIXES:  # bounded: points come and go
            prefixes.clear()
        if self.settled_version != self._trims_settled:
            self._trims_settled = self.settled_version
            self.trims.forget()  # a moved term brings its stream, not its count
        due = self.trims.due
        append = parts.append
        # A number's text ends with what follows its value (quality, times), the same for
        # the samples of one read (500 Modbus devices: 15,000 a second): made once by
        # `encode` for each new (quality, source time, receive time), then reused.
        tail_of: tuple[Any, ...] = ()
        tail = ""
        for device_id, samples in segments:
            append(bulk(device_id))
            device_token = token(device_id)
            append(bulk(device_token))
            if samples is None:  # a mark
                append("$2\r\n-1\r\n$0\r\n\r\n")
                argc += 4
                continue
            append(bulk(str(len(samples))))
            append(bulk(due(device_id, device_token, samples)))
            argc += 4 + 3 * len(samples)
            for sample in samples:
                point = sample.term_id, sample.item_id
                prefix = prefixes.get(point)
                if prefix is None:
                    term_id, item_id = point
                    prefix = prefixes[point] = bulk(f"{term_id}:{item_id}") + bulk(
                        f'{term_id}","item_id":"{item_id}'
                    )
                append(prefix)
                value = sample.value
                kind = type(value)
                if (kind is int or (kind is float and -_INF < value < _INF)) and not sample.flags:
                    number = str(value) if kind is int else repr(value)
                    key = (sample.quality, sample.source_time, sample.receive_time)
                    if key != tail_of:
                        tail_of = key
                        tail = encode(sample, times)[len(number) + 9 :]  # after '{"value":'
                    text = '{"value":' + number + tail
                else:
                    text = encode(sample, times)
                append(f"${len(text)}\r\n{text}\r\n" if text.isascii() else bulk(text))
        return "".join(parts), argc

    def _no_script(self, failure: Any, body: str, argc: int) -> Any:
        message = failure.getErrorMessage()
        if "NOSCRIPT" in message or "No script matching" in message:  # txredisapi's wording
            return self.redis.call_encoded(f"*{argc + 3}\r\n{_EVAL_HEAD}{body}".encode())
        return failure

    def _observe(self, reply: Any, count: int, started: float) -> Any:
        try:
            if self.observe_batch is not None:
                self.observe_batch(count, max(0.0, self.clock.seconds() - started))
        except Exception:
            self.log.failure("observing an ingest batch")
        return reply

    def _written(self, reply: Any, entry: Any) -> None:
        if entry not in self._in_flight:
            return  # put back by an earlier failure: it will be written again
        self._in_flight.remove(entry)
        self.marks += len(entry[2])
        written, skipped, fenced = (int(n) for n in reply)
        self.written += written
        self.skipped += skipped
        if fenced:
            self.trims.forget()  # the refused segments' trims did not run
            self.fenced += fenced
            self.log.warn(
                "{n} samples refused: their device's lease is no longer this collector's",
                n=fenced,
            )
        self.backoff.reset()
        if self._drain_waiters:
            self._wake_drained()
        if self.congested and len(self.buffer) < self.low_water:
            self._congestion(False)
        if self.running and self._retry is None:
            self._write()

    def _failed(self, failure: Any, entry: Any) -> None:
        if entry not in self._in_flight:
            return
        # Put every batch in flight back in front, in order (a later one may have been
        # written: then it is written twice, never lost), and retry with capped backoff.
        self.failures += 1
        self.trims.forget()  # their trims may not have run
        count = 0
        for batch, _, marks in reversed(self._in_flight):
            self.buffer.extendleft(reversed(batch))
            count += len(batch)
            for number, device_id in marks:  # back, unless a newer mark came meanwhile
                self._marks.setdefault(device_id, number)
        self._in_flight.clear()
        excess = len(self.buffer) - self.buffer_limit
        if excess > 0:
            for _ in range(excess):
                self.buffer.popleft()
            self.dropped += excess
        if self.congested:
            self._congestion(False)  # an outage: keep the links reading, buffer instead
        self.log.warn(
            "cannot store {count} samples ({error}); {buffered} buffered, retry in {delay} s",
            count=count,
            error=failure.getErrorMessage(),
            buffered=len(self.buffer),
            delay=self.backoff.peek(),
        )
        if self.running and self._retry is None:
            self._retry = self.clock.callLater(self.backoff.next_delay(), self._write)
            self._wait_for_connection()

    def _wait_for_connection(self) -> None:
        """Write at once when the connection is back, not at the end of the backoff."""
        if self._awaiting_connection or self.redis.connected:
            return
        self._awaiting_connection = True

        def back(_: Any) -> None:
            self._awaiting_connection = False
            if self.running and self._retry is not None and self._retry.active():
                self._retry.cancel()
                self._write()

        self.redis.when_connected().addCallback(back).addErrback(self._loop_error)

    def _loop_error(self, failure: Any) -> None:
        # A bug in the reply handling must not stop the loop (house style 5).
        self.log.failure("ingest loop", failure)
        self._in_flight.clear()
        self.trims.forget()
        if self._retry is None and self.running:
            self._retry = self.clock.callLater(self.backoff.peek(), self._write)

    @defer.inlineCallbacks
    def stopService(self) -> Any:
        """Write what waits (for up to ``FLUSH_TIMEOUT`` s), then stop."""
        super().stopService()
        self.holding = False
        for call in (self._retry, self._linger):
            if call is not None and call.active():
                call.cancel()
        self._retry = self._linger = None
        deadline = self.clock.seconds() + FLUSH_TIMEOUT
        while self.clock.seconds() < deadline:
            if self._in_flight:
                yield _quietly(self._in_flight[-1][1])
            elif (self.buffer or self._marks) and self.redis.connected:
                self._write()
            else:
                break
        if self.buffer:
            self.log.warn("stopping with {n} samples not stored", n=len(self.buffer))

    def status(self) -> dict[str, Any]:
        """Counters: written, skipped (point gone), fenced (lease not current), dropped
        (buffer full), buffered, pauses."""
        return {
            "written": self.written,
            "skipped": self.skipped,
            "fenced": self.fenced,
            "dropped": self.dropped,
            "buffered": len(self.buffer),
            "buffer_limit": self.buffer_limit,
            "write_failures": self.failures,
            "congested": self.congested,
            "pauses": self.pauses,
            "marks_written": self.marks,
        }


def _quietly(d: defer.Deferred[Any]) -> defer.Deferred[None]:
    """A Deferred that fires when ``d`` does, without taking its result."""
    waiter: defer.Deferred[None] = defer.Deferred()

    def fired(result: Any) -> Any:
        waiter.callback(None)
        return result

    d.addBoth(fired)
    return waiter
