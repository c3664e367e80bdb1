"""The formulas processor in cluster mode, fed through its sample channels by hand
(MemoryRedis, a Clock): its own results come back late, through the result device's
channel, and may cross newer computations."""

from __future__ import annotations

import json
import tempfile

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from pydatacoll.cluster.ownership import Ownership
from pydatacoll.config import Settings
from pydatacoll.model import Formula, Sample
from pydatacoll.processing import ProcessorContext
from pydatacoll.processing.formulas import FormulasProcessor
from pydatacoll.store import keys
from pydatacoll.testing.memory import MemoryRedis
from pydatacoll.testing.memory_subscriber import memory_subscription

F = {"id": "f", "formula": "p1", "device_id": "r", "term_id": "t", "item_id": "i", "p1": "d:t:a"}
#: g reads f's result (both results on the formula device r, the usual layout).
G = {"id": "g", "formula": "p1 * 10", "device_id": "r", "term_id": "t", "item_id": "j"}
G["p1"] = "r:t:i"


def message(samples: list[Sample]) -> str:
    return json.dumps(
        {"device_id": samples[0].device_id, "samples": [s.to_message() for s in samples]}
    )


class FormulaProcessorHarness(SynchronousTestCase):
    """A formulas processor of collector c over MemoryRedis, f and g stored (no tests)."""

    def setUp(self) -> None:
        self.memory = MemoryRedis()
        self.clock = Clock()
        self.clock.advance(1000)
        for body in (F, G):
            formula = Formula.from_json(body)
            self.memory.call("sadd", keys.FORMULAS, [formula.key])
            self.memory.call("hmset", keys.FORMULA % formula.key, formula.to_fields())
        self.emitted: list[Sample] = []
        ownership = Ownership("c", memory_subscription(self.memory))
        context = ProcessorContext(
            reactor=self.clock,
            settings=Settings(),
            options={},
            redis=self.memory,
            emit=self.emitted.extend,
            data_dir=tempfile.mkdtemp(),
            cluster=ownership,
        )
        self.ownership = ownership
        self.processor = FormulasProcessor(context)
        self.processor.startService()
        self.addCleanup(self.processor.stopService)
        self.clock.advance(0)

    def feed(self, device_id: str, samples: list[Sample]) -> None:
        self.processor._channel_message(keys.DEVICE_SAMPLES % device_id, message(samples))
        self.clock.advance(0)


class ChainedFormulaTests(FormulaProcessorHarness):
    def test_an_older_echo_after_a_newer_result_does_not_take_g_back(self) -> None:
        self.ownership.set_owned("r", True, "1 c")
        self.clock.advance(0)
        for value in (1.0, 2.0):  # two input changes 5 ms apart, before any echo
            self.clock.advance(0.005)
            self.feed("d", [Sample("d", "t", "a", value, receive_time=self.clock.seconds())])
        results = {s.item_id: s for s in self.emitted}
        self.assertEqual((results["i"].value, results["j"].value), (2.0, 20.0))
        r1 = [s for s in self.emitted if s.item_id == "i" and s.value == 1.0][0]
        # the echoes of f's results now, each in its own ingest batch: r1, then r2
        self.feed("r", [r1])
        self.feed("r", [results["i"]])
        self.assertEqual([s.value for s in self.emitted if s.item_id == "j"][-1], 20.0)
        self.assertEqual(self.processor._latest[("r", "t", "i")].value, 2.0)

    def test_a_failed_catch_up_at_a_takeover_is_tried_again(self) -> None:
        """The stored value of f's input could not be read when r's lease came here (a
        slowly changing input: nothing new comes on its channel): read again later."""
        stored = Sample("d", "t", "a", 3.0, receive_time=self.clock.seconds())
        self.memory.call("hset", keys.DEVICE_VALUES % "d", "t:a", json.dumps(stored.to_json()))
        self.memory.fail_next("hget")
        self.ownership.set_owned("r", True, "1 c")
        self.clock.advance(0)
        self.assertEqual(self.emitted, [])
        self.clock.advance(self.processor.retry_delay)
        self.assertEqual({s.item_id: s.value for s in self.emitted}, {"i": 3.0, "j": 30.0})


class StaleConfigReplayTests(FormulaProcessorHarness):
    """A collector paused past its leases replays the configuration messages it had
    buffered (SIGCONT): its formula statuses must not undo the holder's."""

    def status(self, formula_id: str) -> dict | None:
        text = self.memory.data.get(keys.FORMULA_STATUS, {}).get(formula_id)
        return None if text is None else json.loads(text)

    def test_a_replayed_error_does_not_overwrite_the_holders_status(self) -> None:
        self.memory.call("set", keys.LEASE % "r", "7 z")  # z holds r now, f is ok there
        self.memory.call("hset", keys.FORMULA_STATUS, "f", json.dumps({"state": "ok"}))
        bad = {**F, "formula": "p1 +"}  # an invalid body, since made valid again
        self.processor.config_changed({"entity": "formula", "op": "fresh", "id": "f", "data": bad})
        self.clock.advance(0)
        self.assertEqual(self.status("f"), {"state": "ok"})
        # the holder of r writes the error, under its lease (it needs no computation)
        self.memory.call("set", keys.LEASE % "r", "8 c")
        self.ownership.set_owned("r", True, "8 c")
        self.clock.advance(0)
        self.assertEqual((self.status("f")["state"], self.status("f")["collector"]), ("error", "c"))

    def test_a_replayed_deletion_does_not_remove_the_recreated_formulas_status(self) -> None:
        self.memory.call("hset", keys.FORMULA_STATUS, "f", json.dumps({"state": "ok"}))
        self.processor.config_changed({"entity": "formula", "op": "del", "id": "f"})
        self.clock.advance(0)
        self.assertEqual(self.status("f"), {"state": "ok"})  # f exists (re-created)
        self.memory.call("srem", keys.FORMULAS, ["f"])  # really deleted
        self.processor.config_changed({"entity": "formula", "op": "del", "id": "f"})
        self.clock.advance(0)
        self.assertIsNone(self.status("f"))
