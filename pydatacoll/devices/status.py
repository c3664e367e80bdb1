"""Device statuses and frame logs: written on every state change and every
``STATUS_INTERVAL``, with the devices' values flagged NT while they are not live."""

from __future__ import annotations

import collections
import json
from collections.abc import Callable, Iterable
from typing import Any

from twisted.internet import defer

from pydatacoll import errors
from pydatacoll.model import iso_time

from .base import ManagerBase, Running

STATUS_INTERVAL = 2.0
#: Seconds between two looks at the devices' link states: a change is written (and
#: published) at most this long after it happened, well within 1 s.
STATE_CHECK_INTERVAL = 0.25
#: A status not rewritten for this long is served with ``"stale": true``.
STALE_AFTER = 3 * STATUS_INTERVAL
#: States in which a device's values are not topical (its latest samples are flagged NT).
NOT_LIVE = frozenset({"offline", "error", "stopped"})

_STATES = {
    "started": "online",
    # TCP up but no valid answer yet (Modbus says "online" itself once it has one)
    "connected": "connecting",
    "online": "online",
    "stopped": "connecting",
    "connecting": "offline",
    "disconnected": "offline",
    "closed": "stopped",
}


class StatusWriter(ManagerBase):
    """The status and frame-log part of the device manager."""

    def device_status(
        self,
        device_id: str,
        ingest: dict[str, Any] | None = None,
        raw: dict[str, Any] | None = None,
    ) -> dict[str, Any] | None:
        """The status of a running device, as written to Redis (``ingest``: the ingest
        path's status, ``raw``: the runtime's ``status()``, when the caller has them)."""
        running = self.running_devices.get(device_id)
        if running is None:
            return None
        now = self.reactor.seconds()
        body: dict[str, Any] = {"device_id": device_id, "protocol": running.config.device.protocol}
        if running.runtime is not None:
            try:
                body.update(running.runtime.status() if raw is None else raw)
            except Exception as exc:
                body.update(state="error", last_error=str(exc))
            state = normalise(body.get("state"))
        else:
            state = running.state
        if state != running.state:
            # One line of ours per state change (the link's retries are not logged).
            self.log.info(
                "device {device_id}: {state}{why}",
                device_id=device_id,
                state=state,
                why=f" ({body['last_error']})"
                if state != "online" and body.get("last_error")
                else "",
            )
            running.state, running.since = state, now
        body["link_state"] = body.get("state")
        body["state"] = state
        body["since"] = iso_time(running.since)
        if running.error is not None:
            body["last_error"] = running.error
        body["last_value_time"] = iso_time(body.get("last_value_time"))
        if isinstance(body.get("counters"), dict):
            body["counters"] = iso_times(body["counters"])
        body["updated"] = iso_time(now)
        lease = self._leases.get(device_id)
        if lease is not None:  # cluster mode: who runs it, under which fencing epoch
            body["collector"], body["epoch"] = lease.collector_id, lease.epoch
        # The ingest path is shared by all devices: its drops concern every one of them.
        body["ingest"] = self.ingest.status() if ingest is None else ingest
        return body

    def _state_now(self, running: Running) -> str:
        """The device's state as `device_status` would report it now."""
        runtime = running.runtime
        if runtime is None:
            return running.state
        try:
            # A runtime may tell its state alone (``link_state()``): this runs for every
            # device every STATE_CHECK_INTERVAL, and a whole status costs a dict of
            # counters (at 5,000 IEC 104 links, half the collector's quiet CPU).
            link_state = getattr(runtime, "link_state", None)
            if link_state is not None:
                return normalise(link_state())
            return normalise(runtime.status().get("state"))
        except Exception:
            return "error"

    def _watch_states(self) -> None:
        """Write the status of every device whose state changed since it was written, and
        of those due for their refresh (written ``STATUS_INTERVAL`` ago or more)."""
        # Run by a LoopingCall: it must never raise, or the loop would stop for good.
        try:
            self._senders_before, self._senders = self._senders, set()
            due_before = self.reactor.seconds() - STATUS_INTERVAL + STATE_CHECK_INTERVAL / 2
            written_at = self._written_at
            changed = [
                device_id
                for device_id, running in self.running_devices.items()
                if written_at.get(device_id, -1.0) <= due_before
                or self._written_state.get(device_id) != self._state_now(running)
            ]
            if changed:
                self._write_status(changed)
        except Exception:
            self.log.failure("watching the device states")

    @defer.inlineCallbacks
    def _write_status(self, device_ids: Iterable[str] | None = None) -> Any:
        """Write (and publish) the statuses of ``device_ids`` in one script call; flag a
        device's values NT when it stops being live. Cluster mode: each written only
        under the device's lease (a collector paused past it never overwrites the new
        owner's status). Default (every STATUS_INTERVAL):
        every frame log, and the statuses not written for STATUS_INTERVAL.

        Each status is rewritten every STATUS_INTERVAL (its ``updated`` time tells a
        reader it is current), by whichever of this loop and the state watch (every
        STATE_CHECK_INTERVAL) finds it due first: devices that started at different
        times are refreshed in different ticks, not all in one (at 5,000 IEC 104 links,
        one batch of every status held the reactor for a third of a second)."""
        writes = []
        statuses: dict[str, str] = {}
        fenced = self.member is not None
        batches: dict[str, list[str]] = {}
        try:
            now = self.reactor.seconds()
            if device_ids is None:
                due_before = now - STATUS_INTERVAL + STATE_CHECK_INTERVAL / 2
                names = [
                    device_id
                    for device_id in self.running_devices
                    if self._written_at.get(device_id, -1.0) <= due_before
                ]
            else:
                names = list(device_ids)
            # The ingest path's status and the time are the same in every status: each
            # is encoded once and appended to the device's own part.
            ingest = self.ingest.status()
            tail = (
                f', "ingest": {json.dumps(ingest, default=str)}, '
                f'"updated": {json.dumps(iso_time(now))}}}'
            )
            for device_id in names:
                written = self._status_text(device_id, ingest, tail)
                if written is None:
                    continue
                statuses[device_id], state = written
                self._written_at[device_id] = now
                previous = self._written_state.get(device_id)
                self._written_state[device_id] = state
                if state in NOT_LIVE:
                    self._not_live.add(device_id)
                    if previous not in NOT_LIVE:
                        self.ingest.mark_not_topical(device_id)
                else:
                    self._not_live.discard(device_id)
            for device_id, frames in self._frames.items() if device_ids is None else ():
                if frames and device_id in self.running_devices:
                    batch = list(frames)
                    frames.clear()
                    if fenced:
                        batches[device_id] = batch
                    else:
                        writes.append(
                            self.store.append_frames(
                                device_id, batch, self.settings.frame_log_length
                            )
                        )
            if fenced and (statuses or batches):
                entries = {
                    d: (self.token_of(d), statuses.get(d), batches.get(d, ()))
                    for d in sorted(statuses.keys() | batches.keys())
                }
                writes.append(self.store.write_fenced(entries, self.settings.frame_log_length))
            elif statuses:
                writes.append(self.store.write_statuses(statuses))
        except Exception:
            self.log.failure("writing the device status")
        results = yield defer.DeferredList(writes, consumeErrors=True)
        for ok, result in results:
            if not ok and not result.check(errors.StoreUnavailable):
                self.log.failure("writing the device status", result)
                break

    def _status_text(
        self, device_id: str, ingest: dict[str, Any], tail: str
    ) -> tuple[str, str] | None:
        """(JSON status, state) of a running device, ``tail`` (ingest and time) appended.

        The device's own part is encoded again only when the runtime's ``status()`` (a
        new object on every call), the manager's error or the lease differ from the
        last write: most refreshes of a quiet device reuse its text (at 5,000 IEC 104
        links, encoding every status every 2 s was most of the collector's quiet CPU).
        """
        running = self.running_devices.get(device_id)
        if running is None:
            return None
        raw: dict[str, Any] | None = None
        key: Any = None
        if running.runtime is not None:
            try:
                raw = running.runtime.status()
            except Exception:
                raw = None  # device_status reports the error (and caches nothing)
            lease = self._leases.get(device_id)
            key = (
                raw,
                running.error,
                running.since,
                None if lease is None else (lease.collector_id, lease.epoch),
            )
            cached = self._status_texts.get(device_id)
            if raw is not None and cached is not None and cached[0] == key:
                return cached[1] + tail, cached[2]
        status = self.device_status(device_id, ingest, raw)
        if status is None:
            return None
        status.pop("ingest", None)
        status.pop("updated", None)
        own = json.dumps(status, default=str)[:-1]  # without its closing brace
        if raw is not None:
            # The key again: device_status may have moved running.since (a new state).
            lease = self._leases.get(device_id)
            key = (
                raw,
                running.error,
                running.since,
                None if lease is None else (lease.collector_id, lease.epoch),
            )
            self._status_texts[device_id] = (key, own, status["state"])
        else:
            self._status_texts.pop(device_id, None)
        return own + tail, status["state"]

    def _frame_observer(self, device_id: str) -> Callable[[str, bytes], None] | None:
        """The frame observer of a device's link; None when the frame log is off."""
        if not self.settings.frame_log_length:
            return None
        frames: collections.deque[str] = collections.deque(maxlen=self.settings.frame_log_length)
        self._frames[device_id] = frames
        clock = self.reactor

        def observe(direction: str, frame: bytes) -> None:
            send = "send" if direction == "tx" else "recv"
            frames.append(f"{iso_time(clock.seconds())},{send},{frame.hex()}")

        return observe


def iso_times(value: Any) -> Any:
    """``value`` with every epoch time (a number under a key ``since`` or ``*_time``) as
    ISO 8601: the API shows times in one format, whatever a driver's counters hold."""
    if not isinstance(value, dict):
        return value
    # Every device's counters, every STATUS_INTERVAL (250 a second at 500 Modbus devices):
    # only dicts are walked into, and the key is looked at only for a number.
    result = {}
    for key, item in value.items():
        kind = type(item)
        if kind is float or (kind is not bool and isinstance(item, (int, float))):
            if key == "since" or str(key).endswith("_time"):
                item = iso_time(item)
        elif isinstance(item, dict):
            item = iso_times(item)
        result[key] = item
    return result


def normalise(state: Any) -> str:
    """A driver's link state as a device state (online, connecting, offline, stopped...)."""
    return _STATES.get(str(state), str(state))
