"""Formulas across collectors, on Clocks over MemoryRedis (leases expire with Redis' clock).

Four collectors: the inputs' devices pinned to ``a`` and ``b``, the result device to
``c`` or ``d``. The formula is computed by the holder of its result device's lease, from
the sample channels of its inputs; when that collector dies (its clock stops: nothing it
scheduled runs), the other takes the lease and computes within the lease bound; when the
dead one resumes (a paused process), its late result is refused (fenced) and it stops.
"""

from __future__ import annotations

import json
import tempfile
from typing import Any

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from pydatacoll.cluster.rendezvous import owner
from pydatacoll.config import Settings
from pydatacoll.devices.manager import DeviceManager
from pydatacoll.interfaces import IDeviceOwnership
from pydatacoll.model import Formula, Sample
from pydatacoll.processing import ProcessorContext
from pydatacoll.processing.formulas import FormulasProcessor
from pydatacoll.store import keys
from pydatacoll.testing.memory import MemoryRedis

from .support import FakeRuntime, add_point, configure
from .test_cluster import LEASE_SECONDS, cluster_manager

PINS = {"d0": ["a"], "d1": ["b"], "d2": ["c", "d"]}
FORMULA = Formula.from_json(
    {
        "id": "f1",
        "formula": "p1 + p2",
        "device_id": "d2",
        "term_id": "td2",
        "item_id": "i",
        "p1": "d0:td0:i",
        "p2": "d1:td1:i",
    }
)


class Collector:
    """One collector process: its own clock, device manager and formulas processor."""

    def __init__(self, store: MemoryRedis, world: Clock, collector_id: str) -> None:
        self.clock = Clock()
        self.clock.advance(world.seconds())
        self.alive = True
        self.manager: DeviceManager = cluster_manager(store, self.clock, collector_id)
        driver = self.manager.drivers["modbus"]

        def build(device: Any, terms: Any, term_items: Any, sink: Any, *rest: Any, **kw: Any):
            runtime = FakeRuntime(device, terms, term_items, sink, None)
            driver.runtimes[device.id] = runtime
            return runtime

        driver.build = build
        assert self.manager.ownership is not None
        context = ProcessorContext(
            reactor=self.clock,
            settings=Settings(),
            options={},
            redis=store,
            emit=self.manager.samples_received,
            data_dir=tempfile.mkdtemp(),
            cluster=self.manager.ownership,
        )
        self.formulas = FormulasProcessor(context)
        self.manager.sinks.append(self.formulas)
        self.manager.startService()
        self.formulas.startService()

    def stop(self) -> None:
        if self.formulas.running:
            self.formulas.stopService()
        if self.manager.running:
            d = self.manager.stopService()
            self.clock.advance(5)
            assert d.called


class ClusterFormulaHarness(SynchronousTestCase):
    """Four collectors on one MemoryRedis (no tests of its own)."""

    def setUp(self) -> None:
        self.world = Clock()
        self.world.advance(1000)
        self.store = MemoryRedis()
        self.store.clock = self.world
        configure(self.store, *PINS)
        for device_id, pins in PINS.items():
            add_point(self.store, device_id, "t" + device_id, "i")
            self.store.data[keys.DEVICE % device_id]["collectors"] = json.dumps(pins)
        self.store.call("sadd", keys.FORMULAS, [FORMULA.key])
        self.store.call("hmset", keys.FORMULA % FORMULA.key, FORMULA.to_fields())
        # a formula that cannot be compiled: its error is written all the same
        bad = {**dict(FORMULA.to_fields()), "id": json.dumps("bad"), "formula": json.dumps("p1 +")}
        self.store.call("sadd", keys.FORMULAS, ["bad"])
        self.store.call("hmset", keys.FORMULA % "bad", bad)
        self.collectors: dict[str, Collector] = {}
        for collector_id in "abcd":
            self.collectors[collector_id] = Collector(self.store, self.world, collector_id)
            self.addCleanup(self.collectors[collector_id].stop)
        self.value = 0.0

    def advance(self, seconds: float, step: float = 0.1) -> None:
        """Time passes for Redis and every live collector."""
        while seconds > 1e-9:
            dt = min(step, seconds)
            self.world.advance(dt)
            for collector in self.collectors.values():
                if collector.alive:
                    collector.clock.advance(dt)
            seconds -= dt

    def feed(self) -> float:
        """New values of both inputs from their collectors; the sum they should give."""
        self.value += 1
        now = self.world.seconds()
        self.collectors["a"].manager.samples_received(
            [Sample("d0", "td0", "i", self.value, receive_time=now)]
        )
        self.collectors["b"].manager.samples_received(
            [Sample("d1", "td1", "i", 10 * self.value, receive_time=now)]
        )
        return 11 * self.value

    def result(self) -> dict[str, Any] | None:
        text = self.store._hgetall(keys.DEVICE_VALUES % "d2").get("td2:i")
        return None if text is None else json.loads(text)

    def computing(self) -> list[str]:
        return [c for c, x in self.collectors.items() if x.formulas.status().get("evaluations")]


