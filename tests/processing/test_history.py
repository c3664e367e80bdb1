"""History processor: options, storage policy, rows and the on-disk spool (no database)."""

from __future__ import annotations

import json
import math
import os

from twisted.trial.unittest import SynchronousTestCase

from pydatacoll.errors import ConfigError
from pydatacoll.model import Sample
from pydatacoll.processing.history import (
    FIRST_SEGMENT,
    ChangeFilter,
    HistoryOptions,
    Policy,
    Spool,
    changed,
    parse_position,
    row_sample,
    sample_row,
)

HOSTILE = "1'; DROP TABLE samples; --"


def sample(value, quality="good", flags=(), term="10", item="1000", t=1000.0):
    return Sample("1", term, item, value, quality, flags, t - 0.5, t)


class OptionsTests(SynchronousTestCase):
    def test_defaults(self):
        options = HistoryOptions.parse({})
        self.assertEqual(options, HistoryOptions())
        self.assertEqual(options.default_policy, Policy("every", 0.0, 0.0))

    def test_values(self):
        options = HistoryOptions.parse(
            {"url": "mysql://root@127.0.0.1/h", "history": "change", "batch_samples": "50"}
        )
        self.assertEqual(
            (options.url, options.history, options.batch_samples),
            ("mysql://root@127.0.0.1/h", "change", 50),
        )

    def test_bad_values_name_their_key(self):
        for name, text in [
            ("history", "sometimes"),
            ("batch_samples", "0"),
            ("spool_max_mb", "lots"),
            ("url", "postgres://x/y"),
            ("spool_fsync", "maybe"),
        ]:
            e = self.assertRaises(ConfigError, HistoryOptions.parse, {name: text})
            self.assertEqual(e.key, f"plugin:history.{name}")

    def test_unknown_option(self):
        e = self.assertRaises(ConfigError, HistoryOptions.parse, {"tabel": "x"})
        self.assertEqual(e.key, "plugin:history.tabel")


class PolicyTests(SynchronousTestCase):
    def test_from_term_item(self):
        default = Policy("every", 1.0, 0.0)
        self.assertEqual(Policy.from_term_item({}, default), default)
        self.assertEqual(
            Policy.from_term_item({"history": "change", "history_deadband_percent": "2"}, default),
            Policy("change", 1.0, 2.0),
        )
        for bad in (
            {"history": "often"},
            {"history_deadband": -1},
            {"history_deadband": True},
            {"history_deadband": "x"},
        ):
            self.assertRaises(ValueError, Policy.from_term_item, bad, default)

    def test_changed(self):
        exact = Policy("change")
        self.assertFalse(changed(1.0, 1.0, exact))
        self.assertTrue(changed(1.0, 1.0000001, exact))
        self.assertTrue(changed(1, "1", exact))
        self.assertTrue(changed(True, 1, exact))
        self.assertFalse(changed("on", "on", exact))
        self.assertFalse(changed(math.nan, math.nan, exact))
        self.assertTrue(changed(1.0, math.inf, exact))
        absolute = Policy("change", 0.5)
        self.assertFalse(changed(10.0, 10.5, absolute))
        self.assertTrue(changed(10.0, 10.51, absolute))
        percent = Policy("change", 0.0, 10.0)
        self.assertFalse(changed(200.0, 219.0, percent))
        self.assertTrue(changed(200.0, 179.0, percent))
        both = Policy("change", 1.0, 10.0)  # the larger band applies
        self.assertFalse(changed(2.0, 2.9, both))
        self.assertFalse(changed(100.0, 109.0, both))
        self.assertTrue(changed(100.0, 111.0, both))

    def test_filter_modes(self):
        f = ChangeFilter(Policy("every"))
        self.assertEqual([f.accept(sample(1.0)) for _ in range(3)], [True, True, True])
        f.set_policy("10", "1000", Policy("none"))
        self.assertFalse(f.accept(sample(2.0)))
        self.assertTrue(f.accept(sample(2.0, item="1001")))  # other points keep the default

    def test_filter_deadband_against_last_stored(self):
        f = ChangeFilter(Policy("change", 1.0))
        values = [10.0, 10.5, 10.9, 11.1, 11.5, 12.2, 12.2, 9.0]
        self.assertEqual(
            [f.accept(sample(v)) for v in values],
            [True, False, False, True, False, True, False, True],
        )

    def test_quality_and_flags_changes_always_stored(self):
        f = ChangeFilter(Policy("change", 100.0))
        self.assertTrue(f.accept(sample(1.0)))
        self.assertTrue(f.accept(sample(1.0, "invalid", ("timeout",))))
        self.assertFalse(f.accept(sample(1.0, "invalid", ("timeout",))))
        self.assertTrue(f.accept(sample(1.0, "invalid", ("NT",))))
        self.assertTrue(f.accept(sample(1.0)))
        self.assertFalse(f.accept(sample(2.0)))

    def test_new_policy_stores_the_next_sample(self):
        f = ChangeFilter(Policy("change"))
        self.assertTrue(f.accept(sample(1.0)))
        self.assertFalse(f.accept(sample(1.0)))
        f.set_policy("10", "1000", Policy("change", 5.0))
        self.assertTrue(f.accept(sample(1.0)))
        f.set_policy("10", "1000", None)
        self.assertEqual(f.policy("10", "1000"), Policy("change"))


