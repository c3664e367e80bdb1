"""The ingest path: samples into Redis in batches, with bounds for overload and outages.

Every batch is one ``EVALSHA`` of ``store/ingest.lua``. For each sample the script sets
the point's latest value (``HS:VALUE:{device}``), appends it to the point's bounded
history stream (``XS:DATA:...``, ``MAXLEN ~ [collector] history_length``) and
publishes it on the point's data channel. It then sends one message per device on the
device channel. Nothing waits per sample, so one round trip carries many frames.

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

On shutdown the samples still waiting are written first, for up to ``FLUSH_TIMEOUT``
seconds.
"""

from __future__ import annotations

import collections
import hashlib
import json
import math
from collections.abc import Callable, Sequence
from importlib.resources import files
from typing import Any

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger
from zope.interface import implementer

from pydatacoll.interfaces import ISampleSink
from pydatacoll.model import Sample, iso_time
from pydatacoll.store import keys

_SCRIPT = files("pydatacoll.store").joinpath("ingest.lua").read_text(encoding="utf-8")
_SHA = hashlib.sha1(_SCRIPT.encode()).hexdigest()
_TEMPLATES = json.dumps(
    {
        "term_item": keys.TERM_ITEM,
        "device_values": keys.DEVICE_VALUES,
        "point_data": keys.POINT_DATA,
        "device_data": keys.DEVICE_DATA,
        "device_samples": keys.DEVICE_SAMPLES,
        "config_version": keys.CONFIG_VERSION,
    }
)
#: Samples per script call: large enough to amortise the round trip, small enough that
#: one call never holds Redis for long (a few ms).
BATCH = 2000
#: Script calls in flight on the ingest connection: the next batch is encoded while
#: Redis runs the previous one (one connection keeps them in order).
IN_FLIGHT = 2
#: Seconds a partial batch waits for more samples: many small reads (500 Modbus devices)
#: then share one script call instead of one each.
LINGER = 0.02
HIGH_WATER = 20000
LOW_WATER = 5000
FLUSH_TIMEOUT = 5.0

_INFINITIES = (math.inf, -math.inf)


class _Times:
    """ISO texts of epoch seconds, memoised: the samples of a frame share their times."""

    def __init__(self) -> None:
        self.cache: dict[float, str] = {}

    def text(self, seconds: float) -> str:
        text = self.cache.get(seconds)
        if text is None:
            if len(self.cache) > 4096:  # bounded: times move on
                self.cache.clear()
            text = self.cache[seconds] = iso_time(seconds) or ""
        return text


def _value_json(value: Any) -> str | None:
    """The JSON text of a value, or None for one JSON cannot carry (NaN, infinities)."""
    kind = type(value)
    if kind is float:
        if value != value or value in _INFINITIES:
            return None
        return repr(value)
    if kind is bool:
        return "true" if value else "false"
    if kind is int:
        return str(value)
    if value is None:
        return "null"
    return json.dumps(value, ensure_ascii=False, default=str)


def encode(sample: Sample, times: _Times) -> str:
    """The stored JSON text of a sample (as `Sample.to_json`, without spaces)."""
    value = _value_json(sample.value)
    quality = sample.quality
    flags = sample.flags
    if value is None:  # not JSON: stored as null, invalid
        value, quality, flags = "null", "invalid", (*flags, "not_finite")
    flags_text = json.dumps(list(flags)) if flags else "[]"
    source = sample.source_time
    source_text = "null" if source is None else '"' + times.text(source) + '"'
    return (
        f'{{"value":{value},"quality":"{quality}","flags":{flags_text},'
        f'"source_time":{source_text},"receive_time":"{times.text(sample.receive_time)}"}}'
    )


