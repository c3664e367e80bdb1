"""The formulas processor on `MemoryRedis` and a `Clock` (no redis-server, no reactor):
cascades, quality, windows, errors, the load retried. The same against a real Redis, and
the configuration store's rules for formulas: tests/integration/test_formulas_redis.py."""

import json

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from pydatacoll.model import Formula, Sample
from pydatacoll.processing.formulas import FormulasProcessor, check_formula
from pydatacoll.store import keys
from pydatacoll.store.processing import FormulaStore, PointConfigStore
from tests.processing.memory_support import memory_context, memory_points, store_sample

START = 1_700_000_000.0


def formula(formula_id, text, result, **params):
    body = {"id": formula_id, "formula": text, "device_id": "1", "term_id": "10"}
    return Formula.from_json({**body, "item_id": result, **params})


class FormulaProcessorTests(SynchronousTestCase):
    def setUp(self):
        self.memory = memory_points()
        self.clock = Clock()
        self.clock.advance(START)
        self.emitted = []

    def add_formula(self, f):
        self.memory.call("sadd", keys.FORMULAS, [f.key])
        self.memory.call("hmset", keys.FORMULA % f.key, f.to_fields())

    def emit(self, samples):
        """What the device manager does: store, then hand back to the processors."""
        self.emitted.extend(samples)
        for sample in samples:
            store_sample(self.memory, sample)
        self.clock.callLater(0, self.processor.samples_received, samples)

    def ingest(self, *samples):
        for sample in samples:
            store_sample(self.memory, sample)
        self.processor.samples_received(list(samples))

    def start(self, *formulas, options=None):
        for f in formulas:
            self.add_formula(f)
        self.processor = FormulasProcessor(
            memory_context(self.memory, self.clock, options, self.emit)
        )
        self.processor.startService()
        self.addCleanup(self.processor.stopService)

    def turn(self, times=5):
        """Let the scheduled computations (and the echoes of their results) run."""
        for _ in range(times):
            self.clock.advance(0)

    def values(self, item_id):
        return [(s.value, s.quality) for s in self.emitted if s.item_id == item_id]

    def status_of(self, formula_id):
        return json.loads(self.memory.data[keys.FORMULA_STATUS][formula_id])

    def test_cascade_in_dependency_order_with_worst_quality(self):
        self.start(
            formula("2", "p1 + p2", "1003", p1="1:10:1002", p2="1:10:1001"),
            formula("1", "p1 * 2", "1002", p1="1:10:1000"),
        )
        self.assertTrue(self.processor.status()["loaded"])
        now = self.clock.seconds()
        self.ingest(
            Sample("1", "10", "1000", 5, "good", (), now, now),
            Sample("1", "10", "1001", 1, "questionable", (), now, now),
        )
        self.turn()  # echoes come back: nothing recomputed
        self.assertEqual(self.values("1002"), [(10, "good")])
        self.assertEqual(self.values("1003"), [(11, "questionable")])
        self.assertEqual(self.processor.status()["evaluations"], 2)
        self.assertIn("calculated", self.emitted[0].flags)
        status = self.status_of("2")
        self.assertEqual((status["state"], status["value"]), ("ok", 11))
        self.assertEqual(status["time"], "2023-11-14T22:13:20.000+00:00")
        self.assertEqual(
            self.successResultOf(FormulaStore(self.memory).formula_status("2")), status
        )
        self.clock.advance(1)
        self.ingest(Sample("1", "10", "1000", 6, "invalid", (), now, self.clock.seconds()))
        self.turn()
        self.assertEqual(self.values("1003")[-1], (13, "invalid"))

    def test_batches_are_folded(self):
        self.start(formula("1", "p1 + p2", "1002", p1="1:10:1000", p2="1:10:1001"))
        now = self.clock.seconds()
        # both inputs, two batches before the clock turns: one result
        self.ingest(Sample("1", "10", "1000", 1, receive_time=now))
        self.ingest(Sample("1", "10", "1001", 2, receive_time=now))
        self.turn()
        self.assertEqual(self.values("1002"), [(3, "good")])

    def test_failing_formula_marks_result_invalid_and_others_go_on(self):
        self.start(
            formula("1", "p1 / (p1 - 5)", "1002", p1="1:10:1000"),
            formula("2", "p1 + 1", "1003", p1="1:10:1000"),
        )
        self.ingest(Sample("1", "10", "1000", 5, receive_time=self.clock.seconds()))
        self.turn()
        self.assertEqual(self.values("1002"), [(None, "invalid")])
        self.assertEqual(self.values("1003"), [(6, "good")])
        status = self.status_of("1")
        self.assertEqual((status["state"], status["error"]), ("error", "division by zero"))

    def test_window_functions_read_the_stored_history(self):
        now = self.clock.seconds()
        for value in (1.0, 2.0, 3.0):
            store_sample(self.memory, Sample("1", "10", "1000", value, receive_time=now))
        self.start(formula("1", "avg(p1, '15m') * 10 + delta(p1, '1h')", "1002", p1="1:10:1000"))
        self.turn()  # at start every formula with values is computed once
        self.assertEqual(self.values("1002"), [(22.0, "good")])
        self.clock.advance(1)
        self.ingest(Sample("1", "10", "1000", 10.0, "questionable", (), None, self.clock.seconds()))
        self.turn()
        self.assertEqual(self.values("1002")[-1], (49.0, "questionable"))

    def test_a_window_older_than_its_span_is_left_out(self):
        store_sample(self.memory, Sample("1", "10", "1000", 100.0, receive_time=START - 3600))
        store_sample(self.memory, Sample("1", "10", "1000", 2.0, receive_time=START - 60))
        self.start(formula("1", "avg(p1, '15m')", "1002", p1="1:10:1000"))
        self.turn()
        self.assertEqual(self.values("1002"), [(2.0, "good")])

    def test_config_changes_are_followed(self):
        self.start()
        self.ingest(Sample("1", "10", "1000", 4, receive_time=self.clock.seconds()))
        new = formula("1", "p1 * 3", "1002", p1="1:10:1000")
        self.add_formula(new)
        self.processor.config_changed(
            {"entity": "formula", "op": "add", "id": "1", "data": new.to_json()}
        )
        self.turn()
        self.assertEqual(self.values("1002"), [(12, "good")])
        self.memory.call("srem", keys.FORMULAS, ["1"])  # the API deletes it, then says so
        self.processor.config_changed({"entity": "formula", "op": "del", "id": "1", "data": None})
        self.ingest(Sample("1", "10", "1000", 5, receive_time=self.clock.seconds()))
        self.turn()
        self.assertEqual(len(self.values("1002")), 1)
        self.assertEqual(self.processor.status()["formulas"], 0)
        self.assertNotIn("1", self.memory.data.get(keys.FORMULA_STATUS) or {})

    def test_redis_absent_at_start_then_back(self):
        self.add_formula(formula("1", "p1 * 2", "1002", p1="1:10:1000"))
        self.memory.down()
        self.start()
        self.clock.advance(60)
        self.assertFalse(self.processor.status()["loaded"])
        self.memory.up()
        self.assertTrue(self.processor.status()["loaded"])
        self.ingest(Sample("1", "10", "1000", 4, receive_time=self.clock.seconds()))
        self.turn()
        self.assertEqual(self.values("1002"), [(8, "good")])

    def test_a_failed_load_is_retried_after_retry_delay(self):
        self.memory.fail_next("hgetall")
        self.start(formula("1", "p1 * 2", "1002", p1="1:10:1000"), options={"retry_delay": "2"})
        self.assertFalse(self.processor.status()["loaded"])
        self.clock.advance(1.9)
        self.assertFalse(self.processor.status()["loaded"])
        self.clock.advance(0.1)
        self.assertEqual(self.processor.status()["formulas"], 1)

    def test_bad_options_name_the_key(self):
        from pydatacoll.errors import ConfigError

        for options in ({"max_formulas": "0"}, {"time_budget": "x"}, {"retry_delay": "1e9"}):
            with self.assertRaises(ConfigError) as caught:
                FormulasProcessor(memory_context(self.memory, self.clock, options))
            self.assertEqual(caught.exception.key, f"plugin:formulas.{next(iter(options))}")


class FormulaCheckTests(SynchronousTestCase):
    """POST /api/v1/formula_check's evaluation, on the stored values."""

    def setUp(self):
        self.memory = memory_points()
        self.points = PointConfigStore(self.memory)

    def test_values_and_windows(self):
        store_sample(self.memory, Sample("1", "10", "1000", 3.0, receive_time=START - 10))
        store_sample(self.memory, Sample("1", "10", "1001", 4.0, "questionable", (), None, START))
        body = {"formula": "p1 + p2 + avg(p1, '1m')", "p1": "1:10:1000", "p2": "1:10:1001"}
        answer = self.successResultOf(check_formula(self.points, body, START))
        self.assertEqual(answer, {"ok": True, "value": 10.0, "quality": "questionable"})

    def test_unknown_point_and_invalid_formula(self):
        answer = self.successResultOf(
            check_formula(self.points, {"formula": "p1", "p1": "2:10:1000"}, START)
        )
        self.assertEqual((answer["error"], answer["field"]), ("not_found", "p1"))
        answer = self.successResultOf(check_formula(self.memory, {"formula": "p1 +"}, START))
        self.assertEqual((answer["ok"], answer["error"]), (False, "invalid"))
