"""History processor against the real MariaDB/MySQL on 127.0.0.1:3306 (root, no password).

Each test creates and drops its own database. Outages are made with a TCP port forwarder
of the test's own between the plugin and MariaDB: closed (connections cut, new ones
refused) until the plugin's retries have reached their cap (`OUTAGE_FAILURES` failed
attempts) and at least ``PYDATACOLL_HISTORY_OUTAGE`` seconds (default 3) have passed,
then opened again.
A missing MariaDB fails these tests; they never skip.
"""

from __future__ import annotations

import os
import uuid

import pymysql
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.protocols import portforward
from twisted.trial.unittest import TestCase

from pydatacoll.model import Sample
from pydatacoll.plugins.history import history
from pydatacoll.testing.history import drained, stored_samples
from tests.processing.test_history_sqlite import HOSTILE, context, point_samples

MYSQL = {"host": "127.0.0.1", "port": 3306, "user": "root", "password": ""}
OUTAGE = float(os.environ.get("PYDATACOLL_HISTORY_OUTAGE", "3"))
#: Failed attempts to reach the database before it returns: with retry_initial 0.2 and
#: retry_max 2 the delays are 0.2, 0.4, 0.8, 1.6, then 2 s (the cap) before the sixth.
OUTAGE_FAILURES = 6


def admin(statement, args=None, database=None):
    """Run one statement on a fresh blocking connection (called in a thread)."""
    connection = pymysql.connect(**MYSQL, database=database, connect_timeout=5, autocommit=True)
    try:
        with connection.cursor() as cursor:
            cursor.execute(statement, args)
            return cursor.fetchall()
    finally:
        connection.close()


class _Server(portforward.ProxyServer):
    def connectionMade(self):
        self.factory.forwarder.connections.add(self)
        super().connectionMade()

    def connectionLost(self, reason):
        self.factory.forwarder.connections.discard(self)
        super().connectionLost(reason)


class _Factory(portforward.ProxyFactory):
    protocol = _Server

    def __init__(self, forwarder):
        super().__init__(MYSQL["host"], MYSQL["port"])
        self.forwarder = forwarder


class Forwarder:
    """127.0.0.1:<port> -> MariaDB, which the test can close and open again."""

    def __init__(self):
        self.connections = set()
        self.factory = _Factory(self)
        self.listening = reactor.listenTCP(0, self.factory, interface="127.0.0.1")
        self.port = self.listening.getHost().port

    def close(self):
        """Cut every connection and refuse new ones."""
        for server in list(self.connections):
            server.transport.abortConnection()
            if server.peer is not None:
                server.peer.transport.abortConnection()
        listening, self.listening = self.listening, None
        return listening.stopListening() if listening else None

    def open(self):
        """Accept connections again, on the same port."""
        self.listening = reactor.listenTCP(self.port, self.factory, interface="127.0.0.1")


