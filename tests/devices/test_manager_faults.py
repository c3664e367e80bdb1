"""The device manager when Redis fails: on a Clock, with a store that fails on demand.

Time, order and failure are inputs here: Redis absent at start, failing at once, lost
and back, the subscription returning before the pool, a garbage configuration version.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from pydatacoll.config import load_settings
from pydatacoll.devices.manager import RECONCILE_INTERVAL, RETRY_MAX, DeviceManager
from pydatacoll.interfaces import IDeviceRuntime, IProtocolDriver
from pydatacoll.model import ControlOutcome
from pydatacoll.store import keys
from pydatacoll.testing.memory import MemoryRedis


@implementer(IDeviceRuntime)
class FakeRuntime(Service):
    """A device whose link state the test sets."""

    def __init__(self, device: Any, sink: Any) -> None:
        self.device_id = device.id
        self.sink = sink
        self.state = "connecting"
        self.last_value_time: float | None = None

    def update_points(self, terms: Any, term_items: Any) -> None:
        pass

    def read_point(self, term_id: str, item_id: str) -> Any:
        return defer.fail(RuntimeError("not readable"))

    def control_point(self, term_id: str, item_id: str, value: Any, select: Any) -> Any:
        return defer.succeed(ControlOutcome("refused", "fake"))

    def status(self) -> dict[str, Any]:
        return {"state": self.state, "last_value_time": self.last_value_time, "counters": {}}


@implementer(IProtocolDriver)
class FakeDriver:
    """Builds `FakeRuntime`s and remembers them by device id."""

    name = "modbus"
    description = "a fake protocol for tests"
    default_port = None

    def __init__(self) -> None:
        self.runtimes: dict[str, FakeRuntime] = {}

    def build(
        self,
        device: Any,
        terms: Any,
        term_items: Any,
        sink: Any,
        reactor: Any,
        settings: Any,
        **kw: Any,
    ) -> FakeRuntime:
        runtime = self.runtimes[device.id] = FakeRuntime(device, sink)
        return runtime


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


class StartUpOrderTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.store = MemoryRedis()
        self.driver = FakeDriver()
        verifyObject(IProtocolDriver, self.driver)
        self.manager = DeviceManager(
            self.store, load_settings(None, {}), self.clock, drivers={"modbus": self.driver}
        )
        # The subscription is driven by the test (MemoryRedis has no server to subscribe).
        self.manager.startService()
        self.addCleanup(self.manager.stopService)

    def running(self) -> set[str]:
        return {d for d, r in self.manager.running_devices.items() if r.runtime is not None}

    def change(self, device_id: str, version: int) -> None:
        """What the API publishes when it creates a device (and bumps the version)."""
        configure(self.store, device_id, version=version)
        message = {"entity": "device", "op": "add", "id": device_id, "version": version}
        self.manager._message(keys.DEVICE_ADD, json.dumps(message))

    def test_first_reconcile_failing_at_once_does_not_leave_the_manager_deaf(self) -> None:
        """The race of issue 10: Redis fails synchronously on the first call."""
        configure(self.store, "a")
        self.store.fail_next("get")
        self.manager._subscribed()  # the subscription is up; the first call fails at once
        self.assertIsNone(self.manager._reconciling)  # the flag did not survive the failure
        self.assertEqual(self.running(), set())
        self.clock.advance(RETRY_MAX)
        self.assertEqual(self.running(), {"a"})
        self.change("b", 2)  # and later changes are followed
        self.assertEqual(self.running(), {"a", "b"})

    def test_redis_absent_at_start_then_back(self) -> None:
        configure(self.store, "a", "b")
        self.store.down()
        self.manager._subscribed()
        self.clock.advance(10)
        self.assertEqual(self.running(), set())
        self.store.up()  # the pool connects: the waiting reconcile runs at once
        self.assertEqual(self.running(), {"a", "b"})
        self.change("c", 2)
        self.assertEqual(self.running(), {"a", "b", "c"})

    def test_failures_retry_with_capped_backoff(self) -> None:
        configure(self.store, "a")
        self.store.fail_next("get", 6)
        self.manager._subscribed()
        attempts = []
        for _ in range(40):  # 10 s in 0.25 s steps
            self.clock.advance(0.25)
            attempts.append(sum(1 for c, _ in self.store.calls if c == "get"))
        self.assertEqual(self.running(), {"a"})
        # 0.25, 0.5, 1, 2, 2, 2: all six failures and the success within 8 s
        self.assertEqual(attempts[31], 7)

    def test_subscription_back_before_the_pool_after_a_restart(self) -> None:
        configure(self.store, "a")
        self.manager._subscribed()
        self.assertEqual(self.running(), {"a"})
        # Redis restarts: the subscription comes back first, the pool is still down.
        self.store.down()
        self.manager._subscribed()
        self.clock.advance(5)
        configure(self.store, "b", version=2)  # a change made while we could not read it
        self.store.up()
        self.clock.advance(RETRY_MAX)
        self.assertEqual(self.running(), {"a", "b"})
        self.change("c", 3)
        self.assertEqual(self.running(), {"a", "b", "c"})

    def test_a_lost_message_is_caught_by_the_version_check(self) -> None:
        configure(self.store, "a")
        self.manager._subscribed()
        configure(self.store, "b", version=2)  # no message
        self.clock.advance(RECONCILE_INTERVAL)
        self.assertEqual(self.running(), {"a", "b"})

    def test_non_integer_config_version_does_not_stop_the_loop(self) -> None:
        """Loops never die: a garbage STR:CONFIG_VERSION once, then the loop goes on."""
        configure(self.store, "a", version="garbage")
        self.manager._subscribed()
        self.assertEqual(self.running(), {"a"})
        self.clock.advance(RECONCILE_INTERVAL)
        self.assertTrue(self.manager._loops[1].running)
        configure(self.store, "b", version=7)  # no message: the loop must see it
        self.clock.advance(RECONCILE_INTERVAL)
        self.assertTrue(self.manager._loops[1].running)
        self.assertEqual(self.running(), {"a", "b"})
        self.assertEqual(self.manager.version, 7)

    def test_version_check_reconciles_when_never_reconciled(self) -> None:
        """No subscription ever came (or every pass failed): the loop still starts one."""
        configure(self.store, "a")
        self.clock.advance(RECONCILE_INTERVAL)
        self.assertEqual(self.running(), {"a"})
