"""Replies to device_call / device_ctrl: one subscription, matched by request id.

The command path (`pydatacoll.control.commander.Commander`) publishes each request with
``reply_to = keys.REPLY % (instance_id, request_id)``; the collector that runs the device
PUBLISHes its answer there. `ReplyListener` holds one
PSUBSCRIBE to ``keys.REPLY_PATTERN % instance_id`` for the whole process and hands each
reply to the request waiting for it, so concurrent requests for one point never share an
answer. While that subscription is not confirmed, `ReplyListener.wait` fails at once:
a request whose reply could be missed is never sent.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from typing import Any

from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger

from pydatacoll import errors
from pydatacoll.config import RedisAddress
from pydatacoll.model import OUTCOME_STATUS
from pydatacoll.store import keys
from pydatacoll.store.subscriber import Subscriber

#: Requests waiting for a reply at most; past it `ReplyListener.wait` refuses (503).
MAX_PENDING = 10000
#: Outcomes the API itself gives: nothing could be sent (a collector's ``offline`` is 503 too).
API_OUTCOME_STATUS = {"unavailable": 503}
#: Outcomes answered with a ``Retry-After`` header: seconds after which to try again.
RETRY_AFTER = {"overloaded": 1}


class ReplyTimeout(Exception):
    """No reply arrived for a request within its timeout."""


class DeviceAnswer(errors.ApiError):
    """The answer to one device_call/device_ctrl; raised when its status is not 2xx.

    The body is ``{"request_id", "outcome", "message", "cause", "sample"}``, and for an
    error also ``"error"`` (= the outcome) and ``"field"`` (null), the house error shape.
    """

    def __init__(
        self,
        request_id: str,
        outcome: str,
        message: str,
        cause: str | None = None,
        sample: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.request_id = request_id
        self.outcome = outcome
        self.code = outcome
        self.status = OUTCOME_STATUS.get(outcome) or API_OUTCOME_STATUS[outcome]
        self.retry_after = RETRY_AFTER.get(outcome)
        self.cause = cause
        self.sample = sample
        #: Whether the collector wrote the command's audit entry with its answer.
        self.audited = False

    @classmethod
    def refusal(cls, request_id: str, error: errors.ApiError) -> DeviceAnswer:
        """The answer to a request the API itself refused (400, 401, 404, 413, 503...)."""
        answer = cls(request_id, "unavailable", error.message)
        answer.outcome = answer.code = error.code
        answer.status = error.status
        answer.field = error.field
        return answer

    @classmethod
    def from_reply(cls, request_id: str, reply: dict[str, Any]) -> DeviceAnswer:
        """The answer a collector's reply stands for; anything malformed is ``failed``."""
        outcome = reply.get("outcome")
        message = reply.get("message")
        message = message[:1000] if isinstance(message, str) else ""
        if not isinstance(outcome, str) or outcome not in OUTCOME_STATUS:
            shown = json.dumps(outcome)[:64]
            return cls(request_id, "failed", f"the collector answered an unknown outcome {shown}")
        cause = reply.get("cause")
        if cause is not None and not isinstance(cause, str):
            cause = json.dumps(cause)[:256]
        sample = reply.get("sample")
        return cls(
            request_id, outcome, message, cause, sample if isinstance(sample, dict) else None
        )

    def to_json(self) -> dict[str, object]:
        """The response body."""
        body: dict[str, object] = {
            "request_id": self.request_id,
            "outcome": self.outcome,
            "message": self.message,
            "cause": self.cause,
            "sample": self.sample,
        }
        if self.status >= 400:
            body = {**errors.error_body(self.code, self.message, self.field), **body}
        return body


