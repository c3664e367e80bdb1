"""The point codec: every data type x byte order round trip, known vectors, validation."""

import math
import struct

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from pydatacoll.errors import ValidationError
from pydatacoll.model import TermItem
from pydatacoll.protocols.modbus.codec import (
    BYTE_ORDERS,
    BYTE_ORDERS_64,
    Table,
    parse_table,
    point_format,
    scale,
    unscale,
)

NUMERIC = {
    "int16": st.integers(-(2**15), 2**15 - 1),
    "uint16": st.integers(0, 2**16 - 1),
    "int32": st.integers(-(2**31), 2**31 - 1),
    "uint32": st.integers(0, 2**32 - 1),
    "int64": st.integers(-(2**63), 2**63 - 1),
    "uint64": st.integers(0, 2**64 - 1),
    "float32": st.floats(width=32, allow_nan=False),
    "float64": st.floats(allow_nan=False),
}
ORDERS = sorted(BYTE_ORDERS) + sorted(BYTE_ORDERS_64) + ["AB", "BA"]


def valid_orders(data_type):
    width = {"int16": 1, "uint16": 1, "int64": 4, "uint64": 4, "float64": 4}.get(data_type, 2)
    orders = sorted(BYTE_ORDERS)
    if width == 4:
        orders += sorted(BYTE_ORDERS_64)
    if width == 1:
        orders += ["AB", "BA"]
    return orders


def reference_registers(code, value, order):
    """Registers of ``value`` laid out by the letters of ``order`` (A = most significant)."""
    big = struct.pack(">" + code, value)
    if len(order) * 2 == len(big):  # the 4-letter names of a 64-bit value
        order = {"ABCD": "ABCDEFGH", "BADC": "BADCFEHG", "CDAB": "GHEFCDAB", "DCBA": "HGFEDCBA"}[
            order
        ]
    if len(order) > len(big):  # 16-bit: only the byte swap counts
        order = "AB" if order in ("ABCD", "CDAB") else "BA"
    wire = bytes(big[ord(c) - ord("A")] for c in order)
    return list(struct.unpack(f">{len(wire) // 2}H", wire))


CODES = {"int16": "h", "uint16": "H", "int32": "i", "uint32": "I", "int64": "q"}
CODES.update({"uint64": "Q", "float32": "f", "float64": "d"})


