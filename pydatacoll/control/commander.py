"""THE command path: device_call and device_ctrl to the collector running a device.

`Commander` checks the point exists, publishes one request on ``CHANNEL:DEVICE_CALL`` /
``CHANNEL:DEVICE_CTRL`` with ``reply_to`` = this process's reply channel, awaits the
collector's reply there (`pydatacoll.control.replies.ReplyListener`) and turns it into a
`DeviceAnswer`: only a 2xx outcome is success; a negative confirmation, a refusal, a
reply that comes too late, or nobody listening is not. Every device_ctrl, whatever its
outcome (refused before sending included), gets one entry in the audit stream
(``XS:CTRL_LOG``: who, what, when, outcome). The REST API, the gateways and the MQTT
plugin all command through it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import attrs
from twisted.internet.defer import CancelledError, Deferred, inlineCallbacks, maybeDeferred
from twisted.logger import Logger
from zope.interface import implementer

from pydatacoll import errors
from pydatacoll.control.priority import CommandPriority
from pydatacoll.control.replies import DeviceAnswer, ReplyListener, ReplyTimeout, parse_reply
from pydatacoll.interfaces import ICommander
from pydatacoll.model import is_valid_id, iso_time
from pydatacoll.store import keys
from pydatacoll.store.commands import CommandStore
from pydatacoll.store.config import ConfigStore
from pydatacoll.store.events import EventStore
from pydatacoll.store.points import PointStore
from pydatacoll.store_interfaces import ICommandStore, IConfigStore, IEventStore, IPointStore

_CHANNELS = {"device_call": keys.DEVICE_CALL, "device_ctrl": keys.DEVICE_CTRL}


@attrs.frozen
class CommandSettings:
    """What a `Commander` reads of the settings, for callers without a `Settings`."""

    device_timeout: float = 10.0
    ctrl_log_length: int = 10000


@implementer(ICommander)
class Commander:
    """device_call / device_ctrl over the stores and one reply listener.

    ``commands`` (an `ICommandStore`, default one on ``config``'s client) checks the
    point and publishes the request in one round trip, and takes the audit entries;
    ``config`` names a missing point when nothing can be sent; ``points`` and ``events``
    are the API's stores (kept for its callers); ``replies`` (None: every request is
    answered ``unavailable``) receives the collector's answers; ``settings`` gives
    ``device_timeout`` and ``ctrl_log_length`` (read at each request); ``clock`` the
    times; ``metrics`` (optional) counts the outcomes of device_ctrl; ``priority``
    (optional, a `CommandPriority`) holds this process's data back while a command is
    in flight.
    """

    log = Logger()

    def __init__(
        self,
        config: IConfigStore,
        points: IPointStore,
        events: IEventStore,
        replies: Any,
        settings: Any,
        clock: Any,
        metrics: Any = None,
        commands: ICommandStore | None = None,
        priority: CommandPriority | None = None,
    ) -> None:
        self.config = config
        self.points = points
        self.events = events
        self.replies = replies
        self.settings = settings
        self.clock = clock
        self.metrics = metrics
        #: Requests and audit entries (default: on the configuration store's client).
        self.commands: ICommandStore = (
            commands if commands is not None else CommandStore(config.redis)  # type: ignore[attr-defined]
        )
        #: Commands ahead of data in this process (None: no hold).
        self.priority = priority

    def device_call(self, request_id: str, ids: dict[str, str]) -> Deferred[Any]:
        """Read a point now: fires with the `DeviceAnswer` (2xx) or fails with it (or
        with the `errors.ApiError` refusing the request: 404, 503...)."""
        return self._ahead_of_data(ids, self._round_trip, "device_call", request_id, ids, {}, None)

    def device_ctrl(
        self,
        request_id: str,
        ids: dict[str, str],
        body: dict[str, Any],
        client: str,
        token_id: str,
        refused: str | None = None,
        timeout: float | None = None,
    ) -> Deferred[Any]:
        """Validate, send and audit one command; every outcome gets its audit entry.

        Fires with the `DeviceAnswer` or fails with the `errors.ApiError` the REST route
        answers; ``refused`` (a reason) audits the command as refused without sending
        it; ``timeout`` (default: ``device_timeout``) bounds the wait for the reply.
        """
        args = (request_id, ids, body, client, token_id, refused, timeout)
        if refused is not None or _invalid_body(body) is not None:
            return self._device_ctrl(*args)  # audited only: nothing to hold data for
        return self._ahead_of_data(ids, self._device_ctrl, *args)

    def _ahead_of_data(self, ids: dict[str, str], work: Any, *args: Any) -> Deferred[Any]:
        """``work(*args)`` with this process's data held back meanwhile (`priority`)."""
        priority = self.priority
        if priority is None:
            return maybeDeferred(work, *args)
        device_id = str(ids.get("device_id"))
        priority.begin(device_id)

        def done(result: Any) -> Any:
            priority.end(device_id)
            return result

        return maybeDeferred(work, *args).addBoth(done)

    @inlineCallbacks
    def _device_ctrl(
        self,
        request_id: str,
        ids: dict[str, str],
        body: dict[str, Any],
        client: str,
        token_id: str,
        refused: str | None,
        timeout: float | None,
    ) -> Any:
        entry = {
            "time": iso_time(self.clock.seconds()),
            "request_id": request_id,
            "client": client,
            "token_id": token_id,
            **ids,
            "value": _short_json(body.get("value")),
            "select": _short_json(body.get("select")),
        }
        try:
            invalid = _invalid_body(body)
            if invalid is not None:
                raise invalid
            value, select = body.get("value"), body.get("select")
            if refused is not None:
                raise DeviceAnswer(request_id, "refused", refused)
            extra = {
                "value": value,
                "select": select,
                "client": client,
                "token_id": token_id,
                # The collector writes the entry with its answer (one round trip less).
                "audit": {name: str(text) for name, text in entry.items()},
                "audit_length": self.settings.ctrl_log_length,
            }
            answer = yield self._round_trip("device_ctrl", request_id, ids, extra, timeout)
        except errors.ApiError as e:
            outcome = e.outcome if isinstance(e, DeviceAnswer) else e.code
            cause = getattr(e, "cause", None)
            yield self._audit(
                entry, outcome, e.status, e.message, cause, getattr(e, "audited", False)
            )
            raise
        except Exception:
            yield self._audit(entry, "failed", 500, "internal error", None)
            raise
        yield self._audit(
            entry, answer.outcome, answer.status, answer.message, answer.cause, answer.audited
        )
        return answer

    # -- the round trip -----------------------------------------------------------------
    @inlineCallbacks
    def _round_trip(
        self,
        action: str,
        request_id: str,
        ids: dict[str, str],
        extra: dict[str, Any],
        timeout: float | None,
    ) -> Any:
        """Publish one request and await its own reply: a `DeviceAnswer` (raised if not 2xx).

        One Redis round trip checks the point and publishes (`ICommandStore.send_request`).
        """
        if self.replies is None:
            yield find_term_item(self.config, ids["term_id"], ids["item_id"], ids["device_id"])
            raise DeviceAnswer(request_id, "unavailable", "device requests are not served here")
        if timeout is None:
            timeout = self.settings.device_timeout
        for name in ("term_id", "item_id", "device_id"):
            if not is_valid_id(ids[name]):
                raise errors.NotFound(f"{name} not found!", field=name)
        try:
            waiting = self.replies.wait(request_id, timeout)  # before publishing: none missed
        except errors.Unavailable:
            # Nothing can be sent; a point that does not exist is still named first (404).
            yield find_term_item(self.config, ids["term_id"], ids["item_id"], ids["device_id"])
            raise
        message = {
            "request_id": request_id,
            **ids,
            **extra,
            "reply_to": self.replies.reply_channel(request_id),
            "deadline": self.clock.seconds() + timeout,
        }
        try:
            missing, receivers = yield self.commands.send_request(ids, _CHANNELS[action], message)
        except BaseException:
            _forget(waiting)
            raise
        if missing is not None:
            _forget(waiting)
            raise errors.NotFound(f"{missing} not found!", field=missing)
        if not receivers:
            _forget(waiting)
            raise DeviceAnswer(
                request_id, "unavailable", "no collector is running; nothing was sent"
            )
        try:
            reply = yield waiting
        except ReplyTimeout:
            # A device_ctrl answered (and audited) by the collector just before: that answer.
            reply = (yield self._settle(request_id)) if action == "device_ctrl" else None
            if reply is None:
                maybe = (
                    "; the command may still have been executed" if action == "device_ctrl" else ""
                )
                raise DeviceAnswer(
                    request_id,
                    "timeout",
                    f"no answer from the collector within {timeout:g} s{maybe}",
                ) from None
        answer = DeviceAnswer.from_reply(request_id, reply)
        answer.audited = action == "device_ctrl" and reply.get("audited") is True
        if action == "device_ctrl" and answer.outcome == "refused":
            answer.field = "value"  # the collector cannot send this value to this point
        if answer.status >= 400:
            raise answer
        return answer

    @inlineCallbacks
    def _settle(self, request_id: str) -> Any:
        """The wait for a device_ctrl's answer timed out: None when it did time out (this
        end audits it), or the collector's answer that came first (audited with it)."""
        try:
            text = yield self.commands.settle(request_id)
        except Exception:
            self.log.failure("settling device_ctrl {request_id}", request_id=request_id)
            return None
        return None if text is None else parse_reply(request_id, text)

    @inlineCallbacks
    def _audit(
        self,
        entry: dict[str, Any],
        outcome: str,
        status: int,
        message: str,
        cause: Any,
        audited: bool = False,
    ) -> Any:
        """Append one command to the bounded audit stream (unless the collector ``audited``
        it with its answer); a failure is logged, not raised."""
        if self.metrics is not None:
            self.metrics.commands.labels(outcome).inc()
        fields = dict(
            entry, outcome=outcome, status=str(status), message=message[:500], cause=cause or ""
        )
        try:
            if not audited:
                yield self.commands.append_audit(
                    {name: str(text) for name, text in fields.items()},
                    self.settings.ctrl_log_length,
                )
        except Exception:
            self.log.failure("device_ctrl audit entry not written: {entry}", entry=fields)
        # One line per command, with its outcome (the collector does not log it again).
        self.log.info(
            "device_ctrl {request_id} from {client} (token {token_id}): "
            "{device_id}:{term_id}:{item_id} = {value} select={select}: "
            "{outcome} ({status}) {message}",
            **{k: v for k, v in entry.items() if k != "time"},  # "time" is the logger's
            outcome=outcome,
            status=status,
            message=message,
        )


