"""History processor over SQLite (the embedded default), through the real adbapi pool."""

from __future__ import annotations

import os
import sqlite3

from twisted.application.service import IService
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import deferLater
from twisted.plugin import IPlugin, getPlugins
from twisted.trial.unittest import TestCase
from zope.interface.verify import verifyObject

from pydatacoll import plugins
from pydatacoll.config import Settings
from pydatacoll.interfaces import IHistoryReader, IProcessor, IProcessorFactory
from pydatacoll.model import Sample
from pydatacoll.plugins.history import history
from pydatacoll.processing import ProcessorContext
from pydatacoll.processing.history import history_reader
from pydatacoll.testing.history import drained, stored_samples
from pydatacoll.testing.memory import MemoryRedis
from tests.processing.memory_support import seed_term_item

HOSTILE = "1'; DROP TABLE samples; --"


def memory_redis(term_items):
    """A `MemoryRedis` holding the term-items ``{(term_id, item_id): fields}``."""
    memory = MemoryRedis()
    for (term_id, item_id), fields in term_items.items():
        seed_term_item(memory, term_id, item_id, fields)
    return memory


def context(data_dir, options=None, redis=None):
    """A `ProcessorContext` for the history plugin."""
    return ProcessorContext(
        reactor=reactor,
        settings=Settings(),
        options=dict(options or {}),
        redis=redis,
        emit=lambda samples: None,
        data_dir=data_dir,
    )


def point_samples(count, device="1", term="10", item="1000", start=1700000000.0, step=0.01):
    return [
        Sample(device, term, item, float(i), "good", (), start + i * step - 0.001, start + i * step)
        for i in range(count)
    ]


class HistoryTestMixin:
    """Start processors and stop them at the end of the test."""

    def start(self, options=None, redis=None, data_dir=None):
        self.data_dir = data_dir or getattr(self, "data_dir", None) or self.mktemp()
        processor = history.build(context(self.data_dir, options, redis))
        processor.startService()
        self.addCleanup(lambda: processor.stopService() if processor.running else None)
        return processor


class InterfaceTests(HistoryTestMixin, TestCase):
    def test_factory(self):
        self.assertTrue(verifyObject(IProcessorFactory, history))
        self.assertTrue(verifyObject(IPlugin, history))
        self.assertEqual(history.name, "history")

    def test_discovered(self):
        names = [f.name for f in getPlugins(IProcessorFactory, plugins)]
        self.assertIn("history", names)

    def test_processor(self):
        processor = history.build(context(self.mktemp()))
        self.assertTrue(verifyObject(IProcessor, processor))
        self.assertTrue(verifyObject(IService, processor))
        self.assertEqual(processor.status()["state"], "stopped")


