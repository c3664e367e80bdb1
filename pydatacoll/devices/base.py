"""What the parts of the device manager share: the running devices, the stores, the log."""

from __future__ import annotations

import collections
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import attrs
from twisted.application.service import MultiService
from twisted.logger import Logger

from pydatacoll.config import Settings
from pydatacoll.logs import RateLimitedLog
from pydatacoll.model import Sample
from pydatacoll.store.devices import DeviceConfig

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred

    from pydatacoll.store.cluster import Lease


@attrs.define
class Running:
    """A configured device as the manager runs it (``runtime`` None: it cannot run)."""

    config: DeviceConfig
    runtime: Any = None
    error: str | None = None
    state: str = "starting"
    since: float = 0.0


class ManagerBase(MultiService):
    """The state the reconciler, the request handler and the status writer share; the
    `pydatacoll.devices.manager.DeviceManager` sets it up."""

    log = Logger()

    settings: Settings
    reactor: Any
    #: The shared Redis client.
    redis: Any
    #: An `IDeviceStore`.
    store: Any
    #: The `IDeviceStore` the answers to requests go through (their own connection).
    reply_store: Any
    #: The `IIngest` path every sample goes to first.
    ingest: Any
    #: `IConfigSink`s: every sample after the ingest path, and every configuration change.
    sinks: list[Any]
    drivers: dict[str, Any]
    running_devices: dict[str, Running]
    rate_limited: RateLimitedLog
    #: Frame log lines not written yet, by device.
    _frames: dict[str, collections.deque[str]]
    #: The state last written for each device.
    _written_state: dict[str, str]
    #: When each device's status was last written (reactor seconds).
    _written_at: dict[str, float]
    #: Device id -> (what its status was built from, its JSON without the closing
    #: brace, its state): reused while the runtime reports the same (`StatusWriter`).
    _status_texts: dict[str, tuple[Any, str, str]]
    #: Devices whose state is not live (their non-good samples are flagged NT).
    _not_live: set[str]
    #: Cluster mode: the leases of the devices running here (empty otherwise).
    _leases: dict[str, Lease]
    _handing_over: dict[str, Lease]
    #: Devices whose link is closing: the Deferred that fires when it is closed.
    _closing: dict[str, Deferred[Any]]
    #: Devices whose input is paused because the ingest is congested: id -> runtime.
    _paused: dict[str, Any]
    #: Requests (device_call / device_ctrl) in flight per device id.
    _commands: dict[str, int]
    #: Devices held back while a command is in flight (`RequestHandler.hold_data`).
    _held: dict[str, Any]
    #: Devices that delivered samples since the last state check, and in the one before
    #: (those a command's hold pauses).
    _senders: set[str]
    _senders_before: set[str]
    #: Commands ahead of data in this process (`pydatacoll.control.priority`).
    priority: Any
    #: The cluster member (`pydatacoll.devices.cluster`); None without the cluster.
    member: Any = None

    def samples_received(self, samples: Sequence[Sample]) -> None:
        """Every batch from every device (see `DeviceManager.samples_received`)."""
        raise NotImplementedError

    def _pause(self, device_id: str) -> None:
        """Pause a device's input while the ingest is congested (`DeviceManager._pause`)."""
        raise NotImplementedError

    def _set_input(self, runtime: Any, *, pause: bool) -> None:
        """Pause or resume a runtime's input (`DeviceManager._set_input`)."""
        raise NotImplementedError

    def _cluster_apply(self, device_id: str, config: DeviceConfig | None) -> bool:
        """Cluster mode: whether a device's configuration applies here (it runs here)."""
        return True  # no cluster: every device runs here (`pydatacoll.devices.cluster`)

    def _cluster_reconciled(self) -> None:
        """Cluster mode: after a reconciliation (`pydatacoll.devices.cluster`)."""

    def token_of(self, device_id: str) -> str:
        """Cluster mode: the lease token ``device_id``'s writes carry."""
        raise NotImplementedError

    def _start(self, config: DeviceConfig) -> None:
        """Run a device (see `pydatacoll.devices.reconcile.Reconciler._start`)."""
        raise NotImplementedError

    def _stop(self, device_id: str) -> Deferred[Any]:
        """Stop a device (see `pydatacoll.devices.reconcile.Reconciler._stop`)."""
        raise NotImplementedError
