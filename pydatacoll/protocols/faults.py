"""What the protocol links share against misbehaving peers: a retry policy that only
forgets failures once a link has proved healthy, and a rate limit for per-frame log lines.

Twisted's `ClientService` counts failed attempts but resets the count on every successful
TCP connect, so a peer that accepts and then sends garbage would be reconnected at the
first retry delay forever. `LinkBackoff` keeps its own count instead: it grows with every
retry and returns to zero only after the link has been *healthy* for ``healthy_after``
seconds: a good exchange (a Modbus response matched to its request, an IEC 104 STARTDT
con) and then the connection staying up that long.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

#: Seconds a link must stay up after its first good exchange to count as healthy.
HEALTHY_AFTER = 10.0
#: Seconds of one log window: the first event logs, the rest are counted, then summed up.
LOG_INTERVAL = 10.0


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


class RateLimitedLog:
    """One log line per ``interval`` for a kind of event, then one line with the count.

    The first event of a window is logged at once; the others in that window are
    counted, and when the window ends one line says how many more there were.
    """

    def __init__(self, log: Logger, clock: IReactorTime, interval: float = LOG_INTERVAL) -> None:
        self.log = log
        self.clock = clock
        self.interval = interval
        #: kind -> [events suppressed, the summary timer, the summary format, its fields]
        self._windows: dict[str, list[Any]] = {}
        #: Events counted but not logged, over the limiter's life.
        self.suppressed = 0

    def emit(self, kind: str, level: str, text: str, summary: str, **fields: Any) -> None:
        """Log ``text`` unless ``kind`` was logged in this window; count it then.

        ``summary`` is the format of the window's closing line; it gets ``{more}`` (the
        count) and ``{interval}`` besides ``fields``.
        """
        window = self._windows.get(kind)
        if window is not None:
            window[0] += 1
            window[3] = fields
            self.suppressed += 1
            return
        getattr(self.log, level)(text, **fields)
        timer = self.clock.callLater(self.interval, self._close, kind)
        self._windows[kind] = [0, timer, summary, fields]

    def _close(self, kind: str) -> None:
        more, _, summary, fields = self._windows.pop(kind)
        if more:
            self.log.warn(summary, more=more, interval=self.interval, **fields)

    def flush(self) -> None:
        """Close every window now (the link is gone): its counts are logged."""
        for kind in list(self._windows):
            timer = self._windows[kind][1]
            if timer.active():
                timer.cancel()
            self._close(kind)
