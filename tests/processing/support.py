"""Shared set-up of the real-Redis processor tests (tests/integration): a private Redis
with a few configured points, reached only through the Twisted client (no blocking call on
the reactor thread)."""

import json
import tempfile

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import deferLater

from pydatacoll.config import Settings, load_settings
from pydatacoll.model import Device, Item, Term, TermItem
from pydatacoll.processing import ProcessorContext
from pydatacoll.store import keys
from pydatacoll.store.config import ConfigStore
from pydatacoll.store.redis import RedisClient
from pydatacoll.testing.redis import shared_redis

ITEMS = ("1000", "1001", "1002", "1003", "1004", "1005")


def entity_op(kind, entity):
    """A `ConfigStore.apply` op writing ``entity``."""
    op = {"op": kind, "entity": entity.KIND, "id": entity.key, "fields": entity.to_fields()}
    if entity.KIND == "term_item":
        op.update(term_id=entity.term_id, item_id=entity.item_id)
    return op


@inlineCallbacks
def redis_store(test, limits=None):
    """Connect to the flushed private Redis; seed device 1, term 10 and the points 10:ITEMS."""
    server = shared_redis()
    test.settings = load_settings(None, {"redis": server.url})
    test.client = RedisClient(test.settings.redis, timeout=5, pool_size=2)
    test.client.startService()
    test.addCleanup(test.client.stopService)
    yield test.client.when_connected()
    yield test.client.call("flushall")
    test.store = ConfigStore(test.client)
    device = Device.from_json({"id": "1", "protocol": "iec104", "ip": "127.0.0.1"})
    yield test.store.apply([entity_op("create", device)])
    yield test.store.apply([entity_op("create", Term.from_json({"id": "10", "device_id": "1"}))])
    yield test.store.apply([entity_op("create", Item.from_json({"id": i})) for i in ITEMS])
    points = []
    for ioa, item_id in enumerate(ITEMS, start=100):
        # an IEC 104 point needs its IOA (the REST checks a merged point in full)
        body = {
            "term_id": "10",
            "item_id": item_id,
            "protocol_code": ioa,
            **(limits or {}).get(item_id, {}),
        }
        points.append(entity_op("create", TermItem.from_json(body)))
    yield test.store.apply(points)


def context(test, clock, options=None, emit=None):
    """A `ProcessorContext` on the test's Redis client."""
    return ProcessorContext(
        reactor=clock,
        settings=Settings(),
        options=options or {},
        redis=test.client,
        emit=emit or (lambda samples: None),
        data_dir=tempfile.mkdtemp(),
    )


def store_sample(client, sample):
    """Append a sample to its point's stream, as the ingest path does (a Deferred)."""
    text = json.dumps(sample.to_json())
    key = keys.POINT_DATA % sample.point
    return client.call("execute_command", "XADD", key, "*", "sample", text)


@inlineCallbacks
def wait_for(condition, timeout=5.0):
    """Let the reactor run until ``condition()`` holds."""
    for _ in range(int(timeout / 0.01)):
        if condition():
            return
        yield deferLater(reactor, 0.01, lambda: None)
    raise AssertionError("condition not reached in time")
