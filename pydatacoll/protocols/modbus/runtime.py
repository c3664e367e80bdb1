"""The Modbus device runtime: a `ModbusPoller` as an `IDeviceRuntime` of the device manager.

The settings are described in docs/modbus.rst. A term is a unit (its ``address`` is the
unit id), and a term-item is a point.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from twisted.application.service import Service
from twisted.internet import defer
from twisted.logger import Logger
from twisted.plugin import IPlugin
from twisted.python.failure import Failure
from zope.interface import implementer

from pydatacoll import errors
from pydatacoll.interfaces import IDeviceRuntime, IProtocolDriver, ISampleSink
from pydatacoll.model import ControlOutcome, Device, Sample, Term, TermItem
from pydatacoll.protocols.modbus.config import (  # noqa: F401 (re-exported: old paths)
    BadPoint,
    ModbusSettings,
    check_device,
    check_point,
    sort_points,
)
from pydatacoll.protocols.modbus.planner import key_ids
from pydatacoll.protocols.modbus.poller import GOOD, ModbusPoller, PointValue, ReadBatch

_ERRORS: tuple[tuple[type[Exception], type[errors.DeviceError]], ...] = (
    (errors.ModbusNotConnected, errors.DeviceOffline),
    (errors.ModbusTimeout, errors.DeviceTimeout),
    (errors.ModbusExceptionResponse, errors.DeviceRefused),
    (errors.ModbusVerifyError, errors.DeviceRefused),
    (errors.ModbusQueueFull, errors.DeviceBusy),
    (errors.ValidationError, errors.RequestRefused),
    (errors.NotFound, errors.RequestRefused),
)


def device_error(failure: Failure) -> errors.DeviceError:
    """The `DeviceError` that says what a failed Modbus request means."""
    error = failure.value
    for modbus, device in _ERRORS:
        if isinstance(error, modbus):
            cause = None
            if isinstance(error, errors.ModbusExceptionResponse):
                cause = f"exception {error.exception_code}"
            message = getattr(error, "message", None) or str(error) or type(error).__name__
            return device(message, cause)
    return errors.DeviceError(str(error) or type(error).__name__)


#: Most samples held back while a scan completes (then they are handed on at once).
MAX_SCAN_SAMPLES = 100_000


@implementer(IDeviceRuntime)
class ModbusRuntime(Service):
    """One Modbus TCP device under the device manager."""

    log = Logger()

    def __init__(
        self,
        device: Device,
        terms: Sequence[Term],
        term_items: Sequence[TermItem],
        sink: ISampleSink,
        reactor: Any,
        frame_observer: Callable[[str, bytes], None] | None = None,
    ) -> None:
        self.device_id = device.id
        self.clock = reactor
        self.sink = sink
        self.settings = ModbusSettings.from_device(device)
        self.points_updated = 0
        self.last_value_time: float | None = None
        #: Points configured but not readable (a bad field): listed in the status.
        self.bad_points: list[BadPoint] = []
        #: The samples of the scan under way, handed on as one batch when it completes,
        #: so a formula over two reads of one scan is computed once. Bounded: past
        #: MAX_SCAN_SAMPLES (a scan bigger than that) they are handed on early.
        self._scan: list[Sample] = []
        self.poller = ModbusPoller(
            device.id,
            self.settings,
            self._points(terms, term_items),
            self._on_batch,
            reactor=reactor,
            on_scan_done=self._flush,
            frame_observer=frame_observer,
        )

    def _points(self, terms: Sequence[Term], term_items: Sequence[TermItem]) -> list[Any]:
        """The readable points; the bad ones are logged and kept for the status."""
        points, bad = sort_points(self.settings, terms, term_items)
        known = {b.key for b in self.bad_points}
        for point in bad:
            if point.key not in known:
                self.log.warn(
                    "device {device_id}: point not polled: {reason}",
                    device_id=self.device_id,
                    reason=point.reason,
                )
        self.bad_points = bad
        return points

    def update_points(self, terms: Sequence[Term], term_items: Sequence[TermItem]) -> None:
        """Re-plan the polls for the new points; the link stays up."""
        self.poller.update_points(self._points(terms, term_items))

    def startService(self) -> None:
        super().startService()
        self.poller.startService()

    def stopService(self) -> Any:
        super().stopService()
        d = self.poller.stopService()
        self._flush()
        return d

    def pause_input(self) -> None:
        """Skip the polls that fall due (the device keeps its data; nothing is lost but
        the samples of the skipped scans)."""
        self.poller.pause_input()

    def resume_input(self) -> None:
        """Poll again from the next due scan."""
        self.poller.resume_input()

    def _on_batch(self, batch: ReadBatch) -> None:
        # 15,000 samples a second at 500 devices x 30 points: the point ids come split
        # (the planned read's, split once), and an all-good read (the usual one) is
        # turned into samples by one comprehension, without a quality test per point.
        device_id = self.device_id
        when = batch.time
        ids = batch.ids or tuple(key_ids(key) for key in batch.keys)
        qualities = batch.qualities
        if qualities.count(GOOD) == len(qualities):
            samples = [
                Sample(device_id, term_id, item_id, value, GOOD, (), when, when)
                for (term_id, item_id), value in zip(ids, batch.values, strict=True)
            ]
        else:
            samples = [
                Sample(device_id, term_id, item_id, value, GOOD, (), when, when)
                if quality == GOOD
                else Sample(device_id, term_id, item_id, None, "invalid", (quality,), when, when)
                for (term_id, item_id), value, quality in zip(
                    ids, batch.values, qualities, strict=True
                )
            ]
        self.points_updated += len(samples)
        self.last_value_time = when
        self._scan += samples
        if len(self._scan) >= MAX_SCAN_SAMPLES:
            self._flush()

    def _flush(self) -> None:
        samples, self._scan = self._scan, []
        if samples:
            self.sink.samples_received(samples)

    def _sample(self, key: str, point: PointValue) -> Sample:
        term_id, _, item_id = key.partition(":")
        good = point.quality == GOOD
        return Sample(
            self.device_id,
            term_id,
            item_id,
            point.value if good else None,
            "good" if good else "invalid",
            () if good else (point.quality,),
            point.time,
            self.clock.seconds(),
        )

    def read_point(self, term_id: str, item_id: str) -> defer.Deferred[Sample]:
        """A read of this point alone, now."""
        key = f"{term_id}:{item_id}"
        d = self.poller.read_point(key)

        def failed(failure: Failure) -> Failure:
            return Failure(device_error(failure))

        return d.addCallbacks(lambda value: self._sample(key, value), failed)

    def control_point(
        self, term_id: str, item_id: str, value: Any, select: bool | None
    ) -> defer.Deferred[ControlOutcome]:
        """A write through the point's codec (with read-back when configured)."""
        key = f"{term_id}:{item_id}"
        if select:
            return defer.succeed(ControlOutcome("refused", "Modbus has no select-before-operate"))
        d = self.poller.write_point(key, value)

        def done(point: PointValue) -> ControlOutcome:
            return ControlOutcome("confirmed", "written", sample=self._sample(key, point))

        def failed(failure: Failure) -> ControlOutcome:
            error = device_error(failure)
            return ControlOutcome(error.outcome, error.message, error.cause)

        return d.addCallbacks(done, failed)

    def link_state(self) -> str:
        """The ``state`` `status` would report, without building the status: what the
        device manager looks at several times a second for every device."""
        return self._state(self.poller.client.stats)[0]

    def _state(self, link: Any) -> tuple[str, str | None]:
        """(state, reason) from the link counters ``link`` (attributes)."""
        state, reason = link.state, link.reason
        if state == "connected":
            # Online only once the device has answered a request on this connection:
            # a peer that accepts and then answers garbage is not online. (The problems
            # are put in words only when they are reported: the state watch asks every
            # device four times a second.)
            if link.answered:
                state = "online"
            else:
                problems = link.problems()
                if problems is not None:
                    state = "error"
                    reason = f"connected, but no valid response: {problems}"
        return state, reason

    def status(self) -> dict[str, Any]:
        """Link state and counters, scans, points updated, last value time."""
        stats = self.poller.stats()
        link = stats.get("link", {})
        state, reason = self._state(self.poller.client.stats)
        return {
            "protocol": "modbus",
            "state": state,
            "reason": reason,
            "since": link.get("since"),
            "last_error": link.get("last_error"),
            "retries_since_healthy": self.poller.client.backoff.failures,
            "points_updated": self.points_updated,
            "last_value_time": self.last_value_time,
            "bad_points": [
                *(p.to_json() for p in self.bad_points),
                *(
                    BadPoint(key, "protocol_code", reason).to_json()
                    for key, reason in sorted(self.poller.refused.items())
                ),
            ],
            "counters": stats,
        }


@implementer(IPlugin, IProtocolDriver)
class ModbusProtocolDriver:
    """The ``modbus`` protocol driver."""

    name = "modbus"
    description = "Modbus TCP server (slave)"
    default_port = 502

    def build(
        self,
        device: Device,
        terms: Sequence[Term],
        term_items: Sequence[TermItem],
        sink: ISampleSink,
        reactor: Any,
        settings: Any,
        frame_observer: Callable[[str, bytes], None] | None = None,
    ) -> ModbusRuntime:
        """A `ModbusRuntime` for ``device`` (reporting its frames to ``frame_observer``)."""
        return ModbusRuntime(device, terms, term_items, sink, reactor, frame_observer)


driver = ModbusProtocolDriver()