@inlineCallbacks
def find_term_item(
    config: IConfigStore, term_id: str, item_id: str, device_id: str | None = None
) -> Any:
    """The stored hash of a term-item (of ``device_id`` when given), or `errors.NotFound`
    naming the first id that is not found."""
    for name, value in (("term_id", term_id), ("item_id", item_id), ("device_id", device_id)):
        if value is not None and not is_valid_id(value):
            raise errors.NotFound(f"{name} not found!", field=name)
    if device_id is not None and not (yield config.entity_exists("device", device_id)):
        raise errors.NotFound("device_id not found!", field="device_id")
    if not (yield config.entity_exists("term", term_id)):
        raise errors.NotFound("term_id not found!", field="term_id")
    if not (yield config.entity_exists("item", item_id)):
        raise errors.NotFound("item_id not found!", field="item_id")
    fields = yield config.get_term_item_fields(term_id, item_id)
    if not fields or (
        device_id is not None and json.loads(fields.get("device_id", "null")) != device_id
    ):
        raise errors.NotFound("term_item not found!", field="term_item")
    return fields


def _invalid_body(body: dict[str, Any]) -> errors.ValidationError | None:
    """Why a device_ctrl body cannot be sent (None: it can)."""
    value = body.get("value")
    # JSON true/false go to the driver as they are: a coil or an IEC 104 single command
    # takes them, a double command maps them to 2/1, others to 1/0.
    if not isinstance(value, (bool, int, float, str)) or (
        isinstance(value, str) and len(value) > 256
    ):
        return errors.ValidationError(
            "value must be a number, true/false, or a short string", field="value"
        )
    select = body.get("select")  # None: the term-item's default mode
    if select is not None and not isinstance(select, bool):
        return errors.ValidationError("select must be true, false or null", field="select")
    return None