class ClusterFormulaTests(ClusterFormulaHarness):
    def test_a_formula_over_two_collectors_is_computed_by_its_result_devices_holder(self) -> None:
        self.advance(5)
        holder = owner("d2", ["c", "d"])
        self.assertEqual(sorted(self.collectors[holder].manager.running_devices), ["d2"])
        ownership = self.collectors[holder].manager.ownership
        self.assertTrue(verifyObject(IDeviceOwnership, ownership))
        self.assertTrue(ownership.owns("d2"))
        expected = self.feed()
        self.advance(0.5)
        stored = self.result()
        self.assertEqual((stored["value"], stored["flags"]), (expected, ["calculated"]))
        self.assertEqual(self.computing(), [holder])  # nobody else evaluates it
        status = json.loads(self.store.data[keys.FORMULA_STATUS]["f1"])
        self.assertEqual((status["state"], status["collector"]), ("ok", holder))
        self.assertEqual(self.collectors[holder].formulas.status()["computed_here"], 1)
        self.assertEqual(self.collectors["a"].formulas.status()["computed_here"], 0)
        bad = json.loads(self.store.data[keys.FORMULA_STATUS]["bad"])
        self.assertEqual(bad["state"], "error")
        # the holder follows the inputs' devices, and no other collector does
        inputs = self.collectors[holder].formulas._inputs.channels
        self.assertEqual(inputs, [keys.DEVICE_SAMPLES % "d0", keys.DEVICE_SAMPLES % "d1"])
        self.assertEqual(self.collectors["a"].formulas._inputs.channels, [])
        # every new input value is computed again
        for _ in range(3):
            expected = self.feed()
            self.advance(0.5)
            self.assertEqual(self.result()["value"], expected)
        # Samples published while its subscription is down are missed; once it is back
        # the holder reads the stored latest values and computes again.
        inputs = self.collectors[holder].formulas._inputs
        inputs._unsubscribe()
        expected = self.feed()
        self.advance(0.5)
        self.assertNotEqual(self.result()["value"], expected)
        inputs.lose()  # it subscribes again
        self.advance(0.5)
        self.assertEqual(self.result()["value"], expected)

    def test_the_holder_killed_another_computes_within_the_lease_bound_the_dead_is_fenced(
        self,
    ) -> None:
        self.advance(5)
        holder = owner("d2", ["c", "d"])
        other = "d" if holder == "c" else "c"
        self.feed()
        self.advance(0.5)
        self.collectors[holder].alive = False  # SIGKILL (or SIGSTOP): nothing of it runs
        killed_at = self.world.seconds()
        computed_at = None
        while self.world.seconds() - killed_at < 20:
            expected = self.feed()
            self.advance(0.5)
            if self.result()["value"] == expected:
                computed_at = self.world.seconds()
                break
        self.assertIsNotNone(computed_at)
        self.assertLessEqual(computed_at - killed_at, LEASE_SECONDS + 5)
        self.assertTrue(self.collectors[other].manager.ownership.owns("d2"))
        status = json.loads(self.store.data[keys.FORMULA_STATUS]["f1"])
        self.assertEqual(status["collector"], other)
        expected = self.feed()
        self.advance(0.5)
        self.assertEqual(self.result()["value"], expected)
        # The old holder resumes (it was paused): what it had pending is computed from
        # the values it heard while paused, written under its stale lease: refused.
        paused = self.collectors[holder]
        paused.alive = True
        evaluations = paused.formulas.status()["evaluations"]
        paused.clock.advance(self.world.seconds() - paused.clock.seconds())
        self.advance(0.1)  # its ingest sends what it had: refused
        self.assertEqual(paused.formulas.status()["evaluations"], evaluations + 1)
        self.assertGreater(paused.manager.ingest.status()["fenced"], 0)
        self.assertFalse(paused.manager.ownership.owns("d2"))
        self.assertEqual(self.result()["value"], expected)  # the new holder's value stays
        status = json.loads(self.store.data[keys.FORMULA_STATUS]["f1"])
        self.assertEqual(status["collector"], other)  # and its formula status
        # Back alive, it is d2's preferred collector again: d2 comes back to it by a
        # handover (never two holders), and the formula is computed there again.
        for _ in range(20):
            holders = [c for c, x in self.collectors.items() if x.manager.ownership.owns("d2")]
            self.assertLessEqual(len(holders), 1)
            expected = self.feed()
            self.advance(0.5)
        self.assertEqual(holders, [holder])
        self.assertEqual(self.result()["value"], expected)
        self.assertEqual(self.collectors[other].formulas._inputs.channels, [])

    def test_outside_the_cluster_nothing_changes(self) -> None:
        # A processor without a cluster computes every formula from the local batches.
        memory = MemoryRedis()
        clock = Clock()
        emitted: list[Sample] = []
        context = ProcessorContext(
            reactor=clock,
            settings=Settings(),
            options={},
            redis=memory,
            emit=emitted.extend,
            data_dir=tempfile.mkdtemp(),
        )
        memory.call("sadd", keys.FORMULAS, [FORMULA.key])
        memory.call("hmset", keys.FORMULA % FORMULA.key, FORMULA.to_fields())
        processor = FormulasProcessor(context)
        processor.startService()
        self.addCleanup(processor.stopService)
        self.assertIsNone(processor._inputs)
        processor.samples_received([Sample("d0", "td0", "i", 1.0), Sample("d1", "td1", "i", 2.0)])
        clock.advance(0)
        self.assertEqual([s.value for s in emitted], [3.0])
        self.assertNotIn("computed_here", processor.status())


