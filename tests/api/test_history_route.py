"""The data route reads the history database for what Redis no longer holds."""

import json
import os

from twisted.internet.defer import inlineCallbacks

from pydatacoll.api.app import ApiApp
from pydatacoll.model import Sample
from pydatacoll.processing.history import HistoryDatabase, HistoryOptions, sample_row
from pydatacoll.store import keys
from pydatacoll.store.config import ConfigStore
from tests.api.test_app import ApiTests

POINT = ("1", "10", "1000")


class HistoryRouteTests(ApiTests):
    @inlineCallbacks
    def setUp(self):
        yield super().setUp()
        from twisted.internet import reactor

        path = os.path.join(self.mktemp() + "-history.sqlite3")
        self.db = HistoryDatabase.sqlite(path, HistoryOptions(), reactor)
        self.addCleanup(self.db.close)
        yield self.db.create_schema()
        # The API under test, now with the history database behind Redis.
        self.api = ApiApp(ConfigStore(self.client), self.settings, history=self.db)
        self.port.stopListening()
        self.port = reactor.listenTCP(0, self.api.site(), interface="127.0.0.1")
        self.addCleanup(self.port.stopListening)
        self.base = f"http://127.0.0.1:{self.port.getHost().port}"

    @inlineCallbacks
    def test_older_samples_come_from_the_database(self):
        yield self.seed()
        old = [Sample(*POINT, float(i), receive_time=1_700_000_000 + i) for i in range(5)]
        # Three of them are in the database only; the two newest are in Redis as well.
        yield self.db.write_batch("b1", [sample_row(s) for s in old], None, 0, False, False)
        for sample in old[3:]:
            ms = int(sample.receive_time * 1000)
            self.sync.xadd(
                keys.POINT_DATA % POINT, {"sample": json.dumps(sample.to_json())}, id=f"{ms}-0"
            )
        path = "/api/v1/devices/1/terms/10/items/1000/datas"
        status, samples = yield self.call("GET", path + "?limit=10")
        self.assertEqual(status, 200, samples)
        self.assertEqual([s["value"] for s in samples], [4.0, 3.0, 2.0, 1.0, 0.0])
        status, samples = yield self.call("GET", path + "?limit=3")
        self.assertEqual([s["value"] for s in samples], [4.0, 3.0, 2.0])
        since = "2023-11-14T22:13:21Z"  # 1_700_000_001
        status, samples = yield self.call("GET", path + f"?since={since}")
        self.assertEqual([s["value"] for s in samples], [4.0, 3.0, 2.0, 1.0])

    @inlineCallbacks
    def test_an_unreadable_database_still_answers_with_redis(self):
        yield self.seed()
        from twisted.internet import reactor

        broken = HistoryDatabase.sqlite("/nonexistent/history.sqlite3", HistoryOptions(), reactor)
        self.addCleanup(broken.close)
        self.api.history = broken
        sample = Sample(*POINT, 7.0, receive_time=1_700_000_100)
        self.sync.xadd(keys.POINT_DATA % POINT, {"sample": json.dumps(sample.to_json())})
        status, samples = yield self.call("GET", "/api/v1/devices/1/terms/10/items/1000/datas")
        self.assertEqual((status, [s["value"] for s in samples]), (200, [7.0]))
