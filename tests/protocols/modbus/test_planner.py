"""Poll planning: every point covered by exactly one read, no read over the limits."""

import math

import attrs
from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from pydatacoll.protocols.modbus.codec import point_format, scale
from pydatacoll.protocols.modbus.config import ModbusPoint
from pydatacoll.protocols.modbus.planner import PlanLimits, plan_reads, split_read
from pydatacoll.protocols.modbus.values import decode_read

FORMATS = [
    point_format("holding", "uint16"),
    point_format("holding", "float32"),
    point_format("holding", "float64"),
    point_format("holding", "string", count=20),
    point_format("holding", "bool", bit=4),
    point_format("input", "int32"),
    point_format("coil"),
    point_format("discrete_input"),
]


@st.composite
def points(draw):
    result = []
    for i in range(draw(st.integers(0, 60))):
        fmt = draw(st.sampled_from(FORMATS))
        address = draw(st.integers(0, 65536 - fmt.width) | st.integers(0, 300))
        result.append(
            ModbusPoint(
                key=f"t:{i}",
                unit_id=draw(st.sampled_from([1, 2])),
                address=address,
                format=fmt,
                scan_interval=draw(st.sampled_from([1.0, 5.0])),
            )
        )
    return result


limits = st.builds(
    PlanLimits,
    max_registers=st.integers(20, 125),
    max_bits=st.integers(1, 2000),
    register_gap=st.integers(0, 20),
    bit_gap=st.integers(0, 100),
)


class PlannerTests(SynchronousTestCase):
    @given(points(), limits)
    def test_every_point_covered_exactly_once_within_limits(self, pts, lim):
        reads = plan_reads(pts, lim)
        seen = []
        for read in reads:
            limit = lim.max_bits if read.table.is_bits else lim.max_registers
            self.assertTrue(1 <= read.count <= limit, read)
            self.assertTrue(0 <= read.address and read.address + read.count <= 65536)
            for point, offset in read.points:
                seen.append(point.key)
                self.assertEqual(point.unit_id, read.unit_id)
                self.assertEqual(point.table, read.table)
                self.assertEqual(point.scan_interval, read.interval)
                self.assertEqual(read.address + offset, point.address)
                self.assertLessEqual(offset + point.width, read.count)
            for piece in split_read(read):
                self.assertFalse(piece.bridges_gap)
        self.assertEqual(sorted(seen), sorted(p.key for p in pts))

    def test_merging(self):
        def point(i, address, fmt=FORMATS[0], unit=1):
            return ModbusPoint(f"t:{i}", unit, address, fmt)

        pts = [point(i, i) for i in range(30)] + [point(30, 33), point(31, 60)]
        reads = plan_reads(pts, PlanLimits(register_gap=4))
        self.assertEqual([(r.address, r.count) for r in reads], [(0, 34), (60, 1)])
        self.assertTrue(reads[0].bridges_gap)
        self.assertEqual([(r.address, r.count) for r in split_read(reads[0])], [(0, 30), (33, 1)])
        reads = plan_reads([point(i, i) for i in range(300)], PlanLimits())
        self.assertEqual([(r.address, r.count) for r in reads], [(0, 125), (125, 125), (250, 50)])
        reads = plan_reads([point(0, 0, unit=1), point(1, 1, unit=2)])
        self.assertEqual(len(reads), 2)
        # a bit of register 5 and the register itself share one read
        reads = plan_reads([point(0, 5), point(1, 5, FORMATS[4]), point(2, 6, FORMATS[1])])
        self.assertEqual([(r.address, r.count, len(r.points)) for r in reads], [(5, 3, 3)])

    @given(points(), limits, st.data())
    def test_plain_registers_decode_as_each_point_does(self, pts, lim, data):
        """`decode_read`'s shortcut (every point a plain uint16 register) gives what each
        point's own decoding gives; reads with any other point take the long way."""
        scaled = data.draw(st.booleans())
        pts = [attrs.evolve(p, coefficient=2.0) if scaled and i == 0 else p
               for i, p in enumerate(pts)]  # fmt: skip
        for read in plan_reads(pts, lim):
            size = read.count
            words = tuple(data.draw(st.lists(st.integers(0, 65535), min_size=size, max_size=size)))
            block = tuple(bool(w & 1) for w in words) if read.table.is_bits else words
            values, qualities = decode_read(read, block)
            plain = all(
                p.format.data_type == "uint16" and p.format.bit is None and p.coefficient is None
                for p, _ in read.points
            )
            self.assertEqual(read.word_offsets is not None, plain and not read.table.is_bits)
            expected = [scale(p.format.decode(block, o), p.coefficient, p.base_val)
                        if p.coefficient is not None else p.format.decode(block, o)
                        for p, o in read.points]  # fmt: skip
            finite = [not (isinstance(v, float) and not math.isfinite(v)) for v in expected]
            self.assertEqual(list(qualities), ["good" if ok else "invalid" for ok in finite])
            self.assertEqual(
                list(values), [v if ok else None for v, ok in zip(expected, finite, strict=True)]
            )

    def test_a_whole_read_of_registers_is_the_registers(self):
        pts = [ModbusPoint(f"t:{i}", 1, 10 + i, FORMATS[0]) for i in range(30)]
        (read,) = plan_reads(pts)
        self.assertTrue(read.whole_words)
        registers = tuple(range(100, 130))
        self.assertEqual(decode_read(read, registers), (registers, ("good",) * 30))
        (gapped,) = plan_reads([pts[0], pts[2]])
        self.assertFalse(gapped.whole_words)
        self.assertEqual(decode_read(gapped, (7, 8, 9))[0], (7, 9))
