"""Points stored for the command path's tests, through `ConfigStore.apply` (the config
script, or its emulation in `MemoryRedis`), as the REST API stores them."""

from twisted.internet.defer import Deferred

from pydatacoll.model import Device, Item, Term, TermItem
from pydatacoll.store.config import ConfigStore
from pydatacoll.testing.fixtures import DEVICE, ITEM, TERM, TERM_ITEM


def _put(entity):
    op = {"op": "put", "entity": entity.KIND, "id": entity.key, "fields": entity.to_fields()}
    if entity.KIND == "term_item":
        op.update(term_id=entity.term_id, item_id=entity.item_id)
    return op


def store_point(redis, device_id="1", term_id="10", item_id="1000", device=None) -> Deferred:
    """Store the device (``device``, or the fixtures' one), term, item and term-item of
    one point."""
    return ConfigStore(redis).apply(
        [
            _put(Device.from_json(dict(device or DEVICE, id=device_id))),
            _put(Term.from_json(dict(TERM, id=term_id, device_id=device_id))),
            _put(Item.from_json(dict(ITEM, id=item_id))),
            _put(TermItem.from_json(dict(TERM_ITEM, term_id=term_id, item_id=item_id))),
        ]
    )
