"""The Modbus driver against pymodbus' own TCP server (a peer we did not write).

The server runs in a child process (`pydatacoll.testing.modbus_sim`) on a free port;
the driver runs on the real reactor. Expected register contents are computed here with
`struct` and the letters of each byte order name, not with our codec.
"""

from __future__ import annotations

import json
import os
import struct
import tempfile

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from pydatacoll.errors import ModbusExceptionResponse
from pydatacoll.model import Device, Term, TermItem
from pydatacoll.protocols.modbus.config import ModbusSettings, build_points
from pydatacoll.protocols.modbus.driver import ModbusDriver
from pydatacoll.testing.modbus_process import ModbusSimProcess
from pydatacoll.testing.redis import free_port

CODES = {"int16": "h", "uint16": "H", "int32": "i", "uint32": "I", "int64": "q"}
CODES.update({"uint64": "Q", "float32": "f", "float64": "d"})
SAMPLES = {
    "int16": -12345,
    "uint16": 54321,
    "int32": -123456789,
    "uint32": 3456789012,
    "int64": -1234567890123456789,
    "uint64": 12345678901234567890,
    "float32": 12.5,
    "float64": -2.718281828459045,
}
ORDERS_64 = {"ABCD": "ABCDEFGH", "BADC": "BADCFEHG", "CDAB": "GHEFCDAB", "DCBA": "HGFEDCBA"}


def wire(data_type: str, value, order: str) -> list[int]:
    """Registers of ``value`` with its bytes in the order the letters name (A = MSB)."""
    big = struct.pack(">" + CODES[data_type], value)
    if len(big) == 8 and len(order) == 4:
        order = ORDERS_64[order]
    if len(big) == 2:
        order = "AB" if order in ("ABCD", "CDAB", "AB") else "BA"
    data = bytes(big[ord(c) - ord("A")] for c in order)
    return list(struct.unpack(f">{len(data) // 2}H", data))


def cases():
    """(item_id, term-item fields, expected value, registers) for every type x order."""
    address = 0
    result = []
    for data_type, value in SAMPLES.items():
        orders = ["ABCD", "BADC", "CDAB", "DCBA"]
        if data_type in ("int64", "uint64", "float64"):
            orders += list(ORDERS_64.values())
        for order in orders:
            registers = wire(data_type, value, order)
            fields = {"data_type": data_type, "byte_order": order, "protocol_code": address}
            result.append((f"{data_type}_{order}", fields, value, registers))
            address += len(registers) + 1  # leave a gap so that merging bridges some
    text = "PyDataColl"
    data = text.encode().ljust(12, b"\x00")
    result.append(
        (
            "string",
            {"data_type": "string", "count": 6, "protocol_code": address},
            text,
            list(struct.unpack(">6H", data)),
        )
    )
    address += 7
    result.append(
        ("bit13", {"data_type": "bool", "bit": 13, "protocol_code": address}, True, [1 << 13])
    )
    return result


@inlineCallbacks
def wait_for(condition, timeout=10.0, step=0.05):
    """Poll ``condition`` on the reactor until it is true (or fail after ``timeout``)."""
    waited = 0.0
    while not condition():
        if waited > timeout:
            raise AssertionError("condition not met in time")
        yield deferLater(reactor, step, lambda: None)
        waited += step


