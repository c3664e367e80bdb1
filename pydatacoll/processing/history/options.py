"""The ``[plugin:history]`` options, checked once into a frozen `HistoryOptions`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import attrs

from pydatacoll.errors import ConfigError
from pydatacoll.processing.history.change_filter import POLICIES, Policy
from pydatacoll.processing.options import integer_option as _integer
from pydatacoll.processing.options import number_option as _number

NAME = "history"


def _policy(text: str) -> str:
    if text.strip() not in POLICIES:
        raise ValueError(f"must be one of {', '.join(POLICIES)}")
    return text.strip()


def _fsync(text: str) -> str:
    if text.strip() not in ("append", "never"):
        raise ValueError("must be append or never")
    return text.strip()


def _url(text: str) -> str:
    text = text.strip()
    if text and urlsplit(text).scheme != "mysql":
        raise ValueError("must be mysql://user[:password]@host[:port]/database or empty")
    return text


#: [plugin:history] option -> (default text, parser). etc/pydatacoll.ini mirrors these.
OPTION_DEFAULTS: dict[str, tuple[str, Any]] = {
    "url": ("", _url),
    "sqlite_file": ("history.sqlite3", str),
    "connect_timeout": ("5", _number(0.1, 300)),
    "query_timeout": ("30", _number(0.1, 3600)),
    "history": ("every", _policy),
    "history_deadband": ("0", _number(0, 1e300)),
    "history_deadband_percent": ("0", _number(0, 1e6)),
    "batch_samples": ("1000", _integer(1, 100_000)),
    "batch_interval": ("0.5", _number(0.001, 60)),
    "queue_samples": ("100000", _integer(100, 10_000_000)),
    "spool_max_mb": ("256", _number(0.01, 1_000_000)),
    "spool_max_samples": ("5000000", _integer(1, 1_000_000_000)),
    "spool_segment_mb": ("8", _number(0.001, 1024)),
    "spool_fsync": ("append", _fsync),
    "retry_initial": ("0.5", _number(0.01, 600)),
    "retry_max": ("30", _number(0.01, 3600)),
}


@attrs.frozen
class HistoryOptions:
    """The checked ``[plugin:history]`` options (see `OPTION_DEFAULTS`)."""

    url: str = ""
    sqlite_file: str = "history.sqlite3"
    connect_timeout: float = 5.0
    query_timeout: float = 30.0
    history: str = "every"
    history_deadband: float = 0.0
    history_deadband_percent: float = 0.0
    batch_samples: int = 1000
    batch_interval: float = 0.5
    queue_samples: int = 100000
    spool_max_mb: float = 256.0
    spool_max_samples: int = 5000000
    spool_segment_mb: float = 8.0
    spool_fsync: str = "append"
    retry_initial: float = 0.5
    retry_max: float = 30.0

    @classmethod
    def parse(cls, options: Mapping[str, str]) -> HistoryOptions:
        """Check the INI text; `ConfigError` names the first bad or unknown key."""
        values = {}
        for name in options:
            if name not in OPTION_DEFAULTS:
                raise ConfigError(f"plugin:history.{name}", "unknown option")
        for name, (default, parse) in OPTION_DEFAULTS.items():
            text = options.get(name, default)
            try:
                values[name] = parse(text)
            except ValueError as e:
                raise ConfigError(f"plugin:history.{name}", str(e)) from None
        return cls(**values)

    @property
    def default_policy(self) -> Policy:
        """The policy of a point that does not name its own."""
        return Policy(self.history, self.history_deadband, self.history_deadband_percent)


# -- storage policy ---------------------------------------------------------------------
