"""The id lists are read as one JSON text (members.lua), not as a multi-bulk reply."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.trial import unittest

from pydatacoll.store import keys
from pydatacoll.store.config import MEMBERS_SHA, ConfigStore
from pydatacoll.testing.memory import MemoryRedis


class ListIdsTests(unittest.TestCase):
    @defer.inlineCallbacks
    def test_one_script_call_answers_every_id_in_natural_order(self) -> Any:
        redis = MemoryRedis()
        redis.data[keys.DEVICES] = {str(n) for n in range(1, 5001)}
        redis.calls.clear()
        ids = yield ConfigStore(redis).list_ids("device")
        self.assertEqual(ids, [str(n) for n in range(1, 5001)])
        self.assertEqual(
            [(name, args[0]) for name, args in redis.calls], [("evalsha", MEMBERS_SHA)]
        )

    @defer.inlineCallbacks
    def test_an_empty_set_is_an_empty_list(self) -> Any:
        self.assertEqual((yield ConfigStore(MemoryRedis()).list_ids("term")), [])
