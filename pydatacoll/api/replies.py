"""Replies to device_call / device_ctrl: one subscriber connection, matched by request id.

The API publishes each request with ``reply_to = keys.REPLY % (instance_id, request_id)``;
the collector that runs the device PUBLISHes its answer there. `ReplyListener` holds one
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

import txredisapi
from twisted.application.internet import ClientService, backoffPolicy
from twisted.application.service import Service
from twisted.internet import protocol
from twisted.internet.defer import Deferred, succeed
from twisted.internet.endpoints import HostnameEndpoint, UNIXClientEndpoint
from twisted.logger import Logger
from twisted.python.failure import Failure

from pydatacoll import errors
from pydatacoll.config import RedisAddress
from pydatacoll.model import OUTCOME_STATUS
from pydatacoll.store import keys
from pydatacoll.store.redis import RECONNECT_MAX_DELAY

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


class _ReplyProtocol(txredisapi.SubscriberProtocol):
    """A txredisapi subscriber that hands every message to its listener."""

    listener: ReplyListener

    def messageReceived(self, pattern: Any, channel: Any, message: Any) -> None:  # noqa: N802
        self.listener._reply(channel, message)

    def connectionLost(self, why: Failure) -> None:  # noqa: N802 (Twisted API)
        super().connectionLost(why)
        self.listener._lost(self)


class _ReplyFactory(protocol.Factory):
    """Builds `_ReplyProtocol`s; what txredisapi's protocol expects of its factory."""

    noisy = False
    #: txredisapi's protocol logs its own auth/select errors when this is set.
    isLazy = True  # noqa: N815 (txredisapi API)

    def __init__(self, listener: ReplyListener, password: str | None) -> None:
        self.listener = listener
        self.password = password

    def buildProtocol(self, addr: Any) -> _ReplyProtocol:  # noqa: N802 (Twisted API)
        p = _ReplyProtocol(
            charset="utf-8", password=self.password, convertNumbers=False, replyTimeout=None
        )
        p.factory = self
        p.listener = self.listener
        return p

    def stopTrying(self) -> None:  # noqa: N802 (txredisapi API)
        """Called by txredisapi when AUTH fails: we keep retrying with backoff."""

    def connectionError(self, why: str) -> None:  # noqa: N802 (txredisapi API)
        """Called by txredisapi when AUTH or SELECT fails."""
        self.listener.log.error("reply listener: {why}", why=why)


class ReplyListener(Service):
    """One Redis subscriber connection receiving every reply addressed to this process.

    ``address`` (or ``address_source.address`` once ``address_source.when_ready()`` has
    fired, for the embedded server) is the same `RedisAddress` the pool uses. The
    connection is kept by a `ClientService` with jittered exponential backoff; each new
    connection PSUBSCRIBEs again before the listener counts as subscribed.
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
    ) -> None:
        self.clock = reactor
        self._reactor = reactor
        self._address = address
        self._address_source = address_source
        self.instance_id = instance_id or uuid.uuid4().hex
        self.pattern = keys.REPLY_PATTERN % self.instance_id
        self._prefix = keys.REPLY % (self.instance_id, "")
        self.max_pending = max_pending
        self._connect_timeout = connect_timeout
        self._retry_policy = retry_policy or backoffPolicy(
            initialDelay=0.5, maxDelay=RECONNECT_MAX_DELAY
        )
        self._pending: dict[str, tuple[Deferred[dict[str, Any]], Any]] = {}
        self._protocol: _ReplyProtocol | None = None
        self._service: ClientService | None = None
        self._subscribed_waiters: list[Deferred[None]] = []
        #: Replies that came after their request had timed out (or for no request).
        self.late_replies = 0

    # -- public -------------------------------------------------------------------------
    @property
    def subscribed(self) -> bool:
        """Whether the reply pattern is subscribed now (replies cannot be missed)."""
        return self._protocol is not None

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
    def startService(self) -> None:  # noqa: N802 (Twisted API)
        """Connect (after the embedded server, when there is one, is ready)."""
        super().startService()
        if self._address_source is not None:
            ready: Deferred[Any] = self._address_source.when_ready()
        else:
            ready = succeed(None)
        ready.addCallback(lambda _: self._connect())
        ready.addErrback(lambda f: self.log.failure("reply listener cannot connect", f))

    def _connect(self) -> None:
        if not self.running:
            return
        address = self._address or self._address_source.address
        endpoint: Any
        if address.path is not None:
            endpoint = UNIXClientEndpoint(self._reactor, address.path, self._connect_timeout)
        else:
            endpoint = HostnameEndpoint(
                self._reactor,
                address.host or "127.0.0.1",
                address.port or 6379,
                self._connect_timeout,
            )
        self._service = ClientService(
            endpoint,
            _ReplyFactory(self, address.password),
            retryPolicy=self._retry_policy,
            clock=self.clock,
            prepareConnection=self._prepare,
        )
        self._service.startService()

    def stopService(self) -> Deferred[None]:  # noqa: N802 (Twisted API)
        """Close the connection; requests still waiting fail with `errors.Unavailable`."""
        super().stopService()
        pending, self._pending = self._pending, {}
        for d, timer in pending.values():
            if timer.active():
                timer.cancel()
            d.errback(errors.Unavailable("the API is shutting down"))
        service, self._service = self._service, None
        self._protocol = None
        if service is None:
            return succeed(None)
        return service.stopService()

    # -- connection -----------------------------------------------------------------------
    def _prepare(self, proxy: Any) -> Deferred[None]:
        """PSUBSCRIBE on a fresh connection; a failure (or loss) counts as a failed attempt."""
        done: Deferred[None] = Deferred()

        def subscribed(_: Any, connected: Any) -> None:
            if not done.called:
                done.callback(None)
                self._subscribed(connected)

        def failed(reason: Any) -> None:
            if not done.called:
                done.errback(reason if isinstance(reason, Failure) else Failure(reason))
                if proxy.transport is not None:
                    proxy.transport.loseConnection()

        def connected(p: Any) -> Deferred[Any]:
            return p.psubscribe(self.pattern).addCallback(subscribed, p)

        proxy.whenConnected().addCallback(connected).addErrback(failed)
        proxy.whenDisconnected().addCallback(
            lambda _: failed(ConnectionError("lost while subscribing"))
        )

        def timed_out(reason: Failure) -> Failure:
            if proxy.transport is not None:
                proxy.transport.abortConnection()
            return reason

        done.addTimeout(self._connect_timeout, self.clock)
        done.addErrback(timed_out)
        return done

    def _subscribed(self, p: _ReplyProtocol) -> None:
        if not self.running or p.transport is None or not p.connected:
            return
        self._protocol = p
        self.log.info("reply listener subscribed to {pattern}", pattern=self.pattern)
        waiters, self._subscribed_waiters = self._subscribed_waiters, []
        for d in waiters:
            d.callback(None)

    def _lost(self, p: _ReplyProtocol) -> None:
        if p is not self._protocol:
            return
        self._protocol = None
        if self.running:
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
        d.callback(_parse(request_id, message))

    def _expire(self, request_id: str) -> None:
        entry = self._pending.pop(request_id, None)
        if entry is not None:
            entry[0].errback(ReplyTimeout(request_id))


def _parse(request_id: str, message: Any) -> dict[str, Any]:
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
