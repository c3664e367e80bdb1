"""Cluster mode of the formulas processor: which formulas are computed here, and their
inputs from the per-device sample channels (see `pydatacoll.processing.formulas`).

A formula is computed by the collector holding its result device's lease
(`IDeviceOwnership.owns`); its inputs come from ``CHANNEL:DEVICE_SAMPLES:{device}`` of
each input device, wherever it runs. Outside cluster mode (``_cluster`` None) every
formula is computed here, from the local batches, as before.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger

from pydatacoll.interfaces import IDeviceOwnership
from pydatacoll.model import Sample
from pydatacoll.store import keys


class ClusterInputs:
    """The cluster part of `pydatacoll.processing.formulas.FormulasProcessor`."""

    log: Logger
    running: int
    _cluster: IDeviceOwnership | None
    _inputs: Any
    _installed: bool
    _formulas: Mapping[str, Any]
    _latest: dict[Any, Sample]
    _pending: set[str]
    _dirty_status: set[str]
    _statuses: dict[str, Any]
    _failed: dict[str, str | None]
    #: Formulas whose catch-up read failed, and the call that tries it again.
    _catch_up_ids: set[str]
    _catch_up_call: Any
    reactor: Any
    retry_delay: float
    store: Any

    if TYPE_CHECKING:  # provided by FormulasProcessor

        def _write_status(self) -> None: ...

        def _receive(self, samples: Sequence[Sample]) -> None: ...
        def _trigger(self, formula_ids: Iterable[str]) -> None: ...
        def _forget_points(self) -> None: ...
        def _load_latest(self, formula_ids: Iterable[str], refresh: bool = False) -> Any: ...

    def _computes(self, formula_id: str) -> bool:
        """Whether ``formula_id`` is computed here: always, but in cluster mode only
        while this collector holds its result device's lease."""
        if self._cluster is None:
            return True
        compiled = self._formulas.get(formula_id)
        return compiled is not None and self._cluster.owns(compiled.result[0])

    def _follow(self) -> Deferred[Any]:
        """Cluster mode: subscribe the sample channels of the input devices of every
        formula computed here (and no others); fires once subscribed."""
        if self._inputs is None:
            return succeed(None)
        devices = {
            point[0]
            for formula_id, compiled in self._formulas.items()
            if self._computes(formula_id)
            for point in compiled.params.values()
        }
        d: Deferred[Any] = self._inputs.update_channels(
            sorted(keys.DEVICE_SAMPLES % device for device in devices)
        )
        return d

    def _channel_message(self, channel: str, text: str) -> None:
        """A device's new samples, as stored (cluster mode)."""
        try:
            message = json.loads(text)
            samples = [Sample.from_message(m) for m in message["samples"]]
        except (ValueError, KeyError, TypeError) as e:
            self.log.warn("unreadable samples on {channel}: {e}", channel=channel, e=e)
            return
        if self.running:
            self._receive(samples)

    def _ownership_changed(self, device_id: str, owned: bool) -> None:
        """A result device's lease came here (subscribe its formulas' inputs, read their
        latest values, compute) or went away (stop computing its formulas at once)."""
        if owned and self._installed:  # errors of formulas of this device: written here now
            failed = [f for f, d in self._failed.items() if d == device_id and f in self._statuses]
            if failed:
                self._dirty_status.update(failed)
                self._write_status()
        formula_ids = [f for f, c in self._formulas.items() if c.result[0] == device_id]
        if not formula_ids or not self._installed:
            return
        if not owned:
            self._pending.difference_update(formula_ids)
            self._forget_points()
            self._follow().addErrback(lambda f: self.log.failure("formula inputs", f))
            return
        self.log.info(
            "{n} formulas of device {device_id} computed here",
            n=len(formula_ids),
            device_id=device_id,
        )
        for formula_id in formula_ids:
            self._dirty_status.add(formula_id)
        self._catch_up(formula_ids)

    def _resubscribed(self) -> None:
        """The input subscription came (back): samples may have been missed meanwhile."""
        if self._installed:
            self._catch_up([f for f in self._formulas if self._computes(f)], refresh=True)

    def _catch_up(self, formula_ids: Sequence[str], refresh: bool = False) -> None:
        d = self._follow()
        d.addCallback(lambda _: self._load_latest(formula_ids, refresh))
        d.addCallback(lambda _: self._trigger(formula_ids))
        d.addErrback(self._catch_up_failed, formula_ids)

    def _catch_up_failed(self, failure: Any, formula_ids: Sequence[str]) -> None:
        """The inputs could not be read (Redis away or slow): read them again after
        ``retry_delay`` (an input that changes seldom brings nothing on its channel)."""
        self.log.warn(
            "inputs of {n} formulas not read ({e}); again in {delay}s",
            n=len(formula_ids),
            e=failure.getErrorMessage(),
            delay=self.retry_delay,
        )
        self._catch_up_ids.update(formula_ids)
        if self.running and self._catch_up_call is None:
            self._catch_up_call = self.reactor.callLater(self.retry_delay, self._catch_up_again)

    def _catch_up_again(self) -> None:
        self._catch_up_call = None
        formula_ids = sorted(f for f in self._catch_up_ids if self._computes(f))
        self._catch_up_ids = set()
        if formula_ids and self.running:
            self._catch_up(formula_ids, refresh=True)

    def _write_status_fenced(self, dirty: Mapping[str, Mapping[str, Any]]) -> None:
        """Cluster mode: the statuses of the formulas computed here, each written only
        under its result device's lease (a collector paused past it writes none); so is
        the error of a formula that cannot be installed (by the holder of the result
        device its body names; as it is when the body names none)."""
        if self._cluster is None:
            return
        fenced: dict[str, Mapping[str, Any]] = {}
        leases: dict[str, tuple[str, str]] = {}
        plain: dict[str, Mapping[str, Any]] = {}
        for formula_id, entry in dirty.items():
            compiled = self._formulas.get(formula_id)
            device_id = compiled.result[0] if compiled is not None else self._failed.get(formula_id)
            if device_id is None:
                plain[formula_id] = entry  # no device to fence with: the same everywhere
                continue
            token = self._cluster.token(device_id)
            if token is not None:
                fenced[formula_id] = {**entry, "collector": self._cluster.collector_id}
                leases[formula_id] = (device_id, token)
        writes = []
        if fenced:
            writes.append(self.store.write_formula_status(fenced, leases))
        if plain:
            writes.append(self.store.write_formula_status(plain))
        for d in writes:
            d.addErrback(lambda f: self.log.warn("formula status not written: {e}", e=f.value))
