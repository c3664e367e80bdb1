"""The lease keeper: a collector runs a device only while it holds the device's lease.

`LeaseKeeper` takes leases, renews them every ``renew_fraction`` of ``lease_seconds``
and gives them back. Its safety rule: a lease counts as ours only until ``sent +
lease_seconds`` (less `DRIFT_MARGIN`) on the local clock, where ``sent`` is when the
last request that Redis confirmed (acquisition or renewal) was SENT. Redis started the
TTL later than that, so Redis cannot hand the device to another collector before our
local deadline. At that deadline, or as soon as a renewal is refused or answered too late, the
device is stopped at once through ``on_lost``. A paused collector misses its deadline
without noticing; that case is what the fencing token (`Lease.token`, checked by the
write scripts' guard) is for.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs
from twisted.application.service import Service
from twisted.internet import task
from twisted.internet.defer import Deferred, gatherResults, succeed
from twisted.logger import Logger

from pydatacoll.store.cluster import Lease

#: Share of ``lease_seconds`` by which the local deadline comes before Redis' expiry: room
#: for the clocks' rate difference (NTP keeps it under 0.05 %) and for Redis' rounding of
#: PX to whole milliseconds.
DRIFT_MARGIN = 0.01

#: Called with (device_id, lease, reason) when a device must stop because its lease is lost.
OnLost = Callable[[str, Lease, str], Any]


@attrs.define
class _Held:
    lease: Lease
    #: Local clock time after which the lease may have expired in Redis.
    deadline: float
    watchdog: Any = None
    renewing: bool = False


class LeaseKeeper(Service):
    """Acquires, renews and releases device leases for one collector, on ``clock``."""

    log = Logger()

    def __init__(
        self,
        store: Any,
        clock: Any,
        collector_id: str,
        *,
        lease_seconds: float,
        on_lost: OnLost,
        renew_fraction: float = 1 / 3,
    ) -> None:
        if not 0 < renew_fraction < 1:
            raise ValueError("renew_fraction must be between 0 and 1")
        self.store = store
        self.clock = clock
        self.collector_id = collector_id
        self.lease_seconds = lease_seconds
        self.on_lost = on_lost
        self.renew_interval = lease_seconds * renew_fraction
        #: How long after sending a confirmed request the lease surely holds (local clock).
        self.safe_seconds = lease_seconds * (1 - DRIFT_MARGIN)
        self._held: dict[str, _Held] = {}
        self._acquiring: set[str] = set()
        self._loop: task.LoopingCall | None = None

    # -- what the coordinator (or the device manager) calls ------------------------------
    def held(self) -> dict[str, Lease]:
        """The leases held now (locally valid), by device id."""
        return {device_id: held.lease for device_id, held in self._held.items()}

    def lease(self, device_id: str) -> Lease | None:
        """The device's lease if we hold it now."""
        held = self._held.get(device_id)
        return held.lease if held is not None else None

    def acquire(self, device_id: str) -> Deferred[Lease | None]:
        """Take the device's lease: the `Lease`, or None (another collector holds it, the
        answer came too late to be sure, or an acquisition is already in flight). Fails
        with `StoreUnavailable`."""
        if device_id in self._held:
            return succeed(self._held[device_id].lease)
        if device_id in self._acquiring:
            return succeed(None)  # the first call's caller gets the lease
        sent = self.clock.seconds()
        d: Deferred[Lease | None] = self.store.acquire(
            device_id, self.collector_id, self.lease_seconds
        )
        self._acquiring.add(device_id)

        def taken(lease: Lease | None) -> Lease | None:
            self._acquiring.discard(device_id)
            if lease is None:
                return None
            if not self.running or self.clock.seconds() >= sent + self.safe_seconds:
                self._release_quietly(lease)  # too late to be sure, or stopping
                return None
            self._held[device_id] = held = _Held(lease, sent + self.safe_seconds)
            self._arm(device_id, held)
            return lease

        def failed(failure: Any) -> Any:
            self._acquiring.discard(device_id)
            return failure

        return d.addCallbacks(taken, failed)

    def release(self, device_id: str) -> Deferred[bool]:
        """Give the device's lease back (after stopping it): True when Redis took it back."""
        held = self._held.pop(device_id, None)
        if held is None:
            return succeed(False)
        self._disarm(held)
        return self._release_quietly(held.lease)

    def renew_now(self) -> None:
        """Send a renewal for every lease held (the loop calls this)."""
        for device_id, held in list(self._held.items()):
            if not held.renewing:
                self._renew(device_id, held)

    # -- the service -----------------------------------------------------------------------
    def startService(self) -> None:  # noqa: N802
        """Start the renewal loop."""
        super().startService()
        self._loop = task.LoopingCall(self.renew_now)
        self._loop.clock = self.clock
        self._loop.start(self.renew_interval, now=False).addErrback(
            lambda f: self.log.failure("lease renewal loop stopped", f)
        )

    def stopService(self) -> Deferred[Any]:  # noqa: N802
        """Stop renewing and give every lease back (the devices are stopped already)."""
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        return gatherResults([self.release(d) for d in list(self._held)], consumeErrors=True)

    # -- inside ----------------------------------------------------------------------------
    def _renew(self, device_id: str, held: _Held) -> None:
        held.renewing = True
        sent = self.clock.seconds()
        try:
            d = self.store.renew(held.lease, self.lease_seconds)
        except Exception:  # a loop never dies
            held.renewing = False
            self.log.failure("renewing the lease of device {device_id}", device_id=device_id)
            return

        def answered(ok: bool) -> None:
            held.renewing = False
            if self._held.get(device_id) is not held:
                if ok:  # dropped meanwhile: do not keep Redis' copy alive for nothing
                    self._release_quietly(held.lease)
                return
            if not ok:
                self._lose(device_id, "the lease was refused on renewal (taken or expired)")
            elif self.clock.seconds() >= sent + self.safe_seconds:
                self._lose(device_id, "the renewal came back after the lease it renewed")
            else:
                held.deadline = max(held.deadline, sent + self.safe_seconds)
                self._arm(device_id, held)

        def failed(failure: Any) -> None:
            held.renewing = False
            # keep the device until the local deadline; the next round tries again
            self.log.warn(
                "device {device_id}: lease renewal failed: {reason}",
                device_id=device_id,
                reason=failure.getErrorMessage(),
            )

        d.addCallbacks(answered, failed).addErrback(
            lambda f: self.log.failure("lease renewal of {device_id}", f, device_id=device_id)
        )

    def _arm(self, device_id: str, held: _Held) -> None:
        self._disarm(held)
        delay = max(0.0, held.deadline - self.clock.seconds())
        held.watchdog = self.clock.callLater(delay, self._expired, device_id, held)

    @staticmethod
    def _disarm(held: _Held) -> None:
        if held.watchdog is not None and held.watchdog.active():
            held.watchdog.cancel()
        held.watchdog = None

    def _expired(self, device_id: str, held: _Held) -> None:
        held.watchdog = None
        if self._held.get(device_id) is held:
            self._lose(device_id, "no renewal was confirmed before the lease ran out")

    def _lose(self, device_id: str, reason: str) -> None:
        held = self._held.pop(device_id)
        self._disarm(held)
        self.log.warn(
            "device {device_id}: lease epoch {epoch} lost: {reason}; stopping it",
            device_id=device_id,
            epoch=held.lease.epoch,
            reason=reason,
        )
        try:
            self.on_lost(device_id, held.lease, reason)
        except Exception:
            self.log.failure("stopping device {device_id} after its lease", device_id=device_id)

    def _release_quietly(self, lease: Lease) -> Deferred[bool]:
        d: Deferred[bool] = self.store.release(lease)

        def failed(failure: Any) -> bool:
            # the lease then expires by itself within lease_seconds
            self.log.warn(
                "device {device_id}: releasing its lease failed: {reason}",
                device_id=lease.device_id,
                reason=failure.getErrorMessage(),
            )
            return False

        return d.addErrback(failed)
