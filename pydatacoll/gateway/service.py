"""The gateway service: every configured gateway listening, fed from Redis.

Where it runs: in the ``all`` role and in its own ``gateway`` role (``--role gateway``).
It needs nothing but Redis: the latest value of every point is in ``HS:VALUE:{device}``,
every new sample is published on ``CHANNEL:DEVICE_SAMPLES:{device}``, every device's
state is in ``HS:DEVICE_STATUS:{device}``, and commands go through the same
``CHANNEL:DEVICE_CTRL`` round trip (and audit stream) as the REST API's device_ctrl.
So a gateway process can sit apart from the collectors (in a DMZ, say), restart without
touching the field links, and serve points of devices run by several collectors.

On start, after every reconnection of its subscription, and on every gateway change
message, the service *reconciles*: a new gateway starts listening, a deleted one stops,
a gateway whose own settings changed restarts (its connections drop), and a gateway
whose points changed takes them without dropping a connection.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Any

from twisted.application.service import MultiService, Service
from twisted.internet import defer, task
from twisted.logger import Logger

from pydatacoll import errors
from pydatacoll.control.commander import CommandSettings, make_commander
from pydatacoll.gateway.commands import CommandPath
from pydatacoll.gateway.model import Gateway, GatewayPoint
from pydatacoll.gateway.redundancy import RedundancyGroup
from pydatacoll.gateway.server import (
    DEFAULT_COMMAND_TIMEOUT,
    DEFAULT_EVENT_QUEUE,
    DEFAULT_LISTEN,
    MAX_CONNECTIONS,
    GatewayServer,
)
from pydatacoll.interfaces import ICommander
from pydatacoll.model import decode_fields
from pydatacoll.store import keys
from pydatacoll.store.gateway import GatewayStore
from pydatacoll.store.subscriber import Subscriber

__all__ = [
    "DEFAULT_COMMAND_TIMEOUT",
    "DEFAULT_EVENT_QUEUE",
    "DEFAULT_LISTEN",
    "MAX_CONNECTIONS",
    "STATE_INTERVAL",
    "GatewayServer",
    "GatewayService",
    "RedundancyGroup",
]

#: Seconds between reads of the device states (the collector writes them every 2 s).
STATE_INTERVAL = 2.0
_CHANNELS = [
    *keys.CHANGE_CHANNELS["gateway"].values(),
    *keys.CHANGE_CHANNELS["gateway_point"].values(),
]
_SAMPLES_PREFIX = keys.DEVICE_SAMPLES % ""
#: A device's status, published by its collector at each state change: a gateway knows
#: at once that a device went offline (commands refused here, as the tick would later).
_STATUS_PREFIX = keys.DEVICE_STATUS_CHANNEL % ""


class GatewayService(MultiService):
    """Every configured gateway, kept in step with Redis (see the module docstring)."""

    log = Logger()

    def __init__(
        self,
        redis: Any,
        reactor: Any,
        *,
        commander: ICommander | None = None,
        replies: Any = None,
        ctrl_log_length: int = 10000,
        subscribe: Callable[..., Any] | None = None,
    ) -> None:
        """``commander`` runs the commands of the masters (without it and without
        ``replies``, commands are refused); given ``replies`` (a reply listener) instead,
        the service builds its `Commander` on ``redis`` (audit bounded to
        ``ctrl_log_length``). ``subscribe(handler, channels=, on_subscribed=, name=)``
        builds the subscription (an `ISubscriber`; default: a `Subscriber` on the server
        ``redis`` connects to)."""
        super().__init__()
        self.redis = redis
        self.reactor = reactor
        self.store = GatewayStore(redis)
        if commander is None and replies is not None:
            limits = CommandSettings(ctrl_log_length=ctrl_log_length)
            commander = make_commander(redis, limits, reactor, replies)
        self.commands = CommandPath(commander) if commander is not None else None
        self.gateways: dict[str, GatewayServer] = {}
        #: Why a configured gateway does not run (gateway id -> message).
        self.errors: dict[str, str] = {}
        self._reconciling: defer.Deferred[None] | None = None
        self._dirty: set[str] | None = None
        self._again = False
        self._retry = False
        options: dict[str, Any] = dict(
            channels=_CHANNELS, on_subscribed=self._subscribed, name="gateway subscription"
        )
        if subscribe is None:
            self.subscriber: Any = Subscriber(
                reactor, lambda: redis.address, self._message, ready=redis.when_ready, **options
            )
        else:
            self.subscriber = subscribe(self._message, **options)
        self.subscriber.setName("subscription")
        self.subscriber.setServiceParent(self)
        self._written: set[str] = set()
        self._states = task.LoopingCall(self._tick)
        self._states.clock = reactor

    def startService(self) -> None:
        super().startService()
        self._states.start(STATE_INTERVAL, now=False)

    @defer.inlineCallbacks
    def stopService(self) -> Any:
        if self._states.running:
            self._states.stop()
        Service.stopService(self)
        servers = list(self.gateways.values())
        self.gateways.clear()
        yield defer.DeferredList(
            [defer.maybeDeferred(s.stopService) for s in servers], consumeErrors=True
        )
        for server in servers:
            server.disownServiceParent()  # not running any more: nothing to wait for
        yield defer.maybeDeferred(self.subscriber.stopService)

    def _subscribed(self) -> None:
        # Changes may have been missed while the subscription was down: catch up, once
        # the pool can be used (at start the subscription may be up before the pool is,
        # and a pass then would only be postponed, with a warning).
        d = self.store.when_connected()
        d.addCallback(lambda _: self.reconcile() if self.running else None)
        d.addErrback(lambda f: self.log.failure("gateway catch-up", f))

    # --- messages --------------------------------------------------------------------

    def _message(self, channel: str, text: str) -> None:
        try:
            message = json.loads(text)
        except ValueError:
            return
        if not isinstance(message, dict):
            return
        if channel.startswith(_SAMPLES_PREFIX):
            samples = message.get("samples")
            if isinstance(samples, list):
                for server in self.gateways.values():
                    if message.get("device_id") in server.devices:
                        server.samples(samples)
            return
        if channel.startswith(_STATUS_PREFIX):
            device_id, state = message.get("device_id"), message.get("state")
            if isinstance(device_id, str) and isinstance(state, str):
                for server in self.gateways.values():
                    if device_id in server.devices:
                        server.device_states({device_id: state})
            return
        touched = set()
        if message.get("entity") == "gateway" and message.get("id") is not None:
            touched.add(str(message["id"]))
        for body in (message.get("data"), message.get("old")):
            if isinstance(body, dict) and body.get("gateway_id") is not None:
                touched.add(str(body["gateway_id"]))
        if touched:
            self.reconcile(touched)

    # --- reconciling -----------------------------------------------------------------

    def reconcile(self, gateway_ids: Iterable[str] | None = None) -> defer.Deferred[None]:
        """Compare the named gateways (default: all) with Redis; one pass at a time."""
        if gateway_ids is None:
            self._dirty = None
        elif self._dirty is not None:
            self._dirty.update(gateway_ids)
        if self._reconciling is not None:
            self._again = True
            return self._reconciling
        d = self._reconcile_loop()
        if not d.called:  # a pass that failed at once has finished already: not running
            self._reconciling = d
        return d

    @defer.inlineCallbacks
    def _reconcile_loop(self) -> Any:
        try:
            while self.running:
                dirty, self._dirty, self._again = self._dirty, set(), False
                try:
                    yield self._reconcile(dirty)
                except errors.StoreUnavailable as exc:
                    self.log.warn("gateway reconcile postponed: {error}", error=exc)
                    self._dirty = None
                    self._retry = True  # the next tick tries again
                    break
                except Exception:
                    self.log.failure("gateway reconcile failed")
                    self._dirty = None
                    self._retry = True
                    break
                if not self._again and not self._dirty:
                    break
        finally:
            self._reconciling = None

    @defer.inlineCallbacks
    def _reconcile(self, dirty: set[str] | None) -> Any:
        stored = set((yield self.store.gateway_ids()))
        names = stored | set(self.gateways) if dirty is None else set(dirty)
        for gateway_id in sorted(names):
            config = (yield self.store.gateway(gateway_id)) if gateway_id in stored else None
            yield self._apply(gateway_id, config)

    def _follow(self, devices: frozenset[str]) -> defer.Deferred[Any]:
        """Subscribe the sample channels of ``devices`` besides those already followed."""
        followed: set[str] = set()
        for server in self.gateways.values():
            followed |= server.devices
        wanted = [
            channel
            for d in sorted(followed | devices)
            for channel in (keys.DEVICE_SAMPLES % d, keys.DEVICE_STATUS_CHANNEL % d)
        ]
        d: defer.Deferred[Any] = self.subscriber.update_channels([*_CHANNELS, *wanted])
        return d

    @defer.inlineCallbacks
    def _apply(self, gateway_id: str, config: Any) -> Any:
        running = self.gateways.get(gateway_id)
        if config is None:
            self.errors.pop(gateway_id, None)
            if running is not None:
                self.log.info("gateway {id} deleted: stopping it", id=gateway_id)
                yield self._stop(gateway_id)
            return
        try:
            gateway = Gateway.from_json(decode_fields(config[0]))
            points = [GatewayPoint.from_json(decode_fields(p)) for p in config[1]]
        except errors.ApiError as exc:
            self.errors[gateway_id] = exc.message
            self.log.warn("gateway {id} cannot run: {error}", id=gateway_id, error=exc.message)
            return
        if running is not None:
            if json.dumps(gateway.to_json(), sort_keys=True, default=str) == running.key:
                # A point newly mapped is served once its device's latest value is read
                # (every device again), never as a placeholder meanwhile.
                running.update_points(points, hold_new=True)
                try:
                    yield self._load(running, running.devices)
                finally:
                    running.serve_held()  # a failed read: served as not topical, as before
                return
            self.log.info("gateway {id} changed: restarting it", id=gateway_id)
            yield self._stop(gateway_id)
        server = GatewayServer(gateway, points, self.reactor, self.commands)
        server.setName(f"gateway {gateway_id}")
        yield self._load(server, server.devices)
        try:
            yield server.start_listening()
        except Exception as exc:
            self.errors[gateway_id] = f"cannot listen on {gateway.listen}: {exc}"
            self.log.warn("gateway {id}: {error}", id=gateway_id, error=self.errors[gateway_id])
            return
        if not self.running or gateway_id in self.gateways:
            yield server.stopService()  # stopped (or replaced) while it was starting
            return
        self.errors.pop(gateway_id, None)
        server.setServiceParent(self)
        self.gateways[gateway_id] = server

    @defer.inlineCallbacks
    def _load(self, server: GatewayServer, devices: frozenset[str]) -> Any:
        # Subscribe first, then read: a sample published in between is not missed (and
        # the image keeps the newer of the two).
        yield self._follow(server.devices)
        if not devices:
            return
        values = yield self.store.device_values(devices)
        states = yield self.store.device_states(devices)
        protocols = yield self.store.device_protocols(devices)
        server.load(values, states, protocols)

    @defer.inlineCallbacks
    def _stop(self, gateway_id: str) -> Any:
        server = self.gateways.pop(gateway_id)
        yield defer.maybeDeferred(server.disownServiceParent)
        yield self._follow(frozenset())

    @defer.inlineCallbacks
    def _tick(self) -> Any:
        """Retry a reconcile that failed; read the states of the gateways' devices, write
        the gateways' statuses.

        Run by a LoopingCall: every error is caught (loops never die).
        """
        if self._retry and self._reconciling is None:
            self._retry = False
            self.reconcile()
        try:
            devices: set[str] = set()
            for server in self.gateways.values():
                devices |= server.devices
            if devices:
                states = yield self.store.device_states(devices)
                for server in list(self.gateways.values()):
                    server.device_states({d: states.get(d) for d in server.devices})
            statuses = {gid: s.status() for gid, s in self.gateways.items()}
            for gid, message in self.errors.items():
                statuses[gid] = {"gateway_id": gid, "state": "error", "error": message}
            if statuses:
                yield self.store.write_statuses(statuses)
            gone = self._written - set(statuses)
            if gone:
                yield self.store.forget_statuses(gone)
            self._written = set(statuses)
        except errors.StoreUnavailable:
            pass
        except Exception:
            self.log.failure("gateway states and statuses")

    def status(self) -> dict[str, Any]:
        """Every running gateway's status and why others do not run."""
        return {
            "gateways": {gid: s.status() for gid, s in sorted(self.gateways.items())},
            "errors": dict(self.errors),
        }