class RowTests(SynchronousTestCase):
    def test_round_trip(self):
        for value in [1.5, -0.0, 42, 2**70, True, False, "on", HOSTILE, None, [1, "a"], {"x": 1}]:
            s = Sample(
                "d", "t", "i", value, "questionable", ("NT", "SB"), 1700000000.123, 1700000000.456
            )
            back = row_sample(sample_row(s))
            self.assertEqual(back.value, value)
            self.assertIs(type(back.value), type(value))
            self.assertEqual(back.to_json(), s.to_json())

    def test_numbers_are_in_the_double_column(self):
        self.assertEqual(sample_row(sample(2.5))[5:7], (2.5, None))
        self.assertEqual(sample_row(sample(7))[5:7], (7.0, "7"))
        self.assertEqual(sample_row(sample(True))[5:7], (1.0, "true"))
        self.assertEqual(sample_row(sample("x"))[5:7], (None, '"x"'))
        row = sample_row(sample(math.nan))
        self.assertIsNone(row[5])
        self.assertTrue(math.isnan(row_sample(row).value))

    def test_times_in_milliseconds(self):
        row = sample_row(Sample("d", "t", "i", 1.0, source_time=None, receive_time=1.2346))
        self.assertEqual(row[3:5], (None, 1235))

    def test_refused_rows(self):
        self.assertIsNone(sample_row(Sample("d" * 129, "t", "i", 1.0)))
        self.assertIsNone(sample_row(Sample("d", "t", "i", "x" * 70000)))
        self.assertIsNone(sample_row(Sample("d", "t", "i", 1.0, "q" * 17)))
        self.assertIsNotNone(sample_row(Sample("d" * 128, HOSTILE, "i", HOSTILE)))


def rows(n, start=0):
    return [
        ("1", "10", str(i), None, i, float(i), None, "good", "[]") for i in range(start, start + n)
    ]