def make_commander(
    redis: Any,
    settings: Any,
    clock: Any,
    replies: Any,
    metrics: Any = None,
    command_redis: Any = None,
    priority: CommandPriority | None = None,
) -> Commander:
    """A `Commander` over the stores on the Redis client ``redis`` and ``replies``; its
    requests and audit entries go through ``command_redis`` (default ``redis``): give it
    a connection of its own (`RedisClient.dedicated`)."""
    return Commander(
        ConfigStore(redis),
        PointStore(redis),
        EventStore(redis),
        replies,
        settings,
        clock,
        metrics,
        CommandStore(command_redis if command_redis is not None else redis),
        priority,
    )


def commander_factory(
    redis: Any, settings: Any, clock: Any, priority: CommandPriority | None = None
) -> Callable[[], Commander]:
    """Builds, on demand, a `Commander` with a reply listener of its own on the server the
    pool ``redis`` connects to (its owner starts and stops ``commander.replies``): for a
    processor plugin commanding devices (the MQTT plugin)."""

    def build() -> Commander:
        replies = ReplyListener(clock, address_source=redis)
        return make_commander(redis, settings, clock, replies, priority=priority)

    return build


def _short_json(value: Any) -> str:
    """A value as JSON text of at most 256 characters (audit fields)."""
    try:
        text = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError, RecursionError):
        text = json.dumps(repr(value))
    return text[:256]


def _forget(waiting: Deferred[Any]) -> None:
    waiting.addErrback(lambda f: f.trap(CancelledError))
    waiting.cancel()
