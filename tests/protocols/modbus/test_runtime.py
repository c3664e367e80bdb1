"""The Modbus runtime: points it cannot read are isolated and reported, the others poll."""

from twisted.application.service import IService
from twisted.internet.testing import MemoryReactorClock
from twisted.plugin import IPlugin
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from pydatacoll.errors import ValidationError
from pydatacoll.interfaces import IDeviceRuntime, IProtocolDriver
from pydatacoll.model import Device, Term, TermItem
from pydatacoll.protocols.modbus.runtime import ModbusRuntime, check_point, driver


class _Sink:
    def __init__(self):
        self.samples = []

    def samples_received(self, samples):
        self.samples.extend(samples)


DEVICE = Device.from_json({"id": "d1", "protocol": "modbus", "ip": "127.0.0.1"})
TERMS = [
    Term.from_json({"id": "t1", "device_id": "d1", "address": 1}),
    Term.from_json({"id": "t2", "device_id": "d1", "address": 300}),
]


def item(term_id, item_id, **fields):
    # TermItem.from_json checks only what it can without the device (as a stored point
    # written before the REST boundary checked points).
    return TermItem.from_json({"term_id": term_id, "item_id": item_id, **fields})


class BadPointTests(SynchronousTestCase):
    def test_bad_points_do_not_stop_the_device(self):
        items = [
            item("t1", "good", protocol_code=0),
            item("t1", "no_address"),
            item("t1", "typo", protocol_code=2, code_type="hodling"),
            item("t2", "bad_unit", protocol_code=1),
        ]
        runtime = ModbusRuntime(DEVICE, TERMS, items, _Sink(), MemoryReactorClock())
        self.assertEqual(list(runtime.poller.points), ["t1:good"])
        bad = {(p["term_id"], p["item_id"]): p for p in runtime.status()["bad_points"]}
        self.assertEqual(
            {k: v["field"] for k, v in bad.items()},
            {
                ("t1", "no_address"): "protocol_code",
                ("t1", "typo"): "code_type",
                ("t2", "bad_unit"): "address",
            },
        )
        self.assertIn("coil, discrete_input, input or holding", bad[("t1", "typo")]["reason"])
        # fixing a point over REST takes it off the list, and it polls
        items[2] = item("t1", "typo", protocol_code=2, code_type="holding")
        runtime.update_points(TERMS, items)
        self.assertEqual(sorted(runtime.poller.points), ["t1:good", "t1:typo"])
        self.assertEqual(len(runtime.status()["bad_points"]), 2)

    def test_point_check_names_the_field(self):
        term = TERMS[0]
        for fields, field in (
            ({}, "protocol_code"),
            ({"protocol_code": 1, "code_type": "hodling"}, "code_type"),
            ({"protocol_code": 1, "code_type": 3, "data_type": "bool"}, "bit"),
        ):
            with self.assertRaises(ValidationError) as caught:
                check_point(DEVICE, term, item("t1", "x", **fields))
            self.assertEqual(caught.exception.field, field)
        check_point(DEVICE, term, item("t1", "x", protocol_code=1, code_type=3))


class InterfaceTests(SynchronousTestCase):
    def test_driver_and_runtime_provide_their_interfaces(self):
        self.assertTrue(verifyObject(IProtocolDriver, driver))
        self.assertTrue(verifyObject(IPlugin, driver))
        frames = []
        runtime = driver.build(
            DEVICE, TERMS, [item("t1", "v", protocol_code=0)], _Sink(), MemoryReactorClock(),
            None, lambda d, f: frames.append((d, f)),
        )  # fmt: skip
        self.assertIsInstance(runtime, ModbusRuntime)
        self.assertTrue(verifyObject(IDeviceRuntime, runtime))
        self.assertTrue(verifyObject(IService, runtime))
        self.assertIsNotNone(runtime.poller.client.frame_observer)

    def test_pause_and_resume_input_reach_the_poller(self):
        runtime = ModbusRuntime(
            DEVICE, TERMS, [item("t1", "v", protocol_code=0)], _Sink(), MemoryReactorClock()
        )
        self.assertIsNone(runtime.poller.client.frame_observer)
        runtime.pause_input()
        self.assertTrue(runtime.poller.input_paused)
        runtime.resume_input()
        self.assertFalse(runtime.poller.input_paused)


class BatchToSamplesTests(SynchronousTestCase):
    """A read's batch becomes one sample per point, handed on when the scan is done."""

    def _runtime(self):
        items = [item("t1", "a", protocol_code=0), item("t1", "b.c", protocol_code=1)]
        sink = _Sink()
        return ModbusRuntime(DEVICE, TERMS, items, sink, MemoryReactorClock()), sink

    def test_planned_reads_carry_the_split_point_ids(self):
        runtime, _ = self._runtime()
        (schedule,) = runtime.poller.schedules.values()
        (read,) = schedule.reads
        self.assertEqual(read.ids, (("t1", "a"), ("t1", "b.c")))

    def test_good_and_bad_points_with_and_without_ids(self):
        from pydatacoll.model import Sample
        from pydatacoll.protocols.modbus.values import ReadBatch

        runtime, sink = self._runtime()
        keys = ("t1:a", "t1:b.c")
        for ids in ((("t1", "a"), ("t1", "b.c")), ()):
            sink.samples.clear()
            runtime._on_batch(
                ReadBatch("d1", 1, "holding", 0, 2, 1.0, 2.0, keys, (7, 8), ("good", "good"),
                          ids=ids)
            )  # fmt: skip
            runtime._on_batch(
                ReadBatch("d1", 1, "holding", 0, 2, 3.0, 4.0, keys, (5, None),
                          ("good", "timeout"), ids=ids)
            )  # fmt: skip
            runtime._flush()
            self.assertEqual(
                sink.samples,
                [
                    Sample("d1", "t1", "a", 7, "good", (), 2.0, 2.0),
                    Sample("d1", "t1", "b.c", 8, "good", (), 2.0, 2.0),
                    Sample("d1", "t1", "a", 5, "good", (), 4.0, 4.0),
                    Sample("d1", "t1", "b.c", None, "invalid", ("timeout",), 4.0, 4.0),
                ],
            )
        self.assertEqual(runtime.points_updated, 8)
        self.assertEqual(runtime.last_value_time, 4.0)
