"""The Modbus poller of one device: polls its points and reads/writes single points.

`ModbusPoller` is a `Service` (the device manager makes it a named child): it keeps the
connection up (`client.ModbusClient`), runs one scan schedule per scan interval with a staggered
first start, sends the planned reads at most ``max_in_flight`` at a time, decodes every
response as one block and hands a `ReadBatch` of scaled values with their qualities to
the callback. A scan still running when the next is due is counted as an overrun and that
scan is skipped (never stacked). A unit whose reads keep failing is skipped for a growing
period (``degrade_*`` settings) while its neighbours and other devices carry on.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable, Sequence
from typing import Any

import attrs
from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred, maybeDeferred
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from pydatacoll.errors import (
    ModbusExceptionResponse,
    ModbusTimeout,
    ModbusVerifyError,
    NotFound,
    ValidationError,
)
from pydatacoll.protocols.modbus import pdu as pdus
from pydatacoll.protocols.modbus.client import ModbusClient
from pydatacoll.protocols.modbus.codec import unscale
from pydatacoll.protocols.modbus.config import ModbusPoint, ModbusSettings
from pydatacoll.protocols.modbus.planner import (
    PlanLimits,
    PlannedRead,
    plan_reads,
    split_points,
    split_read,
)
from pydatacoll.protocols.modbus.values import (  # noqa: F401 (re-exported: old paths)
    BAD_FRAME,
    EXCEPTION,
    GOOD,
    INVALID,
    NOT_CONNECTED,
    OVERLOAD,
    TIMEOUT,
    PointValue,
    ReadBatch,
    decode_read,
    point_value,
    quality_of,
    response_data,
    single_read,
    write_request,
)

#: Exception codes that say the unit itself is unreachable (behind a gateway).
_UNIT_DOWN_CODES = frozenset({10, 11})


@attrs.define(eq=False)
class _Schedule:
    interval: float
    reads: list[PlannedRead]
    next_due: float = 0.0
    timer: IDelayedCall | None = None
    pending: list[PlannedRead] = attrs.Factory(list)
    in_flight: int = 0
    scans: int = 0
    overruns: int = 0
    skipped_reads: int = 0
    #: Scans not started because the input was paused (`ModbusPoller.pause_input`).
    paused_scans: int = 0
    #: A scan was started and not all its reads have come back yet.
    scanning: bool = False

    @property
    def running(self) -> bool:
        return bool(self.pending) or self.in_flight > 0


@attrs.define(eq=False)
class _Unit:
    failures: int = 0
    level: int = 0
    skip_until: float = 0.0


class ModbusPoller(Service):
    """Polls one Modbus TCP device and serves single-point reads and writes.

    ``on_batch(batch)`` is called with a `ReadBatch` for every planned read, answered or
    failed, and ``on_scan_done()`` (if given) when every read of a scan has been
    delivered, so that a consumer can hand on one batch per scan. ``link`` replaces the
    real connection in tests (anything with ``request``, ``stats``, ``startService`` and
    ``stopService``); it is kept as ``client``.
    """

    log = Logger()

    def __init__(
        self,
        device_id: str,
        settings: ModbusSettings,
        points: Sequence[ModbusPoint],
        on_batch: Callable[[ReadBatch], object],
        *,
        reactor: Any,
        link: Any = None,
        start_delay: float | None = None,
        on_scan_done: Callable[[], object] | None = None,
        frame_observer: Callable[[str, bytes], None] | None = None,
    ) -> None:
        self.device_id = device_id
        self.settings = settings
        self.clock: IReactorTime = reactor
        self.on_batch = on_batch
        self.on_scan_done = on_scan_done
        self.points = {p.key: p for p in points}
        if link is None:
            endpoint = HostnameEndpoint(
                reactor, settings.host, settings.port, timeout=settings.connect_timeout
            )
            link = ModbusClient(
                endpoint,
                reactor,
                settings,
                name=f"modbus device {device_id}",
                frame_observer=frame_observer,
            )
        self.client = link
        #: While True, due scans are skipped (counted as ``paused_scans``); single-point
        #: reads and writes still go out.
        self.input_paused = False
        self.start_delay = start_delay
        self.schedules: dict[float, _Schedule] = self._plan(points)
        self.units: dict[int, _Unit] = {p.unit_id: _Unit() for p in points}
        #: Points the device refuses to read (illegal data address): key -> why. They are
        #: read on their own, so the others poll; a good read takes a point off the list.
        self.refused: dict[str, str] = {}

    def _plan(self, points: Sequence[ModbusPoint]) -> dict[float, _Schedule]:
        settings = self.settings
        limits = PlanLimits(
            settings.max_read_registers,
            settings.max_read_bits,
            settings.max_register_gap,
            settings.max_bit_gap,
        )
        schedules: dict[float, _Schedule] = {}
        for read in plan_reads(points, limits):
            schedules.setdefault(read.interval, _Schedule(read.interval, [])).reads.append(read)
        return schedules

    def update_points(self, points: Sequence[ModbusPoint]) -> None:
        """Poll ``points`` from now on; the link stays up and unit back-off is kept.

        Reads in flight finish (their values still reach the callback); the new scans
        start at once, each schedule then keeps its own interval.
        """
        for schedule in self.schedules.values():
            if schedule.timer is not None and schedule.timer.active():
                schedule.timer.cancel()
            schedule.timer = None
            schedule.pending.clear()
        self.points = {p.key: p for p in points}
        self.refused = {k: v for k, v in self.refused.items() if k in self.points}
        self.schedules = self._plan(points)
        for point in points:
            self.units.setdefault(point.unit_id, _Unit())
        if self.running:
            now = self.clock.seconds()
            for schedule in self.schedules.values():
                schedule.next_due = now
                schedule.timer = self.clock.callLater(0, self._tick, schedule)

    # service

    def startService(self) -> None:
        """Connect and start the scan schedules (first scans staggered by device id)."""
        super().startService()
        self.client.startService()
        now = self.clock.seconds()
        # a stable fraction per device spreads 500 devices over the interval
        fraction = (zlib.crc32(self.device_id.encode()) % 10007) / 10007
        for schedule in self.schedules.values():
            delay = self.start_delay
            if delay is None:
                delay = fraction * schedule.interval
            schedule.next_due = now + delay
            schedule.timer = self.clock.callLater(delay, self._tick, schedule)

    def stopService(self) -> Deferred[None]:
        """Stop scanning and close the link; fires when the link is closed."""
        super().stopService()
        for schedule in self.schedules.values():
            if schedule.timer is not None and schedule.timer.active():
                schedule.timer.cancel()
            schedule.timer = None
            schedule.pending.clear()
        d: Deferred[None] = self.client.stopService()
        return d

    @property
    def link(self) -> Any:
        """The old name of `client` (kept for callers written before the rename)."""
        return self.client

    def pause_input(self) -> None:
        """Skip the scans that fall due until `resume_input` (reads in flight finish)."""
        self.input_paused = True

    def resume_input(self) -> None:
        """Scan again from the next due time."""
        self.input_paused = False

    # public commands (for device_call / device_ctrl)

    def read_point(self, key: str) -> Deferred[PointValue]:
        """Read one point now, on its own; fires with its `PointValue` or fails.

        Fails with `NotFound` for an unknown key and with the request's Modbus error.
        """
        return maybeDeferred(self._read_point, key)

    def write_point(self, key: str, value: Any, verify: bool | None = None) -> Deferred[PointValue]:
        """Write a point's value through its codec (FC5/6/15/16/22); fires with the value.

        With ``verify`` (default: the device's ``verify_writes``) the point is read back and
        a different value fails with `ModbusVerifyError`. A value the point cannot hold
        fails with `ValidationError` (``field`` is ``value``) before anything is sent.
        """
        return maybeDeferred(self._write_point, key, value, verify)

    def _read_point(self, key: str) -> Deferred[PointValue]:
        point = self._point(key)
        read = single_read(point)
        d = self.client.request(
            point.unit_id, pdus.read_request(point.table, point.address, point.width)
        )
        return d.addCallback(
            lambda r: point_value(read, response_data(r, point), self.clock.seconds())
        )

    def _write_point(self, key: str, value: Any, verify: bool | None) -> Deferred[PointValue]:
        point = self._point(key)
        if not point.table.writable:
            raise ValidationError(
                f"{point.table.value} points cannot be written", field="code_type"
            )
        words = point.format.encode(unscale(value, point.coefficient, point.base_val))
        request = write_request(point, words, self.settings.single_writes)
        d = self.client.request(point.unit_id, request)
        if self.settings.verify_writes if verify is None else verify:
            d.addCallback(lambda _: self._verify(point, words))
            return d
        read = single_read(point)
        data: list[Any] = words
        if point.table.is_bits:
            data = [bool(words[0])]
        elif point.format.bit is not None:
            data = [words[0] << point.format.bit]
        return d.addCallback(lambda _: point_value(read, data, self.clock.seconds()))

    def stats(self) -> dict[str, Any]:
        """Link counters, scan counters per interval and degraded units, as a plain dict."""
        now = self.clock.seconds()
        return {
            "device_id": self.device_id,
            "points": len(self.points),
            "input_paused": self.input_paused,
            "link": self.client.stats.snapshot(),
            "scans": {
                str(s.interval): {
                    "reads": len(s.reads),
                    "scans": s.scans,
                    "overruns": s.overruns,
                    "skipped_reads": s.skipped_reads,
                    "paused_scans": s.paused_scans,
                }
                for s in self.schedules.values()
            },
            "degraded_units": {
                str(unit_id): round(u.skip_until - now, 3)
                for unit_id, u in self.units.items()
                if u.skip_until > now
            },
        }

    # scanning

    def _tick(self, schedule: _Schedule) -> None:
        try:
            now = self.clock.seconds()
            if self.input_paused:
                schedule.paused_scans += 1
            elif schedule.running:
                schedule.overruns += 1
            else:
                schedule.scans += 1
                schedule.pending = list(schedule.reads)
                schedule.scanning = True
                self._issue(schedule)
            # the next due time stays on the grid; missed slots are not made up
            missed = max(0, math.floor((now - schedule.next_due) / schedule.interval))
            schedule.next_due += (missed + 1) * schedule.interval
        except Exception:
            self.log.failure("device {device_id}: scan failed", device_id=self.device_id)
            schedule.next_due = self.clock.seconds() + schedule.interval
        if self.running:
            delay = max(0.0, schedule.next_due - self.clock.seconds())
            schedule.timer = self.clock.callLater(delay, self._tick, schedule)

    def _issue(self, schedule: _Schedule) -> None:
        while schedule.pending and schedule.in_flight < self.settings.max_in_flight:
            read = schedule.pending.pop(0)
            unit = self.units[read.unit_id]
            if unit.skip_until > self.clock.seconds():
                schedule.skipped_reads += 1
                continue
            schedule.in_flight += 1
            sent = self.clock.seconds()
            d = self.client.request(
                read.unit_id, pdus.read_request(read.table, read.address, read.count)
            )
            d.addBoth(self._read_result, schedule, read, sent)
        if schedule.scanning and not schedule.running:
            schedule.scanning = False
            if self.on_scan_done is not None:
                try:
                    self.on_scan_done()
                except Exception:
                    self.log.failure(
                        "device {device_id}: the scan callback failed", device_id=self.device_id
                    )

    def _read_result(
        self, result: Any, schedule: _Schedule, read: PlannedRead, sent: float
    ) -> None:
        # one callback for both outcomes: this runs for every read, keep it lean
        try:
            if isinstance(result, Failure):
                self._read_failed(result, schedule, read, sent)
            else:
                self._read_done(result, schedule, read, sent)
        except Exception:
            self.log.failure("device {device_id}: handling a read failed", device_id=self.device_id)
        schedule.in_flight -= 1
        if self.running:
            self._issue(schedule)

    def _read_done(
        self, response: pdus.Response, schedule: _Schedule, read: PlannedRead, sent: float
    ) -> None:
        now = self.clock.seconds()
        self._unit_ok(read.unit_id)
        if self.refused:
            for key in read.keys:
                if self.refused.pop(key, None) is not None:
                    self.log.info(
                        "device {device_id}: point {key} is read again",
                        device_id=self.device_id,
                        key=key,
                    )
        data = response.bits if read.table.is_bits else response.registers
        self._deliver(ReadBatch(
            self.device_id, read.unit_id, read.table.value, read.address, read.count,
            sent, now, read.keys, *decode_read(read, data), ids=read.ids,
        ))  # fmt: skip

    def _read_failed(
        self, failure: Failure, schedule: _Schedule, read: PlannedRead, sent: float
    ) -> None:
        if failure.check(CancelledError):
            return
        now = self.clock.seconds()
        error = failure.value
        if (
            isinstance(error, ModbusExceptionResponse)
            and error.exception_code == 2
            and read in schedule.reads
        ):
            self._refused_read(schedule, read)
        if isinstance(error, ModbusTimeout) or (
            isinstance(error, ModbusExceptionResponse) and error.exception_code in _UNIT_DOWN_CODES
        ):
            self._unit_failed(read.unit_id, now)
        elif isinstance(error, ModbusExceptionResponse):
            self._unit_ok(read.unit_id)
        quality = quality_of(failure)
        n = len(read.points)
        self._deliver(ReadBatch(
            self.device_id, read.unit_id, read.table.value, read.address, read.count,
            sent, now, read.keys, (None,) * n, (quality,) * n,
            error=str(error) or type(error).__name__, ids=read.ids,
        ))  # fmt: skip

    def _refused_read(self, schedule: _Schedule, read: PlannedRead) -> None:
        """The device refuses an address of ``read`` (exception 2): narrow it down."""
        if read.bridges_gap or len(read.points) > 1:
            # the refused address is in a gap or one of the points: read the points
            # without gaps, then one by one, so that only the bad point stays unread
            pieces = split_read(read) if read.bridges_gap else split_points(read)
            index = schedule.reads.index(read)
            schedule.reads[index : index + 1] = pieces
            self.log.warn(
                "device {device_id}: unit {unit} refuses a merged read of {count} at "
                "{address}; splitting it in {n}",
                device_id=self.device_id,
                unit=read.unit_id,
                count=read.count,
                address=read.address,
                n=len(pieces),
            )
            return
        key = read.keys[0]
        if key not in self.refused:
            reason = (
                f"unit {read.unit_id} refuses to read {read.table.value} {read.address} "
                f"(count {read.count}): exception 2, illegal data address"
            )
            self.refused[key] = reason
            self.log.warn(
                "device {device_id}: point {key} cannot be read: {reason}",
                device_id=self.device_id,
                key=key,
                reason=reason,
            )

    def _deliver(self, batch: ReadBatch) -> None:
        try:
            self.on_batch(batch)
        except Exception:
            self.log.failure(
                "device {device_id}: the batch callback failed", device_id=self.device_id
            )

    def _unit_ok(self, unit_id: int) -> None:
        unit = self.units[unit_id]
        if unit.level:
            self.log.info(
                "device {device_id}: unit {unit} answers again",
                device_id=self.device_id,
                unit=unit_id,
            )
        unit.failures = unit.level = 0
        unit.skip_until = 0.0

    def _unit_failed(self, unit_id: int, now: float) -> None:
        unit = self.units[unit_id]
        unit.failures += 1
        s = self.settings
        if s.degrade_after and unit.failures >= s.degrade_after:
            unit.level += 1
            skip = min(s.degrade_max, s.degrade_time * 2 ** min(unit.level - 1, 30))
            unit.skip_until = now + skip
            self.log.warn(
                "device {device_id}: unit {unit} skipped for {skip:.1f} s after {n} failed reads",
                device_id=self.device_id,
                unit=unit_id,
                skip=skip,
                n=unit.failures,
            )

    # single points

    def _point(self, key: str) -> ModbusPoint:
        point = self.points.get(key)
        if point is None:
            raise NotFound(f"device {self.device_id} has no point {key}", field="key")
        return point

    def _verify(self, point: ModbusPoint, words: list[int]) -> Deferred[PointValue]:
        d = self.client.request(
            point.unit_id, pdus.read_request(point.table, point.address, point.width)
        )

        def check(response: pdus.Response) -> PointValue:
            data = response_data(response, point)
            if point.table.is_bits:
                same = bool(data[0]) == bool(words[0])
            elif point.format.bit is not None:
                same = bool((data[0] >> point.format.bit) & 1) == bool(words[0])
            else:
                same = list(data) == words
            if not same:
                raise ModbusVerifyError(
                    f"device {self.device_id} point {point.key}: wrote {words}, "
                    f"read back {list(data)}"
                )
            return point_value(single_read(point), data, self.clock.seconds())

        return d.addCallback(check)
