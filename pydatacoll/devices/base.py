"""What the parts of the device manager share: the running devices, the stores, the log."""

from __future__ import annotations

import collections
from collections.abc import Sequence
from typing import Any

import attrs
from twisted.application.service import MultiService
from twisted.logger import Logger

from pydatacoll.config import Settings
from pydatacoll.logs import RateLimitedLog
from pydatacoll.model import Sample
from pydatacoll.store.devices import DeviceConfig


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
    #: An `IDeviceStore`.
    store: Any
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
    #: Devices whose state is not live (their non-good samples are flagged NT).
    _not_live: set[str]

    def samples_received(self, samples: Sequence[Sample]) -> None:
        """Every batch from every device (see `DeviceManager.samples_received`)."""
        raise NotImplementedError
