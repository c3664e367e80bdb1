"""Commands from MQTT (JSON ``.../set`` topics, Sparkplug DCMD) through the same path as
the REST ``device_ctrl``, each outcome published back as a result record."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

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
    """Runs commands through ``device_ctrl`` once `start` has connected the reply
    listener (before: each is answered "refused: commands are off"); ``put`` takes the
    result records to the outbox; ``counters`` are the processor's."""

    def __init__(
        self,
        reactor: Any,
        redis: Any,
        settings: Any,
        options: MqttOptions,
        counters: dict[str, int],
        put: Callable[[Sequence[tuple[Any, ...]]], None],
    ) -> None:
        self.reactor = reactor
        self.redis = redis
        self.settings = settings
        self.options = options
        self.counters = counters
        self.put = put
        self._replies: Any = None
        self._api: Any = None

    def start(self) -> None:
        """Listen for device replies; commands run from now on."""
        # The device_ctrl path of the REST API (imported here: the API is built on demand).
        from pydatacoll.api.app import ApiApp
        from pydatacoll.api.replies import ReplyListener
        from pydatacoll.config import Settings
        from pydatacoll.store.config import ConfigStore

        self._replies = ReplyListener(self.reactor, address_source=self.redis)
        self._replies.startService()
        self._api = ApiApp(
            ConfigStore(self.redis),
            self.settings or Settings(),
            replies=self._replies,
            clock=self.reactor,
        )

    def stop(self) -> Deferred[Any]:
        """Stop listening for replies."""
        replies, self._replies = self._replies, None
        if replies is None:
            return succeed(None)
        d: Deferred[Any] = replies.stopService()
        return d

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
        if self._api is None:
            d: Deferred[Any] = succeed(
                {"outcome": "refused", "message": refused or "commands are off"}
            )
        else:
            d = self._api.device_ctrl(ids, body, client, token_id=token_id, refused=refused)
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
