"""Poll planning: a device's points -> the fewest merged reads, per scan interval.

Pure code. Points of the same scan interval, unit id and table are sorted by address and
merged greedily into one read while the read stays within the protocol limit (125
registers, 2000 bits, or the device's lower limits) and the unused gap between
neighbours is at most ``max_gap``. Every point lies wholly inside exactly one read.
"""

from __future__ import annotations

from collections.abc import Iterable

import attrs

from pydatacoll.protocols.modbus.codec import Table
from pydatacoll.protocols.modbus.config import ModbusPoint
from pydatacoll.protocols.modbus.pdu import MAX_READ_BITS, MAX_READ_REGISTERS


def key_ids(key: str) -> tuple[str, str]:
    """``(term_id, item_id)`` of a point key ``term_id:item_id``."""
    term_id, _, item_id = key.partition(":")
    return term_id, item_id


@attrs.frozen
class PlannedRead:
    """One read request and the points it serves (each with its offset in the read)."""

    unit_id: int
    table: Table
    address: int
    count: int
    interval: float
    points: tuple[tuple[ModbusPoint, int], ...]
    #: The points' keys, their ``(term_id, item_id)`` pairs and the qualities of a good
    #: answer: built once, shared by the batches of every scan.
    keys: tuple[str, ...] = attrs.field(init=False, eq=False, repr=False)
    ids: tuple[tuple[str, str], ...] = attrs.field(init=False, eq=False, repr=False)
    all_good: tuple[str, ...] = attrs.field(init=False, eq=False, repr=False)
    #: When every point is a register as it is (uint16, not scaled): the offsets of the
    #: points' registers in the response, and whether they are all of them in order
    #: (then the values are the registers): `decode_read`'s shortcut. None otherwise.
    word_offsets: tuple[int, ...] | None = attrs.field(init=False, eq=False, repr=False)
    whole_words: bool = attrs.field(init=False, eq=False, repr=False)

    def __attrs_post_init__(self) -> None:
        keys = tuple(p.key for p, _ in self.points)
        object.__setattr__(self, "keys", keys)
        object.__setattr__(self, "ids", tuple(key_ids(key) for key in keys))
        object.__setattr__(self, "all_good", ("good",) * len(self.points))
        plain = not self.table.is_bits and all(
            p.format.plain_word and p.coefficient is None and p.base_val is None
            for p, _ in self.points
        )
        offsets = tuple(offset for _, offset in self.points) if plain else None
        object.__setattr__(self, "word_offsets", offsets)
        object.__setattr__(self, "whole_words", offsets == tuple(range(self.count)))

    @property
    def bridges_gap(self) -> bool:
        """Whether the read also covers addresses no point asked for."""
        covered: set[int] = set()
        for point, offset in self.points:
            covered.update(range(offset, offset + point.width))
        return len(covered) < self.count


@attrs.frozen
class PlanLimits:
    """The limits a plan keeps to."""

    max_registers: int = MAX_READ_REGISTERS
    max_bits: int = MAX_READ_BITS
    register_gap: int = 4
    bit_gap: int = 32


def plan_reads(
    points: Iterable[ModbusPoint], limits: PlanLimits = PlanLimits()
) -> list[PlannedRead]:
    """The merged reads that cover ``points``, grouped by interval, unit and table."""
    groups: dict[tuple[float, int, Table], list[ModbusPoint]] = {}
    for point in points:
        groups.setdefault((point.scan_interval, point.unit_id, point.table), []).append(point)
    reads: list[PlannedRead] = []
    for (interval, unit_id, table), members in sorted(
        groups.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2].value)
    ):
        if table.is_bits:
            limit, gap = min(limits.max_bits, MAX_READ_BITS), limits.bit_gap
        else:
            limit, gap = min(limits.max_registers, MAX_READ_REGISTERS), limits.register_gap
        reads.extend(_merge(unit_id, table, interval, members, limit, gap))
    return reads


def _merge(
    unit_id: int, table: Table, interval: float, points: list[ModbusPoint], limit: int, gap: int
) -> list[PlannedRead]:
    reads: list[PlannedRead] = []
    members: list[ModbusPoint] = []
    start = end = 0

    def close() -> None:
        reads.append(
            PlannedRead(
                unit_id,
                table,
                start,
                end - start,
                interval,
                tuple((p, p.address - start) for p in members),
            )
        )

    for point in sorted(points, key=lambda p: (p.address, p.width)):
        point_end = point.address + point.width
        if members and point.address <= end + gap and max(end, point_end) - start <= limit:
            members.append(point)
            end = max(end, point_end)
            continue
        if members:
            close()
        members = [point]
        start, end = point.address, point_end
    if members:
        close()
    return reads


def split_read(read: PlannedRead) -> list[PlannedRead]:
    """``read`` cut where it bridges a gap: the reads to use when a device refuses the gap."""
    return _merge(
        read.unit_id, read.table, read.interval, [p for p, _ in read.points], read.count, 0
    )


def split_points(read: PlannedRead) -> list[PlannedRead]:
    """``read`` as one read per point: to find which point a device refuses."""
    return [
        PlannedRead(
            read.unit_id, read.table, point.address, point.width, read.interval, ((point, 0),)
        )
        for point, _ in read.points
    ]
