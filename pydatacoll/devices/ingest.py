"""The ingest path: samples into Redis in batches, with a bounded buffer for outages.

Every batch is one ``EVALSHA`` of ``store/ingest.lua``. For each sample the script sets
the point's latest value (``HS:VALUE:{device}``), appends it to the point's bounded
history stream (``XS:DATA:...``, ``MAXLEN ~ [collector] history_length``) and
publishes it on the point's data channel. It then sends one message per device on the
device channel. Nothing waits per sample, so one round trip carries a whole frame or
scan.

While Redis is unreachable, samples wait in memory, at most ``[collector]
buffer_samples`` of them. When the buffer is full the *oldest* are dropped and counted,
because the newest values matter most to a control room. The samples are written in
arrival order once Redis is back.
"""

from __future__ import annotations

import collections
import hashlib
import json
from collections.abc import Sequence
from importlib.resources import files
from typing import Any

from twisted.application.service import Service
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
    }
)
#: Samples per script call: large enough to amortise the round trip, small enough that
#: one call never holds Redis for long (about 1 ms per 1000 samples).
BATCH = 2000


def encode(sample: Sample) -> tuple[str, str, str, str, str]:
    """The script arguments of one sample: ids, sample JSON, message JSON."""
    body = json.dumps(
        {
            "value": sample.value,
            "quality": sample.quality,
            "flags": list(sample.flags),
            "source_time": iso_time(sample.source_time),
            "receive_time": iso_time(sample.receive_time),
        },
        ensure_ascii=False,
        separators=(",", ":"),
        allow_nan=False,
        default=str,
    )
    ids = json.dumps(
        {"device_id": sample.device_id, "term_id": sample.term_id, "item_id": sample.item_id},
        separators=(",", ":"),
    )
    # {"device_id":..,"term_id":..,"item_id":..,"value":..}: ids first, then the sample.
    return sample.device_id, sample.term_id, sample.item_id, body, ids[:-1] + "," + body[1:]


def _finite(sample: Sample) -> Sample:
    """NaN and infinities are not JSON: such a value is stored as null, invalid."""
    return Sample(
        sample.device_id,
        sample.term_id,
        sample.item_id,
        None,
        "invalid",
        (*sample.flags, "not_finite"),
        sample.source_time,
        sample.receive_time,
    )


@implementer(ISampleSink)
class RedisIngest(Service):
    """Writes samples to Redis in batches (see the module docstring)."""

    log = Logger()

    def __init__(self, redis: Any, reactor: Any, history_length: int, buffer_samples: int):
        self.redis = redis
        self.clock = reactor
        self.history_length = history_length
        self.buffer: collections.deque[tuple[str, str, str, str, str]] = collections.deque()
        self.buffer_limit = buffer_samples
        self.written = 0
        self.skipped = 0
        self.dropped = 0
        self.failures = 0
        self._writing = False
        self._retry: IDelayedCall | None = None
        self._retry_delay = 0.5

    def samples_received(self, samples: Sequence[Sample]) -> None:
        """Queue a batch and start writing; never blocks."""
        buffer = self.buffer
        for sample in samples:
            try:
                buffer.append(encode(sample))
            except ValueError:  # NaN or infinity
                buffer.append(encode(_finite(sample)))
        excess = len(buffer) - self.buffer_limit
        if excess > 0:
            for _ in range(excess):
                buffer.popleft()
            self.dropped += excess
        if not self._writing and self._retry is None and self.running:
            self._write()

    def _write(self) -> None:
        self._retry = None
        if not self.buffer or not self.running:
            self._writing = False
            return
        self._writing = True
        count = min(BATCH, len(self.buffer))
        batch = [self.buffer.popleft() for _ in range(count)]
        args: list[Any] = [_TEMPLATES, self.history_length]
        for entry in batch:
            args.extend(entry)
        d = self.redis.call("evalsha", _SHA, [], args)
        d.addErrback(self._no_script, args)
        d.addCallbacks(self._written, self._failed, errbackArgs=(batch,))
        d.addErrback(self._loop_error)

    def _loop_error(self, failure: Any) -> None:
        # A bug in the reply handling must not stop the loop (house style 5).
        self.log.failure("ingest loop", failure)
        self._writing = False
        if self._retry is None and self.running:
            self._retry = self.clock.callLater(self._retry_delay, self._write)

    def _no_script(self, failure: Any, args: list[Any]) -> Any:
        message = failure.getErrorMessage()
        if "NOSCRIPT" in message or "No script matching" in message:  # txredisapi's wording
            return self.redis.call("eval", _SCRIPT, [], args)
        return failure

    def _written(self, reply: Any) -> None:
        written, skipped = (int(n) for n in reply)
        self.written += written
        self.skipped += skipped
        self._retry_delay = 0.5
        self._write()

    def _failed(self, failure: Any, batch: list[tuple[str, str, str, str, str]]) -> None:
        # Put the batch back in front, in order, and try again later (capped backoff).
        self.failures += 1
        self.buffer.extendleft(reversed(batch))
        excess = len(self.buffer) - self.buffer_limit
        if excess > 0:
            for _ in range(excess):
                self.buffer.popleft()
            self.dropped += excess
        self.log.warn(
            "cannot store {count} samples ({error}); {buffered} buffered, retry in {delay} s",
            count=len(batch),
            error=failure.getErrorMessage(),
            buffered=len(self.buffer),
            delay=self._retry_delay,
        )
        self._writing = False
        self._retry = self.clock.callLater(self._retry_delay, self._write)
        self._retry_delay = min(self._retry_delay * 2, 5.0)

    def stopService(self) -> Any:
        super().stopService()
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None

    def status(self) -> dict[str, Any]:
        """Counters: written, skipped (point gone), dropped (buffer full), buffered."""
        return {
            "written": self.written,
            "skipped": self.skipped,
            "dropped": self.dropped,
            "buffered": len(self.buffer),
            "buffer_limit": self.buffer_limit,
            "write_failures": self.failures,
        }
