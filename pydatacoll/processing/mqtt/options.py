"""The ``[plugin:mqtt]`` options: defaults, parsers and the checked, frozen value."""

from __future__ import annotations

import fnmatch
import re
import socket
import string
from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote, urlsplit

import attrs

from pydatacoll.errors import ConfigError
from pydatacoll.processing.options import integer_option as _integer
from pydatacoll.processing.options import number_option as _number

MODES = ("json", "sparkplug")
POINTS = ("all", "flagged")
#: Fields a JSON topic template may use.
TOPIC_FIELDS = {"device_id", "term_id", "item_id", "collector"}
_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


def _choice(*choices: str) -> Any:
    def parse(text: str) -> str:
        if text.strip() not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}")
        return text.strip()

    return parse


def _boolean(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "yes", "true", "on"):
        return True
    if lowered in ("0", "no", "false", "off"):
        return False
    raise ValueError(f"expected true or false, not {text!r}")


def _url(text: str) -> str:
    text = text.strip()
    parts = urlsplit(text)
    if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
        raise ValueError("must be mqtt://host[:port] or mqtts://host[:port]")
    try:
        parts.port  # noqa: B018 (raises for a bad port)
    except ValueError:
        raise ValueError("the port must be a number from 1 to 65535") from None
    return text


def _text(text: str) -> str:
    return text.strip()


def _name(text: str) -> str:
    text = text.strip()
    if text and not _NAME_RE.match(text):
        raise ValueError("may hold letters, digits, _ . and - only (at most 64)")
    return text


def _names(text: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in text.replace("\n", ",").split(",") if n.strip())
    for name in names:
        if not _NAME_RE.match(name):
            raise ValueError(f"{name!r} is not an id")
    return names


def _patterns(text: str) -> tuple[str, ...]:
    patterns = tuple(p.strip() for p in text.replace("\n", ",").split(",") if p.strip())
    for pattern in patterns:
        if pattern.count(":") != 2:
            raise ValueError(f"{pattern!r} is not device:term:item (with * and ? wildcards)")
    return patterns


def _template(text: str) -> str:
    text = text.strip()
    fields = {name for _, name, _, _ in string.Formatter().parse(text) if name is not None}
    unknown = fields - TOPIC_FIELDS
    if unknown:
        raise ValueError(f"unknown field {sorted(unknown)[0]!r} (use {sorted(TOPIC_FIELDS)})")
    if not text or any(c in text for c in "+#\0"):
        raise ValueError("must be a non-empty topic without + or #")
    return text


#: [plugin:mqtt] option -> (default text, parser). etc/pydatacoll.ini mirrors these.
OPTION_DEFAULTS: dict[str, tuple[str, Any]] = {
    "mode": ("json", _choice(*MODES)),
    "url": ("mqtt://127.0.0.1:1883", _url),
    "ca_file": ("", _text),
    "cert_file": ("", _text),
    "key_file": ("", _text),
    "client_id": ("", _text),
    "username": ("", _text),
    "password": ("", _text),
    "keepalive": ("30", _integer(5, 3600)),
    "connect_timeout": ("10", _number(0.5, 300)),
    "qos": ("1", _integer(0, 1)),
    "retain": ("false", _boolean),
    "collector": ("", _name),
    "points": ("all", _choice(*POINTS)),
    "devices": ("", _names),
    "topic": ("pydatacoll/{device_id}/{term_id}/{item_id}", _template),
    "status_topic": ("pydatacoll/{device_id}/status", _template),
    "alarm_topic": ("pydatacoll/alarms", _template),
    "state_topic": ("pydatacoll/{collector}/state", _template),
    "group_id": ("pydatacoll", _name),
    "edge_node_id": ("", _name),
    "commands": ("false", _boolean),
    "commands_acl": ("", _patterns),
    "inflight": ("100", _integer(1, 65535)),
    "queue_records": ("100000", _integer(100, 10_000_000)),
    "spool_max_mb": ("256", _number(0.01, 1_000_000)),
    "spool_max_records": ("5000000", _integer(1, 1_000_000_000)),
    "spool_segment_mb": ("8", _number(0.001, 1024)),
    "spool_fsync": ("append", _choice("append", "never")),
    "retry_initial": ("0.5", _number(0.01, 600)),
    "retry_max": ("30", _number(0.01, 3600)),
    "status_interval": ("2", _number(0.1, 3600)),
}


