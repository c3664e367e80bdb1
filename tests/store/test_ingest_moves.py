"""A point's history keeps its bound when its term moves to another device and back
(store/config.lua renames the stream with it; the collector's trim counts were made
under the other device), on MemoryRedis (whose ``XTRIM MAXLEN ~`` trims exactly: the
bound there is history_length + trim_interval - 1)."""

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from pydatacoll.model import Sample
from pydatacoll.store import ingest, keys
from pydatacoll.store.history_trim import trim_interval
from pydatacoll.store.ingest import RedisIngest
from pydatacoll.testing.memory import MemoryRedis

HISTORY = 100
EVERY = trim_interval(HISTORY)  # 10


class MovedTermTests(SynchronousTestCase):
    def setUp(self):
        self.store = MemoryRedis()
        self.version = 1
        self.store._set(keys.CONFIG_VERSION, "1")
        self.store._hset(keys.TERM_ITEM % ("t", "i"), "device_id", '"D"')
        self.sink = RedisIngest(self.store, Clock(), HISTORY, 10_000)
        self.sink.settled_version = "1"
        self.sink.startService()
        self.lengths = []

    def write(self, device_id, count):
        self.sink.samples_received(
            [Sample(device_id, "t", "i", float(n), receive_time=1.5) for n in range(count)]
        )
        self.sink.clock.advance(ingest.LINGER)
        self.lengths.append(len(self.store.data[keys.POINT_DATA % (device_id, "t", "i")]))

    def move(self, old, new):
        """What a configuration change moving term t does (store/config.lua), then what
        the collector's reconcile does on its message (devices/reconcile.py)."""
        store = self.store
        store._rename(keys.POINT_DATA % (old, "t", "i"), keys.POINT_DATA % (new, "t", "i"))
        store._hset(keys.TERM_ITEM % ("t", "i"), "device_id", f'"{new}"')
        self.version += 1
        store._set(keys.CONFIG_VERSION, str(self.version))
        self.sink.settled_version = str(self.version)
        self.sink.unsettled.update({old, new})

    def test_a_term_moved_away_and_back_keeps_its_history_bounded(self):
        self.write("D", 1 + 19 * EVERY)  # D's count: 0 (trimmed at the last sample)
        self.move("D", "E")
        self.write("E", EVERY)  # trimmed at E's first sample, then EVERY - 1 untrimmed
        self.move("E", "D")
        self.write("D", EVERY - 1)  # D's count, made before the moves, says not yet
        self.assertEqual(self.sink.status()["skipped"], 0)
        self.assertLessEqual(max(self.lengths), HISTORY + EVERY - 1, self.lengths)
