"""The collector role: the device manager and the processor plugins, wired together."""

from __future__ import annotations

from typing import Any

from twisted.application.service import MultiService

from pydatacoll.config import Settings
from pydatacoll.control.commander import commander_factory
from pydatacoll.control.priority import CommandPriority
from pydatacoll.devices.manager import DeviceManager
from pydatacoll.ordered import OrderedService
from pydatacoll.processing.loader import Processors


def make_collector(
    settings: Settings, reactor: Any, redis: Any, priority: CommandPriority | None = None
) -> MultiService:
    """``devices`` (the device manager) and ``processors`` (the enabled plugins).

    Every sample of every device goes to the ingest path and then to the processors. What
    the processors emit (formula results) takes the same path, so results of results work
    (the loader bounds each plugin's emit rate, so a loop cannot run away). The
    processors may command devices (the MQTT plugin) through commanders they build with
    reply listeners of their own (`commander_factory`). In cluster mode they learn which
    devices' leases this collector holds (``manager.ownership``). ``priority`` is the
    process's `CommandPriority` (default: one of the collector's own).
    """
    collector = OrderedService()
    manager: DeviceManager | None = None

    def emit(samples: Any) -> None:
        if manager is not None:
            manager.samples_received(samples)

    manager = DeviceManager(redis, settings, reactor, priority=priority)
    processors = Processors(
        settings,
        reactor,
        redis,
        emit,
        commander=commander_factory(redis, settings, reactor, manager.priority),
        cluster=manager.ownership,
    )
    manager.sinks.append(processors)
    manager.setName("devices")
    manager.setServiceParent(collector)
    processors.setName("processors")
    processors.setServiceParent(collector)
    return collector