class MysqlHistoryTests(TestCase):
    timeout = OUTAGE + 120

    @inlineCallbacks
    def setUp(self):
        self.database = f"pdc_history_{uuid.uuid4().hex[:12]}"
        yield deferToThread(admin, f"CREATE DATABASE `{self.database}`")
        self.addCleanup(deferToThread, admin, f"DROP DATABASE IF EXISTS `{self.database}`")
        self.forwarder = Forwarder()
        self.addCleanup(lambda: self.forwarder.close())

    def start(self, through_forwarder=False, **options):
        port = self.forwarder.port if through_forwarder else MYSQL["port"]
        options.setdefault("url", f"mysql://root@127.0.0.1:{port}/{self.database}")
        processor = history.build(context(self.mktemp(), options))
        processor.startService()
        self.addCleanup(lambda: processor.stopService() if processor.running else None)
        return processor

    def query(self, statement, args=None):
        return deferToThread(admin, statement, args, self.database)

    @inlineCallbacks
    def test_values_point_time_and_quality(self):
        processor = self.start()
        samples = [
            Sample("1", "10", "1000", 229.75, "good", (), 1700000000.123, 1700000000.456),
            Sample("1", "10", "1001", 42, "questionable", ("NT",), None, 1700000001.0),
            Sample("2", "20", "3000", "open", "good", (), 1700000002.5, 1700000002.75),
            Sample("2", "20", "3001", None, "invalid", ("timeout",), None, 1700000003.0),
        ]
        processor.samples_received(samples)
        yield drained(processor)
        rows = yield self.query(
            "SELECT device_id, term_id, item_id, source_time, receive_time, value, value_text, "
            "quality, flags FROM samples ORDER BY id"
        )
        self.assertEqual(
            list(rows),
            [
                ("1", "10", "1000", 1700000000123, 1700000000456, 229.75, None, "good", "[]"),
                ("1", "10", "1001", None, 1700000001000, 42.0, "42", "questionable", '["NT"]'),
                ("2", "20", "3000", 1700000002500, 1700000002750, None, '"open"', "good", "[]"),
                ("2", "20", "3001", None, 1700000003000, None, "null", "invalid", '["timeout"]'),
            ],
        )
        for s in samples:
            self.assertEqual((yield stored_samples(processor, *s.point)), [s.to_json()])
        window = yield stored_samples(processor, "1", "10", "1000", 1700000000.456, 1700000000.456)
        self.assertEqual(len(window), 1)
        before = yield stored_samples(processor, "1", "10", "1000", until=1700000000.4)
        self.assertEqual(before, [])

    @inlineCallbacks
    def test_sql_looking_ids_and_values_verbatim(self):
        processor = self.start()
        ids = (HOSTILE, "t'; SELECT SLEEP(5); #", 'i"); DELETE FROM samples; --')
        values = [HOSTILE, "\\'; DROP DATABASE mysql; --", "%s %(x)s ?", "\x00\u2603"]
        processor.samples_received(
            [
                Sample(*ids, v, "good", (HOSTILE,), None, 1700000000.0 + i)
                for i, v in enumerate(values)
            ]
        )
        yield drained(processor)
        stored = yield stored_samples(processor, *ids)
        self.assertEqual([s["value"] for s in stored], list(reversed(values)))
        self.assertEqual(stored[0]["flags"], [HOSTILE])
        rows = yield self.query(
            "SELECT COUNT(*) FROM samples WHERE device_id = %s AND term_id = %s AND item_id = %s",
            ids,
        )
        self.assertEqual(rows[0][0], 4)
        tables = yield self.query("SHOW TABLES")
        self.assertEqual(sorted(t[0] for t in tables), ["alarms", "sample_batches", "samples"])

    @inlineCallbacks
    def test_store_on_change_with_deadbands(self):
        processor = self.start(history="change", history_deadband="0.5")
        processor.config_changed(
            {
                "entity": "term_item",
                "op": "add",
                "id": "10:1001",
                "data": {
                    "term_id": "10",
                    "item_id": "1001",
                    "history_deadband": 0,
                    "history_deadband_percent": 10,
                },
            }
        )
        values = [100.0, 100.4, 100.6, 101.0, 108.0, 112.0, 112.0]
        batch = []
        for i, v in enumerate(values):
            batch.append(Sample("1", "10", "1000", v, receive_time=1.0 + i))
            batch.append(Sample("1", "10", "1001", v, receive_time=1.0 + i))
        batch.append(Sample("1", "10", "1000", 112.0, "invalid", (), None, 20.0))
        processor.samples_received(batch)
        yield drained(processor)
        absolute = yield stored_samples(processor, "1", "10", "1000")
        self.assertEqual(
            [s["value"] for s in reversed(absolute)], [100.0, 100.6, 108.0, 112.0, 112.0]
        )
        self.assertEqual(absolute[0]["quality"], "invalid")
        percent = yield stored_samples(processor, "1", "10", "1001")
        self.assertEqual([s["value"] for s in reversed(percent)], [100.0, 112.0])

    @inlineCallbacks
    def test_database_away_and_back_nothing_lost(self):
        """MariaDB unreachable mid-run (retries at their cap): every sample is in the table."""
        processor = self.start(
            through_forwarder=True,
            retry_initial="0.2",
            retry_max="2",
            connect_timeout="2",
            query_timeout="10",
            batch_samples="200",
        )
        produced = 0
        clock = [1700000000.0]

        def produce(n=20):
            nonlocal produced
            samples = []
            for _ in range(n):
                clock[0] += 0.001
                samples.append(
                    Sample(
                        "1",
                        str(produced % 5),
                        "1000",
                        float(produced),
                        "good",
                        (),
                        clock[0],
                        clock[0],
                    )
                )
                produced += 1
            processor.samples_received(samples)

        @inlineCallbacks
        def run_for(seconds, until=lambda: True):
            """Produce 20 samples every 0.05 s for ``seconds``, then until ``until()``."""
            end = reactor.seconds() + seconds
            while reactor.seconds() < end or not until():
                self.assertLess(reactor.seconds(), end + 60, processor.status())
                produce()
                yield deferLater(reactor, 0.05, lambda: None)

        yield run_for(2)
        before = produced
        self.assertTrue(processor.status()["connected"])
        yield self.forwarder.close()
        yield run_for(
            OUTAGE, until=lambda: processor.status()["database_failures"] >= OUTAGE_FAILURES
        )
        during = produced - before
        status = processor.status()
        self.assertEqual((status["connected"], status["mode"]), (False, "spooling"))
        self.assertGreater(status["spool_samples"], 0)
        self.forwarder.open()
        yield run_for(3)
        yield drained(processor, timeout=60)
        rows = yield self.query("SELECT COUNT(*), COUNT(DISTINCT value) FROM samples")
        self.assertEqual(tuple(rows[0]), (produced, produced))
        status = processor.status()
        self.assertEqual(status["written"], produced)
        self.assertEqual(status["dropped_total"], 0)
        self.assertGreaterEqual(status["spool_peak"], during // 2)
        self.assertGreater(status["database_failures"], 0)
        self.assertEqual((status["connected"], status["mode"]), (True, "direct"))
        self.flushLoggedErrors()

    @inlineCallbacks
    def test_spool_limit_drops_are_counted(self):
        processor = self.start(
            through_forwarder=True,
            retry_initial="0.1",
            retry_max="0.5",
            connect_timeout="2",
            spool_max_samples="300",
            batch_samples="50",
        )
        processor.samples_received(point_samples(50))
        yield drained(processor)
        yield self.forwarder.close()
        sent = point_samples(1000, start=1700001000.0)
        for i in range(0, 1000, 50):
            processor.samples_received(sent[i : i + 50])
            yield deferLater(reactor, 0.02, lambda: None)
        yield deferLater(reactor, 0.5, lambda: None)
        self.forwarder.open()
        yield drained(processor, timeout=60)
        status = processor.status()
        rows = yield self.query("SELECT COUNT(*) FROM samples")
        self.assertEqual(rows[0][0], status["written"])
        self.assertGreater(status["dropped"]["spool_full"], 0)
        self.assertEqual(rows[0][0] + status["dropped_total"], 1050)
        self.flushLoggedErrors()

    @inlineCallbacks
    def test_alarms(self):
        processor = self.start()
        yield drained(processor)
        yield processor.store_alarm(
            "1", "10", HOSTILE, "high", "raise", 231.5, 230, 1700000000.25, "above 'up_limit'; 230"
        )
        rows = yield self.query(
            "SELECT item_id, kind, event, value, limit_value, event_time, message FROM alarms"
        )
        self.assertEqual(
            list(rows),
            [(HOSTILE, "high", "raise", 231.5, 230.0, 1700000000250, "above 'up_limit'; 230")],
        )
