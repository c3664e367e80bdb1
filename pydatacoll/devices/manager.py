"""The device manager: one named child service per configured device, kept in step with Redis.

On start, and after every reconnection of its subscription (messages may have been
missed), the manager *reconciles* (`pydatacoll.devices.reconcile`). It reads every device
with its terms and term-items and compares them by id with what runs:

- a new device starts;
- a deleted one stops;
- a changed device (address, protocol, any setting) restarts;
- changed terms or term-items only update the running device's points, so its link
  stays up.

Change messages trigger the same comparison for the devices they touch. The
configuration version is checked on every change message and every
``RECONCILE_INTERVAL``: a gap reconciles everything.

Every sample of every device goes to the ingest path (`RedisIngest`) and to the
processors. The manager also answers ``device_call`` / ``device_ctrl`` requests for the
devices it runs (`pydatacoll.devices.requests`), and writes each device's status to
Redis every ``STATUS_INTERVAL`` (`pydatacoll.devices.status`). All it knows of Redis is
its `IDeviceStore` (`pydatacoll.store.devices.DeviceStore`) and its subscription.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

import attrs
from twisted.application.service import Service
from twisted.internet import defer, task
from twisted.logger import Logger, LogLevel
from zope.interface import implementer

from pydatacoll.config import Settings
from pydatacoll.control.priority import CommandPriority
from pydatacoll.interfaces import ISampleSink
from pydatacoll.logs import RateLimitedLog
from pydatacoll.model import Sample
from pydatacoll.retry import Backoff
from pydatacoll.store import keys
from pydatacoll.store.devices import DeviceConfig, DeviceStore
from pydatacoll.store.ingest import RedisIngest
from pydatacoll.store.subscriber import Subscriber

from .cluster import ClusterMode
from .drivers import builtin_drivers, discover_drivers
from .reconcile import RECONCILE_INTERVAL, RETRY_INITIAL, RETRY_MAX, Reconciler
from .requests import MAX_REQUESTS, RequestHandler
from .status import (
    NOT_LIVE,
    STALE_AFTER,
    STATE_CHECK_INTERVAL,
    STATUS_INTERVAL,
)

__all__ = [
    "MAX_REQUESTS",
    "NOT_LIVE",
    "RECONCILE_INTERVAL",
    "RETRY_INITIAL",
    "RETRY_MAX",
    "STALE_AFTER",
    "STATE_CHECK_INTERVAL",
    "STATUS_INTERVAL",
    "DeviceConfig",
    "DeviceManager",
    "builtin_drivers",
    "discover_drivers",
    "redis_subscription",
]

_CHANGE_CHANNELS = [ch for ops in keys.CHANGE_CHANNELS.values() for ch in ops.values()]

#: Builds the manager's subscription: ``(handler, channels=, on_subscribed=, name=)``
#: -> an `ISubscriber` service.
SubscriptionFactory = Callable[..., Any]


def redis_subscription(redis: Any, reactor: Any) -> SubscriptionFactory:
    """Subscriptions on their own connection to the Redis ``redis`` connects to."""

    def subscribe(
        handler: Callable[[str, str], None],
        *,
        channels: Sequence[str],
        on_subscribed: Callable[[], None],
        name: str,
    ) -> Subscriber:
        return Subscriber(
            reactor,
            lambda: redis.address,
            handler,
            channels=channels,
            on_subscribed=on_subscribed,
            ready=redis.when_ready,
            name=name,
        )

    return subscribe


@implementer(ISampleSink)
class DeviceManager(RequestHandler, Reconciler, ClusterMode):
    """See the module docstring. ``sinks`` (`IConfigSink`) receive every sample after the
    ingest path, and every configuration change. ``redis`` is the shared client;
    ``subscribe`` builds the subscription (default: `redis_subscription`). With
    ``settings.cluster`` the devices run under leases (`pydatacoll.devices.cluster`;
    ``cluster_store``: an `IClusterStore`, default one on ``redis``)."""

    log = Logger()

    def __init__(
        self,
        redis: Any,
        settings: Settings,
        reactor: Any,
        sinks: Sequence[Any] = (),
        drivers: dict[str, Any] | None = None,
        *,
        subscribe: SubscriptionFactory | None = None,
        cluster_store: Any = None,
        priority: CommandPriority | None = None,
    ) -> None:
        super().__init__()
        self.redis = redis
        self.store = DeviceStore(redis)
        self.settings = settings
        self.reactor = reactor
        self.drivers = drivers if drivers is not None else discover_drivers()
        # The ingest path has a connection of its own, so its batches stay in order.
        ingest_redis = redis.dedicated()
        if ingest_redis is not redis:
            ingest_redis.setName("ingest-redis")
            ingest_redis.setServiceParent(self)
        self.ingest = RedisIngest(
            ingest_redis,
            reactor,
            settings.history_length,
            settings.buffer_samples,
            on_congestion=self._congestion,
            token_of=self.token_of if settings.cluster else None,
            publish_points=settings.publish_points,
        )
        self.ingest.setName("ingest")
        self.ingest.setServiceParent(self)
        # Answers to requests on a connection of their own: never behind other traffic.
        self.reply_redis = redis.dedicated()
        if self.reply_redis is not redis:
            self.reply_redis.setName("reply-redis")
            self.reply_redis.setServiceParent(self)
        self.reply_store = DeviceStore(self.reply_redis)
        self.sinks = list(sinks)
        self.running_devices = {}
        self._backoff = Backoff(RETRY_INITIAL, RETRY_MAX)
        self._frames = {}
        self._written_state = {}
        self._written_at = {}
        self._status_texts = {}
        self._not_live = set()
        self._leases = {}
        #: Leases being given back: the device is stopping, its lease kept until its link
        #: is closed and its samples written; a reconcile meanwhile must not restart it.
        self._handing_over = {}
        self._closing = {}
        #: Devices paused because the ingest is congested: device id -> its runtime.
        self._paused = {}
        #: Requests in flight per device (its input is never paused meanwhile).
        self._commands = {}
        #: Commands ahead of data: this process's (shared with its API) or one of its own.
        self.priority = (
            priority if priority is not None else CommandPriority(reactor, settings.command_hold)
        )
        self.priority.add_holder(self)
        self._held = {}
        self._senders = set()
        self._senders_before = set()
        subscribe = subscribe or redis_subscription(redis, reactor)
        self.subscriber = subscribe(
            self._message,
            channels=[*_CHANGE_CHANNELS, keys.DEVICE_CALL, keys.DEVICE_CTRL],
            on_subscribed=self._subscribed,
            name="device manager subscription",
        )
        self.subscriber.setName("subscription")
        self.subscriber.setServiceParent(self)
        if settings.cluster:
            self._join_cluster(cluster_store, subscribe)  # started after the subscription
        self._loops = [
            task.LoopingCall(self._write_status),
            task.LoopingCall(self._check_version),
            task.LoopingCall(self._watch_states),
        ]
        for loop in self._loops:
            loop.clock = reactor
        #: Messages that may repeat many times a second (congestion, points updated).
        self.rate_limited = RateLimitedLog(self.log, reactor)

    # --- service ---------------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        self._loops[0].start(STATUS_INTERVAL, now=False)
        self._loops[1].start(RECONCILE_INTERVAL, now=False)
        self._loops[2].start(STATE_CHECK_INTERVAL, now=False)

    @defer.inlineCallbacks
    def stopService(self) -> Any:
        """Stop the devices, then the subscription, then write what the ingest holds."""
        for loop in self._loops:
            if loop.running:
                loop.stop()
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None
        self.rate_limited.stop()
        self.priority.stop()
        if self.member is not None:
            # Its devices stop (links closed), then their leases go back, then it leaves.
            yield defer.maybeDeferred(self.member.stopService)
        Service.stopService(self)
        devices = [
            child
            for child in self
            if child
            not in (self.ingest, self.subscriber, self.ingest.redis, self.reply_redis, self.member)
        ]
        yield defer.DeferredList(
            [defer.maybeDeferred(child.stopService) for child in devices], consumeErrors=True
        )
        yield defer.maybeDeferred(self.subscriber.stopService)
        # Nothing collects them any more: their values are not topical from now on.
        for device_id in self.running_devices:
            self.ingest.mark_not_topical(device_id)
        yield defer.maybeDeferred(self.ingest.stopService)
        if self.ingest.redis is not self.redis:
            yield defer.maybeDeferred(self.ingest.redis.stopService)
        if self.reply_redis is not self.redis:
            yield defer.maybeDeferred(self.reply_redis.stopService)
        self.running_devices.clear()

    # --- samples ---------------------------------------------------------------------

    def samples_received(self, samples: Sequence[Sample]) -> None:
        """Every batch from every device (and from the processors' ``emit``)."""
        if samples:
            # A device's batch is its own (a processor's may mix: its devices are not
            # links); a command's hold pauses those that sent lately.
            self._senders.add(samples[0].device_id)
        if self._not_live:
            # What a device reports while it is not live (its driver's "not_connected"
            # placeholders) is not topical either; a good value is fresh and stays as is.
            not_live = self._not_live
            samples = [
                attrs.evolve(s, flags=(*s.flags, "NT"))
                if s.device_id in not_live and s.quality != "good" and "NT" not in s.flags
                else s
                for s in samples
            ]
        self.ingest.samples_received(samples)
        if self.ingest.congested:
            self._pause_senders(samples)
        for sink in self.sinks:
            try:
                sink.samples_received(samples)
            except Exception:
                self.log.failure("a sample consumer failed")

    def _subscribed(self) -> None:
        # Messages may have been missed while the subscription was down: catch up.
        self.reconcile()

    def _congestion(self, congested: bool) -> None:
        """Pause (or resume) the input of the devices that flood Redis.

        Only a device with samples waiting in the ingest buffer is paused (those that
        send more than Redis takes), never one with a command in flight (its
        confirmation must be read at once); a device that delivers samples while the
        ingest stays congested is paused then (`_pause_senders`). Below the low water
        every paused device reads again.
        """
        if congested:
            waiting = {sample.device_id for sample in self.ingest.buffer}
        else:
            waiting = set()
        self.rate_limited.emit(
            LogLevel.info,
            "ingest",
            "ingest {what}: {n} samples wait",
            n=len(self.ingest.buffer),
            what=f"congested, pausing {len(waiting)} devices" if congested else "caught up",
        )
        if congested:
            for device_id in waiting:
                self._pause(device_id)
        else:
            paused, self._paused = self._paused, {}
            for device_id, runtime in paused.items():
                if self._held.get(device_id) is not runtime:  # else: a command's hold ends it
                    self._set_input(runtime, pause=False)

    def _pause_senders(self, samples: Sequence[Sample]) -> None:
        """While congested: pause the devices of ``samples`` that still read."""
        for device_id in {sample.device_id for sample in samples}:
            self._pause(device_id)

    def _pause(self, device_id: str) -> None:
        running = self.running_devices.get(device_id)
        if running is None or running.runtime is None or self._commands.get(device_id):
            return
        if self._paused.get(device_id) is running.runtime:
            return  # paused already (a restarted device has a new runtime: paused anew)
        self._paused[device_id] = running.runtime
        if self._held.get(device_id) is not running.runtime:
            self._set_input(running.runtime, pause=True)

    def _set_input(self, runtime: Any, *, pause: bool) -> None:
        try:
            if pause:
                runtime.pause_input()
            else:
                runtime.resume_input()
        except Exception:
            self.log.failure("pausing or resuming a device")

    # --- messages --------------------------------------------------------------------

    def _message(self, channel: str, text: str) -> None:
        try:
            message = json.loads(text)
        except ValueError:
            self.log.warn("not JSON on {channel}: {text}", channel=channel, text=text[:200])
            return
        if not isinstance(message, dict):
            return
        if channel == keys.DEVICE_CALL:
            self._request("call", message)
        elif channel == keys.DEVICE_CTRL:
            self._request("ctrl", message)
        else:
            self._change(message)

    def status(self) -> dict[str, Any]:
        """The collector's own counters."""
        return {
            "devices": len(self.running_devices),
            "subscribed": self.subscriber.subscribed,
            "ingest": self.ingest.status(),
            "command_priority": self.priority.status(),
            "config_version": self.version,
            **({"collector": self.collector_id} if self.member is not None else {}),
        }