class ModbusInteropTests(TestCase):
    timeout = 60

    @inlineCallbacks
    def start_sim(self, mapping, *args, port=None):
        path = os.path.join(tempfile.mkdtemp(prefix="pydatacoll-modbus-"), "map.json")
        with open(path, "w") as f:
            json.dump(mapping, f)
        self.port = port or free_port()
        sim = yield ModbusSimProcess.start(
            reactor, self.port, "--map", path, "--units", "1,2", *args
        )
        self.addCleanup(sim.kill)
        return sim

    def start_driver(self, items, terms=None, **device):
        body = {"id": "m1", "protocol": "modbus", "ip": "127.0.0.1", "port": self.port}
        body.update({"timeout": 0.5, "scan_interval": 0.2, "reconnect_initial": 0.1})
        body.update({"reconnect_max": 0.5, **device})
        settings = ModbusSettings.from_device(Device.from_json(body))
        terms = terms or [Term.from_json({"id": "t1", "device_id": "m1", "address": 1})]
        term_items = [TermItem.from_json({"term_id": "t1", **i}) for i in items]
        self.batches = []
        driver = ModbusDriver(
            "m1",
            settings,
            build_points(settings, terms, term_items),
            self.batches.append,
            reactor=reactor,
            start_delay=0.05,
        )
        driver.startService()
        self.addCleanup(driver.stopService)
        return driver

    def latest(self):
        values = {}
        for batch in self.batches:
            for v in batch.point_values():
                values[v.key] = v
        return values

    @inlineCallbacks
    def test_every_type_and_byte_order_reads_back_exactly(self):
        all_cases = cases()
        holding = {}
        for _, fields, _, registers in all_cases:
            holding[str(fields["protocol_code"])] = registers
        mapping = {
            "1": {
                "holding": holding,
                "input": {"0": wire("float32", 12.5, "ABCD")},
                "coil": {"5": [True]},
                "discrete_input": {"9": [True]},
            }
        }
        yield self.start_sim(mapping)
        items = [{"item_id": name, **fields} for name, fields, _, _ in all_cases]
        items += [
            {"item_id": "ir", "code_type": 3, "data_type": "float32", "protocol_code": 0},
            {"item_id": "co", "code_type": "coil", "protocol_code": 5},
            {"item_id": "co4", "code_type": 0, "protocol_code": 4},
            {"item_id": "di", "code_type": "discrete_input", "protocol_code": 9},
        ]
        driver = self.start_driver(items)
        yield wait_for(lambda: len(self.latest()) == len(items) and all(
            v.quality == "good" for v in self.latest().values()
        ))  # fmt: skip
        values = self.latest()
        for name, _, expected, _ in all_cases:
            self.assertEqual(values[f"t1:{name}"].value, expected, name)
        self.assertEqual(values["t1:ir"].value, 12.5)
        self.assertEqual(values["t1:co"].value, True)
        self.assertEqual(values["t1:co4"].value, False)
        self.assertEqual(values["t1:di"].value, True)
        reads = sum(len(s.reads) for s in driver.schedules.values())
        self.assertLessEqual(reads, 6)  # ~170 registers of holding: two merged reads

    @inlineCallbacks
    def test_writes_land_in_the_datastore(self):
        sim = yield self.start_sim({})
        items = [
            {"item_id": "f", "data_type": "float32", "byte_order": "CDAB", "protocol_code": 10},
            {"item_id": "d", "data_type": "float64", "byte_order": "DCBA", "protocol_code": 20},
            {"item_id": "u", "data_type": "uint16", "protocol_code": 30, "coefficient": 0.1},
            {"item_id": "q", "data_type": "int64", "byte_order": "BADC", "protocol_code": 40},
            {"item_id": "s", "data_type": "string", "count": 4, "protocol_code": 50},
            {"item_id": "b", "data_type": "bool", "bit": 3, "protocol_code": 60},
            {"item_id": "c", "code_type": "coil", "protocol_code": 70},
        ]
        driver = self.start_driver(items, verify_writes=1)
        yield wait_for(lambda: driver.link.stats.state == "connected")
        yield driver.write_point("t1:f", -1.5)
        yield driver.write_point("t1:d", 1e-300)
        yield driver.write_point("t1:u", 230.5)
        yield driver.write_point("t1:q", -(2**62) - 5)
        yield driver.write_point("t1:s", "abc")
        yield driver.write_point("t1:b", True)
        yield driver.write_point("t1:c", True)
        got = yield sim.command("get 1 holding 10 2")
        self.assertEqual(got["values"], wire("float32", -1.5, "CDAB"))
        got = yield sim.command("get 1 holding 20 4")
        self.assertEqual(got["values"], wire("float64", 1e-300, "DCBA"))
        got = yield sim.command("get 1 holding 30 1")
        self.assertEqual(got["values"], [2305])
        got = yield sim.command("get 1 holding 40 4")
        self.assertEqual(got["values"], wire("int64", -(2**62) - 5, "BADC"))
        got = yield sim.command("get 1 holding 50 4")
        self.assertEqual(got["values"], [0x6162, 0x6300, 0, 0])
        got = yield sim.command("get 1 holding 60 1")
        self.assertEqual(got["values"], [8])
        got = yield sim.command("get 1 coil 70 1")
        self.assertEqual(got["values"], [True])

    @inlineCallbacks
    def test_exception_for_a_bad_address(self):
        yield self.start_sim({}, "--size", "100")
        items = [
            {"item_id": "ok", "protocol_code": 10},
            {"item_id": "bad", "protocol_code": 500},
        ]
        driver = self.start_driver(items)
        yield wait_for(lambda: len(self.latest()) == 2)
        values = self.latest()
        self.assertEqual(values["t1:ok"].quality, "good")
        self.assertEqual(values["t1:bad"].quality, "exception")
        error = yield self.assertFailure(driver.read_point("t1:bad"), ModbusExceptionResponse)
        self.assertEqual(error.exception_code, 2)
        self.assertGreaterEqual(driver.link.stats.exceptions, 1)

    @inlineCallbacks
    def test_server_killed_and_restarted_polling_resumes_no_crossed_values(self):
        mapping = {
            "1": {"holding": {"0": [1001, 1002]}},
            "2": {"holding": {"0": [2001, 2002]}},
        }
        sim = yield self.start_sim(mapping)
        terms = [
            Term.from_json({"id": "t1", "device_id": "m1", "address": 1}),
            Term.from_json({"id": "t2", "device_id": "m1", "address": 2}),
        ]
        items = [
            {"item_id": "a", "protocol_code": 0},
            {"item_id": "b", "protocol_code": 1},
        ]
        term_items = [{"term_id": t, **i} for t in ("t1", "t2") for i in items]
        body = {"id": "m1", "protocol": "modbus", "ip": "127.0.0.1", "port": self.port}
        body.update({"timeout": 0.5, "scan_interval": 0.1, "reconnect_initial": 0.1})
        # max_in_flight stays 1: pymodbus 3.16's server answers only the first of two
        # requests that arrive in one TCP segment
        body.update({"reconnect_max": 0.3, "degrade_after": 0})
        settings = ModbusSettings.from_device(Device.from_json(body))
        batches = []
        driver = ModbusDriver(
            "m1",
            settings,
            build_points(settings, terms, [TermItem.from_json(i) for i in term_items]),
            batches.append,
            reactor=reactor,
        )
        driver.startService()
        self.addCleanup(driver.stopService)

        def good_since(n):
            return [b for b in batches[n:] if b.qualities[0] == "good"]

        yield wait_for(lambda: len(good_since(0)) >= 10)
        yield sim.kill()
        yield wait_for(lambda: batches[-1].qualities[0] == "not_connected")
        mark = len(batches)
        yield deferLater(reactor, 0.5, lambda: None)
        yield self.start_sim(mapping, port=self.port)
        yield wait_for(lambda: len(good_since(mark)) >= 10)
        self.assertGreaterEqual(driver.link.stats.reconnects, 1)
        self.assertEqual(driver.link.stats.state, "connected")
        for batch in batches:
            for v in batch.point_values():
                if v.quality == "good":
                    unit = int(v.key[1])
                    offset = 0 if v.key.endswith(":a") else 1
                    self.assertEqual(v.value, unit * 1000 + 1 + offset, batch)


