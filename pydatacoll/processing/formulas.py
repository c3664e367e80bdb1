"""The ``formulas`` processor: calculated points, recomputed when an input changes.

A formula (`pydatacoll.model.Formula`, stored in ``HS:FORMULA:{id}``) names its input
points ``p1..pN`` and its result point. When a batch brings a new sample of an input,
the formulas that use it, and the formulas that use their results, are recomputed once,
in dependency order (the store refuses cycles), after the batch: several batches that
arrive while a computation runs are folded into the next one. Each result goes out
through ``emit`` with the worst quality of its inputs; a formula that fails emits an
``invalid`` sample with no value and keeps its error in ``HS:FORMULA_STATUS``.

Buffers: the pending set holds formula ids (at most every formula once); the latest
value is kept for input and result points only; window reads are bounded by
``window_samples`` entries per point.

Cluster mode (``context.cluster``, docs/cluster.rst): a formula is computed by the one
collector that holds the lease of its result device, whose result writes are fenced by
that lease like every sample of the device. Its inputs come from the per-device sample
channels (``CHANNEL:DEVICE_SAMPLES:{device}``) of its input devices, wherever they run,
not from the local batches: what it reads is exactly what was stored (a stale owner's
fenced samples never reach it). When the lease moves, the new holder subscribes, reads
the latest values and computes; the old one stops computing it at once.
"""

from __future__ import annotations

import datetime
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import attrs
from twisted.application.service import Service
from twisted.internet.defer import Deferred, gatherResults, inlineCallbacks, succeed
from twisted.logger import Logger
from twisted.plugin import IPlugin
from zope.interface import implementer

from pydatacoll.config import integer_option, number_option
from pydatacoll.errors import PyDataCollError
from pydatacoll.expression import (
    Expression,
    ExpressionError,
    Window,
    compile_expression,
    evaluate,
)
from pydatacoll.interfaces import IProcessor, IProcessorFactory
from pydatacoll.model import (
    Formula,
    Sample,
    iso_time,
    worst_quality,
)
from pydatacoll.processing import ProcessorContext
from pydatacoll.processing.formula_check import check_formula as check_formula  # API's name
from pydatacoll.processing.formula_check import window_values
from pydatacoll.processing.formula_cluster import ClusterInputs
from pydatacoll.processing.loading import RetryingLoad
from pydatacoll.processing.options import option
from pydatacoll.retry import Backoff
from pydatacoll.store.processing import FormulaStore, PointConfigStore

Point = tuple[str, str, str]
#: Seconds within which a sample of a result point with the value just computed is that
#: result coming back (the sample channels carry times to the millisecond).
ECHO_TOLERANCE = 0.0015
#: Flags of the samples a formula produces.
CALCULATED = "calculated"
FORMULA_ERROR = "formula_error"


def _seconds(text: Any) -> float | None:
    if not isinstance(text, str):
        return None
    try:
        return datetime.datetime.fromisoformat(text).timestamp()
    except ValueError:
        return None


# -- the processor ---------------------------------------------------------------------
@attrs.frozen
class _Compiled:
    formula: Formula
    expression: Expression
    params: Mapping[str, Point]

    @property
    def result(self) -> Point:
        return self.formula.result