class CatchUpAndDeletionTests(ClusterFormulaHarness):
    """The input subscription and the stored values after an outage or a deletion."""

    def test_a_not_topical_mark_missed_while_unsubscribed_is_caught_up(self) -> None:
        self.advance(5)
        holder = owner("d2", ["c", "d"])
        self.feed()
        self.advance(0.5)
        self.assertEqual(self.result()["quality"], "good")
        inputs = self.collectors[holder].formulas._inputs
        inputs._unsubscribe()  # the input subscription is down
        self.collectors["a"].manager.ingest.mark_not_topical("d0")  # d0 went offline
        self.advance(0.5)
        stored = json.loads(self.store._hgetall(keys.DEVICE_VALUES % "d0")["td0:i"])
        self.assertIn("NT", stored["flags"])  # same receive_time, quality questionable
        inputs.lose()  # back: the catch-up reads the stored values again
        self.advance(0.5)
        self.assertEqual(self.result()["quality"], "questionable")  # as if heard live

    def test_deleting_the_formula_unsubscribes_its_inputs(self) -> None:
        self.advance(5)
        holder = self.collectors[owner("d2", ["c", "d"])]
        self.assertEqual(len(holder.formulas._inputs.channels), 2)
        holder.formulas.config_changed({"entity": "formula", "op": "del", "id": "f1"})
        self.advance(0.5)
        self.assertEqual(holder.formulas._inputs.channels, [])
