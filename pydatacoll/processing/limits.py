"""The ``limits`` processor: alarms from per-point limits, rate of change and frozen values.

A term-item's limits (numbers; numeric text is accepted and converted):

- ``up_limit`` / ``down_limit``: alarm kinds ``high`` / ``low``;
- ``hihi_limit`` / ``lolo_limit``: kinds ``hihi`` / ``lolo``;
- ``deadband``: hysteresis of the level alarms: ``high`` raised above ``up_limit``,
  cleared at or below ``up_limit - deadband`` (``low`` mirrored);
- ``rate_limit``: kind ``rate``, raised when the change per second between two samples
  exceeds it, cleared when a later change is within it;
- ``frozen_after``: kind ``frozen``, raised when the value has not changed for that many
  seconds (checked every ``check_interval`` seconds), cleared by the next change.

Samples of ``invalid`` quality and values that are not numbers are not judged. Each raise
and clear is one event: appended to ``XS:ALARM_LOG`` (trimmed to about ``log_length``),
set in or removed from ``HS:ALARM`` and published on ``CHANNEL:ALARM``, all in one script
so that the three always agree. Events wait in a queue of at most ``queue_length`` while
Redis is away; past it the oldest are dropped and counted (``events_dropped``).

Cluster mode (``context.cluster``): a collector judges only the points of the devices
whose lease it holds (their samples are its own, and a frozen check of a device run
elsewhere would be false). When a device's lease comes here, the alarms active in Redis
for its points are taken over, so the new holder clears what the old one raised; when it
goes, the device's alarm states are dropped here without an event (the new holder goes on).
The alarms of a deleted device have no lease holder ever again: every collector sends
their clears at the deletion (and at its load) through ``store/alarm_orphan.lua``, which
writes each once, only while the device is not configured.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Collection, Mapping, Sequence
from typing import Any

import attrs
from twisted.application.service import Service
from twisted.internet.defer import Deferred, inlineCallbacks, succeed
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.plugin import IPlugin
from zope.interface import implementer

from pydatacoll.errors import ValidationError
from pydatacoll.interfaces import IProcessor, IProcessorFactory
from pydatacoll.model import Field, Sample, iso_time
from pydatacoll.processing import ProcessorContext
from pydatacoll.processing.limits_cluster import ClusterAlarms
from pydatacoll.processing.loading import RetryingLoad
from pydatacoll.processing.options import integer_option, number_option, option
from pydatacoll.retry import Backoff
from pydatacoll.store import alarms as alarm_store
from pydatacoll.store.processing import PointConfigStore

#: Term-item fields read by the limit checks, with the alarm kind they drive.
LIMIT_FIELDS = {
    "up_limit": "high",
    "down_limit": "low",
    "hihi_limit": "hihi",
    "lolo_limit": "lolo",
    "rate_limit": "rate",
    "frozen_after": "frozen",
}
_NUMBER_FIELDS = tuple(LIMIT_FIELDS) + ("deadband",)


@attrs.frozen
class PointLimits:
    """The limits of one point, as numbers (None: not configured)."""

    device_id: str
    term_id: str
    item_id: str
    up_limit: float | None = None
    down_limit: float | None = None
    hihi_limit: float | None = None
    lolo_limit: float | None = None
    deadband: float = 0.0
    rate_limit: float | None = None
    frozen_after: float | None = None

    @property
    def configured(self) -> bool:
        """Whether any check applies."""
        return any(getattr(self, name) is not None for name in LIMIT_FIELDS)

    @classmethod
    def from_term_item(cls, body: Mapping[str, Any]) -> PointLimits:
        """Limits from a term-item JSON object; `ValidationError` names a bad field."""
        values: dict[str, Any] = {}
        for name in _NUMBER_FIELDS:
            value = body.get(name)
            if value is None:
                continue
            number = float(Field(name, "number", name).convert(value))
            if name in ("deadband", "rate_limit", "frozen_after") and number < 0:
                raise ValidationError(f"{name} must not be negative", field=name)
            values[name] = number
        return cls(str(body.get("device_id")), str(body["term_id"]), str(body["item_id"]), **values)


@attrs.define
class _PointState:
    last_value: float | None = None
    last_time: float | None = None
    last_change: float = 0.0
    active: set[str] = attrs.Factory(set)
    #: The limit each active alarm was raised at (its clear carries the same).
    raised_at: dict[str, Any] = attrs.Factory(dict)


@implementer(IProcessor)
class LimitsProcessor(ClusterAlarms, Service):
    """Raises and clears alarms (see the module docstring)."""

    log = Logger()
    name = "limits"  # type: ignore[assignment]  # Service declares it None

    def __init__(self, context: ProcessorContext) -> None:
        options = context.options
        self.reactor = context.reactor
        self.points = PointConfigStore(context.redis)
        self.alarms = alarm_store.AlarmStore(context.redis)
        section = "plugin:limits"
        self.check_interval = option(
            options, section, "check_interval", 1.0, number_option(0.01, 3600.0)
        )
        self.log_length = option(
            options, section, "log_length", 100_000, integer_option(100, 100_000_000)
        )
        self.queue_length = option(
            options, section, "queue_length", 10_000, integer_option(10, 10_000_000)
        )
        self.retry_delay = option(options, section, "retry_delay", 5.0, number_option(0.01, 3600.0))
        self._limits: dict[tuple[str, str], PointLimits] = {}
        self._states: dict[tuple[str, str], _PointState] = {}
        #: Events to write, each with the token of its device's lease (cluster mode) and
        #: whether it is the clear of a deleted device's alarm (`AlarmStore.clear_orphan`).
        self._queue: deque[tuple[dict[str, Any], str | None, bool]] = deque()
        self._sweeping = False
        self._gained: set[str] = set()
        self._adopting = False
        self._adopt_call: Any = None
        self._sweep_again = False
        self._writing = False
        self._retry: Any = None
        self._load = RetryingLoad(
            self.reactor,
            self.points.when_connected,
            self._load_all,
            Backoff(self.retry_delay, self.retry_delay),
            "limits",
        )
        self._loop: LoopingCall | None = None
        self._loaded = False
        self._cluster = context.cluster
        self.counters = {
            "samples": 0,
            "raised": 0,
            "cleared": 0,
            "events_written": 0,
            "events_dropped": 0,
            "events_fenced": 0,
            "config_errors": 0,
            "loop_errors": 0,
        }

    # -- lifecycle ------------------------------------------------------------------------
    def startService(self) -> None:
        """Load limits and active alarms from Redis; start the frozen-value check."""
        super().startService()
        self._loop = LoopingCall(self._check_frozen)
        self._loop.clock = self.reactor
        self._loop.start(self.check_interval, now=False)
        if self._cluster is not None:
            self._cluster.watch(self._ownership_changed)
        self._load.start()

    def stopService(self) -> Deferred[None]:
        """Stop the timers (queued events that could not be written stay unwritten)."""
        super().stopService()
        if self._cluster is not None:
            self._cluster.unwatch(self._ownership_changed)
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._load.stop()
        for call in (self._retry, self._adopt_call):
            if call is not None and call.active():
                call.cancel()
        self._retry = self._adopt_call = None
        return succeed(None)

    @inlineCallbacks
    def _load_all(self) -> Any:
        active = yield self.alarms.active_alarms()
        loaded = yield self.points.term_items()
        now = self.reactor.seconds()
        for point, body in loaded.items():
            self._configure(point, body, now)
        self._adopt(active, None)
        self._loaded = True
        self.log.info("limit checks on {count} points", count=len(self._limits))

    def _adopt(self, active: Mapping[str, Any], devices: Collection[str] | None) -> None:
        """Take the alarms active in Redis (of ``devices`` only, if given) as ours;
        clear those whose limit is gone. Cluster mode: only those of devices held here (and,
        at the load, those of devices not configured any more, through the orphan clear)."""
        configured = {limits.device_id for limits in self._limits.values()}
        for event in active.values():
            try:
                point = (str(event["term_id"]), str(event["item_id"]))
                kind = str(event["kind"])
            except (ValueError, KeyError, TypeError):
                continue
            limits = self._limits.get(point)
            device = str(event.get("device_id"))  # the alarm's (the point may have moved)
            if devices is not None and device not in devices:
                continue
            if not self._here(device):
                if devices is None and self._cluster is not None and device not in configured:
                    self._clear_orphan(event, kind)  # a deleted device's, maybe
                continue
            if (
                limits is not None
                and limits.device_id == device
                and self._kind_configured(limits, kind)
            ):
                state = self._states[point]
                state.active.add(kind)
                state.raised_at[kind] = event.get("limit")
                value = event.get("value")
                if (
                    kind == "frozen"
                    and isinstance(value, (int, float))
                    and not isinstance(value, bool)
                ):
                    state.last_value = float(value)  # the frozen value: only a change clears
            else:
                moved = limits is not None and limits.device_id != device
                reason = "point moved to another device" if moved else None
                self._event(
                    "clear",
                    event,
                    kind,
                    None,
                    event.get("limit"),
                    reason or "limit removed from the configuration",
                )

    @staticmethod
    def _new_state(now: float) -> _PointState:
        return _PointState(last_change=now)

    @staticmethod
    def _kind_configured(limits: PointLimits, kind: str) -> bool:
        return any(getattr(limits, f) is not None for f, k in LIMIT_FIELDS.items() if k == kind)

    # -- configuration --------------------------------------------------------------------
    def _configure(self, point: tuple[str, str], body: Mapping[str, Any], now: float) -> None:
        try:
            limits = PointLimits.from_term_item(body)
        except (ValidationError, KeyError) as e:
            self.counters["config_errors"] += 1
            self.log.warn("limits of {point} ignored: {e}", point=":".join(point), e=str(e))
            self._unconfigure(point, "limit configuration is not valid")
            return
        if not limits.configured:
            self._unconfigure(point, "limit removed from the configuration")
            return
        old = self._limits.get(point)
        self._limits[point] = limits
        state = self._states.setdefault(point, _PointState(last_change=now))
        if old is not None and old.device_id != limits.device_id:
            self._clear_all(old, state, "point moved to another device")
        for kind in sorted(state.active):
            if not self._kind_configured(limits, kind):
                self._clear(limits, state, kind, None, "limit removed from the configuration")

    def _unconfigure(self, point: tuple[str, str], reason: str) -> None:
        limits = self._limits.pop(point, None)
        state = self._states.pop(point, None)
        if limits is not None and state is not None:
            self._clear_all(limits, state, reason)

    def _clear_all(self, limits: PointLimits, state: _PointState, reason: str) -> None:
        for kind in sorted(state.active):
            self._clear(limits, state, kind, None, reason)

    def config_changed(self, change: Any) -> None:
        """Follow term-item changes, and the term-items removed with a device, term or item."""
        if not isinstance(change, dict):
            return
        entity, op = change.get("entity"), change.get("op")
        now = self.reactor.seconds()
        if (
            entity == "term_item"
            and op in ("add", "fresh")
            and isinstance(change.get("data"), dict)
        ):
            data = change["data"]
            self._configure((str(data.get("term_id")), str(data.get("item_id"))), data, now)
        elif entity == "term_item" and op == "del" and isinstance(change.get("old"), dict):
            old = change["old"]
            self._unconfigure((str(old.get("term_id")), str(old.get("item_id"))), "point deleted")
        elif op == "del" and isinstance(change.get("cascade"), dict):
            # Cluster mode, a device deleted: no lease of it any more to fence its clears
            # with (its holder may even have dropped the states already): they are sent
            # by every collector through the orphan clear, written once.
            deleted_device = self._cluster is not None and entity == "device"
            for point in change["cascade"].get("term_items") or ():
                if isinstance(point, dict):
                    key = (str(point.get("term_id")), str(point.get("item_id")))
                    if deleted_device:
                        self._limits.pop(key, None)
                        self._states.pop(key, None)
                    else:
                        self._unconfigure(key, "point deleted")
            if deleted_device:
                self._sweep_orphans()
        elif entity == "term" and op == "fresh" and isinstance(change.get("data"), dict):
            term_id = str(change.get("id"))
            device_id = str(change["data"].get("device_id"))
            for point, limits in list(self._limits.items()):
                if point[0] == term_id and limits.device_id != device_id:
                    state = self._states[point]
                    self._clear_all(limits, state, "point moved to another device")
                    self._limits[point] = attrs.evolve(limits, device_id=device_id)

    # -- checks ---------------------------------------------------------------------------
    def samples_received(self, samples: Sequence[Sample]) -> None:
        """Judge every sample of a point with limits."""
        if not self._limits:
            return  # no point has limits: every batch of every device passes by
        now = self.reactor.seconds()
        for sample in samples:
            point = (sample.term_id, sample.item_id)
            limits = self._limits.get(point)
            if limits is None or sample.quality == "invalid" or not self._here(limits.device_id):
                continue
            value = sample.value
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            value = float(value)
            if not math.isfinite(value):
                continue
            self.counters["samples"] += 1
            self._check(limits, self._states[point], value, sample, now)

    def _check(
        self, limits: PointLimits, state: _PointState, value: float, sample: Sample, now: float
    ) -> None:
        band = limits.deadband
        for kind, limit, above in (
            ("hihi", limits.hihi_limit, True),
            ("high", limits.up_limit, True),
            ("low", limits.down_limit, False),
            ("lolo", limits.lolo_limit, False),
        ):
            if limit is None:
                continue
            outside = value > limit if above else value < limit
            back = value <= limit - band if above else value >= limit + band
            if kind not in state.active and outside:
                word = "above" if above else "below"
                self._raise(limits, state, kind, value, limit, f"{value:g} is {word} {limit:g}")
            elif kind in state.active and back:
                self._clear(limits, state, kind, value, f"{value:g} is back within {limit:g}")
        moment = sample.source_time if sample.source_time is not None else sample.receive_time
        if (
            limits.rate_limit is not None
            and state.last_value is not None
            and state.last_time is not None
            and moment > state.last_time
        ):
            rate = abs(value - state.last_value) / (moment - state.last_time)
            if "rate" not in state.active and rate > limits.rate_limit:
                message = f"changes by {rate:g}/s, more than {limits.rate_limit:g}/s"
                self._raise(limits, state, "rate", value, limits.rate_limit, message)
            elif "rate" in state.active and rate <= limits.rate_limit:
                self._clear(limits, state, "rate", value, f"changes by {rate:g}/s")
        if state.last_value is None or value != state.last_value:
            state.last_change = now
            if "frozen" in state.active:
                self._clear(limits, state, "frozen", value, "the value changes again")
        state.last_value = value
        if state.last_time is None or moment >= state.last_time:
            state.last_time = moment

    def _check_frozen(self) -> None:
        # Run by a LoopingCall: it must never raise, or the loop would stop for good.
        try:
            now = self.reactor.seconds()
            for point, limits in list(self._limits.items()):
                state = self._states[point]
                if (
                    limits.frozen_after is not None
                    and self._here(limits.device_id)
                    and "frozen" not in state.active
                    and now - state.last_change >= limits.frozen_after
                ):
                    message = f"unchanged for {now - state.last_change:g}s"
                    self._raise(
                        limits, state, "frozen", state.last_value, limits.frozen_after, message
                    )
        except Exception:
            self.counters["loop_errors"] += 1
            self.log.failure("frozen-value check failed; it goes on")

    # -- events ---------------------------------------------------------------------------
    def _raise(
        self,
        limits: PointLimits,
        state: _PointState,
        kind: str,
        value: Any,
        limit: Any,
        message: str,
    ) -> None:
        state.active.add(kind)
        state.raised_at[kind] = limit
        self.counters["raised"] += 1
        self._event("raise", attrs.asdict(limits), kind, value, limit, message)

    def _clear(
        self, limits: PointLimits, state: _PointState, kind: str, value: Any, message: str
    ) -> None:
        state.active.discard(kind)
        limit = state.raised_at.pop(kind, None)
        self.counters["cleared"] += 1
        self._event("clear", attrs.asdict(limits), kind, value, limit, message)

    def _event(
        self,
        event: str,
        ids: Mapping[str, Any],
        kind: str,
        value: Any,
        limit: Any,
        message: str,
        orphan: bool = False,
    ) -> None:
        body = {
            "event": event,
            "device_id": str(ids.get("device_id")),
            "term_id": str(ids.get("term_id")),
            "item_id": str(ids.get("item_id")),
            "kind": kind,
            "value": value,
            "limit": limit,
            "time": iso_time(self.reactor.seconds()),
            "message": message,
        }
        self.log.info(
            "alarm {event} {kind} on {point}: {message}",
            event=event,
            kind=kind,
            point=f"{body['device_id']}:{body['term_id']}:{body['item_id']}",
            message=message,
        )
        token = None
        if self._cluster is not None and not orphan:
            token = self._cluster.token(body["device_id"])
            if token is None:  # in cluster mode an event is never written unfenced
                self.counters["events_fenced"] += 1
                return
        if len(self._queue) >= self.queue_length:
            self._queue.popleft()
            self.counters["events_dropped"] += 1
        self._queue.append((body, token, orphan))
        self._flush()

    def _flush(self) -> None:
        if self._writing or not self._queue or self._retry is not None:
            return
        entry = self._queue[0]
        body, token, orphan = entry
        self._writing = True
        if orphan:
            d = self.alarms.clear_orphan(body, self.log_length)  # never raises
        else:
            d = self.alarms.record_event(body, self.log_length, token)

        def written(result: Any) -> None:
            self._writing = False
            if self._queue and self._queue[0] is entry:
                self._queue.popleft()
            if orphan:  # 0: cleared by another collector already, or the device is back
                self.counters["events_written"] += int(result or 0)
            elif token is not None and not int(result or 0):
                self.counters["events_fenced"] += 1  # the lease moved on: the new
            else:  # holder took the active alarms over and judges from now on
                self.counters["events_written"] += 1
            self._flush()

        def failed(failure: Any) -> None:
            self._writing = False
            self.log.warn(
                "alarm event not written ({e}); {n} waiting, retry in {delay}s",
                e=failure.getErrorMessage(),
                n=len(self._queue),
                delay=self.retry_delay,
            )
            if self.running:
                self._retry = self.reactor.callLater(self.retry_delay, self._retry_flush)

        d.addCallbacks(written, failed)

    def _retry_flush(self) -> None:
        self._retry = None
        self._flush()

    def status(self) -> dict[str, Any]:
        """Counters, points checked, active alarms and queued events."""
        return {
            "loaded": self._loaded,
            "points": len(self._limits),
            "active": sum(len(s.active) for s in self._states.values()),
            "queued": len(self._queue),
            **self.counters,
        }


@implementer(IPlugin, IProcessorFactory)
class LimitsFactory:
    """Builds the ``limits`` processor."""

    name = "limits"
    description = "limit checks: high/low, hihi/lolo with hysteresis, rate of change, frozen"
    #: The keys of ``[plugin:limits]`` (any other is refused at start).
    options = ("check_interval", "log_length", "queue_length", "retry_delay")

    def build(self, context: ProcessorContext) -> LimitsProcessor:
        """A `LimitsProcessor`; `ConfigError` for a bad ``[plugin:limits]`` option."""
        return LimitsProcessor(context)
