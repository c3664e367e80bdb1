"""The IEC 104 device runtime: a device's point map, its samples and its commands.

The device's settings are parsed in `config` (see its docstring and docs/iec104.rst).
A term is a station: its ``address`` is the common address (default 1). A term-item is a
point: ``protocol_code`` is its IOA, ``code_type`` the command type for ``device_ctrl``
(45..64; a monitor type maps to its command, see ``asdu.COMMAND_FOR_MONITOR``),
``select`` its default for select-before-operate. The ``iec104`` protocol driver (the
`IProtocolDriver` plugin) is `driver`, at the end.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import attrs
from twisted.application.service import Service
from twisted.internet import defer
from twisted.logger import Logger
from twisted.plugin import IPlugin
from zope.interface import implementer

from pydatacoll import errors
from pydatacoll.interfaces import IDeviceRuntime, IProtocolDriver, ISampleSink
from pydatacoll.model import ControlOutcome, Device, Sample, Term, TermItem
from pydatacoll.protocols.iec104.asdu import (
    Asdu,
    Quality,
    cause_name,
    command_type_for,
)
from pydatacoll.protocols.iec104.client import (
    CommandResult,
    Iec104Client,
    Outcome,
    StationParams,
)
from pydatacoll.protocols.iec104.config import (  # noqa: F401 (re-exported: old paths)
    SETTINGS,
    DeviceSettings,
    check_device,
    check_point,
    parse_device,
)
from pydatacoll.scaling import apply_scaling

_QUALITY_FLAGS = (
    (Quality.IV, "IV"),
    (Quality.NT, "NT"),
    (Quality.SB, "SB"),
    (Quality.BL, "BL"),
    (Quality.OV, "OV"),
    (Quality.EI, "EI"),
    (Quality.TRANSIENT, "TRANSIENT"),
    (Quality.CY, "CY"),
    (Quality.CA, "CA"),
    (Quality.TIME_INVALID, "TIME_INVALID"),
)
_OUTCOMES = {
    Outcome.CONFIRMED: "confirmed",
    Outcome.TERMINATED: "terminated",
    Outcome.NEGATIVE: "negative",
    Outcome.TIMEOUT: "timeout",
    Outcome.LINK_DOWN: "offline",
    Outcome.BUSY: "busy",
    Outcome.REFUSED: "refused",
}
_SETPOINTS = frozenset({48, 49, 50, 61, 62, 63})
#: Seconds between a change of points and the interrogation that fetches their values.
GI_DEBOUNCE = 0.5


def quality_of(bits: int) -> tuple[str, tuple[str, ...]]:
    """Our quality and flag names of IEC 104 quality bits."""
    if not bits:
        return "good", ()
    flags = tuple(name for bit, name in _QUALITY_FLAGS if bits & bit)
    if bits & Quality.IV:
        return "invalid", flags
    return "questionable", flags


@attrs.frozen
class PointRef:
    """Where a decoded object goes: its point, scaling and command settings."""

    term_id: str
    item_id: str
    coefficient: float | None
    base_val: float | None
    code_type: int | None
    select: bool


def _command_value(type_id: int, value: Any, ref: PointRef) -> Any:
    """The raw value of a command from the JSON value: set-points are in engineering units
    (the point's scaling undone); JSON true/false: a single command's on/off, a double
    command's 2 (on) / 1 (off), 1/0 elsewhere."""
    if isinstance(value, bool):
        if type_id in (45, 58):
            return value
        if type_id in (46, 59):
            return 2 if value else 1
        return int(value)
    if type_id in _SETPOINTS and isinstance(value, (int, float)):
        raw = (value - (ref.base_val or 0)) / (ref.coefficient or 1)
        return round(raw) if type_id in (49, 62) else raw
    if type_id in (45, 58) and value in (0, 1):
        return bool(value)
    return value


def _scale(value: Any, ref: PointRef) -> Any:
    return apply_scaling(value, ref.coefficient, ref.base_val)


def point_map(
    terms: Iterable[Term], term_items: Iterable[TermItem]
) -> tuple[dict[tuple[int, int], list[PointRef]], dict[tuple[str, str], tuple[int, int]]]:
    """(common address, IOA) -> the points there, and (term, item) -> (CA, IOA)."""
    addresses = {term.id: 1 if term.address is None else term.address for term in terms}
    by_address: dict[tuple[int, int], list[PointRef]] = {}
    by_point: dict[tuple[str, str], tuple[int, int]] = {}
    for ti in term_items:
        if ti.term_id not in addresses or ti.protocol_code is None:
            continue
        code_type = ti.code_type if isinstance(ti.code_type, int) else None
        ref = PointRef(
            ti.term_id,
            ti.item_id,
            ti.coefficient,
            ti.base_val,
            code_type,
            bool(ti.extra.get("select", False)),
        )
        where = (addresses[ti.term_id], ti.protocol_code)
        by_address.setdefault(where, []).append(ref)
        by_point[(ti.term_id, ti.item_id)] = where
    return by_address, by_point


@implementer(IDeviceRuntime)
class Iec104Runtime(Service):
    """One IEC 104 device: a supervised master and the map from objects to points."""

    log = Logger()
    #: `pause_input` stops reading the link: the RTU keeps its data (k window), so the
    #: device may be held while a command is in flight (`pydatacoll.control.priority`).
    lossless_pause = True

    def __init__(
        self,
        device: Device,
        terms: Sequence[Term],
        term_items: Sequence[TermItem],
        sink: ISampleSink,
        reactor: Any,
        frame_observer: Any = None,
    ) -> None:
        self.device_id = device.id
        self.clock = reactor
        self.sink = sink
        parsed = parse_device(device)
        self.link_params = parsed.link
        self.asdu_params = parsed.asdu
        self.base_station = parsed.station
        self.points_updated = 0
        self.last_value_time: float | None = None
        self._pending_gi: set[int] = set()
        self._gi_call: Any = None
        self._map: dict[tuple[int, int], list[PointRef]] = {}
        self._where: dict[tuple[str, str], tuple[int, int]] = {}
        self.client = Iec104Client(
            reactor,
            parsed.endpoints,
            link=self.link_params,
            station=self._station(terms),
            asdu_params=self.asdu_params,
            on_data=self._on_data,
            name=f"iec104 device {device.id}",
            frame_observer=frame_observer,
            tls=parsed.tls,
        )
        self.update_points(terms, term_items)

    def _station(self, terms: Iterable[Term]) -> StationParams:
        addresses = sorted({1 if t.address is None else t.address for t in terms}) or [1]
        return StationParams(common_addresses=tuple(addresses), **self.base_station)

    def update_points(self, terms: Sequence[Term], term_items: Sequence[TermItem]) -> None:
        """Take new terms and points; the link stays up.

        A station with new points is interrogated (after ``GI_DEBOUNCE``, so that a burst
        of configuration changes costs one interrogation): their values are known at once
        rather than at the next spontaneous change.
        """
        old_points = set(self._map)
        self._map, self._where = point_map(terms, term_items)
        station = self._station(terms)
        self.client.station = station
        if self.client.protocol is not None:
            self.client.protocol.station = station
        if self.running:
            self._pending_gi.update(ca for ca, _ in set(self._map) - old_points)
            if self._pending_gi and (self._gi_call is None or not self._gi_call.active()):
                self._gi_call = self.clock.callLater(GI_DEBOUNCE, self._interrogate_new)

    def _interrogate_new(self, attempt: int = 0) -> None:
        addresses, self._pending_gi = self._pending_gi, set()
        for ca in sorted(addresses):

            def done(result: CommandResult, ca: int = ca) -> None:
                if result.outcome is Outcome.BUSY and attempt < 3:
                    # An interrogation is running: ask again once it is likely done.
                    self._pending_gi.add(ca)
                    self._gi_call = self.clock.callLater(2.0, self._interrogate_new, attempt + 1)

            self.client.interrogate(ca).addCallback(done)

    def startService(self) -> None:
        super().startService()
        self.client.startService()

    def stopService(self) -> Any:
        super().stopService()
        if self._gi_call is not None and self._gi_call.active():
            self._gi_call.cancel()
        return self.client.stopService()

    def pause_input(self) -> None:
        """Stop reading the link (the RTU's k window then holds its data back)."""
        master = self.client.protocol
        if master is not None and master.transport is not None:
            master.transport.pauseProducing()  # type: ignore[attr-defined]  # a TCP transport

    def resume_input(self) -> None:
        """Read the link again."""
        master = self.client.protocol
        if master is not None and master.transport is not None:
            master.transport.resumeProducing()  # type: ignore[attr-defined]

    # --- samples ---------------------------------------------------------------------

    def _on_data(self, asdu: Asdu) -> None:
        points = self._map
        ca = asdu.common_address
        now = self.clock.seconds()
        times = asdu.times
        samples: list[Sample] = []
        append = samples.append
        device_id = self.device_id
        for i, ioa in enumerate(asdu.ioas):
            refs = points.get((ca, ioa))
            if refs is None:
                continue
            bits = asdu.qualities[i]
            quality, flags = quality_of(bits) if bits else ("good", ())
            when = times[i] if times is not None else None
            source = when.timestamp() if when is not None else None
            value = asdu.values[i]
            for ref in refs:
                append(
                    Sample(
                        device_id,
                        ref.term_id,
                        ref.item_id,
                        _scale(value, ref),
                        quality,
                        flags,
                        source,
                        now,
                    )
                )
        if samples:
            self.points_updated += len(samples)
            self.last_value_time = now
            self.sink.samples_received(samples)

    # --- device_call / device_ctrl ---------------------------------------------------

    def _locate(self, term_id: str, item_id: str) -> tuple[int, int, PointRef]:
        where = self._where.get((term_id, item_id))
        if where is None:
            raise errors.RequestRefused(f"point {term_id}:{item_id} has no IOA on this device")
        ref = next(r for r in self._map[where] if (r.term_id, r.item_id) == (term_id, item_id))
        return where[0], where[1], ref

    def read_point(self, term_id: str, item_id: str) -> defer.Deferred[Sample]:
        """C_RD_NA_1 on the point's IOA; fires with the fresh sample."""
        try:
            ca, ioa, ref = self._locate(term_id, item_id)
        except errors.DeviceError as exc:
            return defer.fail(exc)

        def done(result: CommandResult) -> Sample:
            if not result.ok or result.reply is None:
                raise _error(result)
            reply = result.reply
            index = list(reply.ioas).index(ioa)
            quality, flags = quality_of(reply.qualities[index])
            when = reply.times[index] if reply.times is not None else None
            return Sample(
                self.device_id,
                term_id,
                item_id,
                _scale(reply.values[index], ref),
                quality,
                flags,
                when.timestamp() if when else None,
                self.clock.seconds(),
            )

        return self.client.read(ca, ioa).addCallback(done)

    def control_point(
        self, term_id: str, item_id: str, value: Any, select: bool | None
    ) -> defer.Deferred[ControlOutcome]:
        """The term-item's command type (``code_type``) with ``value``, direct or SBO."""
        try:
            ca, ioa, ref = self._locate(term_id, item_id)
        except errors.DeviceError as exc:
            return defer.succeed(ControlOutcome(exc.outcome, exc.message))
        type_id = command_type_for(ref.code_type) if isinstance(ref.code_type, int) else None
        if type_id is None:
            return defer.succeed(
                ControlOutcome(
                    "refused",
                    f"code_type {ref.code_type!r} is neither an IEC 104 command type (45..64) "
                    "nor a monitor type with a matching command (docs/iec104.rst)",
                )
            )
        raw = _command_value(type_id, value, ref)
        d = self.client.command(
            ca, ioa, type_id, raw, select=ref.select if select is None else select
        )
        return d.addCallback(
            lambda r: ControlOutcome(
                _OUTCOMES[r.outcome],
                r.message,
                cause_name(r.cause) if r.cause is not None else None,
            )
        )

    def link_state(self) -> str:
        """The ``state`` `status` would report, without building the status: what the
        device manager looks at several times a second for every device."""
        return self.client.state.value

    def status(self) -> dict[str, Any]:
        """Link state and counters, points updated, last value time."""
        status = self.client.status()
        state = status.pop("state")
        return {
            "protocol": "iec104",
            "state": state,
            "since": status.pop("since"),
            "last_error": status.get("last_error"),
            "reason": None if state == "started" else status.get("last_error"),
            "retries_since_healthy": status.get("retries_since_healthy"),
            "points_updated": self.points_updated,
            "last_value_time": self.last_value_time,
            "counters": status,
        }


def _error(result: CommandResult) -> errors.DeviceError:
    cause = cause_name(result.cause) if result.cause is not None else None
    kind = {
        Outcome.LINK_DOWN: errors.DeviceOffline,
        Outcome.TIMEOUT: errors.DeviceTimeout,
        Outcome.NEGATIVE: errors.DeviceRefused,
        Outcome.BUSY: errors.DeviceBusy,
    }.get(result.outcome, errors.RequestRefused)
    return kind(result.message, cause)


@implementer(IPlugin, IProtocolDriver)
class Iec104ProtocolDriver:
    """The ``iec104`` protocol driver."""

    name = "iec104"
    description = "IEC 60870-5-104 (DL/T 634.5104) controlled station over TCP"
    default_port = 2404

    def build(
        self,
        device: Device,
        terms: Sequence[Term],
        term_items: Sequence[TermItem],
        sink: ISampleSink,
        reactor: Any,
        settings: Any,
        frame_observer: Any = None,
    ) -> Iec104Runtime:
        """An `Iec104Runtime` for ``device``."""
        return Iec104Runtime(device, terms, term_items, sink, reactor, frame_observer)


driver = Iec104ProtocolDriver()
