"""Cluster mode of the limits processor (see `pydatacoll.processing.limits`): which
devices are judged here (those whose lease is held), the takeover of a device's active
alarms when its lease comes here, and the clears of a deleted device's alarms.

A deleted device has no lease holder ever again, so no fenced event can clear its
alarms: every collector sends their clears, at the deletion and at its load, through
``store/alarm_orphan.lua``, which writes each once and only while the device is not
configured (a fenced event of a device no longer configured is refused).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import TYPE_CHECKING, Any

from twisted.logger import Logger

from pydatacoll.interfaces import IDeviceOwnership


class ClusterAlarms:
    """The cluster part of `pydatacoll.processing.limits.LimitsProcessor`."""

    log: Logger
    running: int
    reactor: Any
    alarms: Any
    retry_delay: float
    _cluster: IDeviceOwnership | None
    _loaded: bool
    _limits: dict[tuple[str, str], Any]
    _states: dict[tuple[str, str], Any]
    _sweeping: bool
    #: Devices gained whose alarms are not taken over yet, and the read doing it.
    _gained: set[str]
    _adopting: bool
    _adopt_call: Any
    _sweep_again: bool

    if TYPE_CHECKING:  # provided by LimitsProcessor

        def _new_state(self, now: float) -> Any: ...
        def _adopt(self, active: Mapping[str, Any], devices: Collection[str] | None) -> None: ...
        def _event(
            self,
            event: str,
            ids: Mapping[str, Any],
            kind: str,
            value: Any,
            limit: Any,
            message: str,
            orphan: bool = False,
        ) -> None: ...

    def _here(self, device_id: str) -> bool:
        """Whether this collector judges ``device_id``'s points (cluster mode: only
        while it holds the device's lease)."""
        return self._cluster is None or self._cluster.owns(device_id)

    def _ownership_changed(self, device_id: str, owned: bool) -> None:
        """Cluster mode: a device's lease came here (start judging its points from now,
        taking over its active alarms) or went (forget their states, no event)."""
        if not self._loaded:
            return  # the load takes over what is held here once it is done
        now = self.reactor.seconds()
        for limits in self._limits.values():
            if limits.device_id == device_id:
                self._states[(limits.term_id, limits.item_id)] = self._new_state(now)
        if owned:
            self._gained.add(device_id)
            if self._adopt_call is None and not self._adopting:
                self._adopt_call = self.reactor.callLater(0, self._adopt_gained)

    def _adopt_gained(self) -> None:
        """Take over the alarms of the devices gained since the last read: one read of
        the active alarms for all of them (a takeover of many devices at once), one
        read at a time; a device gained while it runs waits for the next."""
        self._adopt_call = None
        if self._adopting or not self._gained or not self.running:
            return
        devices, self._gained = self._gained, set()
        self._adopting = True
        d = self.alarms.active_alarms()
        d.addCallback(lambda active: self._adopt(active, devices))

        def failed(failure: Any) -> float:
            self.log.warn(
                "alarms of {n} devices not taken over ({e}); again in {delay}s",
                n=len(devices),
                e=failure.getErrorMessage(),
                delay=self.retry_delay,
            )
            self._gained.update(d for d in devices if self._here(d))
            return self.retry_delay

        def done(delay: Any) -> None:
            self._adopting = False
            if self._gained and self.running and self._adopt_call is None:
                self._adopt_call = self.reactor.callLater(delay or 0, self._adopt_gained)

        d.addErrback(failed)
        d.addCallback(done)

    def _clear_orphan(self, event: Mapping[str, Any], kind: str) -> None:
        self._event("clear", event, kind, None, event.get("limit"), "device deleted", orphan=True)

    def _sweep_orphans(self) -> None:
        """Cluster mode, after a device's deletion: send the clear of every active alarm
        of a device with no limits here (the script writes it only for a device that is
        not configured, once across the collectors). One read at a time."""
        if self._sweeping:
            self._sweep_again = True
            return
        self._sweeping = True

        def clear(active: Mapping[str, Any]) -> None:
            configured = {limits.device_id for limits in self._limits.values()}
            for event in active.values():
                if (
                    isinstance(event.get("kind"), str)
                    and str(event.get("device_id")) not in configured
                ):
                    self._clear_orphan(event, event["kind"])

        def failed(failure: Any) -> float:
            self.log.warn(
                "alarms of deleted devices not read ({e}); again in {delay}s",
                e=failure.getErrorMessage(),
                delay=self.retry_delay,
            )
            self._sweep_again = True
            return self.retry_delay

        def done(delay: Any) -> None:
            self._sweeping = False
            if self._sweep_again and self.running:
                self._sweep_again = False
                self.reactor.callLater(delay or 0, self._sweep_orphans)

        d = self.alarms.active_alarms()
        d.addCallbacks(clear, failed)
        d.addCallback(done)
