"""The ingest script (``store/ingest.lua``) and the fixed parts of its calls: its text
and SHA, the heads of its ``EVALSHA``/``EVAL`` in RESP form, the key templates it builds
its keys from, and how a batch with not-topical marks is cut into segments
(`pydatacoll.store.ingest` sends the calls)."""

from __future__ import annotations

import hashlib
import json
from importlib.resources import files

from pydatacoll.model import Sample
from pydatacoll.store import keys
from pydatacoll.store.cluster import guarded
from pydatacoll.store.redis import bulk

_SCRIPT = guarded(files("pydatacoll.store").joinpath("ingest.lua").read_text(encoding="utf-8"))
_SHA = hashlib.sha1(_SCRIPT.encode()).hexdigest()
#: The commands' first arguments in RESP form, after the argument count.
_EVALSHA_HEAD = "$7\r\nEVALSHA\r\n" + bulk(_SHA) + "$1\r\n0\r\n"
_EVAL_HEAD = "$4\r\nEVAL\r\n" + bulk(_SCRIPT) + "$1\r\n0\r\n"
#: A point's history stream, channel and configuration end with its field in HS:VALUE
#: ("term:item"): the script makes each key as head .. field (one concatenation;
#: string.format cost Redis about 3,200 instructions per sample, docs/benchmarks.rst).
_POINT_TAIL = "%s:%s"
assert all(
    k.endswith(":" + _POINT_TAIL) for k in (keys.POINT_DATA, keys.DEVICE_DATA, keys.TERM_ITEM)
)
_TEMPLATES = json.dumps(
    {
        "term_item_head": keys.TERM_ITEM.removesuffix(_POINT_TAIL),
        "device_values": keys.DEVICE_VALUES,
        "point_data": keys.POINT_DATA,
        "point_data_head": keys.POINT_DATA.removesuffix(_POINT_TAIL),
        "device_data": keys.DEVICE_DATA,
        "device_data_head": keys.DEVICE_DATA.removesuffix(_POINT_TAIL),
        "device_samples": keys.DEVICE_SAMPLES,
        "config_version": keys.CONFIG_VERSION,
        "lease": keys.LEASE,
    }
)
_TEMPLATES_BULK = bulk(_TEMPLATES)


def _segments(
    batch: list[Sample], first: int, marks: list[tuple[int, str]]
) -> list[tuple[str, list[Sample] | None]]:
    """The segments of a batch with marks: a device's samples before its mark, the mark
    (device_id, None), then its samples after; ``first`` numbers the batch's first
    sample, and a mark numbered n comes after sample n - 1."""
    segments: list[tuple[str, list[Sample] | None]] = []
    open_groups: dict[str, list[Sample]] = {}
    position = 0
    for index, sample in enumerate(batch):
        while position < len(marks) and marks[position][0] <= first + index:
            device_id = marks[position][1]
            segments.append((device_id, None))
            open_groups.pop(device_id, None)
            position += 1
        group = open_groups.get(sample.device_id)
        if group is None:
            group = open_groups[sample.device_id] = []
            segments.append((sample.device_id, group))
        group.append(sample)
    for _, device_id in marks[position:]:
        segments.append((device_id, None))
    return segments
