"""Commands from MQTT (JSON ``.../set`` topics, Sparkplug DCMD) through the one command
path of the REST ``device_ctrl`` (`pydatacoll.interfaces.ICommander`, built by the
factory the composition root hands the plugin), each outcome published back as a result
record."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from pydatacoll.interfaces import ICommander
from pydatacoll.model import iso_time, normalize_id
from pydatacoll.processing.mqtt.options import MqttOptions

Point = tuple[str, str, str]
_log = Logger()


def json_command_body(payload: bytes) -> dict[str, Any]:
    """The body of a JSON command: the object sent, or ``{"value": payload}``."""
    try:
        body = json.loads(payload)
    except ValueError:
        body = None
    return body if isinstance(body, dict) else {"value": body}


class MqttCommands:
    """Runs commands through an `ICommander` (built by ``make_commander``) once `start`
    has started its reply listener (before, or without ``make_commander``: each is
    answered "refused: commands are off"); ``put`` takes the result records to the
    outbox; ``counters`` are the processor's."""

    def __init__(
        self,
        reactor: Any,
        make_commander: Callable[[], ICommander] | None,
        options: MqttOptions,
        counters: dict[str, int],
        put: Callable[[Sequence[tuple[Any, ...]]], None],
    ) -> None:
        self.reactor = reactor
        self.make_commander = make_commander
        self.options = options
        self.counters = counters
        self.put = put
        self._commander: ICommander | None = None
        self._replies: Any = None

    def start(self) -> None:
        """Listen for device replies; commands run from now on."""
        if self.make_commander is None:
            _log.warn("mqtt: commands are on, but devices cannot be commanded from here")
            return
        self._commander = self.make_commander()
        self._replies = self._commander.replies
        self._replies.startService()

    def stop(self) -> Deferred[Any]:
        """Stop listening for replies."""
        replies, self._replies = self._replies, None
        if replies is None:
            return succeed(None)
        return maybeDeferred(replies.stopService)

    def command(self, point: Point, body: dict[str, Any]) -> Deferred[Any]:
        """Run one command from MQTT through the device_ctrl path; publish its outcome."""
        self.counters["commands"] += 1
        who = body.get("client")
        try:
            who = normalize_id(who, "client") if who is not None else "anonymous"
        except Exception:
            who = "anonymous"
        client = f"mqtt:{who}"
        token_id = f"mqtt:{self.options.client_id}"
        ids = dict(zip(("device_id", "term_id", "item_id"), point, strict=True))
        refused = None
        if not self.options.command_allowed(point):
            refused = f"commands to {':'.join(point)} are not allowed by [plugin:mqtt] commands_acl"
            self.counters["commands_refused"] += 1
        if self._commander is None:
            d: Deferred[Any] = succeed(
                {"outcome": "refused", "message": refused or "commands are off"}
            )
        else:
            d = self._commander.device_ctrl(
                uuid.uuid4().hex, ids, body, client, token_id, refused=refused
            )
            d.addCallbacks(_answer_body, _error_body)
        request = {"value": body.get("value"), "client": client}

        def publish(answer: dict[str, Any]) -> None:
            result = json.dumps(
                {**answer, **request, "time": iso_time(self.reactor.seconds())}, default=str
            )
            self.put([("r", *point, result)])

        return d.addCallback(publish)


def _answer_body(answer: Any) -> dict[str, Any]:
    return dict(answer.to_json())


def _error_body(failure: Failure) -> dict[str, Any]:
    error = failure.value
    to_json = getattr(error, "to_json", None)
    if to_json is None:
        _log.failure("mqtt: command failed", failure)
        return {"outcome": "failed", "message": "internal error"}
    body = dict(to_json())
    body.setdefault("outcome", body.get("error"))
    return body
