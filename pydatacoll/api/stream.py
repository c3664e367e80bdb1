"""``GET /api/v1/stream``: samples, device statuses and alarms as Server-Sent Events.

One `StreamHub` per API process holds ONE Redis subscription (``CHANNEL:DEVICE_SAMPLES:*``,
``CHANNEL:DEVICE_STATUS:*`` and ``CHANNEL:ALARM``), opened when the first client comes
and closed ``IDLE_UNSUBSCRIBE`` seconds after the last one left, and fans each message out
to its clients in process; an event is encoded once, whatever the number of clients.

Events (``data`` is one line of JSON)::

    event: sample   {"device_id", "term_id", "item_id", "value", "quality", "time"}
    event: status   the device status object (as GET /api/v1/devices/{id}/status), with device_id
    event: alarm    the alarm event as published on CHANNEL:ALARM (with its log "id")

Every event has an ``id:`` ``{sample position},{alarm position}``, both Redis stream entry
ids (``XS:DATA:...`` and ``XS:ALARM_LOG``); a plain stream entry id is accepted too. Sent
back as ``Last-Event-ID`` (browsers do it when they reconnect), it resumes the stream: the
samples stored since the millisecond of the sample position (at least once: samples of
that same millisecond may come twice), at most ``REPLAY_SAMPLES`` of them (the newest)
over at most ``REPLAY_POINTS`` points, and the alarm events after the alarm position
(at most ``REPLAY_ALARMS``), then the current status of each device, then the live events.
A client connecting without ``Last-Event-ID`` gets the statuses, then the live events.
``: hb`` comments keep the connection alive every ``HEARTBEAT`` seconds.

Back-pressure: each client is a push producer of its request. While the socket does not
take more (the transport paused it) events wait in the client's queue of at most
``QUEUE_EVENTS``; one more and the client is dropped (its connection aborted, counted in
`StreamHub.dropped`), never buffered without limit.
"""

from __future__ import annotations

import collections
import json
from typing import Any

from twisted.application.service import Service
from twisted.internet import defer, task
from twisted.logger import Logger

from pydatacoll import errors
from pydatacoll.api.core import ApiCore
from pydatacoll.api.plumbing import routes
from pydatacoll.api.stream_events import (
    ENTRY_ID,
    HEARTBEAT,
    IDLE_UNSUBSCRIBE,
    MAX_FILTERS,
    NO_POSITION,
    QUEUE_EVENTS,
    REPLAY_ALARMS,
    REPLAY_PER_POINT,
    REPLAY_POINTS,
    REPLAY_SAMPLES,
    RETRY_MS,
    SAMPLES_PREFIX,
    STATUS_PREFIX,
    Filters,
    Resume,
    StreamClient,
    encode_event,
    entry_key,
    later_id,
    sample_event,
)
from pydatacoll.store import keys
from pydatacoll.store.live import LiveStore
from pydatacoll.store.redis import when_connected
from pydatacoll.store.subscriber import Subscriber

__all__ = [
    "HEARTBEAT",
    "IDLE_UNSUBSCRIBE",
    "MAX_FILTERS",
    "QUEUE_EVENTS",
    "REPLAY_ALARMS",
    "REPLAY_PER_POINT",
    "REPLAY_POINTS",
    "REPLAY_SAMPLES",
    "RETRY_MS",
    "Filters",
    "Resume",
    "StreamHub",
    "sample_event",
]