@implementer(ISampleSink)
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
        #: The configuration version the collector runs at ("" while it is catching up).
        self.settled_version = ""
        self.congested = False
        self.written = 0
        self.skipped = 0
        self.dropped = 0
        self.failures = 0
        self.pauses = 0
        #: Called with (samples, seconds) after each batch written (the metrics).
        self.observe_batch: Callable[[int, float], None] | None = None
        self._times = _Times()
        #: Batches sent and not yet answered, oldest first: (samples, Deferred).
        self._in_flight: collections.deque[tuple[list[Sample], defer.Deferred[Any]]] = (
            collections.deque()
        )
        self._retry: IDelayedCall | None = None
        self._retry_delay = 0.5
        self._linger: IDelayedCall | None = None

    def samples_received(self, samples: Sequence[Sample]) -> None:
        """Queue a batch and start writing; never blocks."""
        buffer = self.buffer
        buffer.extend(samples)
        excess = len(buffer) - self.buffer_limit
        if excess > 0:
            for _ in range(excess):
                buffer.popleft()
            self.dropped += excess
        if len(buffer) > self.high_water and not self.congested and self.redis.connected:
            self._congestion(True)
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
        while self.buffer and len(self._in_flight) < IN_FLIGHT and self._retry is None:
            self._send()

    def _send(self) -> None:
        count = min(BATCH, len(self.buffer))
        batch = [self.buffer.popleft() for _ in range(count)]
        times = self._times
        groups: dict[str, list[Any]] = {}
        for sample in batch:
            group = groups.get(sample.device_id)
            if group is None:
                group = groups[sample.device_id] = []
            group += (sample.term_id, sample.item_id, encode(sample, times))
        args: list[Any] = [_TEMPLATES, self.history_length, self.settled_version]
        for device_id, group in groups.items():
            args += (device_id, len(group) // 3)
            args += group
        d = self.redis.call("evalsha", _SHA, [], args)
        entry = (batch, d)
        self._in_flight.append(entry)  # before the callbacks: they may run at once
        d.addErrback(self._no_script, args)
        if self.observe_batch is not None:
            d.addCallback(self._observe, len(batch), self.clock.seconds())
        d.addCallbacks(self._written, self._failed, callbackArgs=(entry,), errbackArgs=(entry,))
        d.addErrback(self._loop_error)

    def _no_script(self, failure: Any, args: list[Any]) -> Any:
        message = failure.getErrorMessage()
        if "NOSCRIPT" in message or "No script matching" in message:  # txredisapi's wording
            return self.redis.call("eval", _SCRIPT, [], args)
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
        written, skipped = (int(n) for n in reply)
        self.written += written
        self.skipped += skipped
        self._retry_delay = 0.5
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
        count = 0
        for batch, _ in reversed(self._in_flight):
            self.buffer.extendleft(reversed(batch))
            count += len(batch)
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
            delay=self._retry_delay,
        )
        if self.running and self._retry is None:
            self._retry = self.clock.callLater(self._retry_delay, self._write)
            self._retry_delay = min(self._retry_delay * 2, 5.0)

    def _loop_error(self, failure: Any) -> None:
        # A bug in the reply handling must not stop the loop (house style 5).
        self.log.failure("ingest loop", failure)
        self._in_flight.clear()
        if self._retry is None and self.running:
            self._retry = self.clock.callLater(self._retry_delay, self._write)

    @defer.inlineCallbacks
    def stopService(self) -> Any:
        """Write what waits (for up to ``FLUSH_TIMEOUT`` s), then stop."""
        super().stopService()
        for call in (self._retry, self._linger):
            if call is not None and call.active():
                call.cancel()
        self._retry = self._linger = None
        deadline = self.clock.seconds() + FLUSH_TIMEOUT
        while self.clock.seconds() < deadline:
            if self._in_flight:
                yield _quietly(self._in_flight[-1][1])
            elif self.buffer and self.redis.connected:
                self._write()
            else:
                break
        if self.buffer:
            self.log.warn("stopping with {n} samples not stored", n=len(self.buffer))

    def status(self) -> dict[str, Any]:
        """Counters: written, skipped (point gone), dropped (buffer full), buffered, pauses."""
        return {
            "written": self.written,
            "skipped": self.skipped,
            "dropped": self.dropped,
            "buffered": len(self.buffer),
            "buffer_limit": self.buffer_limit,
            "write_failures": self.failures,
            "congested": self.congested,
            "pauses": self.pauses,
        }


def _quietly(d: defer.Deferred[Any]) -> defer.Deferred[None]:
    """A Deferred that fires when ``d`` does, without taking its result."""
    waiter: defer.Deferred[None] = defer.Deferred()

    def fired(result: Any) -> Any:
        waiter.callback(None)
        return result

    d.addBoth(fired)
    return waiter
