"""Logging helpers: routine chatter kept out of the log, repeated messages rate-limited.

- `logger()` is a ``twisted.logger.Logger`` whose ``debug`` events are dropped (twistd
  writes every level it is given): routine protocol traces (interrogation sent, clock
  synchronisation sent) stay in the code for tests and observers without reaching the
  operator's log.
- `quiet_client_service` builds a ``ClientService`` whose own per-retry info lines
  ("Scheduling retry 6 to connect ... in 28.3 seconds") are dropped; its warnings stay.
- `RateLimitedLog` writes a repeated message at most once per interval per key, then one
  line with how many were left out.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from twisted.application.internet import ClientService
from twisted.logger import (
    FilteringLogObserver,
    Logger,
    LogLevel,
    LogLevelFilterPredicate,
    globalLogPublisher,
)

_INFO = LogLevelFilterPredicate(defaultLogLevel=LogLevel.info)
_WARN = LogLevelFilterPredicate(defaultLogLevel=LogLevel.warn)
#: Everything from ``info`` up, to the global publisher (what twistd writes).
INFO_OBSERVER = FilteringLogObserver(globalLogPublisher, [_INFO])
#: Everything from ``warn`` up.
WARN_OBSERVER = FilteringLogObserver(globalLogPublisher, [_WARN])


def logger() -> Logger:
    """A class-attribute ``Logger`` (``log = logger()``) that drops ``debug`` events."""
    return Logger(observer=INFO_OBSERVER)


class _QuietClientService(ClientService):
    """A ``ClientService`` without its info lines (one per retry); warnings stay."""

    _log = Logger(observer=WARN_OBSERVER)


def quiet_client_service(*args: Any, **kwargs: Any) -> ClientService:
    """``ClientService(*args, **kwargs)`` that does not log each retry: the link that owns
    it logs one line of its own per state change instead."""
    return _QuietClientService(*args, **kwargs)


class RateLimitedLog:
    """Writes a repeated message at most once per ``interval`` seconds per ``key``.

    The first message of a key is written at once; the ones that follow within the
    interval are counted, and when the interval ends the latest of them is written
    once with the count (``... (12 more like it in 10 s)``), so the last state is
    always in the log. At most ``max_keys`` keys are remembered (the least recently
    used is forgotten, and its pending count with it). ``stop()`` cancels the timers.
    """

    def __init__(
        self, log: Logger, clock: Any, interval: float = 10.0, max_keys: int = 1000
    ) -> None:
        self.log = log
        self.clock = clock
        self.interval = interval
        self.max_keys = max_keys
        #: key -> [time written, count left out, latest left out (level, format, fields), call]
        self._keys: OrderedDict[str, list[Any]] = OrderedDict()

    def emit(self, level: LogLevel, key: str, format: str, /, **fields: Any) -> None:
        """Write ``format`` (a twisted.logger format) unless ``key`` was written less than
        ``interval`` seconds ago; then count it and write the latest at the end."""
        now = self.clock.seconds()
        entry = self._keys.get(key)
        if entry is None:
            self._keys[key] = [now, 0, None, None]
            self._evict()
            self.log.emit(level, format, **fields)
            return
        self._keys.move_to_end(key)
        if now - entry[0] >= self.interval and entry[1] == 0:
            entry[0] = now
            self.log.emit(level, format, **fields)
            return
        entry[1] += 1
        entry[2] = (level, format, fields)
        if entry[3] is None:
            delay = max(0.0, entry[0] + self.interval - now)
            entry[3] = self.clock.callLater(delay, self._flush, key)

    def _flush(self, key: str) -> None:
        entry = self._keys.get(key)
        if entry is None or entry[2] is None:
            return
        level, format, fields = entry[2]
        count = entry[1]
        entry[0], entry[1], entry[2], entry[3] = self.clock.seconds(), 0, None, None
        self.log.emit(
            level,
            format + " ({rate_limited_count} more like it in {rate_limited_seconds:g} s)",
            rate_limited_count=count,
            rate_limited_seconds=self.interval,
            **fields,
        )

    def _evict(self) -> None:
        while len(self._keys) > self.max_keys:
            _key, entry = self._keys.popitem(last=False)
            if entry[3] is not None and entry[3].active():
                entry[3].cancel()

    def stop(self) -> None:
        """Cancel the pending writes (nothing more is written)."""
        for entry in self._keys.values():
            if entry[3] is not None and entry[3].active():
                entry[3].cancel()
        self._keys.clear()
