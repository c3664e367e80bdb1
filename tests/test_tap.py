"""The daemon's start: the open-files limit raised for many device links."""

from __future__ import annotations

import resource

from twisted.trial import unittest

from pydatacoll.tap import raise_open_files_limit


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
