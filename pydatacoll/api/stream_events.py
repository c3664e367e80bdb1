"""The event stream's pieces without I/O: limits, ``Last-Event-ID`` positions, filters,
the SSE encoding, and one client's queue with its back-pressure (see
`pydatacoll.api.stream` for the stream itself)."""

from __future__ import annotations

import collections
import json
import re
from typing import Any

import attrs
from twisted.internet import defer
from twisted.internet.interfaces import IPushProducer
from zope.interface import implementer

from pydatacoll import errors
from pydatacoll.model import is_valid_id
from pydatacoll.store import keys

#: Events a client may have waiting while its socket is full; one more drops it.
QUEUE_EVENTS = 1000
#: Seconds between ``: hb`` comments.
HEARTBEAT = 15.0
#: Resume bounds (see the module docstring).
REPLAY_POINTS = 2000
REPLAY_PER_POINT = 1000
REPLAY_SAMPLES = 10000
REPLAY_ALARMS = 1000
#: Values of ``device_id`` plus ``point`` one request may give.
MAX_FILTERS = 1000
#: Seconds the subscription stays open without clients (a reconnecting page finds it).
IDLE_UNSUBSCRIBE = 60.0
#: Browsers reconnect after this many milliseconds.
RETRY_MS = 2000

SAMPLES_PREFIX = keys.DEVICE_SAMPLES % ""
STATUS_PREFIX = keys.DEVICE_STATUS_CHANNEL % ""
ENTRY_ID = re.compile(r"^(\d{1,20})-(\d{1,20})$")
NO_POSITION = "0-0"


def entry_key(entry_id: str) -> tuple[int, int]:
    """A stream entry id as (ms, seq), for ordering."""
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def later_id(a: str, b: str) -> str:
    """The later of two stream entry ids."""
    return a if entry_key(a) >= entry_key(b) else b


@attrs.frozen
class Resume:
    """Where a client resumes: XRANGE start bounds of the sample streams and the alarm log."""

    sample_start: str
    alarm_start: str
    sample: str
    alarm: str

    @classmethod
    def parse(cls, text: str) -> Resume:
        """``{sample id},{alarm id}`` or one stream entry id; `ValidationError` otherwise."""
        parts = text.strip().split(",")
        if len(parts) > 2 or not all(ENTRY_ID.match(p) for p in parts):
            raise errors.ValidationError(
                "Last-Event-ID must be an id this stream sent ({sample id},{alarm id})",
                field="Last-Event-ID",
            )
        sample = parts[0]
        ms = sample.partition("-")[0]
        if len(parts) == 2:
            return cls(ms, "(" + parts[1], sample, parts[1])
        return cls(ms, ms, sample, f"{ms}-0")


@attrs.frozen
class Filters:
    """``?device_id=`` and ``?point=device:term:item`` (repeatable; union; none: all)."""

    devices: frozenset[str] = frozenset()
    points: frozenset[tuple[str, str, str]] = frozenset()

    @property
    def everything(self) -> bool:
        """Whether no filter was given."""
        return not self.devices and not self.points

    def wants_device(self, device_id: str) -> bool:
        """Status events: a named device, or the device of a named point."""
        return (
            self.everything
            or device_id in self.devices
            or any(p[0] == device_id for p in self.points)
        )

    def wants_point(self, device_id: str, term_id: str, item_id: str) -> bool:
        """Sample and alarm events: a point of a named device, or a named point."""
        return (
            self.everything
            or device_id in self.devices
            or (device_id, term_id, item_id) in self.points
        )

    @classmethod
    def from_request(cls, request: Any) -> Filters:
        """The filters of a request; 400 naming ``device_id`` or ``point``."""
        devices = [v.decode("utf-8", "replace") for v in request.args.get(b"device_id", [])]
        points = [v.decode("utf-8", "replace") for v in request.args.get(b"point", [])]
        if len(devices) + len(points) > MAX_FILTERS:
            raise errors.ValidationError(f"at most {MAX_FILTERS} filters", field="point")
        for device_id in devices:
            if not is_valid_id(device_id):
                raise errors.ValidationError("device_id is not a valid id", field="device_id")
        parsed = []
        for point in points:
            ids = tuple(point.split(":"))
            if len(ids) != 3 or not all(is_valid_id(i) for i in ids):
                raise errors.ValidationError(
                    "point must be device_id:term_id:item_id", field="point"
                )
            parsed.append(ids)
        return cls(frozenset(devices), frozenset(parsed))  # type: ignore[arg-type]


