"""In-memory stand-ins of what the REST API talks to besides its stores, for tests/api:
the history database (an `IHistoryReader`) and the reply listener of device_call /
device_ctrl, the latter over `pydatacoll.testing.memory.MemoryRedis` pub/sub."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from twisted.internet.defer import Deferred, succeed
from zope.interface import implementer

from pydatacoll.errors import Unavailable
from pydatacoll.interfaces import IHistoryReader
from pydatacoll.store import keys as key_names

# -- an in-memory history database reader --------------------------------------------------


@implementer(IHistoryReader)
class MemoryHistoryReader:
    """An `IHistoryReader` over samples kept in memory (JSON samples by point), for the
    REST API's tests; ``asked`` records every read."""

    def __init__(self) -> None:
        self.samples: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
        self.asked: list[tuple[Any, ...]] = []

    def add(self, point: tuple[str, str, str], samples: list[dict[str, Any]]) -> None:
        """Keep ``samples`` (JSON samples with a ``receive_time``) of ``point``."""
        self.samples.setdefault(point, []).extend(samples)

    def read_samples(
        self, point: tuple[str, str, str], since_ms: int | None, until_ms: int | None, limit: int
    ) -> Deferred[list[dict[str, Any]]]:
        """The kept samples of ``point`` received in the range, newest first."""
        self.asked.append((point, since_ms, until_ms, limit))

        def received_ms(sample: dict[str, Any]) -> int:
            return int(datetime.fromisoformat(sample["receive_time"]).timestamp() * 1000)

        found = [
            s
            for s in self.samples.get(point, [])
            if (since_ms is None or received_ms(s) >= since_ms)
            and (until_ms is None or received_ms(s) <= until_ms)
        ]
        found.sort(key=received_ms, reverse=True)
        return succeed(found[:limit])


# -- pub/sub in memory: the API's reply listener (i12api) -----------------------------------
# The smallest stand-in for `pydatacoll.api.replies.ReplyListener`: what `ApiApp` uses of
# it (wait, reply_channel, clock), over `MemoryRedis.subscribe`, its timeouts on a Clock.


class MemoryReplyListener:
    """Replies to device_call/device_ctrl taken from a `MemoryRedis`'s PUBLISHes."""

    def __init__(self, memory: Any, clock: Any, *, instance_id: str = "api") -> None:
        self.clock = clock
        self.instance_id = instance_id
        self.max_pending = 1000
        #: Whether the reply channel counts as subscribed (False: `wait` refuses).
        self.subscribed = True
        #: Replies that came after their request had timed out (or for no request).
        self.late_replies = 0
        self._pending: dict[str, tuple[Deferred[dict[str, Any]], Any]] = {}
        self._prefix = self.reply_channel("")
        memory.subscribe(self._prefix + "*", self._published)

    @property
    def pending(self) -> int:
        """How many requests wait for their reply."""
        return len(self._pending)

    def reply_channel(self, request_id: str) -> str:
        """The ``reply_to`` channel of a request (the real listener's scheme)."""
        return key_names.REPLY % (self.instance_id, request_id)

    def wait(self, request_id: str, timeout: float) -> Deferred[dict[str, Any]]:
        """The reply to ``request_id`` (as the real listener: refused at once when not
        subscribed or too many wait; `ReplyTimeout` after ``timeout`` on the clock)."""
        if not self.subscribed:
            raise Unavailable(
                "the reply channel is not subscribed (Redis unreachable?); nothing was sent"
            )
        if len(self._pending) >= self.max_pending:
            raise Unavailable(
                f"{self.max_pending} device requests are in flight already; nothing was sent"
            )

        def cancel(_: Any) -> None:
            entry = self._pending.pop(request_id, None)
            if entry is not None and entry[1].active():
                entry[1].cancel()

        d: Deferred[dict[str, Any]] = Deferred(cancel)
        timer = self.clock.callLater(timeout, self._expire, request_id)
        self._pending[request_id] = (d, timer)
        return d

    def _published(self, channel: str, message: str) -> None:
        if not channel.startswith(self._prefix):
            return
        request_id = channel[len(self._prefix) :]
        entry = self._pending.pop(request_id, None)
        if entry is None:
            self.late_replies += 1
            return
        d, timer = entry
        if timer.active():
            timer.cancel()
        try:
            body = json.loads(message)
        except ValueError:
            body = None
        if not isinstance(body, dict) or body.get("request_id", request_id) != request_id:
            body = {"outcome": "failed", "message": "the collector's reply is not a valid reply"}
        d.callback(body)

    def _expire(self, request_id: str) -> None:
        from pydatacoll.control.replies import ReplyTimeout

        entry = self._pending.pop(request_id, None)
        if entry is not None:
            entry[0].errback(ReplyTimeout(request_id))