class CodecTests(SynchronousTestCase):
    def test_known_vectors(self):
        f = point_format("holding", "float32", "ABCD")
        self.assertEqual(f.encode(12.5), [0x4148, 0x0000])
        self.assertEqual(f.decode([0x4148, 0x0000], 0), 12.5)
        self.assertEqual(point_format("holding", "float32", "CDAB").encode(12.5), [0, 0x4148])
        self.assertEqual(point_format("holding", "float32", "BADC").encode(12.5), [0x4841, 0])
        self.assertEqual(point_format("holding", "float32", "DCBA").encode(12.5), [0, 0x4841])
        self.assertEqual(point_format(3, "int32", "CDAB").decode([0xFFFE, 0xFFFF], 0), -2)
        self.assertEqual(
            point_format(4, "uint64", "ABCDEFGH").encode(0x0102030405060708),
            [0x0102, 0x0304, 0x0506, 0x0708],
        )
        self.assertEqual(
            point_format(4, "uint64", "CDAB").encode(0x0102030405060708),
            [0x0708, 0x0506, 0x0304, 0x0102],
        )
        self.assertEqual(point_format(4, "int16", "BA").decode([0xFFFE], 0), -257)
        self.assertEqual(point_format(4, "string", count=3).decode([0x4142, 0x4300, 0], 0), "ABC")
        self.assertEqual(point_format(4, "string", "BADC", count=2).encode("ABC"), [0x4241, 0x0043])
        self.assertEqual(point_format(4, "bool", bit=3).decode([0b1000], 0), True)
        self.assertEqual(point_format("coil").decode([False, True], 1), True)

    @given(st.data())
    def test_round_trip_every_type_and_order(self, data):
        data_type = data.draw(st.sampled_from(sorted(NUMERIC)))
        order = data.draw(st.sampled_from(valid_orders(data_type)))
        value = data.draw(NUMERIC[data_type])
        fmt = point_format("holding", data_type, order)
        registers = fmt.encode(value)
        self.assertEqual(registers, reference_registers(CODES[data_type], value, order))
        self.assertTrue(all(0 <= r <= 0xFFFF for r in registers))
        padded = [0x1111] * 3 + registers + [0x2222]
        self.assertEqual(fmt.decode(padded, 3), value)

    @given(st.text(st.characters(min_codepoint=1, max_codepoint=255), max_size=20), st.data())
    def test_string_round_trip(self, text, data):
        order = data.draw(st.sampled_from(["ABCD", "BADC", "CDAB", "DCBA", "AB", "BA"]))
        fmt = point_format("input", "string", order, count=10)
        self.assertEqual(fmt.decode(fmt.encode(text), 0), text)

    @given(st.booleans(), st.integers(0, 15), st.integers(0, 0xFFFF))
    def test_bits(self, value, bit, register):
        fmt = point_format("holding", "bool", bit=bit)
        word = fmt.encode(value)[0] << bit
        merged = (register & ~(1 << bit)) | word
        self.assertEqual(fmt.decode([merged], 0), value)
        self.assertEqual(point_format("coil").decode(point_format("coil").encode(value), 0), value)

    def test_out_of_range_writes(self):
        for data_type, value in (
            ("int16", 40000),
            ("uint16", -1),
            ("uint64", 2**64),
            ("float32", 1e39),
            ("int32", "x"),
            ("float32", True),
        ):
            with self.assertRaises(ValidationError) as caught:
                point_format("holding", data_type).encode(value)
            self.assertEqual(caught.exception.field, "value")
        with self.assertRaises(ValidationError):
            point_format("holding", "string", count=1).encode("abc")
        with self.assertRaises(ValidationError):
            point_format("coil").encode(2)

    def test_scaling(self):
        self.assertEqual(scale(7, None, None), 7)
        self.assertEqual(scale(2300, 0.1, None), 230.0)
        self.assertEqual(scale(2401, 0.1, None), 240.1)  # not 240.10000000000002
        self.assertEqual(scale(3, 0.1, 0.2), 0.5)  # not 0.5000000000000001
        self.assertEqual(scale(10, 2, -5), 15)
        self.assertEqual(scale(True, 2, 1), True)
        self.assertEqual(round(unscale(230.0, 0.1, None)), 2300)
        self.assertEqual(unscale(15, 2, -5), 10)
        with self.assertRaises(ValidationError):
            unscale(1, 0, None)
        fmt = point_format("holding", "int16")
        self.assertEqual(fmt.encode(unscale(23.1, 0.1, 0)), [231])

    @given(st.integers(-32768, 32767), st.sampled_from([0.1, 0.01, 2, 0.5]), st.integers(-5, 5))
    def test_scaled_round_trip(self, raw, coefficient, base_val):
        fmt = point_format("holding", "int16")
        value = scale(raw, coefficient, base_val)
        self.assertEqual(fmt.encode(unscale(value, coefficient, base_val)), fmt.encode(raw))

    def test_tables(self):
        for spelling, table in (
            (0, Table.COIL),
            ("coils", Table.COIL),
            (1, Table.DISCRETE_INPUT),
            ("1", Table.DISCRETE_INPUT),
            (3, Table.INPUT),
            ("input_register", Table.INPUT),
            (4, Table.HOLDING),
            (" Holding ", Table.HOLDING),
            (None, Table.HOLDING),
        ):
            self.assertEqual(parse_table(spelling), table)
        self.assertIsNone(parse_table(45))
        self.assertIsNone(parse_table("36"))

    def test_invalid_combinations_name_the_field(self):
        cases = [
            ({"code_type": 45, "data_type": "int16"}, "code_type"),
            ({"code_type": "coil", "data_type": "int16"}, "data_type"),
            ({"data_type": "int128"}, "data_type"),
            ({"data_type": "int16", "bit": 3}, "bit"),
            ({"data_type": "bool"}, "bit"),
            ({"code_type": "coil", "bit": 3}, "bit"),
            ({"data_type": "int32", "count": 3}, "count"),
            ({"data_type": "string"}, "count"),
            ({"data_type": "int32", "byte_order": "ABCDEFGH"}, "byte_order"),
            ({"data_type": "int32", "byte_order": "AB"}, "byte_order"),
            ({"data_type": "float32", "byte_order": "XYZW"}, "byte_order"),
            ({"code_type": "coil", "byte_order": "ABCD"}, "byte_order"),
            ({"data_type": "int32", "protocol_code": 65535}, "protocol_code"),
        ]
        for body, field in cases:
            with self.assertRaises(ValidationError, msg=body) as caught:
                TermItem.from_json({"term_id": "1", "item_id": "2", **body})
            self.assertEqual(caught.exception.field, field, body)

    def test_model_accepts_modbus_and_iec104_points(self):
        item = TermItem.from_json(
            {
                "term_id": "1",
                "item_id": "2",
                "protocol_code": 100,
                "code_type": "holding",
                "data_type": "float32",
                "byte_order": "CDAB",
            }
        )
        self.assertEqual(item.to_json()["byte_order"], "CDAB")
        TermItem.from_json({"term_id": "1", "item_id": "2", "code_type": 45, "protocol_code": 1})
        TermItem.from_json(
            {"term_id": "1", "item_id": "2", "code_type": 4, "data_type": "string", "count": 8}
        )
        TermItem.from_json(
            {"term_id": "1", "item_id": "2", "code_type": 3, "data_type": "bool", "bit": 15}
        )

    def test_nan_stays_nan(self):
        fmt = point_format("input", "float32")
        self.assertTrue(math.isnan(fmt.decode([0x7FC0, 0], 0)))


class EveryCombinationTests(SynchronousTestCase):
    def test_every_type_and_order_round_trips_known_samples(self):
        """Every data type x every byte order it accepts, with extreme and ordinary values."""
        combinations = 0
        for data_type in NUMERIC:
            code = CODES[data_type]
            bits = struct.calcsize(code) * 8
            if data_type.startswith("float"):
                samples = [0.0, -1.5, 12.5, 2.0**127 if bits == 32 else 1e300]
            elif data_type.startswith("u"):
                samples = [0, 1, 2**bits - 1, 0x0102030405060708 % 2**bits]
            else:
                samples = [0, -1, -(2 ** (bits - 1)), 2 ** (bits - 1) - 1]
            for order in valid_orders(data_type):
                fmt = point_format("holding", data_type, order)
                for value in samples:
                    registers = fmt.encode(value)
                    self.assertEqual(registers, reference_registers(code, value, order))
                    self.assertEqual(fmt.decode(registers, 0), value, (data_type, order))
                combinations += 1
        self.assertEqual(combinations, 2 * 6 + 3 * 4 + 3 * 8)
