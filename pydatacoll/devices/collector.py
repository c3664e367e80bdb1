"""The collector role: the device manager (and, with issue 6, the processor plugins)."""

from __future__ import annotations

from typing import Any

from twisted.application.service import MultiService

from pydatacoll.config import Settings
from pydatacoll.devices.manager import DeviceManager


def make_collector(settings: Settings, reactor: Any, redis: Any) -> MultiService:
    """``devices``: the device manager, with its ingest path into Redis."""
    collector = MultiService()
    manager = DeviceManager(redis, settings, reactor)
    manager.setName("devices")
    manager.setServiceParent(collector)
    return collector