class StreamHub(Service):
    """The process's one subscription and its stream clients (see the module docstring)."""

    log = Logger()

    def __init__(
        self, reactor: Any, redis: Any, *, max_clients: int = 100, clock: Any = None
    ) -> None:
        self.reactor = reactor
        #: Runs the heartbeat and the idle timer (the reactor unless a test gives a Clock).
        self.clock = clock if clock is not None else reactor
        self.redis = redis
        self.live = LiveStore(redis)
        self.max_clients = max_clients
        self.clients: set[StreamClient] = set()
        #: Everything before these positions has been handed to every client.
        self.sample_position = NO_POSITION
        self.alarm_position = NO_POSITION
        self.dropped = 0
        self.events: collections.Counter[str] = collections.Counter()
        self.subscriber: Subscriber | None = None
        self._positioned = False
        self._waiting: list[defer.Deferred[None]] = []
        self._idle: Any = None
        self._heartbeat = task.LoopingCall(self._beat)
        self._heartbeat.clock = self.clock

    # -- service and subscription -------------------------------------------------------
    def startService(self) -> None:
        super().startService()
        self._heartbeat.start(HEARTBEAT, now=False)

    def stopService(self) -> Any:
        """End every stream (their requests finish) and close the subscription."""
        super().stopService()
        if self._heartbeat.running:
            self._heartbeat.stop()
        if self._idle is not None and self._idle.active():
            self._idle.cancel()
        self._idle = None
        for client in list(self.clients):
            self.remove(client)
            if not client.done.called:
                client.done.callback(b"")
        return self._unsubscribe()

    def subscribed(self) -> defer.Deferred[None]:
        """Fires once the subscription is up and the positions are known."""
        if self._idle is not None and self._idle.active():
            self._idle.cancel()
        self._idle = None
        if self.subscriber is not None and self.subscriber.subscribed and self._positioned:
            return defer.succeed(None)
        waiter: defer.Deferred[None] = defer.Deferred(self._gave_up)
        self._waiting.append(waiter)
        if self.subscriber is None:
            self.subscriber = Subscriber(
                self.reactor,
                lambda: self.redis.address,
                self._message,
                channels=[keys.ALARM],
                patterns=[keys.DEVICE_SAMPLES % "*", keys.DEVICE_STATUS_CHANNEL % "*"],
                on_subscribed=self._subscription_up,
                ready=self.redis.when_ready,
                name="stream subscription",
            )
            self.subscriber.startService()
        return waiter

    def _gave_up(self, waiter: defer.Deferred[None]) -> None:
        """A request stopped waiting for the subscription (timeout or client gone)."""
        if waiter in self._waiting:
            self._waiting.remove(waiter)
        self._maybe_idle()

    def _maybe_idle(self) -> None:
        """Close the subscription ``IDLE_UNSUBSCRIBE`` s from now unless a client comes."""
        if self.clients or self._waiting or not self.running or self.subscriber is None:
            return
        if self._idle is None or not self._idle.active():
            self._idle = self.clock.callLater(IDLE_UNSUBSCRIBE, self._idle_timeout)

    def _unsubscribe(self) -> defer.Deferred[None]:
        subscriber, self.subscriber = self.subscriber, None
        self._positioned = False
        for waiter in self._waiting:
            if not waiter.called:
                waiter.errback(errors.StoreUnavailable("the stream subscription was closed"))
        self._waiting = []
        if subscriber is None:
            return defer.succeed(None)
        d: defer.Deferred[None] = subscriber.stopService()
        return d

    def _idle_timeout(self) -> None:
        self._idle = None
        if not self.clients and not self._waiting:
            self._unsubscribe()

    def _subscription_up(self) -> None:
        if self._positioned:
            self._resubscribed()
        else:
            self._on_subscribed()

    def _resubscribed(self) -> None:
        """Messages were lost while the subscription was down: every client catches up
        from the positions everything was handed out to.

        The clients are held at once, before anything is read: a live message arriving
        while the pool reconnects would otherwise go out first and move the client past
        what the catch-up replays (it was lost, and the live one sent twice)."""
        resume = Resume(
            self.sample_position.partition("-")[0],
            "(" + self.alarm_position,
            self.sample_position,
            self.alarm_position,
        )
        clients = [client for client in self.clients if client.held is None]
        for client in clients:
            client.held = []

        def catch_up(_: Any) -> None:
            for client in clients:
                self._catch_up_later(client, resume)

        # the subscription may be up before the pool is
        when_connected(self.redis).addCallback(catch_up)
        self._release()

    @defer.inlineCallbacks
    def _on_subscribed(self) -> Any:
        """The first subscription: where the stream starts."""
        try:
            yield when_connected(self.redis)  # the subscription may be up before the pool
            now = yield self.live.server_time_ms()
            last_alarm = yield self.live.last_entry_id(keys.ALARM_LOG)
        except Exception as exc:
            self.log.warn("stream: positions not read ({error})", error=exc)
            if self.subscriber is not None and self.subscriber._conn is not None:
                self.subscriber._conn.transport.loseConnection()  # subscribe again
            return
        if self._positioned:  # positioned meanwhile (a second subscription)
            return
        self.sample_position = later_id(self.sample_position, f"{now}-0")
        self.alarm_position = later_id(self.alarm_position, last_alarm or NO_POSITION)
        self._positioned = True
        self._release()

    def _release(self) -> None:
        waiting, self._waiting = self._waiting, []
        for waiter in waiting:
            if not waiter.called:  # a request may have given up waiting
                waiter.callback(None)

    def _catch_up_later(self, client: StreamClient, resume: Resume) -> None:
        d = self.catch_up(client, resume)
        d.addErrback(lambda f: self.drop(client, f"catching up failed: {f.getErrorMessage()}"))

    # -- clients --------------------------------------------------------------------------
    def add(self, request: Any, filters: Filters) -> StreamClient:
        """A new client, catching up (its live events wait) until `catch_up` is done."""
        if len(self.clients) >= self.max_clients:
            raise errors.Unavailable(
                f"at most {self.max_clients} streams are served at once", field=None
            )
        client = StreamClient(self, request, filters)
        self.clients.add(client)
        return client

    def remove(self, client: StreamClient) -> None:
        """Forget a client (gone, dropped or ended)."""
        client.close()
        if client in self.clients:
            self.clients.discard(client)
            self._maybe_idle()

    def drop(self, client: StreamClient, reason: str) -> None:
        """Close a client that cannot be served (it does not read): abort its connection."""
        if client.closed:
            return
        self.dropped += 1
        self.log.warn(
            "stream client {client} dropped: {reason}", client=_peer(client.request), reason=reason
        )
        self.remove(client)
        transport = getattr(client.request.channel, "transport", None)
        if transport is not None:
            transport.abortConnection()

    @defer.inlineCallbacks
    def catch_up(self, client: StreamClient, resume: Resume | None) -> Any:
        """Replay what ``resume`` missed, send the statuses, then the held live events."""
        filters = client.filters
        chunks: list[bytes] = []
        sent: set[Any] = set()
        sample_position = self.sample_position if resume is None else resume.sample
        alarm_position = self.alarm_position if resume is None else resume.alarm
        if resume is not None:
            alarms = yield self.live.entries_from(keys.ALARM_LOG, resume.alarm_start, REPLAY_ALARMS)
            for entry_id, fields in alarms:
                try:
                    event = json.loads(fields.get("event", ""))
                except ValueError:
                    continue
                alarm_position = later_id(alarm_position, entry_id)
                if not isinstance(event, dict) or not filters.wants_point(
                    str(event.get("device_id")),
                    str(event.get("term_id")),
                    str(event.get("item_id")),
                ):
                    continue
                event["id"] = entry_id
                chunks.append(encode_event("alarm", f"{sample_position},{alarm_position}", event))
                sent.add(entry_id)
            samples = yield self._replay_samples(filters, resume.sample_start)
            for point, entry_id, stored in samples:
                sample_position = later_id(sample_position, entry_id)
                data = sample_event(
                    {**stored, **dict(zip(("device_id", "term_id", "item_id"), point, strict=True))}
                )
                chunks.append(encode_event("sample", f"{sample_position},{alarm_position}", data))
                sent.add((*point, entry_id))
        if filters.devices or filters.points:
            device_ids = sorted(filters.devices | {p[0] for p in filters.points})
        else:
            device_ids = yield self.live.device_ids()
        statuses = yield self.live.statuses(device_ids)
        for device_id, status in sorted(statuses.items()):
            chunks.append(
                encode_event(
                    "status",
                    f"{sample_position},{alarm_position}",
                    {**status, "device_id": device_id},
                )
            )
        if client.closed:
            return
        client.open()
        client.deliver(f"retry: {RETRY_MS}\nid: {sample_position},{alarm_position}\n\n".encode())
        for chunk in chunks:
            if client.closed:
                return
            client.deliver(chunk)
        self.events["catch_up"] += len(chunks)
        client.go_live(sent)

    @defer.inlineCallbacks
    def _replay_samples(self, filters: Filters, start: str) -> Any:
        points: set[tuple[str, str, str]] = set(filters.points)
        if filters.everything:
            device_ids = yield self.live.device_ids()
        else:
            device_ids = sorted(filters.devices)
        for device_id in device_ids:
            if len(points) >= REPLAY_POINTS:
                break
            for term_id, item_id in (yield self.live.point_ids(device_id)):
                points.add((device_id, term_id, item_id))
        chosen = sorted(points)[:REPLAY_POINTS]
        replies = yield defer.gatherResults(
            [
                self.live.entries_from(keys.POINT_DATA % point, start, REPLAY_PER_POINT)
                for point in chosen
            ],
            consumeErrors=True,
        )
        found = []
        for point, entries in zip(chosen, replies, strict=True):
            for entry_id, fields in entries:
                try:
                    stored = json.loads(fields.get("sample", ""))
                except ValueError:
                    continue
                if isinstance(stored, dict):
                    found.append((point, entry_id, stored))
        found.sort(key=lambda f: entry_key(f[1]))
        return found[-REPLAY_SAMPLES:]

    # -- fan-out --------------------------------------------------------------------------
    def _message(self, channel: str, text: str) -> None:
        if channel.startswith(SAMPLES_PREFIX):
            self._samples(channel[len(SAMPLES_PREFIX) :], text)
        elif channel == keys.ALARM:
            self._alarm(text)
        elif channel.startswith(STATUS_PREFIX):
            self._status(channel[len(STATUS_PREFIX) :], text)

    def _samples(self, device_id: str, text: str) -> None:
        if not any(c.filters.wants_device(device_id) for c in self.clients):
            # Nobody listens to this device: only keep the position (the last sample's
            # entry id), without decoding the message.
            at = text.rfind('"id":"')
            if at >= 0:
                entry_id = text[at + 6 : text.find('"', at + 6)]
                if ENTRY_ID.match(entry_id):
                    self.sample_position = later_id(self.sample_position, entry_id)
            return
        message = json.loads(text)
        clients = list(self.clients)
        for sample in message.get("samples", ()):
            entry_id = sample.get("id")
            if isinstance(entry_id, str) and ENTRY_ID.match(entry_id):
                self.sample_position = later_id(self.sample_position, entry_id)
            point = (sample.get("device_id"), sample.get("term_id"), sample.get("item_id"))
            chunk = None
            for client in clients:
                if client.filters.wants_point(*point):
                    if chunk is None:
                        chunk = encode_event(
                            "sample",
                            f"{self.sample_position},{self.alarm_position}",
                            sample_event(sample),
                        )
                        self.events["sample"] += 1
                    client.send(chunk, (*point, entry_id))

    def _alarm(self, text: str) -> None:
        event = json.loads(text)
        if not isinstance(event, dict):
            return
        entry_id = event.get("id")
        if isinstance(entry_id, str) and ENTRY_ID.match(entry_id):
            self.alarm_position = later_id(self.alarm_position, entry_id)
        point = (str(event.get("device_id")), str(event.get("term_id")), str(event.get("item_id")))
        chunk = None
        for client in list(self.clients):
            if client.filters.wants_point(*point):
                if chunk is None:
                    chunk = encode_event(
                        "alarm", f"{self.sample_position},{self.alarm_position}", event
                    )
                    self.events["alarm"] += 1
                client.send(chunk, entry_id)

    def _status(self, device_id: str, text: str) -> None:
        if not self.clients:
            return
        status = json.loads(text)
        if not isinstance(status, dict):
            return
        chunk = None
        for client in list(self.clients):
            if client.filters.wants_device(device_id):
                if chunk is None:
                    chunk = encode_event(
                        "status",
                        f"{self.sample_position},{self.alarm_position}",
                        {**status, "device_id": device_id},
                    )
                    self.events["status"] += 1
                client.send(chunk)

    def _beat(self) -> None:
        for client in list(self.clients):
            client.send(b": hb\n\n")


