"""The formulas processor against a real (private) Redis: cascades, quality, windows, errors."""

import json
import time

from twisted.internet import reactor
from twisted.internet.defer import gatherResults, inlineCallbacks
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from pydatacoll.errors import Conflict, NotFound
from pydatacoll.model import Formula, Sample
from pydatacoll.processing.formulas import FormulasProcessor
from tests.processing.support import context, entity_op, redis_store, store_sample, wait_for


def formula(formula_id, text, result, **params):
    body = {"id": formula_id, "formula": text, "device_id": "1", "term_id": "10"}
    return Formula.from_json({**body, "item_id": result, **params})


class FormulaProcessorTests(TestCase):
    @inlineCallbacks
    def setUp(self):
        yield redis_store(self)
        self.emitted = []

    def emit(self, samples):
        """What the device manager does: store, then hand back to the processors."""
        self.emitted.extend(samples)
        stored = gatherResults([store_sample(self.client, sample) for sample in samples])
        stored.addCallback(lambda _: self.processor.samples_received(samples))

    @inlineCallbacks
    def ingest(self, *samples):
        for sample in samples:
            yield store_sample(self.client, sample)
        self.processor.samples_received(list(samples))

    @inlineCallbacks
    def hget_json(self, key, field):
        text = yield self.client.call("hget", key, field)
        return json.loads(text)

    @inlineCallbacks
    def start(self, *formulas, options=None):
        if formulas:
            yield self.store.apply([entity_op("create", f) for f in formulas])
        self.processor = FormulasProcessor(context(self, reactor, options, self.emit))
        self.processor.startService()
        self.addCleanup(self.processor.stopService)
        yield wait_for(lambda: self.processor.status()["loaded"])

    def values(self, item_id):
        return [(s.value, s.quality) for s in self.emitted if s.item_id == item_id]

    @inlineCallbacks
    def test_cascade_in_dependency_order_with_worst_quality(self):
        yield self.start(
            formula("2", "p1 + p2", "1003", p1="1:10:1002", p2="1:10:1001"),
            formula("1", "p1 * 2", "1002", p1="1:10:1000"),
        )
        now = time.time()
        yield self.ingest(
            Sample("1", "10", "1000", 5, "good", (), now, now),
            Sample("1", "10", "1001", 1, "questionable", (), now, now),
        )
        yield wait_for(lambda: self.values("1003"))
        yield deferLater(reactor, 0.1, lambda: None)  # echoes come back: nothing recomputed
        self.assertEqual(self.values("1002"), [(10, "good")])
        self.assertEqual(self.values("1003"), [(11, "questionable")])
        self.assertEqual(self.processor.status()["evaluations"], 2)
        self.assertIn("calculated", self.emitted[0].flags)
        status = yield self.hget_json("HS:FORMULA_STATUS", "2")
        self.assertEqual((status["state"], status["value"]), ("ok", 11))
        # times are ISO 8601, like every other time the API shows
        self.assertRegex(status["time"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00$")
        # a later input change flows through both again
        yield self.ingest(Sample("1", "10", "1000", 6, "invalid", (), now, time.time()))
        yield wait_for(lambda: len(self.values("1003")) == 2)
        self.assertEqual(self.values("1003")[-1], (13, "invalid"))

    @inlineCallbacks
    def test_batches_are_folded(self):
        yield self.start(formula("1", "p1 + p2", "1002", p1="1:10:1000", p2="1:10:1001"))
        now = time.time()
        # both inputs in one batch, and two batches before the reactor turns: one result
        # (stored first: the two batches reach the processor in one reactor turn)
        yield store_sample(self.client, Sample("1", "10", "1000", 1, receive_time=now))
        yield store_sample(self.client, Sample("1", "10", "1001", 2, receive_time=now))
        self.processor.samples_received([Sample("1", "10", "1000", 1, receive_time=now)])
        self.processor.samples_received([Sample("1", "10", "1001", 2, receive_time=now)])
        yield wait_for(lambda: self.values("1002"))
        yield deferLater(reactor, 0.05, lambda: None)
        self.assertEqual(self.values("1002"), [(3, "good")])

    @inlineCallbacks
    def test_failing_formula_marks_result_invalid_and_others_go_on(self):
        yield self.start(
            formula("1", "p1 / (p1 - 5)", "1002", p1="1:10:1000"),
            formula("2", "p1 + 1", "1003", p1="1:10:1000"),
        )
        yield self.ingest(Sample("1", "10", "1000", 5, receive_time=time.time()))
        yield wait_for(lambda: self.values("1002") and self.values("1003"))
        self.assertEqual(self.values("1002"), [(None, "invalid")])
        self.assertEqual(self.values("1003"), [(6, "good")])
        status = yield self.hget_json("HS:FORMULA_STATUS", "1")
        self.assertEqual((status["state"], status["error"]), ("error", "division by zero"))

    @inlineCallbacks
    def test_window_functions_read_the_stored_history(self):
        now = time.time()
        for value in (1.0, 2.0, 3.0):
            yield store_sample(self.client, Sample("1", "10", "1000", value, receive_time=now))
        yield self.start(
            formula("1", "avg(p1, '15m') * 10 + delta(p1, '1h')", "1002", p1="1:10:1000")
        )
        # at start every formula with values is computed once
        yield wait_for(lambda: self.values("1002"))
        self.assertEqual(self.values("1002"), [(22.0, "good")])
        yield self.ingest(Sample("1", "10", "1000", 10.0, "questionable", (), None, time.time()))
        yield wait_for(lambda: len(self.values("1002")) == 2)
        self.assertEqual(self.values("1002")[-1], (49.0, "questionable"))

    @inlineCallbacks
    def test_config_changes_are_followed(self):
        yield self.start()
        yield self.ingest(Sample("1", "10", "1000", 4, receive_time=time.time()))
        new = formula("1", "p1 * 3", "1002", p1="1:10:1000")
        yield self.store.apply([entity_op("create", new)])
        stored = yield self.client.call("hgetall", "HS:FORMULA:1")
        data = {k: json.loads(v) for k, v in stored.items()}
        self.processor.config_changed({"entity": "formula", "op": "add", "id": "1", "data": data})
        yield wait_for(lambda: self.values("1002"))
        self.assertEqual(self.values("1002"), [(12, "good")])
        self.processor.config_changed({"entity": "formula", "op": "del", "id": "1", "data": None})
        yield self.ingest(Sample("1", "10", "1000", 5, receive_time=time.time()))
        yield deferLater(reactor, 0.05, lambda: None)
        self.assertEqual(len(self.values("1002")), 1)
        self.assertEqual(self.processor.status()["formulas"], 0)


class FormulaStoreTests(TestCase):
    """Formulas in the configuration store: reverse index, cycles, missing points."""

    @inlineCallbacks
    def setUp(self):
        yield redis_store(self)

    def members(self, key):
        return self.client.call("smembers", key).addCallback(set)

    def digest(self):
        return self.client.call("execute_command", "DEBUG", "DIGEST")

    @inlineCallbacks
    def test_create_indexes_and_delete_unindexes(self):
        yield self.store.apply([entity_op("create", formula("1", "p1", "1002", p1="1:10:1000"))])
        self.assertEqual((yield self.members("SET:FORMULA_PARAM:1:10:1000")), {"1"})
        self.assertEqual((yield self.members("SET:FORMULA")), {"1"})
        version = int((yield self.client.call("get", "STR:CONFIG_VERSION")))
        yield self.store.apply([entity_op("put", formula("1", "p2", "1002", p2="1:10:1001"))])
        self.assertEqual((yield self.members("SET:FORMULA_PARAM:1:10:1000")), set())
        self.assertEqual((yield self.members("SET:FORMULA_PARAM:1:10:1001")), {"1"})
        yield self.store.apply([{"op": "delete", "entity": "formula", "id": "1"}])
        self.assertEqual((yield self.client.call("keys", "*FORMULA*")), [])
        self.assertEqual(int((yield self.client.call("get", "STR:CONFIG_VERSION"))), version + 2)

    @inlineCallbacks
    def test_cycles_are_refused_naming_the_field(self):
        yield self.store.apply(
            [
                entity_op("create", formula("1", "p1", "1001", p1="1:10:1000")),
                entity_op("create", formula("2", "p1", "1002", p1="1:10:1001")),
            ]
        )
        before = yield self.digest()
        closing = formula("3", "p1 + p2", "1000", p2="1:10:1005", p1="1:10:1002")
        with self.assertRaises(Conflict) as caught:
            yield self.store.apply([entity_op("create", closing)])
        self.assertEqual(caught.exception.field, "p1")
        self.assertIn("cycle", caught.exception.message)
        with self.assertRaises(Conflict) as caught:
            yield self.store.apply(
                [entity_op("create", formula("4", "p1", "1003", p1="1:10:1003"))]
            )
        self.assertEqual(caught.exception.field, "p1")
        # a cycle made within one batch is seen too, and nothing of the batch is written
        with self.assertRaises(Conflict):
            yield self.store.apply(
                [
                    entity_op("create", formula("5", "p1", "1004", p1="1:10:1003")),
                    entity_op("create", formula("6", "p1", "1003", p1="1:10:1004")),
                ]
            )
        self.assertEqual((yield self.digest()), before)

    @inlineCallbacks
    def test_one_writer_per_result_point(self):
        """A second formula writing the same result point is refused with 409 naming the
        point (in the store's atomic script: stored, same batch, or moved by a PUT)."""
        yield self.store.apply([entity_op("create", formula("1", "p1", "1002", p1="1:10:1000"))])
        before = yield self.digest()
        with self.assertRaises(Conflict) as caught:
            yield self.store.apply(
                [entity_op("create", formula("2", "p1 + 1", "1002", p1="1:10:1001"))]
            )
        self.assertEqual(caught.exception.field, "item_id")
        self.assertIn("1:10:1002 is already written by formula 1", caught.exception.message)
        with self.assertRaises(Conflict) as caught:
            yield self.store.apply(
                [
                    entity_op("create", formula("3", "p1", "1003", p1="1:10:1000")),
                    entity_op("create", formula("4", "p1", "1003", p1="1:10:1001")),
                ]
            )
        self.assertEqual((caught.exception.field, caught.exception.index), ("item_id", 1))
        self.assertEqual((yield self.digest()), before)
        # replacing formula 1 itself, or moving its result away in the same batch, is fine
        yield self.store.apply([entity_op("put", formula("1", "p1 * 3", "1002", p1="1:10:1000"))])
        yield self.store.apply(
            [
                entity_op("put", formula("1", "p1", "1004", p1="1:10:1000")),
                entity_op("create", formula("2", "p1", "1002", p1="1:10:1001")),
            ]
        )
        self.assertEqual((yield self.members("SET:FORMULA")), {"1", "2"})

    @inlineCallbacks
    def test_points_must_exist(self):
        with self.assertRaises(NotFound) as caught:
            yield self.store.apply([entity_op("create", formula("1", "p1", "1002", p1="1:10:9"))])
        self.assertEqual(caught.exception.field, "p1")
        with self.assertRaises(NotFound) as caught:
            yield self.store.apply([entity_op("create", formula("1", "p1", "9", p1="1:10:1000"))])
        self.assertEqual(caught.exception.field, "item_id")
