"""`SpoolWriter`: one append in flight, rows on disk in the order given, refusals counted."""

import os

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase

from pydatacoll.processing.spool import Spool, SpoolWriter


class SpoolWriterTests(TestCase):
    def writer(self, max_samples=1000):
        spool = Spool(
            os.path.abspath(self.mktemp()),
            max_bytes=1_000_000,
            max_samples=max_samples,
            segment_bytes=100_000,
            fsync=False,
        )
        self.appends = 0
        self.counters = {"spooled": 0}
        self.dropped = {"spool_full": 0}

        def appended():
            self.appends += 1
            writer.flush()  # what the owners do while running

        writer = SpoolWriter(
            reactor,
            spool,
            label="test",
            unit="rows",
            counters=self.counters,
            dropped=self.dropped,
            appended=appended,
        )
        return writer

    @inlineCallbacks
    def test_order_bounds_and_close(self):
        writer = self.writer(max_samples=25)
        yield writer.start()
        for start in range(0, 30, 3):
            writer.pending.extend((i, "row") for i in range(start, start + 3))
            writer.flush()
        self.assertTrue(writer.appending)
        yield writer.drain()
        self.assertEqual((self.counters["spooled"], self.dropped["spool_full"]), (25, 5))
        self.assertEqual(writer.peak, 25)
        self.assertGreaterEqual(self.appends, 2)  # at most one in flight: several appends
        read = yield writer.call(writer.spool.read, 100)
        self.assertEqual([row[0] for row in read.rows], list(range(25)))  # the newest refused
        writer.pending.append((99, "late"))
        yield writer.close()
        self.assertEqual(self.counters["spooled"], 25)  # full: refused, counted, not lost quietly
        self.assertEqual(self.dropped["spool_full"], 6)
