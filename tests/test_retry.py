"""The one backoff policy (pydatacoll.retry)."""

from __future__ import annotations

import random

from twisted.trial.unittest import SynchronousTestCase

from pydatacoll.retry import Backoff, exponential


class ExponentialTests(SynchronousTestCase):
    def test_doubles_up_to_the_cap(self) -> None:
        policy = exponential(1.0, 60.0)
        self.assertEqual([policy(n) for n in range(1, 9)], [1, 2, 4, 8, 16, 32, 60, 60])

    def test_attempts_below_one_wait_initial(self) -> None:
        self.assertEqual(exponential(0.5, 2.0)(0), 0.5)
        self.assertEqual(exponential(0.5, 2.0)(-3), 0.5)

    def test_huge_attempt_numbers_do_not_overflow(self) -> None:
        self.assertEqual(exponential(1.0, 60.0)(10**9), 60.0)

    def test_jitter_only_shortens_and_stays_within_its_fraction(self) -> None:
        policy = exponential(10.0, 10.0, jitter=0.25, rng=random.Random(7))
        delays = [policy(1) for _ in range(500)]
        self.assertTrue(all(7.5 <= d <= 10.0 for d in delays))
        self.assertGreater(max(delays) - min(delays), 1.0)  # it does spread

    def test_deterministic_with_a_seeded_rng(self) -> None:
        a = exponential(1.0, 8.0, jitter=0.5, rng=random.Random(3))
        b = exponential(1.0, 8.0, jitter=0.5, rng=random.Random(3))
        self.assertEqual([a(n) for n in range(1, 6)], [b(n) for n in range(1, 6)])

    def test_refuses_nonsense(self) -> None:
        self.assertRaises(ValueError, exponential, -1.0, 2.0)
        self.assertRaises(ValueError, exponential, 1.0, 2.0, factor=0.5)
        self.assertRaises(ValueError, exponential, 1.0, 2.0, jitter=1.5)


class BackoffTests(SynchronousTestCase):
    def test_next_delay_advances_and_reset_returns_to_initial(self) -> None:
        b = Backoff(0.25, 2.0)
        self.assertEqual(b.peek(), 0.25)
        self.assertEqual([b.next_delay() for _ in range(5)], [0.25, 0.5, 1.0, 2.0, 2.0])
        self.assertEqual(b.attempts, 5)
        b.reset()
        self.assertEqual(b.next_delay(), 0.25)