class SpoolTests(SynchronousTestCase):
    def make(self, **kw):
        args = dict(max_bytes=10**9, max_samples=10**9, segment_bytes=1000, fsync=True)
        args.update(kw)
        spool = Spool(self.directory, **args)
        spool.open()
        return spool

    def setUp(self):
        self.directory = self.mktemp()

    def drain(self, spool, size=7):
        out = []
        while True:
            batch = spool.read(size)
            if batch is None:
                return out
            out.extend(batch.rows)
            spool.commit(batch.end, len(batch.rows))

    def segments(self):
        return sorted(n for n in os.listdir(self.directory) if n.startswith("segment-"))

    def test_fifo_across_segments_and_files_removed(self):
        spool = self.make()
        self.assertEqual(spool.append(rows(50)), (50, 0))
        self.assertEqual(spool.append(rows(50, 50)), (50, 0))
        self.assertGreater(len(self.segments()), 3)
        self.assertEqual(spool.unread_samples, 100)
        self.assertEqual(self.drain(spool), [tuple(r) for r in rows(100)])
        self.assertEqual((spool.unread_samples, spool.unread_bytes), (0, 0))
        self.assertEqual(self.segments(), [])
        spool.append(rows(3, 100))
        self.assertEqual(self.drain(spool), [tuple(r) for r in rows(3, 100)])

    def test_batch_ids_are_positions(self):
        spool = self.make()
        spool.append(rows(5))
        batch = spool.read(2)
        self.assertEqual(batch.start, (FIRST_SEGMENT, 0))
        self.assertEqual(batch.batch_id, f"{spool.spool_id}:{FIRST_SEGMENT}:0")
        self.assertEqual(parse_position(batch.end_text), batch.end)
        self.assertEqual(spool.read(2), batch)  # not committed: read again

    def test_limit_by_samples_refuses_the_newest(self):
        spool = self.make(max_samples=30)
        self.assertEqual(spool.append(rows(20)), (20, 0))
        self.assertEqual(spool.append(rows(20, 20)), (10, 10))
        self.assertEqual(spool.append(rows(1, 40)), (0, 1))
        self.assertEqual(self.drain(spool), [tuple(r) for r in rows(30)])
        self.assertEqual(spool.append(rows(5, 50)), (5, 0))

    def test_limit_by_bytes(self):
        spool = self.make(max_bytes=500)
        accepted, refused = spool.append(rows(100))
        self.assertEqual(accepted + refused, 100)
        self.assertGreater(refused, 0)
        self.assertLessEqual(spool.unread_bytes, 500)

    def test_reopen_keeps_unread_rows_and_spool_id(self):
        spool = self.make()
        spool.append(rows(40))
        batch = spool.read(15)
        spool.commit(batch.end, 15)
        spool.close()
        again = self.make()
        self.assertEqual(again.spool_id, spool.spool_id)
        self.assertEqual(again.unread_samples, 25)
        self.assertEqual(self.drain(again), [tuple(r) for r in rows(25, 15)])

    def test_torn_last_line_is_cut(self):
        spool = self.make(segment_bytes=10**6)
        spool.append(rows(3))
        spool.close()
        with open(os.path.join(self.directory, self.segments()[-1]), "ab") as f:
            f.write(b'["1","10","x",nu')
        again = self.make()
        self.assertEqual(again.unread_samples, 3)
        self.assertEqual(self.drain(again), [tuple(r) for r in rows(3)])

    def test_corrupt_line_is_counted(self):
        spool = self.make(segment_bytes=10**6)
        spool.append(rows(2))
        spool.close()
        with open(os.path.join(self.directory, self.segments()[-1]), "ab") as f:
            f.write(b"not json\n" + json.dumps(rows(1, 2)[0]).encode() + b"\n")
        again = self.make()
        self.assertEqual(len(self.drain(again)), 3)
        self.assertEqual(again.corrupt_lines, 1)

    def test_prepend_goes_first(self):
        spool = self.make()
        spool.append(rows(5, 10))
        self.assertTrue(spool.prepend(rows(3)))
        self.assertEqual(self.drain(spool), [tuple(r) for r in rows(3) + rows(5, 10)])
        spool.append(rows(5))
        batch = spool.read(2)
        spool.commit(batch.end, 2)
        self.assertFalse(spool.prepend(rows(1, 99)))

    def test_prepend_survives_reopen(self):
        spool = self.make()
        spool.append(rows(2, 10))
        spool.prepend(rows(2))
        spool.close()
        self.assertEqual(self.drain(self.make()), [tuple(r) for r in rows(2) + rows(2, 10)])


class IniTests(SynchronousTestCase):
    def test_ini_mirrors_the_defaults(self):
        """etc/pydatacoll.ini documents every [plugin:history] option with its default."""
        import configparser

        from pydatacoll.processing.history import OPTION_DEFAULTS

        parser = configparser.ConfigParser(interpolation=None)
        parser.read(os.path.join(os.path.dirname(__file__), "..", "..", "etc", "pydatacoll.ini"))
        section = dict(parser.items("plugin:history"))
        self.assertEqual(section, {k: v[0] for k, v in OPTION_DEFAULTS.items()})
        self.assertEqual(HistoryOptions.parse(section), HistoryOptions())
