"""Poll planning: every point covered by exactly one read, no read over the limits."""

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from pydatacoll.protocols.modbus.codec import point_format
from pydatacoll.protocols.modbus.config import ModbusPoint
from pydatacoll.protocols.modbus.planner import PlanLimits, plan_reads, split_read

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