def encode_event(kind: str, event_id: str, data: Any) -> bytes:
    """One Server-Sent Event: ``event``, ``id`` and one line of JSON ``data``."""
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"), default=str)
    return f"event: {kind}\nid: {event_id}\ndata: {text}\n\n".encode()


def sample_event(message: dict[str, Any]) -> dict[str, Any]:
    """The ``data`` of a sample event from a published or stored sample."""
    return {
        "device_id": message.get("device_id"),
        "term_id": message.get("term_id"),
        "item_id": message.get("item_id"),
        "value": message.get("value"),
        "quality": message.get("quality"),
        "time": message.get("source_time") or message.get("receive_time"),
    }


@implementer(IPushProducer)
class StreamClient:
    """One open stream: a push producer of its request, with a bounded queue."""

    def __init__(self, hub: Any, request: Any, filters: Filters) -> None:
        # hub: the `pydatacoll.api.stream.StreamHub` (not imported: it imports this module)
        self.hub = hub
        self.request = request
        self.filters = filters
        self.queue: collections.deque[bytes] = collections.deque()
        #: While catching up, live events wait here: (dedupe key or None, chunk).
        self.held: list[tuple[Any, bytes]] | None = []
        self.paused = False
        self.closed = False
        self.opened = False
        self.done: defer.Deferred[bytes] = defer.Deferred(lambda _: hub.remove(self))

    def open(self) -> None:
        """Send the response head and take the transport's back-pressure (once)."""
        if self.opened or self.closed:
            return
        self.opened = True
        request = self.request
        request.setResponseCode(200)
        request.setHeader(b"Content-Type", b"text/event-stream")
        request.setHeader(b"Cache-Control", b"no-cache")
        request.setHeader(b"X-Accel-Buffering", b"no")  # proxies: do not buffer the stream
        request.registerProducer(self, True)

    def close(self) -> None:
        """Forget the queue and let go of the request's producer slot."""
        self.closed = True
        self.queue.clear()
        self.held = None
        if self.opened:
            self.opened = False
            try:
                self.request.unregisterProducer()
            except Exception:  # the connection is already gone
                pass

    def send(self, chunk: bytes, key: Any = None) -> None:
        """Queue or write one event (``key`` identifies it against the catch-up)."""
        if self.closed:
            return
        if self.held is not None:
            if len(self.held) >= QUEUE_EVENTS:
                self.hub.drop(self, "too many events while catching up")
            else:
                self.held.append((key, chunk))
            return
        self.deliver(chunk)

    def deliver(self, chunk: bytes) -> None:
        """Write now, or queue while the socket is full; a full queue drops the client."""
        if self.paused or self.queue:
            if len(self.queue) >= QUEUE_EVENTS:
                self.hub.drop(self, "the client does not read")
                return
            self.queue.append(chunk)
            return
        self.request.write(chunk)

    def go_live(self, sent: set[Any]) -> None:
        """Deliver what waited during the catch-up (less what it sent) and go live."""
        held, self.held = self.held or [], None
        for key, chunk in held:
            if key is None or key not in sent:
                self.deliver(chunk)
                if self.closed:
                    return

    # IPushProducer: the transport pauses us when its buffer is full.
    def pauseProducing(self) -> None:  # noqa: N802 (Twisted API)
        self.paused = True

    def resumeProducing(self) -> None:  # noqa: N802 (Twisted API)
        self.paused = False
        while self.queue and not self.paused and not self.closed:
            self.request.write(self.queue.popleft())

    def stopProducing(self) -> None:  # noqa: N802 (Twisted API)
        self.hub.remove(self)
