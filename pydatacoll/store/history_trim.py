"""When the ingest path trims a point's history: every few of its samples, not at each one.

``XADD ... MAXLEN ~ n`` on every append cost Redis about 1,700 instructions a sample
(parsing, a walk to the stream's first node, two rewritten arguments: docs/benchmarks.rst).
The ingest script now appends with a bare ``XADD`` and runs ``XTRIM key MAXLEN ~
history_length`` after the samples the collector names: a point's first sample on this
collector (under its current lease), then every `trim_interval` th one.

The bound: ``MAXLEN ~`` removes whole stream nodes only, so right after a trim a stream
holds fewer than ``history_length`` plus one node (``stream-node-max-entries``, 100 by
default), and at most ``trim_interval - 1`` samples come before the next trim: a stream
holds at most ``history_length + trim_interval + 99`` entries with Redis's defaults. A
request that may not have run (a failed, lost or fenced batch) must not be counted as run:
`TrimSchedule.forget` then starts every count again, so each point is trimmed at its next
sample. So does a change of the collector's settled configuration version (`RedisIngest`):
a term moved to another device takes its stream along (store/config.lua renames it), and
the counts this collector made under either device before do not describe that stream. (A
stream renamed while the collector's version stays unknown, "" from a gap until the
reconcile that follows, may hold up to ``trim_interval - 1`` entries more until the next
change or failure.) (A stream far longer than that, after ``history_length`` was lowered, shrinks by
at most 10,000 entries a trim: Redis's own limit of ``~``, as with ``XADD ... MAXLEN ~``.)
"""

from __future__ import annotations

from collections.abc import Sequence

from pydatacoll.model import Sample

#: At most this many samples of a point between two trims of its history.
TRIM_MAX = 100
#: Devices whose counts are kept (then every count starts again: an early trim, no harm).
DEVICES_KEPT = 100_000


def trim_interval(history_length: int) -> int:
    """Samples of a point between two trims of its history: a tenth of the history, from 1
    (every sample, as ``MAXLEN ~`` on each ``XADD`` did) to `TRIM_MAX`."""
    return max(1, min(TRIM_MAX, history_length // 10))


class TrimSchedule:
    """Each point's samples sent since its history's last trim request, per device and
    lease token (a new lease starts the device's counts again)."""

    def __init__(self, history_length: int) -> None:
        self.every = trim_interval(history_length)
        #: device id -> (token, (term_id, item_id) -> samples since the last trim request)
        self._devices: dict[str, tuple[str, dict[tuple[str, str], int]]] = {}

    def due(self, device_id: str, token: str, samples: Sequence[Sample]) -> str:
        """The numbers (from 1) of the samples after which their point's history is
        trimmed, space separated (the script's ``trims`` argument); counts them sent."""
        state = self._devices.get(device_id)
        if state is None or state[0] != token:
            if len(self._devices) >= DEVICES_KEPT:
                self._devices.clear()
            state = self._devices[device_id] = (token, {})
        counts, every, numbers = state[1], self.every, []
        for number, sample in enumerate(samples, 1):
            point = sample.term_id, sample.item_id
            count = counts.get(point, every - 1) + 1  # not counted yet: trim now
            if count >= every:
                numbers.append(str(number))
                count = 0
            counts[point] = count
        return " ".join(numbers)

    def forget(self) -> None:
        """Start every count again: the requests sent may not have run."""
        self._devices.clear()
