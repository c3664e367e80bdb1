"""Alarm events of the limits plugin reach the history database's alarms table."""

import json

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from pydatacoll.config import load_settings
from pydatacoll.processing.history import HistoryProcessor
from pydatacoll.store import keys
from pydatacoll.store.redis import RedisClient
from pydatacoll.testing.redis import shared_redis
from tests.processing.test_history_sqlite import context


@inlineCallbacks
def until(predicate, timeout=10.0):
    deadline = reactor.seconds() + timeout
    while True:
        result = yield predicate()
        if result:
            return result
        if reactor.seconds() > deadline:
            raise AssertionError("timed out")
        yield deferLater(reactor, 0.05, lambda: None)


class AlarmHistoryTests(TestCase):
    @inlineCallbacks
    def setUp(self):
        server = shared_redis()
        settings = load_settings(None, {"redis": server.url})
        self.client = RedisClient(settings.redis, timeout=2, pool_size=1)
        self.client.startService()
        self.addCleanup(self.client.stopService)
        yield self.client.when_connected()
        yield self.client.call("flushall")
        self.history = HistoryProcessor.from_context(context(self.mktemp(), redis=self.client))
        self.history.startService()
        self.addCleanup(self.history.stopService)
        yield until(lambda: deferLater(reactor, 0, lambda: self.history._alarms.subscribed))

    @inlineCallbacks
    def test_raise_and_clear_are_stored(self):
        for event, value in (("raise", 231.5), ("clear", 225)):
            yield self.client.call(
                "publish",
                keys.ALARM,
                json.dumps(
                    {
                        "event": event,
                        "device_id": "1",
                        "term_id": "10",
                        "item_id": "1000",
                        "kind": "high",
                        "value": value,
                        "limit": 230,
                        "message": f"{event}d",
                        "time": "2026-12-01T06:00:00.250+00:00",
                    }
                ),
            )
        yield self.client.call("publish", keys.ALARM, "not JSON")
        query = (
            "SELECT event, kind, value, value_text, limit_value, event_time, message FROM alarms"
        )

        def stored():
            d = self.history.database.pool.runQuery(query + " ORDER BY id")
            return d.addCallback(lambda rows: rows if len(rows) == 2 else None)

        rows = yield until(stored)
        self.assertEqual(rows[0][:3], ("raise", "high", 231.5))
        self.assertEqual(rows[0][4:], (230.0, 1796104800250, "raised"))  # 2026-12-01T06:00:00.250Z
        self.assertEqual((rows[1][0], rows[1][3]), ("clear", "225"))
        self.assertEqual(self.history.status()["alarms_written"], 2)
