"""The device manager: one named child service per configured device, kept in step with Redis.

On start, and after every reconnection of its subscription (messages may have been
missed), the manager *reconciles*. It reads every device with its terms and term-items
and compares them by id with what runs:

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
devices it runs, and writes each device's status to Redis every ``STATUS_INTERVAL``.
"""

from __future__ import annotations

import collections
import json
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import attrs
from twisted.application.service import MultiService, Service
from twisted.internet import defer, task
from twisted.logger import Logger, LogLevel
from twisted.plugin import getPlugins
from twisted.python.failure import Failure
from zope.interface import implementer
from zope.interface.exceptions import Invalid
from zope.interface.verify import verifyObject

from pydatacoll import errors
from pydatacoll.config import Settings
from pydatacoll.interfaces import IProtocolDriver, ISampleSink
from pydatacoll.logs import RateLimitedLog
from pydatacoll.model import ControlOutcome, Device, Sample, Term, TermItem, decode_fields, iso_time
from pydatacoll.store import keys
from pydatacoll.store.subscriber import Subscriber

from .ingest import RedisIngest

STATUS_INTERVAL = 2.0
RECONCILE_INTERVAL = 30.0
#: Requests (device_call / device_ctrl) handled at once; more are answered "busy".
MAX_REQUESTS = 256

_CHANGE_CHANNELS = [ch for ops in keys.CHANGE_CHANNELS.values() for ch in ops.values()]


def builtin_drivers() -> list[Any]:
    """The drivers that ship with PyDataColl (also found through ``twisted.plugin``)."""
    from pydatacoll.protocols.iec104.runtime import driver as iec104
    from pydatacoll.protocols.modbus.runtime import driver as modbus

    return [iec104, modbus]


def discover_drivers() -> dict[str, Any]:
    """Protocol name -> driver: the built-ins, then ``pydatacoll.plugins`` providers.

    Each driver is checked with ``verifyObject``; a broken one, or a second driver for a
    name, is logged and left out.
    """
    found: dict[str, Any] = {}
    candidates = list(builtin_drivers())
    try:
        import pydatacoll.plugins as drop_in

        candidates += list(getPlugins(IProtocolDriver, drop_in))
    except ImportError:
        pass
    for driver in candidates:
        try:
            verifyObject(IProtocolDriver, driver)
        except Invalid as exc:
            DeviceManager.log.error(
                "protocol driver {driver!r} refused: {error}", driver=driver, error=exc
            )
            continue
        if driver.name in found:
            if found[driver.name] is not driver and type(found[driver.name]) is not type(driver):
                DeviceManager.log.error(
                    "a second driver for protocol {name} is ignored", name=driver.name
                )
            continue
        found[driver.name] = driver
    return found


@attrs.frozen
class DeviceConfig:
    """A device with its terms and term-items, as read from Redis."""

    device: Device
    terms: tuple[Term, ...]
    term_items: tuple[TermItem, ...]

    def link_key(self) -> str:
        """What restarts the device when it changes: every device field."""
        return json.dumps(self.device.to_json(), sort_keys=True, default=str)

    def points_key(self) -> str:
        """What updates the device's points when it changes."""
        return json.dumps(
            [[t.to_json() for t in self.terms], [ti.to_json() for ti in self.term_items]],
            sort_keys=True,
            default=str,
        )


@attrs.define
class _Running:
    config: DeviceConfig
    runtime: Any = None
    error: str | None = None
    state: str = "starting"
    since: float = 0.0


