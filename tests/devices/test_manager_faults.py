"""The device manager when Redis fails: on a Clock, with a store that fails on demand.

Time, order and failure are inputs here: Redis absent at start, failing at once, lost
and back, the subscription returning before the pool, a garbage configuration version.
"""

from __future__ import annotations

import datetime
import json
from typing import Any

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from pydatacoll.config import load_settings
from pydatacoll.devices.manager import (
    RECONCILE_INTERVAL,
    RETRY_MAX,
    STATUS_INTERVAL,
    DeviceManager,
)
from pydatacoll.interfaces import IProtocolDriver
from pydatacoll.model import Sample
from pydatacoll.store import keys
from pydatacoll.testing.memory import MemoryRedis

from .support import FakeDriver, configure, memory_manager


class StartUpOrderTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.store = MemoryRedis()
        self.driver = FakeDriver()
        verifyObject(IProtocolDriver, self.driver)
        self.manager = DeviceManager(
            self.store, load_settings(None, {}), self.clock, drivers={"modbus": self.driver}
        )
        # The subscription is driven by the test: MemoryRedis has no server, so the real
        # Subscriber never connects, and the subscription may come back before the store.
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


class StatusAndTopicalityTests(SynchronousTestCase):
    """Items 3 and 4: status on every transition, values flagged NT while not live."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_700_000_000)  # wall-clock-like times for the ISO texts
        self.store = MemoryRedis()
        self.driver = FakeDriver()
        self.manager = memory_manager(self.store, self.clock, self.driver)
        configure(self.store, "a", "b")
        for device_id in ("a", "b"):
            for item in ("i1", "i2"):
                self.store.data[keys.TERM_ITEM % (f"t{device_id}", item)] = {
                    "device_id": json.dumps(device_id)
                }
        self.manager.startService()  # subscribed at once: the first pass runs
        self.addCleanup(self.manager.stopService)
        self.channel: list[dict[str, Any]] = []
        self.store.listeners.append(self._heard)

    def _heard(self, channel: str, message: str) -> None:
        if channel == keys.DEVICE_STATUS_CHANNEL % "a":
            self.channel.append(json.loads(message))

    def status(self, device_id: str = "a") -> dict[str, Any]:
        return json.loads(self.store.data[keys.DEVICE_STATUS % device_id]["status"])

    def value(self, point: str, device_id: str = "a") -> dict[str, Any]:
        stored = self.store.data[keys.DEVICE_VALUES % device_id]
        return json.loads(stored[f"t{device_id}:{point}"])

    def send(self, device_id: str, value: float) -> None:
        self.manager.samples_received(
            [
                Sample(device_id, f"t{device_id}", item, value, receive_time=self.clock.seconds())
                for item in ("i1", "i2")
            ]
        )

    def test_every_transition_is_written_and_published_within_1_s(self) -> None:
        runtime = self.driver.runtimes["a"]
        self.clock.advance(0.25)
        self.assertEqual(self.status()["state"], "offline")  # link "connecting"
        for link_state, state in (("online", "online"), ("disconnected", "offline")):
            runtime.state = link_state
            changed = self.clock.seconds()
            for _ in range(4):
                self.clock.advance(0.25)
                if self.status()["state"] == state:
                    break
            self.assertEqual(self.status()["state"], state)
            self.assertLessEqual(self.clock.seconds() - changed, 1.0)
            self.assertEqual(self.channel[-1], self.status())  # the same object, published
            updated = datetime.datetime.fromisoformat(self.status()["updated"]).timestamp()
            self.assertAlmostEqual(updated, self.clock.seconds(), delta=0.01)
        # The periodic refresh goes on without a change.
        heard = len(self.channel)
        self.clock.advance(STATUS_INTERVAL)
        self.assertEqual(len(self.channel), heard + 1)

    def test_values_are_not_topical_while_offline(self) -> None:
        runtime = self.driver.runtimes["a"]
        runtime.state = self.driver.runtimes["b"].state = "online"
        self.send("a", 1.5)
        self.send("b", 2.5)
        self.clock.advance(0.25)
        self.assertEqual(self.value("i1"), self.value("i1") | {"quality": "good", "flags": []})
        published = len(self.store.published)
        scripts = sum(1 for c, _ in self.store.calls if c == "evalsha")
        # A sample read just before the link went down is stored before the mark.
        self.send("a", 3.5)
        runtime.state = "disconnected"
        for _ in range(20):  # marked within 1 s of the link going down
            self.clock.advance(0.05)
        for point in ("i1", "i2"):
            sample = self.value(point)
            self.assertEqual(
                (sample["value"], sample["quality"], sample["flags"]),
                (3.5, "questionable", ["NT"]),
            )
        self.assertEqual(self.value("i1", "b")["flags"], [])  # other devices untouched
        # On the device's channel, and with few script calls (not one per point).
        data = [
            sample
            for c, m in self.store.published[published:]
            if c == keys.DEVICE_SAMPLES % "a"
            for sample in json.loads(m)["samples"]
            if sample["item_id"] == "i1"
        ]
        self.assertEqual([(m["value"], m["flags"]) for m in data], [(3.5, []), (3.5, ["NT"])])
        calls = sum(1 for c, _ in self.store.calls if c == "evalsha") - scripts
        self.assertLessEqual(calls, 3)  # the samples, the mark, the status
        # Another look at the same state marks nothing again; a fresh value clears it.
        self.clock.advance(STATUS_INTERVAL)
        self.assertEqual(self.value("i1")["flags"], ["NT"])
        runtime.state = "online"
        self.send("a", 4.5)
        self.clock.advance(0.25)
        self.assertEqual((self.value("i1")["value"], self.value("i1")["flags"]), (4.5, []))

    def test_a_device_that_cannot_run_is_marked(self) -> None:
        self.send("a", 1.5)
        self.clock.advance(0.25)
        self.driver.fail = True
        configure(self.store, "a", version=2)
        self.store.data[keys.DEVICE % "a"]["port"] = "2"  # a changed device restarts
        self.manager._message(
            keys.DEVICE_FRESH, json.dumps({"entity": "device", "id": "a", "version": 2})
        )
        self.clock.advance(0.25)
        self.assertEqual(self.status()["state"], "error")
        self.assertEqual(self.value("i1")["flags"], ["NT"])

    def test_stopping_the_collector_marks_its_values(self) -> None:
        self.driver.runtimes["a"].state = "online"
        self.send("a", 1.5)
        self.clock.advance(0.25)
        self.assertEqual(self.value("i1")["flags"], [])
        self.manager.stopService()
        self.assertEqual(self.value("i1")["flags"], ["NT"])


class UnreadableDeviceTests(SynchronousTestCase):
    def test_one_unreadable_device_does_not_keep_the_others_from_starting(self) -> None:
        clock = Clock()
        store = MemoryRedis()
        driver = FakeDriver()
        manager = memory_manager(store, clock, driver)
        configure(store, "a", "b")
        store.data[keys.DEVICE % "a"]["protocol"] = json.dumps("no such protocol")
        manager.startService()  # subscribed at once: the first pass runs
        self.addCleanup(manager.stopService)
        self.assertEqual(set(driver.runtimes), {"b"})
        self.assertIsNone(manager._reconciling)
        self.assertEqual(manager.ingest.settled_version, "1")  # the pass completed
