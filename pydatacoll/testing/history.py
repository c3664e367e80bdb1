"""Test helpers for the history processor: wait until it has written everything, read
back what it stored (the production code reads through `IHistoryReader` only)."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.task import deferLater

from pydatacoll.processing.history import HistoryProcessor
from pydatacoll.processing.history.rows import milliseconds


def drained(processor: HistoryProcessor, timeout: float = 60.0) -> Deferred[None]:
    """Fires once every row ``processor`` received so far is in the database (polled on
    its reactor every 5 ms); `TimeoutError` after ``timeout`` seconds."""

    @inlineCallbacks
    def poll() -> Any:
        deadline = processor.reactor.seconds() + timeout
        while not processor.idle:
            if processor.reactor.seconds() > deadline:
                raise TimeoutError(f"history not drained: {processor.status()}")
            yield deferLater(processor.reactor, 0.005, lambda: None)

    return poll()


def stored_samples(
    processor: HistoryProcessor,
    device_id: str,
    term_id: str,
    item_id: str,
    since: float | None = None,
    until: float | None = None,
    limit: int = 1000,
) -> Deferred[list[dict[str, Any]]]:
    """A point's stored samples with ``since <= receive_time <= until`` (epoch seconds,
    None: open), newest first, as `Sample.to_json` dicts (through `IHistoryReader`)."""
    return processor.database.read_samples(
        (str(device_id), str(term_id), str(item_id)),
        milliseconds(since),
        milliseconds(until),
        max(1, min(int(limit), 100_000)),
    )
