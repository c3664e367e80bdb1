"""The contract of `CommandStore` (store/ctrl_request.lua and the audit stream), run over
`MemoryRedis` (tests/store/test_contract_memory.py) and a private redis-server
(tests/integration/test_store_contract.py): equal results prove the emulation equal."""

import json

from twisted.internet.defer import inlineCallbacks
from zope.interface.verify import verifyObject

from pydatacoll.store import keys
from pydatacoll.store.commands import CommandStore
from pydatacoll.store.config import ConfigStore
from pydatacoll.store.devices import DeviceStore
from pydatacoll.store.events import EventStore
from pydatacoll.store_interfaces import ICommandStore
from tests.store.contract import SEED, device, op

POINT = {"device_id": "1", "term_id": "10", "item_id": "1000"}


class CommandStoreContract:
    """`CommandStore`: the point's lookups and the request's PUBLISH in one call."""

    @inlineCallbacks
    def test_provides_its_interface(self):
        self.assertTrue(verifyObject(ICommandStore, CommandStore(self.redis)))
        yield None

    @inlineCallbacks
    def test_a_stored_point_is_published(self):
        yield ConfigStore(self.redis).apply(SEED)
        store = CommandStore(self.redis)
        sent = yield store.send_request(POINT, keys.DEVICE_CTRL, {"request_id": "r", "v": "é"})
        self.assertEqual(sent, (None, 0))  # published; nobody subscribes here

    @inlineCallbacks
    def test_the_first_missing_id_is_named_and_nothing_is_written(self):
        yield ConfigStore(self.redis).apply([*SEED, op("put", device("2"))])
        store = CommandStore(self.redis)
        before = yield self.digest()
        for ids, field in (
            ({**POINT, "device_id": "9", "term_id": "99"}, "device_id"),
            ({**POINT, "term_id": "99", "item_id": "99"}, "term_id"),
            ({**POINT, "item_id": "99"}, "item_id"),
            ({**POINT, "device_id": "2"}, "term_item"),  # the point is device 1's
        ):
            self.assertEqual((yield store.send_request(ids, keys.DEVICE_CALL, {})), (field, 0))
        yield self.redis.call("hdel", keys.TERM_ITEM % ("10", "1001"), "device_id")
        self.assertEqual(
            (yield store.send_request({**POINT, "item_id": "1001"}, keys.DEVICE_CALL, {})),
            ("term_item", 0),
        )
        yield self.redis.call("hset", keys.TERM_ITEM % ("10", "1001"), "device_id", "not JSON")
        self.assertEqual(
            (yield store.send_request({**POINT, "item_id": "1001"}, keys.DEVICE_CALL, {})),
            ("term_item", 0),
        )
        yield self.redis.call("hset", keys.TERM_ITEM % ("10", "1001"), "device_id", json.dumps("1"))
        self.assertEqual((yield self.digest()), before)

    @inlineCallbacks
    def test_the_audit_is_the_event_stores(self):
        store = CommandStore(self.redis)
        for n in range(3):
            yield store.append_audit({"request_id": f"r{n}", "outcome": "confirmed"}, 2)
        entries = yield EventStore(self.redis).read_audit(10, None, None)
        self.assertEqual([fields["request_id"] for _, fields in entries], ["r2", "r1"])

    @inlineCallbacks
    def test_settle_against_the_collectors_answer(self):
        """Whoever sets a device_ctrl's done key first audits it: the API settling a
        timeout (None), or the collector's answer (store/ctrl_answer.lua), returned."""
        store = CommandStore(self.redis)
        self.assertIsNone((yield store.settle("r1")))
        self.assertIsNone((yield store.settle("r1")))  # still the API's: "timeout"
        devices = DeviceStore(self.redis)
        audit = {"request_id": "r2", "outcome": "confirmed"}
        yield devices.answer_ctrl("r2", "CHANNEL:REPLY:x:r2", {"outcome": "confirmed"}, audit, 9)
        self.assertEqual(json.loads((yield store.settle("r2"))), {"outcome": "confirmed"})
        # r1 was settled by the API: the collector's answer then writes no entry.
        yield devices.answer_ctrl("r1", "CHANNEL:REPLY:x:r1", {"outcome": "confirmed"}, audit, 9)
        entries = yield EventStore(self.redis).read_audit(10, None, None)
        self.assertEqual([fields for _, fields in entries], [audit])
