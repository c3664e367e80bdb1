"""The one "load from the store, retry on failure" of the processors.

A processor reads its configuration (formulas, limits, history policies) once the store
is connected; a failed read is logged and tried again after the next delay of a
`pydatacoll.retry.Backoff`, until it works or the processor stops.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from pydatacoll.retry import Backoff


class RetryingLoad:
    """Run ``load`` once ``ready()`` has fired, again after each failure (``backoff``).

    ``what`` names the thing loaded in the log ("formulas"). `stop` ends the retries (a
    load in flight finishes, its result is ignored when it fails).
    """

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        ready: Callable[[], Deferred[Any]],
        load: Callable[[], Any],
        backoff: Backoff,
        what: str,
    ) -> None:
        self.reactor = reactor
        self.ready = ready
        self.load = load
        self.backoff = backoff
        self.what = what
        self.loaded = False
        self._active = False
        self._retry: Any = None

    @property
    def pending(self) -> bool:
        """Started, not stopped, and not loaded yet."""
        return self._active and not self.loaded

    def start(self) -> None:
        """Wait for the store, then load."""
        self._active = True
        self.ready().addCallback(lambda _: self._attempt())

    def stop(self) -> None:
        """No more tries."""
        self._active = False
        retry, self._retry = self._retry, None
        if retry is not None and retry.active():
            retry.cancel()

    def _attempt(self) -> None:
        self._retry = None
        if not self._active:
            return
        d = maybeDeferred(self.load)
        d.addCallbacks(self._done, self._failed)

    def _done(self, _: Any) -> None:
        self.loaded = True
        self.backoff.reset()

    def _failed(self, failure: Failure) -> None:
        if not self._active:
            return
        delay = self.backoff.next_delay()
        self.log.warn(
            "{what} not loaded ({error}); retrying in {delay}s",
            what=self.what,
            error=failure.getErrorMessage(),
            delay=round(delay, 3),
        )
        self._retry = self.reactor.callLater(delay, self._attempt)
