"""Reconciliation: the running devices kept in step with the configuration in Redis.

A pass reads the configuration version and the device ids, then each named device with
its terms and term-items (one script call each, ``READ_BATCH`` of them in flight at
once), and compares them with what runs: a new
device starts, a deleted one stops, a changed device restarts, changed points only update
the running device. Change messages run a pass over the devices they touch; a gap in
the version numbers, or a version moved without messages, runs one over everything.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from twisted.internet import defer
from twisted.logger import LogLevel

from pydatacoll import errors
from pydatacoll.retry import Backoff
from pydatacoll.store.devices import DeviceConfig

from .base import Running
from .status import StatusWriter

RECONCILE_INTERVAL = 30.0
#: Seconds before a failed reconcile is tried again, doubling up to RETRY_MAX.
RETRY_INITIAL = 0.25
RETRY_MAX = 2.0
#: Device configurations read at once (pipelined on one connection) by a pass.
READ_BATCH = 200


class Reconciler(StatusWriter):
    """The reconciliation part of the device manager (see the module docstring)."""

    #: The configuration version applied (None: never reconciled yet).
    version: int | None = None
    _reconciling: defer.Deferred[None] | None = None
    _retry: Any = None
    _dirty: set[str] | None = None  # None: everything
    _again = False
    _read_version = ""
    _backoff: Backoff

    def reconcile(self, device_ids: Iterable[str] | None = None) -> defer.Deferred[None]:
        """Compare the named devices (default: all) with Redis; one pass runs at a time.

        A pass that cannot reach Redis is retried (``RETRY_INITIAL`` doubling to
        ``RETRY_MAX`` s) until one works: no failure leaves the manager deaf.
        """
        if device_ids is None:
            self._dirty = None
        elif self._dirty is not None:
            self._dirty.update(device_ids)
        if self._reconciling is not None:
            self._again = True
            return self._reconciling
        d = self._reconcile_loop()
        # Set before the callback that clears it: the loop may have finished already
        # (Redis failing at once), and then the callback runs right here.
        self._reconciling = d
        d.addBoth(self._reconcile_ended, d)
        return d

    def _reconcile_ended(self, result: Any, d: defer.Deferred[None]) -> Any:
        if self._reconciling is d:
            self._reconciling = None
        return result

    def _schedule_reconcile(self) -> None:
        if not self.running or (self._retry is not None and self._retry.active()):
            return
        self._retry = self.reactor.callLater(self._backoff.next_delay(), self._retry_reconcile)

    def _retry_reconcile(self) -> None:
        self._retry = None
        if self.running:
            self.reconcile()

    @defer.inlineCallbacks
    def _reconcile_loop(self) -> Any:
        while True:
            if not self.store.connected:
                # Not even a connection: wait for one rather than fail and retry.
                yield self.store.when_connected()
                if not self.running:
                    return
            dirty, self._dirty, self._again = self._dirty, set(), False
            try:
                yield self._reconcile(dirty)
            except errors.StoreUnavailable as exc:
                self.log.warn(
                    "reconcile postponed: {error}; retrying in {delay} s",
                    error=exc,
                    delay=self._backoff.peek(),
                )
                self._dirty = None
                self._schedule_reconcile()
                return
            except Exception:
                self.log.failure(
                    "reconcile failed; retrying in {delay} s", delay=self._backoff.peek()
                )
                self._dirty = None
                self._schedule_reconcile()
                return
            self._backoff.reset()
            if not self._again and not self._dirty:
                # Every change up to this version is applied: the ingest script may
                # trust that each running point is where it is configured. The changes
                # heard since the pass read it touched no device (or the pass would run
                # again): settled at the newest of them.
                settled = self._read_version
                if self.version is not None and self.version > version_number(settled):
                    settled = str(self.version)
                self.ingest.settled_version = settled
                self.ingest.unsettled.clear()
                return

    @defer.inlineCallbacks
    def _reconcile(self, dirty: set[str] | None) -> Any:
        version = yield self.store.config_version()
        self._read_version = version if version is not None else ""
        stored = yield self.store.device_ids()
        if dirty is None:
            names = stored | set(self.running_devices)
            self.version = version_number(version)
        else:
            names = set(dirty)
        ordered = sorted(names)
        for start in range(0, len(ordered), READ_BATCH):
            # Up to READ_BATCH reads in flight on the connection (pipelined): 5,000
            # devices cost 5,000 / READ_BATCH round trips, not 5,000.
            batch = ordered[start : start + READ_BATCH]
            reads = [
                self.store.read_device_config(device_id)
                if device_id in stored
                else defer.succeed(None)
                for device_id in batch
            ]
            results = yield defer.DeferredList(reads, consumeErrors=True)
            for device_id, (ok, result) in zip(batch, results, strict=True):
                if not ok:
                    if result.check(errors.StoreUnavailable):
                        result.raiseException()
                    exc = result.value
                    # One unreadable device (edited in Redis by hand) must not keep every
                    # other device from starting: it is left as it is, and said so.
                    self.log.error(
                        "device {device_id}: stored configuration unreadable: {error}",
                        device_id=device_id,
                        error=getattr(exc, "message", None) or str(exc) or type(exc).__name__,
                    )
                    continue
                self._apply(device_id, result)
        self._cluster_reconciled()

    def _apply(self, device_id: str, config: DeviceConfig | None) -> None:
        if self.member is not None and not self._cluster_apply(device_id, config):
            return  # cluster mode: not ours (its member starts it once the lease is taken)
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
        running = Running(config, since=self.reactor.seconds())
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
        try:
            runtime = driver.build(
                device,
                config.terms,
                config.term_items,
                self,
                self.reactor,
                self.settings,
                frame_observer=self._frame_observer(device.id),
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

    def _stop(self, device_id: str) -> defer.Deferred[Any]:
        """Stop a device now; fires (never fails) once its link is closed, or that of
        its previous run when it is stopping already."""
        running = self.running_devices.pop(device_id, None)
        self._frames.pop(device_id, None)
        self._written_state.pop(device_id, None)
        self._written_at.pop(device_id, None)
        self._status_texts.pop(device_id, None)
        self._not_live.discard(device_id)
        self._held.pop(device_id, None)  # a new run is held anew, never the stopped one resumed
        if running is None or running.runtime is None:
            closing = self._closing.get(device_id)
            if closing is None:
                return defer.succeed(None)
            waiter: defer.Deferred[Any] = defer.Deferred()

            def fire(result: Any) -> Any:
                waiter.callback(None)
                return result

            closing.addBoth(fire)
            return waiter
        runtime = running.runtime
        was_running = runtime.running
        # Removed from a running manager, the runtime is stopped by the removal; from a
        # stopping one (its shutdown), it is stopped here, so the Deferred still waits.
        d = defer.maybeDeferred(runtime.disownServiceParent)
        if was_running and not self.running:
            d = defer.maybeDeferred(runtime.stopService)
        d.addErrback(lambda f: self.log.failure("stopping device {d}", f, d=device_id))
        self._closing[device_id] = d

        def closed(result: Any) -> Any:
            if self._closing.get(device_id) is d:
                del self._closing[device_id]
            return result

        d.addBoth(closed)
        return d

    def _update_points(self, device_id: str, running: Running, config: DeviceConfig) -> None:
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
        # Run by a LoopingCall: it must never raise, or the loop would stop for good.
        try:
            if self.version is None:
                # Never reconciled yet (or the last pass failed): make sure one is coming.
                if self._reconciling is None and (self._retry is None or not self._retry.active()):
                    self.reconcile()
                return
            try:
                version = yield self.store.config_version()
            except errors.StoreUnavailable:
                return
            if version is not None and version_number(version) != self.version:
                self.log.info("configuration version moved without messages: reconciling")
                self.reconcile()
        except Exception:
            self.log.failure("checking the configuration version")

    def _change(self, message: dict[str, Any]) -> None:
        version = message.get("version")
        ingest = self.ingest
        if isinstance(version, int) and self.version is not None:
            if version <= self.version:
                # Older than the version a full pass read before reading the devices:
                # that pass has the change already. Only its devices are read again (a
                # full pass here, moving the version back, made every message still
                # queued behind a configuration burst start another full pass).
                pass
            elif version != self.version + 1:
                ingest.settled_version = ""  # a gap: check every point until reconciled
                self.version = version
                self.reconcile()
                self._notify_sinks(message)
                return
            else:
                self.version = version
        touched = _touched(message)
        if isinstance(version, int) and ingest.settled_version == str(version - 1):
            # Settled up to the previous change: only the devices this one touched may
            # have points elsewhere now (a change to an item, a formula or a gateway
            # touches none), so only their samples' owners are checked until applied.
            ingest.unsettled.update(touched)
            ingest.settled_version = str(version)
        else:
            ingest.settled_version = ""  # check every point until this change is applied
        if touched:
            self.reconcile(touched)
        self._notify_sinks(message)

    def _notify_sinks(self, message: dict[str, Any]) -> None:
        for sink in self.sinks:
            try:
                sink.config_changed(message)
            except Exception:
                self.log.failure("a processor failed on a configuration change")


def _touched(message: dict[str, Any]) -> set[str]:
    """The devices a change message names: the device itself, the device of a term or a
    term-item before and after, and those of what a delete cascaded to."""
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
    return touched


def version_number(text: Any) -> int:
    """STR:CONFIG_VERSION as a number; 0 when absent, -1 when it is not an integer
    (then every check sees a change and reconciles, which is the safe side)."""
    if text is None or text == "":
        return 0
    try:
        return int(text)
    except (TypeError, ValueError):
        Reconciler.log.warn("STR:CONFIG_VERSION is not an integer: {text!r}", text=text)
        return -1
