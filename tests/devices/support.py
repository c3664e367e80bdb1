"""Fakes for the device manager's unit tests: a driver whose devices the test drives, a
configuration written the way ConfigStore writes it, and a manager on MemoryRedis."""

from __future__ import annotations

import collections
import json
from typing import Any

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.task import Clock
from zope.interface import implementer

from pydatacoll.config import load_settings
from pydatacoll.devices.manager import DeviceManager
from pydatacoll.errors import ValidationError
from pydatacoll.interfaces import IConfigSink, IDeviceRuntime, IProtocolDriver
from pydatacoll.model import ControlOutcome
from pydatacoll.store import keys
from pydatacoll.testing.memory import MemoryRedis
from pydatacoll.testing.memory_subscriber import memory_subscription


@implementer(IDeviceRuntime)
class FakeRuntime(Service):
    """A device whose link state, reads and commands the test sets."""

    def __init__(self, device: Any, terms: Any, term_items: Any, sink: Any, observer: Any):
        self.device_id = device.id
        self.device = device
        self.term_items = list(term_items)
        self.sink = sink
        self.frame_observer = observer
        self.state = "connecting"
        self.last_value_time: float | None = None
        self.paused = False
        self.point_updates = 0
        #: What read_point / control_point return (a Deferred, or an exception to raise).
        self.read: Any = None
        self.control: Any = None

    def update_points(self, terms: Any, term_items: Any) -> None:
        self.term_items = list(term_items)
        self.point_updates += 1

    def read_point(self, term_id: str, item_id: str) -> Any:
        if self.read is None:
            return defer.fail(RuntimeError("not readable"))
        return self.read

    def control_point(self, term_id: str, item_id: str, value: Any, select: Any) -> Any:
        if self.control is None:
            return defer.succeed(ControlOutcome("refused", "fake"))
        return self.control

    def pause_input(self) -> None:
        self.paused = True

    def resume_input(self) -> None:
        self.paused = False

    def status(self) -> dict[str, Any]:
        return {"state": self.state, "last_value_time": self.last_value_time, "counters": {}}


class HeldIngest:
    """An ingest path that holds every sample, as when Redis is slower than the devices
    (``congested`` is what the test sets); stands in for ``manager.ingest``."""

    def __init__(self) -> None:
        self.buffer: collections.deque[Any] = collections.deque()
        self.congested = False
        self.holding = False
        self.unsettled: set[str] = set()

    def samples_received(self, samples: Any) -> None:
        self.buffer.extend(samples)

    def mark_not_topical(self, device_id: str) -> None:
        pass

    def hold(self, holding: bool) -> None:
        self.holding = holding


@implementer(IProtocolDriver)
class FakeDriver:
    """Builds `FakeRuntime`s and remembers them by device id."""

    name = "modbus"
    description = "a fake protocol for tests"
    default_port = None

    def __init__(self) -> None:
        self.runtimes: dict[str, FakeRuntime] = {}
        self.builds = 0
        self.fail = False

    def build(
        self,
        device: Any,
        terms: Any,
        term_items: Any,
        sink: Any,
        reactor: Any,
        settings: Any,
        frame_observer: Any = None,
    ) -> FakeRuntime:
        if self.fail:
            raise ValidationError("a setting this device cannot run with", field="port")
        self.builds += 1
        runtime = FakeRuntime(device, terms, term_items, sink, frame_observer)
        self.runtimes[device.id] = runtime
        return runtime


@implementer(IConfigSink)
class RecordingSink:
    """A processor stand-in: remembers every sample and configuration change."""

    def __init__(self) -> None:
        self.samples: list[Any] = []
        self.changes: list[Any] = []

    def samples_received(self, samples: Any) -> None:
        self.samples.extend(samples)

    def config_changed(self, change: Any) -> None:
        self.changes.append(change)


def configure(store: MemoryRedis, *device_ids: str, version: Any = 1) -> None:
    """Devices of the fake protocol, written the way ConfigStore writes them."""
    for device_id in device_ids:
        store.data.setdefault(keys.DEVICES, set()).add(device_id)
        store.data[keys.DEVICE % device_id] = {
            "id": json.dumps(device_id),
            "protocol": json.dumps("modbus"),
            "ip": json.dumps("127.0.0.1"),
            "port": "1",
        }
    store.data[keys.CONFIG_VERSION] = str(version)


def add_point(store: MemoryRedis, device_id: str, term_id: str, item_id: str) -> None:
    """A term of ``device_id`` (if new) with the term-item ``term_id:item_id``."""
    store.data.setdefault(keys.DEVICE_TERMS % device_id, set()).add(term_id)
    store.data[keys.TERM % term_id] = {
        "id": json.dumps(term_id),
        "device_id": json.dumps(device_id),
    }
    store.data.setdefault(keys.TERM_ITEMS % term_id, set()).add(item_id)
    store.data[keys.TERM_ITEM % (term_id, item_id)] = {
        "term_id": json.dumps(term_id),
        "item_id": json.dumps(item_id),
        "device_id": json.dumps(device_id),
        "register": json.dumps("holding"),
        "protocol_code": "1",
    }


def memory_manager(
    store: MemoryRedis, clock: Clock, driver: FakeDriver, sinks: Any = (), **settings: str
) -> DeviceManager:
    """A manager on ``store`` with an in-memory subscription (not started)."""
    return DeviceManager(
        store,
        load_settings(None, settings),
        clock,
        sinks=sinks,
        drivers={"modbus": driver},
        subscribe=memory_subscription(store),
    )
