"""A collector's part in the cluster: its heartbeat, and running exactly its share.

`ClusterMember` beats every ``heartbeat_seconds`` (the key lives three beats), reads the
live collectors, computes its rendezvous share of the devices and reconciles: a device
it should run is started once its lease is taken; a device it should no longer run is
stopped first, and its lease given back only then, so that the next owner never opens a
second link to the same RTU. The device manager plugs in with three callables (see
docs/cluster.rst, "Wiring").
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Collection, Mapping
from typing import Any

from twisted.application.service import Service
from twisted.internet import task
from twisted.internet.defer import Deferred, inlineCallbacks, maybeDeferred
from twisted.logger import Logger

from pydatacoll.cluster.leases import LeaseKeeper
from pydatacoll.cluster.rendezvous import mine
from pydatacoll.store.cluster import Lease

#: A heartbeat key lives this many heartbeat intervals.
HEARTBEATS_PER_TTL = 3


def default_collector_id() -> str:
    """``host:pid``: unique per live process, new at every restart."""
    return f"{socket.gethostname()}:{os.getpid()}"


class ClusterMember(Service):
    """Heartbeat plus reconciliation of this collector's devices, on ``clock``.

    ``devices()`` gives the configured devices, id -> their ``collectors`` restriction
    (None: any collector); ``start_device(device_id, lease)`` starts one under a lease
    (its writes carry ``lease.token``); ``stop_device(device_id)`` stops one at once and
    may return a Deferred that fires when its link is closed.
    """

    log = Logger()

    def __init__(
        self,
        store: Any,
        clock: Any,
        collector_id: str,
        *,
        lease_seconds: float,
        heartbeat_seconds: float,
        devices: Callable[[], Mapping[str, Collection[str] | None]],
        start_device: Callable[[str, Lease], Any],
        stop_device: Callable[[str], Any],
    ) -> None:
        self.store = store
        self.clock = clock
        self.collector_id = collector_id
        self.heartbeat_seconds = heartbeat_seconds
        self.devices = devices
        self.start_device = start_device
        self.stop_device = stop_device
        self.keeper = LeaseKeeper(
            store, clock, collector_id, lease_seconds=lease_seconds, on_lost=self._lost
        )
        #: The live collectors at the last successful listing (ids, sorted).
        self.live: list[str] = []
        #: The devices this collector should run, at the last reconciliation.
        self.wanted: set[str] = set()
        self.started_ms = int(clock.seconds() * 1000)
        self._loop: task.LoopingCall | None = None
        self._stopping: dict[str, Deferred[Any]] = {}

    def running_devices(self) -> dict[str, Lease]:
        """The devices running here now, with their leases."""
        return self.keeper.held()

    def startService(self) -> None:  # noqa: N802
        """Start the lease keeper, then beat and reconcile every ``heartbeat_seconds``."""
        super().startService()
        self.keeper.startService()
        self._loop = task.LoopingCall(self.tick)
        self._loop.clock = self.clock
        self._loop.start(self.heartbeat_seconds, now=True).addErrback(
            lambda f: self.log.failure("cluster loop stopped", f)
        )

    @inlineCallbacks
    def stopService(self) -> Any:  # noqa: N802
        """Stop every device, give the leases back, leave the cluster."""
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self.wanted = set()
        for device_id in list(self.keeper.held()):
            yield self._stop(device_id)
        yield self.keeper.stopService()
        try:
            yield self.store.leave(self.collector_id)
        except Exception as e:  # the heartbeat then expires by itself
            self.log.warn("leaving the cluster: {reason}", reason=str(e))

    def tick(self) -> Deferred[None]:
        """One heartbeat and reconciliation; never fails (a loop never dies)."""
        d = self._tick()
        d.addErrback(self._tick_failed)
        return d

    @inlineCallbacks
    def _tick(self) -> Any:
        # At start the pool may not be up yet: wait for it rather than fail and log it.
        yield self.store.when_connected()
        if not self.running:
            return
        yield self.store.heartbeat(
            self.collector_id,
            devices=len(self.keeper.held()),
            started_ms=self.started_ms,
            ttl=self.heartbeat_seconds * HEARTBEATS_PER_TTL,
        )
        collectors = yield self.store.collectors()
        if not self.running:
            return
        live = sorted({c.collector_id for c in collectors} | {self.collector_id})
        if live != self.live:
            self.log.info("live collectors: {live}", live=", ".join(live))
        self.live = live
        self.reconcile()

    def _tick_failed(self, failure: Any) -> None:
        # Redis away: nothing changes here; leases that cannot be renewed stop their
        # devices at their deadline (the keeper's watchdog).
        self.log.warn("cluster heartbeat failed: {reason}", reason=failure.getErrorMessage())

    def reconcile(self) -> None:
        """Start what is ours and not running; stop what runs and is no longer ours."""
        self.wanted = mine(self.collector_id, self.devices(), self.live)
        held = self.keeper.held()
        for device_id in sorted(set(held) - self.wanted):
            self.log.info("device {device_id} moves away; stopping it", device_id=device_id)
            self._stop(device_id)
        for device_id in sorted(self.wanted - set(held) - set(self._stopping)):
            self._take(device_id)

    def _take(self, device_id: str) -> None:
        def taken(lease: Lease | None) -> None:
            if lease is None:
                return  # held elsewhere until it is released or expires; next tick again
            if not self.running or device_id not in self.wanted:
                self.keeper.release(device_id)
                return
            try:
                self.start_device(device_id, lease)
            except Exception:
                self.log.failure("starting device {device_id}", device_id=device_id)
                self.keeper.release(device_id)

        d = self.keeper.acquire(device_id)
        d.addCallback(taken)
        d.addErrback(
            lambda f: self.log.warn(
                "device {device_id}: lease not taken: {reason}",
                device_id=device_id,
                reason=f.getErrorMessage(),
            )
        )

    def _stop(self, device_id: str) -> Deferred[Any]:
        if device_id in self._stopping:
            return self._stopping[device_id]
        d = maybeDeferred(self.stop_device, device_id)
        d.addErrback(
            lambda f: self.log.failure("stopping device {device_id}", f, device_id=device_id)
        )
        d.addCallback(lambda _: self.keeper.release(device_id))  # only once the link is shut

        def done(result: Any) -> Any:
            self._stopping.pop(device_id, None)
            return result

        self._stopping[device_id] = d
        d.addBoth(done)
        return d

    def _lost(self, device_id: str, lease: Lease, reason: str) -> None:
        # The keeper has dropped the lease: stop the device now; nothing to release.
        d = maybeDeferred(self.stop_device, device_id)
        d.addErrback(
            lambda f: self.log.failure("stopping device {device_id}", f, device_id=device_id)
        )


def no_restriction(device_ids: Collection[str]) -> Mapping[str, Collection[str] | None]:
    """``devices()`` for a configuration without ``collectors`` attributes."""
    return dict.fromkeys(device_ids)