class SqliteTests(HistoryTestMixin, TestCase):
    timeout = 60

    def rows(self, sql="SELECT * FROM samples ORDER BY id"):
        connection = sqlite3.connect(os.path.join(self.data_dir, "history.sqlite3"))
        try:
            return connection.execute(sql).fetchall()
        finally:
            connection.close()

    @inlineCallbacks
    def test_write_and_read(self):
        processor = self.start({"batch_samples": "7"})
        a = point_samples(30)
        b = point_samples(5, term="11", item="2000")
        bad = Sample("1", "10", "1001", None, "invalid", ("timeout",), None, 1700000001.0)
        for i in range(0, 30, 3):
            processor.samples_received(a[i : i + 3] + b[i // 6 : i // 6 + 1] * (i % 6 == 0))
        processor.samples_received([bad])
        yield drained(processor)
        self.assertEqual(len(self.rows()), 36)
        newest = yield stored_samples(processor, "1", "10", "1000", limit=3)
        self.assertEqual(newest, [s.to_json() for s in reversed(a[-3:])])
        since, until = a[5].receive_time, a[9].receive_time
        window = yield stored_samples(processor, "1", "10", "1000", since, until, 100)
        self.assertEqual([s["value"] for s in window], [9.0, 8.0, 7.0, 6.0, 5.0])
        other = yield stored_samples(processor, "1", "11", "2000")
        self.assertEqual(len(other), 5)
        invalid = yield stored_samples(processor, "1", "10", "1001")
        self.assertEqual(invalid, [bad.to_json()])
        status = processor.status()
        self.assertEqual((status["written"], status["dropped_total"]), (36, 0))
        self.assertEqual((status["mode"], status["connected"]), ("direct", True))

    @inlineCallbacks
    def test_history_reader_reads_what_the_plugin_wrote(self):
        """`history_reader` opens the plugin's database as an `IHistoryReader`."""
        root = self.mktemp()
        settings = Settings(data_dir=root, plugins_enabled=("history",))
        processor = self.start(data_dir=os.path.join(root, "plugins", "history"))
        samples = point_samples(4)
        processor.samples_received(samples)
        yield drained(processor)
        reader = history_reader(settings, reactor)
        self.addCleanup(reader.close)
        self.assertTrue(verifyObject(IHistoryReader, reader))
        newest = yield reader.read_samples(("1", "10", "1000"), None, None, 2)
        self.assertEqual(newest, [s.to_json() for s in reversed(samples[-2:])])
        since = int(samples[1].receive_time * 1000)
        until = int(samples[2].receive_time * 1000)
        window = yield reader.read_samples(("1", "10", "1000"), since, until, 10)
        self.assertEqual(window, [samples[2].to_json(), samples[1].to_json()])
        self.assertIsNone(history_reader(Settings(plugins_enabled=()), reactor))

    @inlineCallbacks
    def test_sql_looking_ids_and_values_verbatim(self):
        processor = self.start()
        s = Sample(
            HOSTILE,
            'x"; DELETE FROM alarms;',
            "`item`\\",
            HOSTILE,
            "good",
            (HOSTILE,),
            None,
            1700000000.5,
        )
        processor.samples_received([s])
        yield drained(processor)
        back = yield stored_samples(processor, HOSTILE, 'x"; DELETE FROM alarms;', "`item`\\")
        self.assertEqual(back, [s.to_json()])
        self.assertEqual(
            self.rows("SELECT device_id, term_id, item_id FROM samples"),
            [(HOSTILE, 'x"; DELETE FROM alarms;', "`item`\\")],
        )

    @inlineCallbacks
    def test_policies_from_redis_and_changes(self):
        redis = memory_redis(
            {
                ("10", "1000"): {"history": '"change"', "history_deadband": "1"},
                ("10", "1001"): {"history": '"none"'},
                ("10", "1002"): {"history": '"bogus"'},  # the default applies
            }
        )
        redis.down()  # absent at start: the default policy applies meanwhile
        processor = self.start({"history": "every", "retry_initial": "0.01"}, redis=redis)
        self.assertFalse(processor.status()["config_loaded"])
        redis.up()
        self.assertTrue(processor.status()["config_loaded"])
        values = [10.0, 10.5, 11.5, 11.6, 9.0]
        for item in ("1000", "1001", "1002"):
            processor.samples_received(
                [Sample("1", "10", item, v, receive_time=1.0 + i) for i, v in enumerate(values)]
            )
        yield drained(processor)
        stored = yield stored_samples(processor, "1", "10", "1000")
        self.assertEqual([s["value"] for s in stored], [9.0, 11.5, 10.0])
        self.assertEqual((yield stored_samples(processor, "1", "10", "1001")), [])
        self.assertEqual(len((yield stored_samples(processor, "1", "10", "1002"))), 5)
        processor.config_changed(
            {
                "entity": "term_item",
                "op": "fresh",
                "id": "10:1001",
                "data": {
                    "term_id": "10",
                    "item_id": "1001",
                    "history": "change",
                    "history_deadband_percent": 50,
                },
            }
        )
        processor.config_changed(
            {
                "entity": "term",
                "op": "del",
                "id": "10",
                "cascade": {
                    "terms": ["10"],
                    "term_items": [{"device_id": "1", "term_id": "10", "item_id": "1000"}],
                },
            }
        )
        processor.samples_received(
            [Sample("1", "10", "1001", v, receive_time=10.0 + i) for i, v in enumerate(values)]
            + [Sample("1", "10", "1000", 9.0, receive_time=20.0)]
        )
        yield drained(processor)
        stored = yield stored_samples(processor, "1", "10", "1001")
        self.assertEqual([s["value"] for s in stored], [10.0])
        self.assertEqual(len((yield stored_samples(processor, "1", "10", "1000"))), 4)
        self.assertEqual(processor.status()["skipped"], 11)

    @inlineCallbacks
    def test_database_away_then_back_and_spool_limit(self):
        data_dir = self.mktemp()
        missing = os.path.join(os.path.abspath(data_dir), "later")
        processor = self.start(
            {
                "sqlite_file": os.path.join(missing, "h.sqlite3"),
                "retry_initial": "0.05",
                "retry_max": "0.2",
                "spool_max_samples": "150",
                "batch_samples": "40",
            },
            data_dir=data_dir,
        )
        sent = point_samples(200)
        for i in range(0, 200, 10):
            processor.samples_received(sent[i : i + 10])
            yield deferLater(reactor, 0.01, lambda: None)
        yield deferLater(reactor, 0.3, lambda: None)
        status = processor.status()
        self.assertEqual((status["mode"], status["connected"]), ("spooling", False))
        self.assertGreater(status["database_failures"], 0)
        self.assertEqual(status["spool_samples"], 150)
        os.makedirs(missing)
        yield drained(processor)
        status = processor.status()
        dropped = status["dropped"]["spool_full"]
        self.assertGreater(dropped, 0)
        self.assertEqual(status["written"] + dropped, 200)
        stored = yield stored_samples(processor, "1", "10", "1000", limit=1000)
        self.assertEqual(len(stored), status["written"])
        values = [s["value"] for s in reversed(stored)]
        self.assertEqual(values, sorted(values))  # in order, the newest dropped
        self.assertEqual(values[:150], [float(i) for i in range(150)][: len(values[:150])])
        self.flushLoggedErrors()

    @inlineCallbacks
    def test_stop_spools_the_rest_and_restart_writes_it(self):
        data_dir = self.mktemp()
        missing = os.path.join(os.path.abspath(data_dir), "later")
        options = {
            "sqlite_file": os.path.join(missing, "h.sqlite3"),
            "retry_initial": "0.05",
            "retry_max": "0.1",
        }
        first = self.start(options, data_dir=data_dir)
        first.samples_received(point_samples(25))
        yield deferLater(reactor, 0.2, lambda: None)
        first.samples_received(point_samples(25, start=1700000001.0))
        yield first.stopService()
        os.makedirs(missing)
        second = self.start(options, data_dir=data_dir)
        yield drained(second)
        stored = yield stored_samples(second, "1", "10", "1000", limit=1000)
        self.assertEqual(len(stored), 50)
        self.assertEqual(second.status()["written"], 50)
        self.flushLoggedErrors()

    @inlineCallbacks
    def test_alarms(self):
        processor = self.start()
        yield drained(processor)
        yield processor.store_alarm(
            "1", "10", HOSTILE, "high", "raise", 231.5, 230, 1700000000.25, "above 230"
        )
        yield processor.store_alarm("1", "10", HOSTILE, "high", "clear", 229, 230.0, 1700000001.0)
        self.assertEqual(
            self.rows(
                "SELECT device_id, term_id, item_id, kind, event, value, value_text, "
                "limit_value, event_time, message FROM alarms ORDER BY id"
            ),
            [
                (
                    "1",
                    "10",
                    HOSTILE,
                    "high",
                    "raise",
                    231.5,
                    None,
                    230.0,
                    1700000000250,
                    "above 230",
                ),
                ("1", "10", HOSTILE, "high", "clear", 229.0, "229", 230.0, 1700000001000, ""),
            ],
        )
        self.assertEqual(processor.status()["alarms_written"], 2)
