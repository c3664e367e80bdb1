"""Rendezvous hashing: stable, minimal movement on a join or a leave, even spread."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from pydatacoll.cluster.rendezvous import assign, mine, owner, restriction, weight

_ID = st.from_regex(r"[A-Za-z0-9_.-]{1,16}", fullmatch=True)
_COLLECTORS = st.lists(_ID, min_size=1, max_size=8, unique=True)
_DEVICES = st.lists(_ID, min_size=1, max_size=60, unique=True)


class RendezvousTests(SynchronousTestCase):
    def test_weight_is_stable_across_processes(self):
        """Not Python's salted hash: another interpreter computes the same weights."""
        code = (
            "from pydatacoll.cluster.rendezvous import weight;"
            "print(weight('host-a:12', 'dev7'), weight('host-b:9', 'dev7'))"
        )
        out = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            check=True,
            env={"PYTHONHASHSEED": "123", "PYTHONPATH": ":".join(sys.path)},
        ).stdout.split()
        self.assertEqual(
            [int(w) for w in out], [weight("host-a:12", "dev7"), weight("host-b:9", "dev7")]
        )

    def test_owner_ignores_order_and_duplicates(self):
        self.assertEqual(owner("d", ["a", "b", "c"]), owner("d", ["c", "a", "b", "a"]))
        self.assertIsNone(owner("d", []))

    @given(_DEVICES, _COLLECTORS, _ID)
    def test_a_join_moves_only_devices_to_the_newcomer(self, devices, collectors, newcomer):
        if newcomer in collectors:
            return
        table = dict.fromkeys(devices)
        before = assign(table, collectors)
        after = assign(table, [*collectors, newcomer])
        for device_id in devices:
            if after[device_id] != before[device_id]:
                self.assertEqual(after[device_id], newcomer)

    @given(_DEVICES, _COLLECTORS.filter(lambda c: len(c) > 1), st.data())
    def test_a_leave_moves_only_the_leavers_devices(self, devices, collectors, data):
        leaver = data.draw(st.sampled_from(collectors))
        table = dict.fromkeys(devices)
        before = assign(table, collectors)
        after = assign(table, [c for c in collectors if c != leaver])
        for device_id in devices:
            if before[device_id] != leaver:
                self.assertEqual(after[device_id], before[device_id])
            else:
                self.assertNotEqual(after[device_id], leaver)

    @given(_DEVICES, _COLLECTORS, st.data())
    def test_restriction_is_honoured(self, devices, collectors, data):
        allowed = data.draw(st.lists(st.sampled_from(collectors), max_size=3, unique=True))
        table = dict.fromkeys(devices, allowed)
        for who in assign(table, collectors).values():
            if allowed:
                self.assertIn(who, allowed)
            else:
                self.assertIn(who, collectors)
        self.assertEqual(owner("x", collectors, ["nowhere"]), None)

    @given(_DEVICES, _COLLECTORS)
    def test_every_device_has_exactly_one_owner(self, devices, collectors):
        table = dict.fromkeys(devices)
        shares = [mine(c, table, collectors) for c in collectors]
        self.assertEqual(sum(len(s) for s in shares), len(devices))
        self.assertEqual(set().union(*shares), set(devices))

    @settings(max_examples=8, deadline=None)
    @given(st.integers(min_value=2, max_value=6), st.integers(min_value=0, max_value=10**6))
    def test_spread_is_even(self, n, seed):
        collectors = [f"host-{seed}-{i}:{1000 + i}" for i in range(n)]
        devices = {f"meter-{seed}-{i}": None for i in range(600 * n)}
        counts = Counter(assign(devices, collectors).values())
        # 600 per collector expected; a binomial deviation of 5 sigma is under 125
        for c in collectors:
            self.assertLess(abs(counts[c] - 600), 125, counts)

    def test_restriction_from_the_device_attribute(self):
        self.assertIsNone(restriction(None))
        self.assertIsNone(restriction(""))
        self.assertIsNone(restriction([]))
        self.assertEqual(restriction(["a:1", " b:2 "]), frozenset({"a:1", "b:2"}))
        self.assertEqual(restriction("site-a, site-b"), frozenset({"site-a", "site-b"}))
        with self.assertRaises(ValueError):
            restriction(7)
