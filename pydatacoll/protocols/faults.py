"""What the protocol links share against misbehaving peers: a retry policy that only
forgets failures once a link has proved healthy (per-frame log lines are rate-limited with
`pydatacoll.logs.RateLimitedLog`).

Twisted's `ClientService` counts failed attempts but resets the count on every successful
TCP connect, so a peer that accepts and then sends garbage would be reconnected at the
first retry delay forever. `LinkBackoff` keeps its own count instead: it grows with every
retry and returns to zero only after the link has been *healthy* for ``healthy_after``
seconds: a good exchange (a Modbus response matched to its request, an IEC 104 STARTDT
con) and then the connection staying up that long.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.interfaces import IDelayedCall, IReactorTime

#: Seconds a link must stay up after its first good exchange to count as healthy.
HEALTHY_AFTER = 10.0


class LinkBackoff:
    """A `ClientService` retry policy whose attempt count survives reconnects.

    ``delay(n)`` gives the delay before the n-th retry since the link was last healthy
    (n starts at 1). Call `good_exchange` when the peer speaks the protocol correctly
    and `link_lost` when the connection ends.
    """

    def __init__(
        self,
        delay: Callable[[int], float],
        clock: IReactorTime,
        healthy_after: float = HEALTHY_AFTER,
    ) -> None:
        self.delay = delay
        self.clock = clock
        self.healthy_after = healthy_after
        #: Retries since the link was last healthy.
        self.failures = 0
        self._timer: IDelayedCall | None = None

    def __call__(self, attempt: int) -> float:
        # ClientService's own ``attempt`` restarts at 1 after every TCP connect: ignored.
        self.failures += 1
        return self.delay(self.failures)

    def good_exchange(self) -> None:
        """The peer answered correctly: healthy once the link stays up ``healthy_after``."""
        if self._timer is None and self.failures:
            self._timer = self.clock.callLater(self.healthy_after, self._healthy)

    def link_lost(self) -> None:
        """The connection ended: it was not healthy long enough unless the timer fired."""
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _healthy(self) -> None:
        self._timer = None
        self.failures = 0
