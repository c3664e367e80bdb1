"""Commands ahead of data in one process: `CommandPriority`.

While a device_call or device_ctrl is in flight in this process (in the API from the
request to its answer, in a collector from the request to its reply), the data that can
wait without loss is held back: the devices that sent data in the last half second and
whose input pauses without loss (an IEC 104 link stops reading; the RTU's k window keeps
its data until the link reads again) stop reading, and the ingest path sends no new
script. The command's steps then find this reactor, Redis and the CPU free instead of
queueing behind the flood (issue 13, target 4; ``docs/collector.rst``).

Bounds, so commands never starve the data: one hold lasts at most ``max_hold`` seconds,
and holds are paid from a bucket of ``max_hold`` seconds refilled at half speed, so over
any stretch of T seconds data is held at most ``max_hold + T / 2`` (half the time in the
long run; commands back to back for ``2 * max_hold`` hold about three quarters). The device
a command is for is never held (its confirmation must be read at once). ``max_hold`` 0:
nothing is ever held.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any, Protocol

from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger

#: How fast the hold budget refills: seconds of hold per second of wall time.
REFILL = 0.5
#: Seconds a hold outlives its last command: the answer is written to its socket (in
#: the reactor's next turn) before the data comes back, and a command that follows at
#: once (select, then execute) finds the data still held.
LINGER = 0.002


class DataHolder(Protocol):
    """What a `CommandPriority` holds: the device manager of a collector."""

    def hold_data(self, exempt: Collection[str]) -> None:
        """Hold the data input that can wait without loss, except ``exempt``'s devices."""

    def release_device(self, device_id: str) -> None:
        """A command for ``device_id`` starts: read it again now if it is held."""

    def release_data(self) -> None:
        """End the hold: everything held reads (and writes) again."""


class CommandPriority:
    """Counts the commands in flight in this process and holds data meanwhile.

    ``clock`` times the holds; ``max_hold`` (seconds) bounds each and sizes the budget.
    `begin` and `end` pair up, one pair per command; they nest (the API and the
    collector of one process both count the same command).
    """

    log = Logger()

    def __init__(self, clock: Any, max_hold: float = 0.1) -> None:
        self.clock = clock
        self.max_hold = max_hold
        self.holders: list[DataHolder] = []
        #: Commands in flight, per device.
        self.active: dict[str, int] = {}
        self.held = False
        #: Hold seconds available, and when that was computed.
        self._budget = max_hold
        self._budget_at = 0.0
        self._held_since = 0.0
        self._cap: IDelayedCall | None = None
        self._linger: IDelayedCall | None = None
        #: Holds started, holds ended by the budget, commands that found no budget, and
        #: the seconds data was held in all (for the status and the metrics).
        self.holds = 0
        self.capped = 0
        self.unheld = 0
        self.held_seconds = 0.0

    def add_holder(self, holder: DataHolder) -> None:
        """Hold ``holder``'s data while commands are in flight."""
        self.holders.append(holder)

    def begin(self, device_id: str) -> None:
        """A command for ``device_id`` starts here."""
        self.active[device_id] = self.active.get(device_id, 0) + 1
        if self._linger is not None:
            self._linger.cancel()  # a command at once after the last: the hold goes on
            self._linger = None
        if self.held:
            for holder in self.holders:
                self._quietly(holder.release_device, device_id)
            return
        if self.max_hold <= 0 or not self.holders:
            return
        budget = self._refill()
        if budget < self.max_hold / 10:
            self.unheld += 1  # holds took their share lately: this one waits like data
            return
        self.held = True
        self.holds += 1
        self._held_since = self.clock.seconds()
        self._cap = self.clock.callLater(budget, self._capped)
        exempt = set(self.active)
        for holder in self.holders:
            self._quietly(holder.hold_data, exempt)

    def end(self, device_id: str) -> None:
        """A command for ``device_id`` is answered (or failed); the hold ends `LINGER`
        seconds after the last one."""
        left = self.active.get(device_id, 0) - 1
        if left > 0:
            self.active[device_id] = left
        else:
            self.active.pop(device_id, None)
        if not self.active and self.held and self._linger is None:
            self._linger = self.clock.callLater(LINGER, self._lingered)

    def stop(self) -> None:
        """Release whatever is held (the process stops)."""
        if self.held:
            self._release()
        self.active.clear()

    def status(self) -> dict[str, Any]:
        """The counters (``command_priority`` in the collector's status)."""
        return {
            "max_hold": self.max_hold,
            "held": self.held,
            "commands": sum(self.active.values()),
            "holds": self.holds,
            "capped": self.capped,
            "unheld": self.unheld,
            "held_seconds": round(self.held_seconds, 3),
        }

    # -- internals ----------------------------------------------------------------------

    def _refill(self) -> float:
        now = self.clock.seconds()
        elapsed = max(0.0, now - self._budget_at)
        self._budget = min(self.max_hold, self._budget + elapsed * REFILL)
        self._budget_at = now
        return self._budget

    def _lingered(self) -> None:
        self._linger = None
        self._release()

    def _capped(self) -> None:
        self._cap = None
        self.capped += 1
        self._release()

    def _release(self) -> None:
        for call in (self._cap, self._linger):
            if call is not None and call.active():
                call.cancel()
        self._cap = self._linger = None
        self.held = False
        self._refill()
        held = max(0.0, self.clock.seconds() - self._held_since)
        self.held_seconds += held
        self._budget = max(0.0, self._budget - held)
        for holder in self.holders:
            self._quietly(holder.release_data)

    def _quietly(self, call: Any, *args: Any) -> None:
        try:
            call(*args)
        except Exception:
            self.log.failure("holding or releasing data for a command")