def _peer(request: Any) -> str:
    address = request.getClientAddress()
    return f"{getattr(address, 'host', '?')}:{getattr(address, 'port', '?')}"


@routes.route("/api/v1/stream", methods=["GET"])
@defer.inlineCallbacks
def stream(self: ApiCore, request: Any) -> Any:
    """Samples, device statuses and alarms as Server-Sent Events (``text/event-stream``);
    ``?device_id=`` and ``?point=device:term:item`` filter (repeatable), ``Last-Event-ID``
    resumes; see `pydatacoll.api.stream`."""
    self.check_read(request)
    filters = Filters.from_request(request)
    header = request.getHeader(b"last-event-id")
    resume = Resume.parse(header.decode("latin-1")) if header else None
    hub: StreamHub | None = self.stream_hub
    if hub is None:
        raise errors.Unavailable("the event stream is not served by this process")
    waiting = hub.subscribed()
    timeout = hub.reactor.callLater(self.settings.redis_timeout, waiting.cancel)
    try:
        yield waiting
    except defer.CancelledError:
        raise errors.StoreUnavailable("the stream subscription to Redis is not up") from None
    finally:
        if timeout.active():
            timeout.cancel()
    client = hub.add(request, filters)
    try:
        yield hub.catch_up(client, resume)
    except BaseException:
        hub.remove(client)
        raise
    if client.closed:
        return b""
    result = yield client.done
    return result