class _NoRedis:
    """Every command answers empty (the formulas read no history here): nothing for
    HGET, an empty list for the rest."""

    def call(self, command, *args):
        from twisted.internet.defer import succeed

        return succeed(None if command == "hget" else [])


class _Sink:
    def __init__(self):
        self.batches = []

    def samples_received(self, samples):
        self.batches.append(list(samples))


class ScanBatchTests(TestCase):
    timeout = 60

    @inlineCallbacks
    def test_one_batch_per_scan_so_a_formula_is_computed_once(self):
        """Two points in two reads (holding and input registers): the runtime hands on
        one batch per scan holding both, and a formula over them is computed once a scan
        (not once per read), so its history does not double."""
        from pydatacoll.config import Settings
        from pydatacoll.processing import ProcessorContext
        from pydatacoll.processing.formulas import FormulasProcessor
        from pydatacoll.protocols.modbus.runtime import ModbusRuntime

        path = os.path.join(tempfile.mkdtemp(prefix="pydatacoll-modbus-"), "map.json")
        with open(path, "w") as f:
            json.dump({"1": {"holding": {"0": [5]}, "input": {"0": [7]}}}, f)
        port = free_port()
        sim = yield ModbusSimProcess.start(reactor, port, "--map", path)
        self.addCleanup(sim.kill)
        device = Device.from_json(
            {"id": "m1", "protocol": "modbus", "ip": "127.0.0.1", "port": port,
             "timeout": 0.5, "scan_interval": 0.2}
        )  # fmt: skip
        term = Term.from_json({"id": "t1", "device_id": "m1", "address": 1})
        items = [
            TermItem.from_json({"term_id": "t1", "item_id": "a", "protocol_code": 0}),
            TermItem.from_json(
                {"term_id": "t1", "item_id": "b", "protocol_code": 0, "code_type": "input"}
            ),
        ]
        emitted = []
        formulas = FormulasProcessor(
            ProcessorContext(
                reactor=reactor, settings=Settings(), options={}, redis=_NoRedis(),
                emit=emitted.extend, data_dir=tempfile.mkdtemp(),
            )
        )  # fmt: skip
        formulas.running = True  # fed directly: no Redis to load from
        formulas.config_changed(
            {"entity": "formula", "op": "add", "id": "f",
             "data": {"id": "f", "formula": "p1 + p2", "device_id": "m1", "term_id": "t1",
                      "item_id": "c", "p1": "m1:t1:a", "p2": "m1:t1:b"}}
        )  # fmt: skip
        sink = _Sink()

        class Both:
            def samples_received(self, samples):
                sink.samples_received(samples)
                formulas.samples_received(samples)

        runtime = ModbusRuntime(device, [term], items, Both(), reactor)
        runtime.startService()
        self.addCleanup(runtime.stopService)
        yield wait_for(lambda: len(sink.batches) >= 5, timeout=20)
        yield deferLater(reactor, 0.05, lambda: None)
        for batch in sink.batches:
            self.assertEqual(sorted(s.item_id for s in batch), ["a", "b"])
        self.assertEqual(emitted[-1].value, 12)
        # one result per scan (give or take the scan under way)
        self.assertLessEqual(abs(len(emitted) - len(sink.batches)), 1)