@implementer(ISampleSink)
class DeviceManager(MultiService):
    """See the module docstring. ``sinks`` receive every sample after the ingest path."""

    log = Logger()

    def __init__(
        self,
        redis: Any,
        settings: Settings,
        reactor: Any,
        sinks: Sequence[Any] = (),
        drivers: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.redis = redis
        self.settings = settings
        self.reactor = reactor
        self.drivers = drivers if drivers is not None else discover_drivers()
        # The ingest path has a connection of its own, so its batches stay in order.
        ingest_redis = redis.dedicated() if hasattr(redis, "dedicated") else redis
        if ingest_redis is not redis:
            ingest_redis.setName("ingest-redis")
            ingest_redis.setServiceParent(self)
        self.ingest = RedisIngest(
            ingest_redis,
            reactor,
            settings.history_length,
            settings.buffer_samples,
            on_congestion=self._congestion,
        )
        self.ingest.setName("ingest")
        self.ingest.setServiceParent(self)
        self.sinks = list(sinks)
        self.running_devices: dict[str, _Running] = {}
        self.version: int | None = None
        self._reconciling: defer.Deferred[None] | None = None
        self._dirty: set[str] | None = None  # None: everything
        self._again = False
        self._requests = 0
        self._read_version = ""
        self._frames: dict[str, collections.deque[str]] = {}
        self.subscriber = Subscriber(
            reactor,
            lambda: redis.address,
            self._message,
            channels=[*_CHANGE_CHANNELS, keys.DEVICE_CALL, keys.DEVICE_CTRL],
            on_subscribed=self._subscribed,
            ready=redis.when_ready,
            name="device manager subscription",
        )
        self.subscriber.setName("subscription")
        self.subscriber.setServiceParent(self)
        self._loops = [
            task.LoopingCall(self._write_status),
            task.LoopingCall(self._check_version),
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

    @defer.inlineCallbacks
    def stopService(self) -> Any:
        """Stop the devices, then the subscription, then write what the ingest holds."""
        for loop in self._loops:
            if loop.running:
                loop.stop()
        self.rate_limited.stop()
        Service.stopService(self)
        devices = [
            child
            for child in self
            if child not in (self.ingest, self.subscriber, self.ingest.redis)
        ]
        yield defer.DeferredList(
            [defer.maybeDeferred(child.stopService) for child in devices], consumeErrors=True
        )
        yield defer.maybeDeferred(self.subscriber.stopService)
        yield defer.maybeDeferred(self.ingest.stopService)
        if self.ingest.redis is not self.redis:
            yield defer.maybeDeferred(self.ingest.redis.stopService)
        self.running_devices.clear()

    # --- samples ---------------------------------------------------------------------

    def samples_received(self, samples: Sequence[Sample]) -> None:
        """Every batch from every device (and from the processors' ``emit``)."""
        self.ingest.samples_received(samples)
        for sink in self.sinks:
            try:
                sink.samples_received(samples)
            except Exception:
                self.log.failure("a sample consumer failed")

    def _subscribed(self) -> None:
        # Messages may have been missed while the subscription was down: catch up.
        self.reconcile()

    def _congestion(self, congested: bool) -> None:
        """Pause (or resume) the devices' input while Redis is slower than they are."""
        self.rate_limited.emit(
            LogLevel.info,
            "ingest",
            "ingest {what}: {n} samples wait",
            n=len(self.ingest.buffer),
            what="congested, pausing the devices" if congested else "caught up",
        )
        for running in self.running_devices.values():
            switch = getattr(running.runtime, "pause_input" if congested else "resume_input", None)
            if switch is not None:
                try:
                    switch()
                except Exception:
                    self.log.failure("pausing or resuming a device")

    # --- reconciling -----------------------------------------------------------------

    def reconcile(self, device_ids: Iterable[str] | None = None) -> defer.Deferred[None]:
        """Compare the named devices (default: all) with Redis; one pass runs at a time."""
        if device_ids is None:
            self._dirty = None
        elif self._dirty is not None:
            self._dirty.update(device_ids)
        if self._reconciling is not None:
            self._again = True
            return self._reconciling
        d = self._reconcile_loop()
        if not d.called:  # a pass that failed at once (Redis away) has finished already
            self._reconciling = d
        return d

    @defer.inlineCallbacks
    def _reconcile_loop(self) -> Any:
        try:
            while True:
                dirty, self._dirty, self._again = self._dirty, set(), False
                try:
                    yield self._reconcile(dirty)
                except errors.StoreUnavailable as exc:
                    self.log.warn("reconcile postponed: {error}", error=exc)
                    self._dirty = None
                    break
                except Exception:
                    self.log.failure("reconcile failed")
                    self._dirty = None
                    break
                if not self._again and not self._dirty:
                    # Every change up to this version is applied: the ingest script may
                    # trust that each running point is where it is configured.
                    self.ingest.settled_version = self._read_version
                    break
        finally:
            self._reconciling = None

    @defer.inlineCallbacks
    def _reconcile(self, dirty: set[str] | None) -> Any:
        version = yield self.redis.call("get", keys.CONFIG_VERSION)
        self._read_version = str(version) if version is not None else ""
        stored = yield self.redis.call("smembers", keys.DEVICES)
        stored = set(stored or ())
        if dirty is None:
            names = stored | set(self.running_devices)
            self.version = int(version) if version else 0
        else:
            names = set(dirty)
        for device_id in sorted(names):
            config = None
            if device_id in stored:
                config = yield self._read_config(device_id)
            self._apply(device_id, config)

    @defer.inlineCallbacks
    def _read_config(self, device_id: str) -> Any:
        fields = yield self.redis.call("hgetall", keys.DEVICE % device_id)
        if not fields:
            return None
        device = Device.from_json(decode_fields(fields))
        term_ids = yield self.redis.call("smembers", keys.DEVICE_TERMS % device_id)
        terms = []
        term_items = []
        for term_id in sorted(term_ids or ()):
            term_fields = yield self.redis.call("hgetall", keys.TERM % term_id)
            if not term_fields:
                continue
            terms.append(Term.from_json(decode_fields(term_fields)))
            item_ids = yield self.redis.call("smembers", keys.TERM_ITEMS % term_id)
            for item_id in sorted(item_ids or ()):
                ti = yield self.redis.call("hgetall", keys.TERM_ITEM % (term_id, item_id))
                if ti:
                    term_items.append(TermItem.from_json(decode_fields(ti)))
        return DeviceConfig(device, tuple(terms), tuple(term_items))

    def _apply(self, device_id: str, config: DeviceConfig | None) -> None:
        running = self.running_devices.get(device_id)
        if config is None:
            if running is not None:
                self.log.info("device {device_id} deleted: stopping it", device_id=device_id)
                self._stop(device_id)
            return
        if running is not None:
            if running.config.link_key() == config.link_key():
                if running.config.points_key() != config.points_key():
                    self._update_points(device_id, running, config)
                return
            self.log.info("device {device_id} changed: restarting it", device_id=device_id)
            self._stop(device_id)
        self._start(config)

    def _start(self, config: DeviceConfig) -> None:
        device = config.device
        running = _Running(config, since=self.reactor.seconds())
        self.running_devices[device.id] = running
        driver = self.drivers.get(device.protocol)
        if driver is None:
            running.state = "error"
            running.error = f"no driver for protocol {device.protocol!r} is installed"
            if device.protocol != "formula":
                self.log.warn(
                    "device {device_id}: {error}", device_id=device.id, error=running.error
                )
            else:
                running.state, running.error = "computed", None
            return
        extra = {}
        if self.settings.frame_log_length:
            extra["frame_observer"] = self._frame_observer(device.id)
        try:
            runtime = driver.build(
                device, config.terms, config.term_items, self, self.reactor, self.settings, **extra
            )
            runtime.setName(device.id)
            runtime.setServiceParent(self)
        except Exception as exc:
            running.state = "error"
            running.error = getattr(exc, "message", None) or str(exc) or type(exc).__name__
            self.log.warn(
                "device {device_id} cannot run: {error}", device_id=device.id, error=running.error
            )
            return
        running.runtime = runtime
        running.state = "connecting"
        self.log.info(
            "device {device_id} ({protocol}) started", device_id=device.id, protocol=device.protocol
        )

    def _stop(self, device_id: str) -> None:
        running = self.running_devices.pop(device_id, None)
        self._frames.pop(device_id, None)
        if running is not None and running.runtime is not None:
            d = defer.maybeDeferred(running.runtime.disownServiceParent)
            d.addErrback(lambda f: self.log.failure("stopping device {d}", f, d=device_id))

    def _update_points(self, device_id: str, running: _Running, config: DeviceConfig) -> None:
        if running.runtime is None:
            self._stop(device_id)
            self._start(config)
            return
        try:
            running.runtime.update_points(config.terms, config.term_items)
        except Exception as exc:
            # A point the driver cannot take: keep running the old points, say why.
            running.error = getattr(exc, "message", None) or str(exc)
            self.log.warn(
                "device {device_id}: new points refused: {error}",
                device_id=device_id,
                error=running.error,
            )
            return
        running.config = config
        running.error = None
        self.rate_limited.emit(
            LogLevel.info,
            f"points {device_id}",
            "device {device_id}: points updated ({n})",
            device_id=device_id,
            n=len(config.term_items),
        )

    @defer.inlineCallbacks
    def _check_version(self) -> Any:
        try:
            version = yield self.redis.call("get", keys.CONFIG_VERSION)
        except Exception:
            return
        if self.version is None:  # no full pass has succeeded yet (Redis was away): again
            self.reconcile()
            return
        if version is not None and int(version) != self.version:
            self.log.info("configuration version moved without messages: reconciling")
            self.reconcile()

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

    def _change(self, message: dict[str, Any]) -> None:
        self.ingest.settled_version = ""  # check every point until this change is applied
        version = message.get("version")
        if isinstance(version, int) and self.version is not None:
            if version != self.version + 1:
                self.version = version
                self.reconcile()
                self._notify_sinks(message)
                return
            self.version = version
        touched: set[str] = set()
        entity = message.get("entity")
        for body in (message.get("data"), message.get("old")):
            if not isinstance(body, dict):
                continue
            if entity == "device" and body.get("id") is not None:
                touched.add(str(body["id"]))
            elif body.get("device_id") is not None:
                touched.add(str(body["device_id"]))
        if entity == "device" and message.get("id") is not None:
            touched.add(str(message["id"]))
        cascade = message.get("cascade")
        if isinstance(cascade, dict):
            for removed in cascade.values():
                for body in removed if isinstance(removed, list) else ():
                    if isinstance(body, dict) and body.get("device_id") is not None:
                        touched.add(str(body["device_id"]))
        if touched:
            self.reconcile(touched)
        self._notify_sinks(message)

    def _notify_sinks(self, message: dict[str, Any]) -> None:
        for sink in self.sinks:
            changed = getattr(sink, "config_changed", None)
            if changed is not None:
                try:
                    changed(message)
                except Exception:
                    self.log.failure("a processor failed on a configuration change")

    def _request(self, kind: str, message: dict[str, Any]) -> None:
        reply_to = message.get("reply_to")
        device_id = message.get("device_id")
        if not isinstance(reply_to, str) or not isinstance(device_id, str):
            return
        running = self.running_devices.get(device_id)
        if running is None:
            return  # not ours: another collector may run it; the API times out otherwise
        deadline = message.get("deadline")
        if isinstance(deadline, (int, float)) and time.time() > deadline:
            self.log.warn(
                "device_{kind} {request_id} arrived after its deadline: dropped",
                kind=kind,
                request_id=message.get("request_id"),
            )
            return
        if self._requests >= MAX_REQUESTS:
            self._reply(message, ControlOutcome("busy", "too many requests in progress"))
            return
        self._requests += 1
        d = defer.maybeDeferred(self._run_request, kind, running, message)
        d.addErrback(lambda f: ControlOutcome("failed", f.getErrorMessage()))
        d.addCallback(lambda outcome: self._reply(message, outcome))
        d.addBoth(self._request_done)

    def _request_done(self, result: Any) -> None:
        self._requests -= 1
        if isinstance(result, Failure):
            self.log.failure("answering a request", result)

    def _run_request(self, kind: str, running: _Running, message: dict[str, Any]) -> Any:
        runtime = running.runtime
        term_id, item_id = str(message.get("term_id")), str(message.get("item_id"))
        if runtime is None:
            return ControlOutcome("offline", running.error or "the device is not running")
        if not any(
            (ti.term_id, ti.item_id) == (term_id, item_id) for ti in running.config.term_items
        ):
            return ControlOutcome("not_found", f"no point {term_id}:{item_id} on this device")
        if kind == "call":
            d = runtime.read_point(term_id, item_id)

            def got(sample: Sample) -> ControlOutcome:
                self.samples_received([sample])
                return ControlOutcome("confirmed", "read", sample=sample)

            def failed(failure: Failure) -> ControlOutcome:
                error = failure.value
                if isinstance(error, errors.DeviceError):
                    return ControlOutcome(error.outcome, error.message, error.cause)
                return ControlOutcome("failed", failure.getErrorMessage())

            return d.addCallbacks(got, failed)
        select = message.get("select")
        d = runtime.control_point(
            term_id, item_id, message.get("value"), select if isinstance(select, bool) else None
        )

        def done(outcome: ControlOutcome) -> ControlOutcome:
            # One line per command: the API's, when it runs in this process; else this one.
            if not self.settings.runs_api:
                self.log.info(
                    "device_ctrl {request_id} from {client} (token {token_id}): "
                    "{device_id}:{term_id}:{item_id} = {value!r}: {outcome} {message}",
                    request_id=message.get("request_id"),
                    client=message.get("client"),
                    token_id=message.get("token_id"),
                    device_id=running.config.device.id,
                    term_id=term_id,
                    item_id=item_id,
                    value=message.get("value"),
                    outcome=outcome.outcome,
                    message=outcome.message,
                )
            if outcome.sample is not None:
                self.samples_received([outcome.sample])
            return outcome

        return d.addCallback(done)

    def _reply(self, message: dict[str, Any], outcome: ControlOutcome) -> Any:
        body = {"request_id": message.get("request_id"), **outcome.to_json()}
        d = self.redis.call("publish", message["reply_to"], json.dumps(body, default=str))
        return d.addErrback(lambda f: self.log.warn("cannot reply: {e}", e=f.getErrorMessage()))

    # --- status ----------------------------------------------------------------------

    def device_status(self, device_id: str) -> dict[str, Any] | None:
        """The status of a running device, as written to Redis."""
        running = self.running_devices.get(device_id)
        if running is None:
            return None
        now = self.reactor.seconds()
        body: dict[str, Any] = {"device_id": device_id, "protocol": running.config.device.protocol}
        if running.runtime is not None:
            try:
                body.update(running.runtime.status())
            except Exception as exc:
                body.update(state="error", last_error=str(exc))
            state = _normalise(body.get("state"))
        else:
            state = running.state
        if state != running.state:
            # One line of ours per state change (the link's retries are not logged).
            self.log.info(
                "device {device_id}: {state}{why}",
                device_id=device_id,
                state=state,
                why=f" ({body['last_error']})"
                if state != "online" and body.get("last_error")
                else "",
            )
            running.state, running.since = state, now
        body["link_state"] = body.get("state")
        body["state"] = state
        body["since"] = iso_time(running.since)
        if running.error is not None:
            body["last_error"] = running.error
        body["last_value_time"] = iso_time(body.get("last_value_time"))
        if isinstance(body.get("counters"), dict):
            body["counters"] = _iso_times(body["counters"])
        body["updated"] = iso_time(now)
        # The ingest path is shared by all devices: its drops concern every one of them.
        body["ingest"] = self.ingest.status()
        return body

    @defer.inlineCallbacks
    def _write_status(self) -> Any:
        # Every device's status at once (the pool pipelines them), not one round trip each.
        writes = []
        try:
            for device_id in list(self.running_devices):
                status = self.device_status(device_id)
                if status is None:
                    continue
                key = keys.DEVICE_STATUS % device_id
                writes.append(
                    self.redis.call("hset", key, "status", json.dumps(status, default=str))
                )
                frames = self._frames.get(device_id)
                if frames:
                    batch = list(frames)
                    frames.clear()
                    writes.append(self._write_frames(keys.FRAME_LOG % device_id, batch))
        except Exception:
            self.log.failure("writing the device status")
        results = yield defer.DeferredList(writes, consumeErrors=True)
        for ok, result in results:
            if not ok and not result.check(errors.StoreUnavailable):
                self.log.failure("writing the device status", result)
                break

    @defer.inlineCallbacks
    def _write_frames(self, key: str, frames: list[str]) -> Any:
        yield self.redis.call("rpush", key, frames)
        yield self.redis.call("ltrim", key, -self.settings.frame_log_length, -1)

    def _frame_observer(self, device_id: str) -> Callable[[str, bytes], None]:
        frames: collections.deque[str] = collections.deque(maxlen=self.settings.frame_log_length)
        self._frames[device_id] = frames
        clock = self.reactor

        def observe(direction: str, frame: bytes) -> None:
            send = "send" if direction == "tx" else "recv"
            frames.append(f"{iso_time(clock.seconds())},{send},{frame.hex()}")

        return observe

    def status(self) -> dict[str, Any]:
        """The collector's own counters."""
        return {
            "devices": len(self.running_devices),
            "subscribed": self.subscriber.subscribed,
            "ingest": self.ingest.status(),
            "config_version": self.version,
        }


_STATES = {
    "started": "online",
    "connected": "online",
    "online": "online",
    "stopped": "connecting",
    "connecting": "offline",
    "disconnected": "offline",
    "closed": "stopped",
}


def _iso_times(value: Any) -> Any:
    """``value`` with every epoch time (a number under a key ``since`` or ``*_time``) as
    ISO 8601: the API shows times in one format, whatever a driver's counters hold."""
    if not isinstance(value, dict):
        return value
    result = {}
    for key, item in value.items():
        if (
            (key == "since" or str(key).endswith("_time"))
            and isinstance(item, (int, float))
            and not isinstance(item, bool)
        ):
            result[key] = iso_time(item)
        else:
            result[key] = _iso_times(item)
    return result


def _normalise(state: Any) -> str:
    return _STATES.get(str(state), str(state))
