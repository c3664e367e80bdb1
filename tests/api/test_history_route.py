"""The data route reads the history database (an `IHistoryReader`) for what Redis no
longer holds."""

import json

from twisted.internet.defer import fail, inlineCallbacks

from pydatacoll.model import Sample
from pydatacoll.store import keys
from pydatacoll.testing.memory_api import MemoryHistoryReader
from tests.api.support import MemoryApiCase

POINT = ("1", "10", "1000")


class HistoryRouteTests(MemoryApiCase):
    def setUp(self):
        super().setUp()
        # The API under test, now with the history database behind Redis.
        self.history = MemoryHistoryReader()
        self.api.history = self.history

    @inlineCallbacks
    def test_older_samples_come_from_the_database(self):
        yield self.seed()
        old = [Sample(*POINT, float(i), receive_time=1_700_000_000 + i) for i in range(5)]
        # Three of them are in the database only; the two newest are in Redis as well.
        self.history.add(POINT, [s.to_json() for s in old])
        for sample in old[3:]:
            ms = int(sample.receive_time * 1000)
            self.sync.xadd(
                keys.POINT_DATA % POINT, {"sample": json.dumps(sample.to_json())}, id=f"{ms}-0"
            )
        path = "/api/v1/devices/1/terms/10/items/1000/datas"
        status, samples = yield self.call("GET", path + "?limit=10")
        self.assertEqual(status, 200, samples)
        self.assertEqual([s["value"] for s in samples], [4.0, 3.0, 2.0, 1.0, 0.0])
        # The database is asked only for what is strictly older than Redis' oldest.
        self.assertEqual(self.history.asked[-1], (POINT, None, 1_700_000_003_000 - 1, 8))
        status, samples = yield self.call("GET", path + "?limit=3")
        self.assertEqual([s["value"] for s in samples], [4.0, 3.0, 2.0])
        since = "2023-11-14T22:13:21Z"  # 1_700_000_001
        status, samples = yield self.call("GET", path + f"?since={since}")
        self.assertEqual([s["value"] for s in samples], [4.0, 3.0, 2.0, 1.0])

    @inlineCallbacks
    def test_an_unreadable_database_still_answers_with_redis(self):
        yield self.seed()
        self.history.read_samples = lambda *args: fail(OSError("database is gone"))
        sample = Sample(*POINT, 7.0, receive_time=1_700_000_100)
        self.sync.xadd(keys.POINT_DATA % POINT, {"sample": json.dumps(sample.to_json())})
        status, samples = yield self.call("GET", "/api/v1/devices/1/terms/10/items/1000/datas")
        self.assertEqual((status, [s["value"] for s in samples]), (200, [7.0]))
        self.assertEqual(len(self.flushLoggedErrors()), 0)
