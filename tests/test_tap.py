"""The daemon's start: the open-files limit raised for many device links, the garbage
collector's thresholds raised for many short-lived objects."""

from __future__ import annotations

import gc
import resource

from twisted.trial import unittest

from pydatacoll.tap import GC_THRESHOLDS, raise_open_files_limit, tune_gc


class OpenFilesLimitTests(unittest.SynchronousTestCase):
    def test_soft_limit_raised_to_hard(self) -> None:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        self.addCleanup(resource.setrlimit, resource.RLIMIT_NOFILE, (soft, hard))
        if hard == resource.RLIM_INFINITY or hard < 64:
            raise unittest.SkipTest(f"the hard limit {hard}: not a case of this machine")
        lowered = 64
        resource.setrlimit(resource.RLIMIT_NOFILE, (lowered, hard))
        new_soft, new_hard = raise_open_files_limit()
        self.assertEqual(new_hard, hard)
        self.assertEqual(new_soft, hard)
        self.assertEqual(resource.getrlimit(resource.RLIMIT_NOFILE), (hard, hard))

    def test_already_at_hard_is_left(self) -> None:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        self.addCleanup(resource.setrlimit, resource.RLIMIT_NOFILE, (soft, hard))
        if hard == resource.RLIM_INFINITY:
            raise unittest.SkipTest("an infinite hard limit")
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        self.assertEqual(raise_open_files_limit(), (hard, hard))


class GcThresholdTests(unittest.SynchronousTestCase):
    def test_thresholds_raised(self) -> None:
        before = gc.get_threshold()
        self.addCleanup(gc.set_threshold, *before)
        gc.set_threshold(700, 10, 10)
        self.assertEqual(tune_gc(), (700, 10, 10))
        self.assertEqual(gc.get_threshold(), GC_THRESHOLDS)
        # Young collections far rarer than CPython's default (every 700 allocations),
        # but not so rare that one pass over the REST path's cyclic garbage holds the
        # reactor for 100 ms and more (it did at 100,000: REST p99 190 ms).
        young, middle, old = gc.get_threshold()
        self.assertGreaterEqual(young, 10_000)
        self.assertLessEqual(young, 40_000)
        self.assertLessEqual(young * middle, 1_000_000)  # a middle pass stays short too