@attrs.frozen
class MqttOptions:
    """The checked ``[plugin:mqtt]`` options (see `OPTION_DEFAULTS` and etc/pydatacoll.ini)."""

    mode: str = "json"
    url: str = "mqtt://127.0.0.1:1883"
    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""
    client_id: str = ""
    username: str = ""
    password: str = attrs.field(default="", repr=False)
    keepalive: int = 30
    connect_timeout: float = 10.0
    qos: int = 1
    retain: bool = False
    collector: str = ""
    points: str = "all"
    devices: tuple[str, ...] = ()
    topic: str = "pydatacoll/{device_id}/{term_id}/{item_id}"
    status_topic: str = "pydatacoll/{device_id}/status"
    alarm_topic: str = "pydatacoll/alarms"
    state_topic: str = "pydatacoll/{collector}/state"
    group_id: str = "pydatacoll"
    edge_node_id: str = ""
    commands: bool = False
    commands_acl: tuple[str, ...] = ()
    inflight: int = 100
    queue_records: int = 100000
    spool_max_mb: float = 256.0
    spool_max_records: int = 5000000
    spool_segment_mb: float = 8.0
    spool_fsync: str = "append"
    retry_initial: float = 0.5
    retry_max: float = 30.0
    status_interval: float = 2.0

    @classmethod
    def parse(cls, options: Mapping[str, str]) -> MqttOptions:
        """Check the INI text; `ConfigError` names the first bad or unknown key."""
        values: dict[str, Any] = {}
        for name in options:
            if name not in OPTION_DEFAULTS:
                raise ConfigError(f"plugin:mqtt.{name}", "unknown option")
        for name, (default, parse) in OPTION_DEFAULTS.items():
            text = options.get(name, default)
            try:
                values[name] = parse(text)
            except ValueError as e:
                raise ConfigError(f"plugin:mqtt.{name}", str(e)) from None
        if not values["collector"]:
            values["collector"] = _host_name()
        if not values["edge_node_id"]:
            values["edge_node_id"] = values["collector"]
        if not values["client_id"]:
            values["client_id"] = f"pydatacoll-{values['collector']}"
        if bool(values["cert_file"]) != bool(values["key_file"]):
            raise ConfigError("plugin:mqtt.key_file", "cert_file and key_file go together")
        if values["cert_file"] and not values["url"].startswith("mqtts:"):
            raise ConfigError("plugin:mqtt.cert_file", "a client certificate needs mqtts://")
        return cls(**values)

    @property
    def host(self) -> str:
        """The broker's host name."""
        return urlsplit(self.url).hostname or "127.0.0.1"

    @property
    def port(self) -> int:
        """The broker's port (1883, or 8883 for mqtts, when the URL names none)."""
        parts = urlsplit(self.url)
        return parts.port or (8883 if parts.scheme == "mqtts" else 1883)

    @property
    def tls(self) -> bool:
        """Whether the link is TLS (``mqtts://``)."""
        return urlsplit(self.url).scheme == "mqtts"

    @property
    def url_username(self) -> str:
        """``username`` or the URL's user part."""
        return self.username or unquote(urlsplit(self.url).username or "")

    @property
    def url_password(self) -> str:
        """``password`` or the URL's password part."""
        return self.password or unquote(urlsplit(self.url).password or "")

    @property
    def describe(self) -> str:
        """The broker without credentials."""
        scheme = "mqtts" if self.tls else "mqtt"
        return f"{scheme}://{self.host}:{self.port}"

    def command_allowed(self, point: tuple[str, str, str]) -> bool:
        """Whether a command to ``point`` is allowed by ``commands`` and the ACL."""
        if not self.commands:
            return False
        text = ":".join(point)
        return any(fnmatch.fnmatchcase(text, pattern) for pattern in self.commands_acl)


def _host_name() -> str:
    name = re.sub(r"[^A-Za-z0-9_.-]", "-", socket.gethostname())[:64]
    return name or "collector"
