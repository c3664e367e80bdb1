"""Old import path of the reply listener: it lives in `pydatacoll.control.replies` (the
REST API, the gateways and the MQTT plugin share it)."""

from __future__ import annotations

from pydatacoll.control.replies import (
    API_OUTCOME_STATUS,
    MAX_PENDING,
    RETRY_AFTER,
    DeviceAnswer,
    ReplyListener,
    ReplyTimeout,
)

__all__ = [
    "API_OUTCOME_STATUS",
    "MAX_PENDING",
    "RETRY_AFTER",
    "DeviceAnswer",
    "ReplyListener",
    "ReplyTimeout",
]
