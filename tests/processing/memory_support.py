"""Set-up of the processor unit tests: `MemoryRedis` seeded with a few points, a `Clock`.

The same points as tests/processing/support.py seeds in a real Redis (device 1, term 10,
the term-items 10:ITEMS), written with plain commands: nothing here needs a redis-server.
"""

import json
import tempfile

from pydatacoll.config import Settings
from pydatacoll.model import TermItem
from pydatacoll.processing import ProcessorContext
from pydatacoll.store import keys
from pydatacoll.testing.memory import MemoryRedis

ITEMS = ("1000", "1001", "1002", "1003", "1004", "1005")


def seed_term_item(memory, term_id, item_id, fields):
    """Write one term-item (and its set memberships) as the configuration store does."""
    memory.call("sadd", keys.TERMS, [term_id])
    memory.call("sadd", keys.TERM_ITEMS % term_id, [item_id])
    memory.call("hmset", keys.TERM_ITEM % (term_id, item_id), fields)


def memory_points(limits=None, items=ITEMS):
    """A `MemoryRedis` with device 1's points 10:``items`` (``limits``: extra attributes by
    item id)."""
    memory = MemoryRedis()
    for ioa, item_id in enumerate(items, start=100):
        body = {"term_id": "10", "item_id": item_id, "protocol_code": ioa}
        body.update((limits or {}).get(item_id, {}))
        fields = dict(TermItem.from_json(body).to_fields())
        fields["device_id"] = json.dumps("1")
        seed_term_item(memory, "10", item_id, fields)
    return memory


def memory_context(memory, clock, options=None, emit=None):
    """A `ProcessorContext` on ``memory`` and ``clock``."""
    return ProcessorContext(
        reactor=clock,
        settings=Settings(),
        options=options or {},
        redis=memory,
        emit=emit or (lambda samples: None),
        data_dir=tempfile.mkdtemp(),
    )


def store_sample(memory, sample):
    """Append a sample to its point's stream, as the ingest path does (id: its receive
    time in ms, kept increasing)."""
    key = keys.POINT_DATA % sample.point
    stream = memory.data.get(key) or []
    ms = int(sample.receive_time * 1000)
    if stream:
        ms = max(ms, int(stream[-1][0].split("-")[0]) + 1)
    text = json.dumps(sample.to_json())
    memory.call("execute_command", "XADD", key, f"{ms}-0", "sample", text)


def stream_events(memory, key=keys.ALARM_LOG):
    """The JSON events of a log stream, oldest first."""
    return [json.loads(fields["event"]) for _id, fields in memory.data.get(key) or []]
