"""What keeps the manager cheap with thousands of devices: the state watch asks a
runtime for its state alone, and a reconcile pass reads configurations in batches."""

from __future__ import annotations

import json
from typing import Any

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from pydatacoll.devices.reconcile import READ_BATCH
from pydatacoll.devices.status import STATE_CHECK_INTERVAL
from pydatacoll.store import keys
from pydatacoll.testing.memory import MemoryRedis

from .support import FakeDriver, FakeRuntime, configure, memory_manager


class StateOnlyRuntime(FakeRuntime):
    """A runtime that tells its state alone, and counts its whole statuses."""

    statuses = 0

    def link_state(self) -> str:
        return self.state

    def status(self) -> dict[str, Any]:
        StateOnlyRuntime.statuses += 1
        return super().status()


class StateOnlyDriver(FakeDriver):
    def build(self, device: Any, terms: Any, term_items: Any, sink: Any, *args: Any, **kw: Any):
        runtime = StateOnlyRuntime(device, terms, term_items, sink, kw.get("frame_observer"))
        self.runtimes[device.id] = runtime
        return runtime


class StateWatchTests(SynchronousTestCase):
    def test_the_watch_uses_link_state_not_whole_statuses(self) -> None:
        clock, store = Clock(), MemoryRedis()
        configure(store, "a", "b")
        driver = StateOnlyDriver()
        manager = memory_manager(store, clock, driver)
        manager.startService()
        self.addCleanup(manager.stopService)
        clock.advance(STATE_CHECK_INTERVAL)  # the first statuses are written
        StateOnlyRuntime.statuses = 0
        for _ in range(3):  # nothing changed: the watch builds no status
            clock.advance(STATE_CHECK_INTERVAL)
        self.assertEqual(StateOnlyRuntime.statuses, 0)
        driver.runtimes["a"].state = "started"
        clock.advance(STATE_CHECK_INTERVAL)
        self.assertEqual(StateOnlyRuntime.statuses, 1)  # the one written
        status = json.loads(store.data[keys.DEVICE_STATUS % "a"]["status"])
        self.assertEqual(status["state"], "online")


class CountingStore(MemoryRedis):
    """Counts the device configuration reads in flight at once."""

    def __init__(self) -> None:
        super().__init__()
        self.in_flight = 0
        self.most = 0
        self.held: list[defer.Deferred[Any]] = []

    def call(self, command: str, *args: Any) -> Any:
        result = super().call(command, *args)
        if command != "evalsha" or "HS:DEVICE:" not in str(args):
            return result
        held: defer.Deferred[Any] = defer.Deferred()
        self.in_flight += 1
        self.most = max(self.most, self.in_flight)

        def release(value: Any) -> Any:
            self.in_flight -= 1
            return value

        result.addBoth(lambda value: self.held.append((held, value)))
        return held.addBoth(release)

    def answer_all(self) -> int:
        """Fire every held reply; how many there were."""
        held, self.held = self.held, []
        for d, value in held:
            d.callback(value)
        return len(held)


class BatchedReadTests(SynchronousTestCase):
    def test_a_pass_reads_up_to_read_batch_configurations_at_once(self) -> None:
        clock, store = Clock(), CountingStore()
        ids = [f"d{n}" for n in range(READ_BATCH + 50)]
        configure(store, *ids)
        driver = FakeDriver()
        manager = memory_manager(store, clock, driver)
        manager.startService()
        self.addCleanup(manager.stopService)
        self.assertEqual(store.most, READ_BATCH)  # the first batch in flight together
        self.assertEqual(store.answer_all(), READ_BATCH)
        self.assertEqual(len(driver.runtimes), READ_BATCH)
        self.assertEqual(store.answer_all(), 50)
        self.assertEqual(sorted(driver.runtimes), sorted(ids))


class StatusRefreshTests(SynchronousTestCase):
    def status_writes(self, store: MemoryRedis, since: int) -> list[list[str]]:
        """The device ids of each status script call after ``store.calls[since]``."""
        from pydatacoll.store.status import _SHA

        found = []
        for name, args in store.calls[since:]:
            if name == "evalsha" and args[0] == _SHA:
                found.append(list(args[2][2::2]))
        return found

    def test_devices_started_apart_are_refreshed_apart_every_interval(self) -> None:
        from pydatacoll.devices.status import STATUS_INTERVAL

        clock, store = Clock(), MemoryRedis()
        configure(store, "a")
        manager = memory_manager(store, clock, FakeDriver())
        manager.startService()
        self.addCleanup(manager.stopService)
        for _ in range(4):
            clock.advance(STATE_CHECK_INTERVAL)
        configure(store, "a", "b")
        manager.reconcile(["b"])
        clock.advance(STATE_CHECK_INTERVAL)
        mark = len(store.calls)
        for _ in range(int(4 * STATUS_INTERVAL / STATE_CHECK_INTERVAL)):
            clock.advance(STATE_CHECK_INTERVAL)
        writes = self.status_writes(store, mark)
        # Never both in one call (they started a second apart), each one every interval.
        self.assertEqual(sorted(len(w) for w in writes), [1] * len(writes))
        for device_id in ("a", "b"):
            self.assertIn(sum(w == [device_id] for w in writes), (4, 5))
        updated = json.loads(store.data[keys.DEVICE_STATUS % "a"]["status"])["updated"]
        self.assertIsNotNone(updated)

    def test_an_unchanged_status_is_not_encoded_again_but_stays_current(self) -> None:
        from pydatacoll.devices import status as status_module
        from pydatacoll.devices.status import STATUS_INTERVAL

        clock, store = Clock(), MemoryRedis()
        configure(store, "a")
        driver = FakeDriver()
        manager = memory_manager(store, clock, driver)
        manager.startService()
        self.addCleanup(manager.stopService)
        clock.advance(STATE_CHECK_INTERVAL)
        built = []
        original = status_module.StatusWriter.device_status

        def counting(writer: Any, *args: Any, **kwargs: Any) -> Any:
            built.append(args[0])
            return original(writer, *args, **kwargs)

        self.patch(status_module.StatusWriter, "device_status", counting)
        first = json.loads(store.data[keys.DEVICE_STATUS % "a"]["status"])
        clock.advance(STATUS_INTERVAL)
        second = json.loads(store.data[keys.DEVICE_STATUS % "a"]["status"])
        self.assertEqual(built, [])  # refreshed from the cached text
        self.assertGreater(second["updated"], first["updated"])  # ... with the new time
        self.assertIn("ingest", second)
        self.assertEqual(
            {k: v for k, v in second.items() if k not in ("updated", "ingest")},
            {k: v for k, v in first.items() if k not in ("updated", "ingest")},
        )
        driver.runtimes["a"].last_value_time = clock.seconds()  # the runtime's status moved
        clock.advance(STATUS_INTERVAL)
        third = json.loads(store.data[keys.DEVICE_STATUS % "a"]["status"])
        self.assertEqual(built, ["a"])
        self.assertIsNotNone(third["last_value_time"])
        driver.runtimes["a"].state = "started"  # a new state: written at once, logged
        clock.advance(STATE_CHECK_INTERVAL)
        self.assertEqual(
            json.loads(store.data[keys.DEVICE_STATUS % "a"]["status"])["state"], "online"
        )
