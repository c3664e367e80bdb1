"""The one retry policy of PyDataColl: capped exponential backoff, optionally jittered.

Everything that retries (protocol links, the Redis pool and subscriber, the reply
listener, the ingest writer, the history database writer, the device manager's
reconciliation) takes its delays from here, so that "1, 2, 4 ... capped, with jitter"
means the same thing everywhere and is tested once.

- `exponential` is a stateless policy ``attempt -> delay`` (attempt 1 is the first
  retry), the shape Twisted's `ClientService` wants for ``retryPolicy``.
- `Backoff` is the stateful form for hand-written retry loops: `next_delay` gives the
  delay to wait now and advances, `reset` returns to the first delay after a success.

The jitter is subtractive by default (``delay * (1 - jitter * u)``, u uniform in [0, 1)):
a fleet of links cut off together spreads out without ever waiting longer than the cap.
Pass ``rng`` (anything with ``random()``) to make the noise deterministic in tests.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any, Protocol


class _Random(Protocol):
    def random(self) -> float: ...


#: Largest exponent used, so that a very long outage never overflows a float.
_MAX_EXPONENT = 64


def exponential(
    initial: float,
    maximum: float,
    factor: float = 2.0,
    jitter: float = 0.0,
    rng: _Random | Any = random,
) -> Callable[[int], float]:
    """A policy ``attempt -> seconds``: ``initial * factor**(attempt-1)`` capped at
    ``maximum``, less up to ``jitter`` (a fraction, 0 to 1) of it at random.

    Attempt numbers below 1 are treated as 1.
    """
    if initial < 0 or maximum < 0:
        raise ValueError("backoff delays cannot be negative")
    if factor < 1:
        raise ValueError("backoff factor must be at least 1")
    if not 0 <= jitter <= 1:
        raise ValueError("backoff jitter is a fraction between 0 and 1")

    def policy(attempt: int) -> float:
        exponent = min(max(attempt - 1, 0), _MAX_EXPONENT)
        delay = min(maximum, initial * factor**exponent)
        if jitter:
            delay *= 1 - jitter * rng.random()
        return float(delay)

    return policy


class Backoff:
    """A retry loop's delays: `next_delay` returns the current one and advances."""

    def __init__(
        self,
        initial: float,
        maximum: float,
        factor: float = 2.0,
        jitter: float = 0.0,
        rng: _Random | Any = random,
    ) -> None:
        self.policy = exponential(initial, maximum, factor, jitter, rng)
        #: Delays handed out since the last `reset` (0: the next one is ``initial``).
        self.attempts = 0

    def next_delay(self) -> float:
        """The delay to wait before the next try (and count the try)."""
        self.attempts += 1
        return self.policy(self.attempts)

    def peek(self) -> float:
        """The delay `next_delay` would return, without counting a try (for log lines)."""
        return self.policy(self.attempts + 1)

    def reset(self) -> None:
        """A try succeeded: the next failure waits ``initial`` again."""
        self.attempts = 0
