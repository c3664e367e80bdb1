"""`ConfigCache` when Redis's configuration history is not the one the cache counted:
another database's messages (PUBLISH ignores SELECT), a replica that was behind taking
over, a flush; and the bounds of what it keeps meanwhile."""

from __future__ import annotations

import copy
import json

from pydatacoll.store import keys
from tests.store.test_config_cache import CacheCase


class ForeignMessageTests(CacheCase):
    def test_other_db_message_with_higher_version(self) -> None:
        """A read's version GET runs (1) while another deployment on db 1 of the same
        server (version 3) publishes a change, heard before the GET's reply. Then two
        changes here (2, 3), acknowledged, messages on their way: a read must see the
        last one, not the fill stored under db 1's version 3."""
        self.redis.holding = True
        fill = self.read()
        foreign = {
            "entity": "device",
            "op": "fresh",
            "id": "9",
            "data": None,
            "old": None,
            "version": 3,
            "history": "1.000000:1.000003",
        }
        self.successResultOf(self.memory.call("publish", keys.DEVICE_FRESH, json.dumps(foreign)))
        self.assertEqual(self.cache.seen, 1)  # not counted: another history's
        self.redis.release()
        self.redis.release()
        self.assertEqual(self.successResultOf(fill), "first")
        self.redis.holding = False
        self.subscription.holding = True
        self.change(self.there, "put", "1", "second")
        self.change(self.there, "put", "1", "third")
        self.assertEqual(self.successResultOf(self.read()), "third")

    def test_other_db_messages_do_not_stop_the_cache(self) -> None:
        """Db 1's messages clear the cache but do not move ``seen``: reads are served
        from memory again once refilled."""
        self.assert_from_redis("first")
        for version in (5, 6, 7):
            foreign = {"version": version, "history": "1.000000:2.000000"}
            self.memory.call("publish", keys.DEVICE_FRESH, json.dumps(foreign))
        self.assertEqual(self.cache.seen, 1)
        self.assert_from_redis("first")
        self.assert_from_memory("first")


class SameVersionDifferentContentTests(CacheCase):
    def test_failover_to_lagging_replica_then_same_version(self) -> None:
        """The master (version 2, "second") dies silently, the subscription is half-open
        (no loss seen); a replica at version 1 is promoted and gets one change: version 2
        again, other content. The fence's history stamp is not message 2's: from Redis."""
        replica = copy.deepcopy(self.memory.data)
        self.change(self.there, "put", "1", "second")
        self.assertEqual(self.cache.seen, 2)
        self.assert_from_redis("second")
        self.assert_from_memory("second")
        self.memory.listeners.remove(self.subscription._heard)
        self.memory.data = replica
        self.change(self.there, "put", "1", "third")
        self.assertEqual(self.successResultOf(self.read()), "third")
        self.assertEqual(self.cache.resets["history"], 1)

    def test_flushall_then_regrowth_to_seen(self) -> None:
        """FLUSHALL, then as many changes as ``seen`` whose messages are still on their
        way: a new history (its origin differs), so nothing held is served."""
        self.assert_from_redis("first")
        self.memory.data.clear()
        self.subscription.holding = True
        self.change(self.there, "create", "1", "recreated")
        self.assertEqual(self.successResultOf(self.read()), "recreated")

    def test_version_key_deleted_then_regrowth_to_seen(self) -> None:
        """STR:CONFIG_VERSION deleted by hand (the history key kept), then one change:
        version 1 again with another stamp."""
        self.assert_from_redis("first")
        self.memory.data.pop(keys.CONFIG_VERSION)
        self.subscription.holding = True
        self.change(self.there, "put", "1", "again")
        self.assertEqual(self.successResultOf(self.read()), "again")