@implementer(IProcessor)
class FormulasProcessor(ClusterInputs, Service):
    """Computes every formula when one of its inputs changes (see the module docstring)."""

    log = Logger()
    name = "formulas"  # type: ignore[assignment]  # Service declares it None

    def __init__(self, context: ProcessorContext) -> None:
        options = context.options
        self.reactor = context.reactor
        self.points = PointConfigStore(context.redis)
        self.store = FormulaStore(context.redis)
        self._emit = context.emit
        section = "plugin:formulas"
        self.max_formulas = option(
            options, section, "max_formulas", 10000, integer_option(1, 1_000_000)
        )
        self.window_samples = option(
            options, section, "window_samples", 1000, integer_option(1, 100_000)
        )
        self.time_budget = option(options, section, "time_budget", 0.05, number_option(0.001, 1.0))
        self.retry_delay = option(options, section, "retry_delay", 5.0, number_option(0.01, 3600.0))
        self._formulas: dict[str, _Compiled] = {}
        self._users: dict[Point, set[str]] = {}
        self._rank: dict[str, int] = {}
        self._latest: dict[Point, Sample] = {}
        self._own: dict[Point, tuple[float, Any]] = {}
        self._pending: set[str] = set()
        self._scheduled: Any = None
        self._running = False
        self._loaded = False
        self._statuses: dict[str, dict[str, Any]] = {}
        self._dirty_status: set[str] = set()
        self._load = RetryingLoad(
            self.reactor,
            self.points.when_connected,
            self._load_all,
            Backoff(self.retry_delay, self.retry_delay),
            "formulas",
        )
        self.counters = {"runs": 0, "evaluations": 0, "failures": 0, "emitted": 0, "refused": 0}
        #: Cluster mode: this collector's `IDeviceOwnership`, and the subscription to the
        #: sample channels of the input devices of the formulas computed here.
        self._cluster = context.cluster
        self._inputs: Any = None
        self._catch_up_ids: set[str] = set()
        #: Formulas that could not be installed -> their result device (None: not known).
        self._failed: dict[str, str | None] = {}
        self._catch_up_call: Any = None
        self._installed = False

    # -- lifecycle ------------------------------------------------------------------------
    def startService(self) -> None:
        """Load the formulas from Redis once it is connected (retried until it works)."""
        super().startService()
        if self._cluster is not None:
            self._cluster.watch(self._ownership_changed)
            self._inputs = self._cluster.subscribe(
                self._channel_message, [], self._resubscribed, "formula inputs"
            )
            self._inputs.startService()
        self._load.start()

    def stopService(self) -> Deferred[None]:
        """Cancel timers; nothing is written afterwards."""
        super().stopService()
        self._load.stop()
        if self._cluster is not None:
            self._cluster.unwatch(self._ownership_changed)
        if self._inputs is not None:
            inputs, self._inputs = self._inputs, None
            inputs.stopService()
        for call in (self._scheduled, self._catch_up_call):
            if call is not None and call.active():
                call.cancel()
        self._scheduled = self._catch_up_call = None
        return succeed(None)

    @inlineCallbacks
    def _load_all(self) -> Any:
        formulas = yield self.store.formulas(self.max_formulas)
        for formula_id, body in formulas.items():
            self._install(formula_id, body)
        self._reorder()
        self._installed = True  # ownership changes from now on catch up on their own
        yield self._follow()
        yield self._load_latest(self._formulas)
        self._loaded = True
        self.log.info("{count} formulas loaded", count=len(self._formulas))
        self._pending.update(f for f in self._formulas if self._computes(f))
        self._schedule()

    @inlineCallbacks
    def _load_latest(self, formula_ids: Iterable[str], refresh: bool = False) -> Any:
        """Read the stored latest value of the inputs of ``formula_ids`` not known yet
        (``refresh``: of every input, kept unless older than the one known)."""
        points = {
            point
            for formula_id in formula_ids
            if formula_id in self._formulas and self._computes(formula_id)
            for point in self._formulas[formula_id].params.values()
            if refresh or point not in self._latest
        }
        for point in sorted(points):
            # the value hash first: it carries a not-topical mark made since the sample
            stored = yield self.points.latest_value(point)
            if stored is None:
                stored = yield self.points.latest_sample(point)
            if stored is None:
                continue
            sample = Sample.from_message(
                {"device_id": point[0], "term_id": point[1], "item_id": point[2], **stored}
            )
            known = self._latest.get(point)
            # refresh: the stored value unless older than the one known; the same time
            # may carry a not-topical mark (quality and flags) missed meanwhile
            if known is None or (refresh and sample.receive_time >= known.receive_time):
                self._latest[point] = sample

    # -- the formula set ----------------------------------------------------------------
    def _install(self, formula_id: str, body: Any) -> None:
        self._remove(formula_id)
        device = body.get("device_id") if isinstance(body, dict) else None
        self._failed[formula_id] = str(device) if isinstance(device, (str, int)) else None
        try:
            formula = Formula.from_json(body)
            params = formula.params
            compiled = _Compiled(formula, compile_expression(formula.formula, params), params)
        except (PyDataCollError, ExpressionError) as e:
            self.counters["refused"] += 1
            self._set_status(formula_id, state="error", error=getattr(e, "message", str(e)))
            return
        if len(self._formulas) >= self.max_formulas:
            self.counters["refused"] += 1
            self._set_status(formula_id, state="error", error="over max_formulas")
            return
        self._formulas[formula_id] = compiled
        del self._failed[formula_id]
        for point in compiled.params.values():
            self._users.setdefault(point, set()).add(formula_id)
        self._set_status(formula_id, state="waiting", error=None)

    def _remove(self, formula_id: str) -> None:
        compiled = self._formulas.pop(formula_id, None)
        if compiled is None:
            return
        for point in compiled.params.values():
            users = self._users.get(point)
            if users is not None:
                users.discard(formula_id)
                if not users:
                    del self._users[point]
        self._pending.discard(formula_id)
        self._statuses.pop(formula_id, None)
        self._forget_points()

    def _forget_points(self) -> None:
        computed = [c for f, c in self._formulas.items() if self._computes(f)]
        wanted = {p for c in computed for p in c.params.values()} | {c.result for c in computed}
        for point in [p for p in self._latest if p not in wanted]:
            del self._latest[point]
        for point in [p for p in self._own if p not in wanted]:
            del self._own[point]

    def _reorder(self) -> None:
        """Rank the formulas so that each comes after the formulas it reads (Kahn)."""
        depends: dict[str, set[str]] = {}
        producers: dict[Point, set[str]] = {}
        for formula_id, compiled in self._formulas.items():
            producers.setdefault(compiled.result, set()).add(formula_id)
        for formula_id, compiled in self._formulas.items():
            depends[formula_id] = {
                producer
                for point in compiled.params.values()
                for producer in producers.get(point, ())
                if producer != formula_id
            }
        rank: dict[str, int] = {}
        queue = deque(sorted(f for f, d in depends.items() if not d))
        dependents: dict[str, set[str]] = {}
        for formula_id, needed in depends.items():
            for other in needed:
                dependents.setdefault(other, set()).add(formula_id)
        remaining = {f: len(d) for f, d in depends.items()}
        while queue:
            formula_id = queue.popleft()
            rank[formula_id] = len(rank)
            for dependent in sorted(dependents.get(formula_id, ())):
                remaining[dependent] -= 1
                if remaining[dependent] == 0:
                    queue.append(dependent)
        for formula_id in depends:
            if formula_id not in rank:  # only if the store's cycle check was bypassed
                self._set_status(formula_id, state="error", error="part of a cycle")
        self._rank = rank

    # -- IProcessor -----------------------------------------------------------------------
    def config_changed(self, change: Any) -> None:
        """Follow formula changes (add, fresh, del)."""
        if not isinstance(change, dict) or change.get("entity") != "formula":
            return
        formula_id = str(change.get("id"))
        if change.get("op") == "del" or not isinstance(change.get("data"), dict):
            self._remove(formula_id)
            self._failed.pop(formula_id, None)
            self._reorder()
            self._write_deleted_status(formula_id)
            # cluster mode: its inputs' channels no longer needed are unsubscribed
            self._follow().addErrback(lambda f: self.log.failure("formula inputs", f))
            return
        self._install(formula_id, change["data"])
        self._reorder()
        if formula_id not in self._formulas:
            self._write_status()
            return
        d = self._follow()
        d.addCallback(lambda _: self._load_latest([formula_id]))
        d.addCallback(lambda _: self._trigger([formula_id]))
        d.addErrback(lambda f: self.log.failure("loading inputs of formula {id}", f, id=formula_id))

    def samples_received(self, samples: Sequence[Sample]) -> None:
        """Remember the new values of inputs and schedule the formulas that use them
        (cluster mode: the inputs come from the sample channels, these are ignored)."""
        if self._cluster is None:
            self._receive(samples)

    def _receive(self, samples: Sequence[Sample]) -> None:
        if not self._users and not self._own:
            return  # no formula reads any point: every batch of every device passes by
        triggered: set[str] = set()
        for sample in samples:
            point = sample.point
            users = self._users.get(point)
            own = self._own.get(point)
            if users is None and own is None:
                continue
            if own is not None and sample.receive_time < own[0] - ECHO_TOLERANCE:
                # an older result of ours coming back after a newer one was computed
                # (cluster mode: the echo is late); the newer one is the value known
                continue
            self._latest[point] = sample
            if (
                own is not None
                and own[1] == sample.value
                and abs(own[0] - sample.receive_time) < ECHO_TOLERANCE
            ):
                del self._own[point]  # our own result coming back: dependents are done
                continue
            if users:
                triggered.update(users)
        if triggered:
            self._trigger(triggered)

    def _trigger(self, formula_ids: Iterable[str]) -> None:
        self._pending.update(f for f in formula_ids if f in self._formulas and self._computes(f))
        self._schedule()

    def _schedule(self) -> None:
        if self._pending and not self._running and self._scheduled is None and self.running:
            self._scheduled = self.reactor.callLater(0, self._run)

    def status(self) -> dict[str, Any]:
        """Counters and the number of formulas by state."""
        states: dict[str, int] = {}
        for entry in self._statuses.values():
            states[entry["state"]] = states.get(entry["state"], 0) + 1
        cluster: dict[str, Any] = {}
        if self._cluster is not None:
            cluster = {
                "collector": self._cluster.collector_id,
                "computed_here": sum(1 for f in self._formulas if self._computes(f)),
            }
        return {
            "loaded": self._loaded,
            "formulas": len(self._formulas),
            "states": states,
            "pending": len(self._pending),
            **cluster,
            **self.counters,
        }

    def formula_status(self, formula_id: str) -> dict[str, Any] | None:
        """One formula's state: ok/waiting/error, last value, quality, error, time."""
        return self._statuses.get(formula_id)

    # -- computing ------------------------------------------------------------------------
    def _closure(self, formula_ids: Iterable[str]) -> list[str]:
        """The formulas and everything downstream of them, in dependency order."""
        seen: set[str] = set()
        stack = list(formula_ids)
        while stack:
            formula_id = stack.pop()
            if formula_id in seen or formula_id not in self._rank:
                continue
            seen.add(formula_id)
            stack.extend(self._users.get(self._formulas[formula_id].result, ()))
        return sorted(seen, key=self._rank.__getitem__)

    def _run(self) -> None:
        self._scheduled = None
        self._running = True
        d = self._compute()

        def done(result: Any) -> None:
            self._running = False
            self._schedule()

        d.addErrback(lambda f: self.log.failure("formula computation failed", f))
        d.addBoth(done)

    @inlineCallbacks
    def _compute(self) -> Any:
        order = [f for f in self._closure(self._pending) if self._computes(f)]
        self._pending.clear()
        if not order:
            return
        self.counters["runs"] += 1
        now = self.reactor.seconds()
        needed = {
            (self._formulas[f].params[w.param], w.seconds)
            for f in order
            for w in self._formulas[f].expression.windows
        }
        history: dict[tuple[Point, int], Any] = {}
        if needed:
            wanted = sorted(needed)
            reads = [
                self.points.sample_window(point, now - seconds, self.window_samples).addErrback(
                    lambda f: f.getErrorMessage()
                )
                for point, seconds in wanted
            ]
            results = yield gatherResults(reads)
            history = dict(zip(wanted, results, strict=True))
        if not self.running:
            return
        produced: list[Sample] = []
        for formula_id in order:
            compiled = self._formulas.get(formula_id)
            if compiled is None:
                continue
            sample = self._evaluate(formula_id, compiled, history, now)
            if sample is None:
                continue
            self._latest[sample.point] = sample
            self._own[sample.point] = (sample.receive_time, sample.value)
            produced.append(sample)
        if produced:
            self.counters["emitted"] += len(produced)
            self._emit(produced)
        self._write_status()

    def _evaluate(
        self, formula_id: str, compiled: _Compiled, history: Mapping[Any, Any], now: float
    ) -> Sample | None:
        expression = compiled.expression
        values: dict[str, Any] = {}
        qualities: list[str] = []
        source_times: list[float] = []
        for name in expression.params:
            sample = self._latest.get(compiled.params[name])
            if sample is None:
                self._set_status(formula_id, state="waiting", error=f"no value for {name} yet")
                return None
            values[name] = sample.value
            qualities.append(sample.quality)
            if sample.source_time is not None:
                source_times.append(sample.source_time)
        windows: dict[Window, list[float]] = {}
        error = None
        for window in expression.windows:
            point = compiled.params[window.param]
            stored = history.get((point, window.seconds), [])
            if isinstance(stored, str):
                error = f"history of {window.param} not readable: {stored}"
                break
            stored = list(stored)
            latest = self._latest.get(point)
            newest = _seconds(stored[-1].get("receive_time")) if stored else None
            if latest is not None and (newest is None or latest.receive_time > newest + 0.001):
                stored.append({"value": latest.value, "quality": latest.quality})
            windows[window], window_qualities = window_values(stored)
            qualities.extend(window_qualities)
        self.counters["evaluations"] += 1
        result = compiled.result
        if error is None:
            try:
                value = evaluate(expression, values, windows, budget=self.time_budget)
            except ExpressionError as e:
                error = e.message
        if error is not None:
            self.counters["failures"] += 1
            self._set_status(formula_id, state="error", error=error, quality="invalid", value=None)
            return Sample(*result, None, "invalid", (CALCULATED, FORMULA_ERROR), None, now)
        quality = worst_quality(qualities)
        self._set_status(formula_id, state="ok", error=None, quality=quality, value=value)
        source_time = max(source_times) if source_times else None
        return Sample(*result, value, quality, (CALCULATED,), source_time, now)

    # -- status -----------------------------------------------------------------------------
    def _set_status(self, formula_id: str, **fields: Any) -> None:
        entry = self._statuses.setdefault(formula_id, {"id": formula_id, "state": "waiting"})
        entry.update(fields)
        entry["time"] = iso_time(self.reactor.seconds())
        self._dirty_status.add(formula_id)

    def _write_status(self) -> None:
        dirty = {f: self._statuses[f] for f in self._dirty_status if f in self._statuses}
        self._dirty_status.clear()
        if self._cluster is not None:
            self._write_status_fenced(dirty)
            return
        if not dirty:
            return
        d = self.store.write_formula_status(dirty)
        d.addErrback(lambda f: self.log.warn("formula status not written: {e}", e=f.value))

    def _write_deleted_status(self, formula_id: str) -> None:
        d = self.store.delete_formula_status(formula_id)
        d.addErrback(lambda f: self.log.warn("formula status not removed: {e}", e=f.value))


@implementer(IPlugin, IProcessorFactory)
class FormulasFactory:
    """Builds the ``formulas`` processor."""

    name = "formulas"
    description = "calculated points: formulas over other points, recomputed on change"
    #: The keys of ``[plugin:formulas]`` (any other is refused at start).
    options = ("max_formulas", "window_samples", "time_budget", "retry_delay")

    def build(self, context: ProcessorContext) -> FormulasProcessor:
        """A `FormulasProcessor`; `ConfigError` for a bad ``[plugin:formulas]`` option."""
        return FormulasProcessor(context)