class ReplyListener(MultiService):
    """One Redis subscription receiving every reply addressed to this process.

    ``address`` (or ``address_source.address`` once ``address_source.when_ready()`` has
    fired, for the embedded server) is the same `RedisAddress` the pool uses. The
    subscription is a `pydatacoll.store.subscriber.Subscriber` child service (jittered
    backoff, connect timeout, on the listener's clock), or what ``subscribe`` builds
    (tests: `pydatacoll.testing.memory_subscriber`); each new connection PSUBSCRIBEs again
    before the listener counts as subscribed.
    Pending requests are bounded by ``max_pending`` (overflow: refused at once).
    """

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        address: RedisAddress | None = None,
        *,
        address_source: Any = None,
        instance_id: str | None = None,
        max_pending: int = MAX_PENDING,
        connect_timeout: float = 5.0,
        retry_policy: Callable[[int], float] | None = None,
        subscribe: Callable[..., Any] | None = None,
    ) -> None:
        super().__init__()
        self.clock = reactor
        self._address = address
        self._address_source = address_source
        self.instance_id = instance_id or uuid.uuid4().hex
        self.pattern = keys.REPLY_PATTERN % self.instance_id
        self._prefix = keys.REPLY % (self.instance_id, "")
        self.max_pending = max_pending
        self._pending: dict[str, tuple[Deferred[dict[str, Any]], Any]] = {}
        self._subscribed_waiters: list[Deferred[None]] = []
        #: Replies that came after their request had timed out (or for no request).
        self.late_replies = 0
        options: dict[str, Any] = dict(
            patterns=[self.pattern],
            on_subscribed=self._subscribed,
            on_lost=self._lost,
            name="reply listener",
        )
        if subscribe is None:
            ready = address_source.when_ready if address_source is not None else None
            self.subscriber: Any = Subscriber(
                reactor,
                self._current_address,
                self._reply,
                ready=ready,
                connect_timeout=connect_timeout,
                retry_policy=retry_policy,
                **options,
            )
        else:
            self.subscriber = subscribe(self._reply, **options)
        self.subscriber.setName("subscription")
        self.subscriber.setServiceParent(self)

    # -- public -------------------------------------------------------------------------
    @property
    def subscribed(self) -> bool:
        """Whether the reply pattern is subscribed now (replies cannot be missed)."""
        return bool(self.subscriber.subscribed)

    @property
    def pending(self) -> int:
        """How many requests wait for their reply."""
        return len(self._pending)

    def reply_channel(self, request_id: str) -> str:
        """The ``reply_to`` channel of a request."""
        return keys.REPLY % (self.instance_id, request_id)

    def when_subscribed(self) -> Deferred[None]:
        """Fires when the reply pattern is (again) subscribed."""
        if self.subscribed:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._subscribed_waiters.append(d)
        return d

    def wait(self, request_id: str, timeout: float) -> Deferred[dict[str, Any]]:
        """The reply to ``request_id``: call this BEFORE publishing the request.

        Raises `errors.Unavailable` at once when the pattern is not subscribed or
        ``max_pending`` requests wait already (then nothing may be sent). The Deferred
        fires with the reply as a dict (``{"outcome": "failed", ...}`` when the reply is
        not a JSON object for this request) or fails with `ReplyTimeout` after
        ``timeout`` seconds on the listener's clock. Cancelling it forgets the request.
        """
        if not self.subscribed:
            raise errors.Unavailable(
                "the reply channel is not subscribed (Redis unreachable?); nothing was sent"
            )
        if len(self._pending) >= self.max_pending:
            raise errors.Unavailable(
                f"{self.max_pending} device requests are in flight already; nothing was sent"
            )
        if request_id in self._pending:
            raise ValueError(f"request {request_id} is waiting already")

        def cancel(_: Deferred[dict[str, Any]]) -> None:
            entry = self._pending.pop(request_id, None)
            if entry is not None and entry[1].active():
                entry[1].cancel()

        d: Deferred[dict[str, Any]] = Deferred(cancel)
        timer = self.clock.callLater(timeout, self._expire, request_id)
        self._pending[request_id] = (d, timer)
        return d

    # -- service ------------------------------------------------------------------------
    def stopService(self) -> Deferred[None]:  # noqa: N802 (Twisted API)
        """Close the subscription; requests still waiting fail with `errors.Unavailable`."""
        pending, self._pending = self._pending, {}
        for d, timer in pending.values():
            if timer.active():
                timer.cancel()
            d.errback(errors.Unavailable("the API is shutting down"))
        stopped: Deferred[None] = super().stopService()
        return stopped

    # -- subscription -------------------------------------------------------------------
    def _current_address(self) -> RedisAddress:
        address = self._address or self._address_source.address
        assert address is not None
        return address

    def _subscribed(self) -> None:
        self.log.info("reply listener subscribed to {pattern}", pattern=self.pattern)
        waiters, self._subscribed_waiters = self._subscribed_waiters, []
        for d in waiters:
            d.callback(None)

    def _lost(self) -> None:
        self.log.warn(
            "reply listener lost Redis; device_call/device_ctrl answer 503 until it is back"
            " ({pending} requests keep waiting for their replies)",
            pending=len(self._pending),
        )

    # -- replies ----------------------------------------------------------------------------
    def _reply(self, channel: Any, message: Any) -> None:
        if isinstance(channel, bytes):
            channel = channel.decode("utf-8", "replace")
        if not isinstance(channel, str) or not channel.startswith(self._prefix):
            return
        request_id = channel[len(self._prefix) :]
        entry = self._pending.pop(request_id, None)
        if entry is None:
            self.late_replies += 1
            self.log.info("reply for {request_id} came too late", request_id=request_id)
            return
        d, timer = entry
        if timer.active():
            timer.cancel()
        d.callback(parse_reply(request_id, message))

    def _expire(self, request_id: str) -> None:
        entry = self._pending.pop(request_id, None)
        if entry is not None:
            entry[0].errback(ReplyTimeout(request_id))


def parse_reply(request_id: str, message: Any) -> dict[str, Any]:
    """A reply as a dict; a broken one becomes a ``failed`` outcome that says so."""
    try:
        if isinstance(message, bytes):
            message = message.decode("utf-8")
        # A collector's NaN/Infinity (a device's float) becomes null: answers stay strict JSON.
        body = json.loads(message, parse_constant=lambda _: None)
    except (TypeError, ValueError, RecursionError):
        body = None
    if not isinstance(body, dict) or body.get("request_id", request_id) != request_id:
        return {"outcome": "failed", "message": "the collector's reply is not a valid reply"}
    return body
