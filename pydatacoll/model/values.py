"""The values that flow from devices: `Sample` (a point's value, quality and times) and
`ControlOutcome` (how a command ended)."""

from __future__ import annotations

import datetime
import math
from collections.abc import Mapping
from typing import Any

import attrs

#: What an id may be: it goes into Redis key names and URLs, so no ``:``, ``*``, ``/`` ...

QUALITIES = ("good", "questionable", "invalid")


def worst_quality(qualities: Any) -> str:
    """The worst of ``qualities`` ("good" for none)."""
    return max(qualities, key=QUALITIES.index, default="good")


#: "YYYY-MM-DDTHH:MM:SS" of the whole epoch seconds `iso_time` wrote lately (bounded).
_WHOLE_SECONDS: dict[int, str] = {}
#: Year 10000: datetime's end.
_TIME_END = 253402300800


def iso_time(seconds: float | None) -> str | None:
    """Epoch seconds as an ISO 8601 UTC time with milliseconds (``...T06:40:00.123+00:00``)."""
    if seconds is None:
        return None
    kind = type(seconds)
    if (kind is float or kind is int) and 0 <= seconds < _TIME_END:
        # Every sample's and status's times (thousands a second): the text of the whole
        # second is made once; the milliseconds are what datetime gives (its microseconds
        # rounded half to even, then cut to milliseconds), by test.
        fraction, whole = math.modf(seconds)
        micro = round(fraction * 1e6)
        if micro >= 1_000_000:
            whole, micro = whole + 1, micro - 1_000_000
        second = int(whole)
        text = _WHOLE_SECONDS.get(second)
        if text is None:
            if len(_WHOLE_SECONDS) > 4096:
                _WHOLE_SECONDS.clear()
            moment = datetime.datetime.fromtimestamp(second, datetime.UTC)
            text = _WHOLE_SECONDS[second] = moment.isoformat()[:19]
        return f"{text}.{micro // 1000:03d}+00:00"
    moment = datetime.datetime.fromtimestamp(seconds, datetime.UTC)
    return moment.isoformat(timespec="milliseconds")


@attrs.frozen(slots=True, init=False)
class Sample:
    """One value of a point, scaled, with its quality and times (epoch seconds).

    ``quality`` is one of `QUALITIES`; ``flags`` keeps the protocol's own reasons
    (``"NT"``, ``"SB"``, ``"OV"``, ``"timeout"``, ...) so that none is lost.
    """

    device_id: str
    term_id: str
    item_id: str
    value: Any
    quality: str = "good"
    flags: tuple[str, ...] = ()
    source_time: float | None = None
    receive_time: float = 0.0

    def __init__(
        self,
        device_id: str,
        term_id: str,
        item_id: str,
        value: Any,
        quality: str = "good",
        flags: tuple[str, ...] = (),
        source_time: float | None = None,
        receive_time: float = 0.0,
    ) -> None:
        # A sample per point per frame: the slots' own setters, about a fifth cheaper
        # than attrs' frozen __init__ (object.__setattr__ for each field).
        _set_device_id(self, device_id)
        _set_term_id(self, term_id)
        _set_item_id(self, item_id)
        _set_value(self, value)
        _set_quality(self, quality)
        _set_flags(self, flags)
        _set_source_time(self, source_time)
        _set_receive_time(self, receive_time)

    @property
    def point(self) -> tuple[str, str, str]:
        """``(device_id, term_id, item_id)``."""
        return (self.device_id, self.term_id, self.item_id)

    def to_json(self) -> dict[str, Any]:
        """The sample as stored and served: value, quality, flags, ISO times."""
        return {
            "value": self.value,
            "quality": self.quality,
            "flags": list(self.flags),
            "source_time": iso_time(self.source_time),
            "receive_time": iso_time(self.receive_time),
        }

    def to_message(self) -> dict[str, Any]:
        """The sample with its point ids, as published on the data channels."""
        return {
            "device_id": self.device_id,
            "term_id": self.term_id,
            "item_id": self.item_id,
            **self.to_json(),
        }

    @classmethod
    def from_message(cls, message: Mapping[str, Any]) -> Sample:
        """The inverse of `to_message` (times back to epoch seconds)."""

        def seconds(text: str | None) -> float | None:
            return None if text is None else datetime.datetime.fromisoformat(text).timestamp()

        return cls(
            str(message["device_id"]),
            str(message["term_id"]),
            str(message["item_id"]),
            message.get("value"),
            message.get("quality", "good"),
            tuple(message.get("flags", ())),
            seconds(message.get("source_time")),
            seconds(message.get("receive_time")) or 0.0,
        )


_set_device_id = Sample.__dict__["device_id"].__set__
_set_term_id = Sample.__dict__["term_id"].__set__
_set_item_id = Sample.__dict__["item_id"].__set__
_set_value = Sample.__dict__["value"].__set__
_set_quality = Sample.__dict__["quality"].__set__
_set_flags = Sample.__dict__["flags"].__set__
_set_source_time = Sample.__dict__["source_time"].__set__
_set_receive_time = Sample.__dict__["receive_time"].__set__

#: device_call / device_ctrl outcomes and the HTTP status the API answers with.
OUTCOME_STATUS = {
    "confirmed": 200,
    "terminated": 200,
    "negative": 409,
    "busy": 409,
    "overloaded": 503,
    "refused": 400,
    "not_found": 404,
    "offline": 503,
    "timeout": 504,
    "failed": 502,
}


@attrs.frozen
class ControlOutcome:
    """How a command (or a read) ended, as a collector replies to the API."""

    outcome: str  #: a key of `OUTCOME_STATUS`
    message: str = ""
    cause: str | None = None  #: the device's own reason (e.g. IEC 104 COT name)
    sample: Sample | None = None  #: the value read (device_call) or read back

    @property
    def ok(self) -> bool:
        """Whether the device confirmed."""
        return self.outcome in ("confirmed", "terminated")

    def to_json(self) -> dict[str, Any]:
        """The reply body (without the request id)."""
        body: dict[str, Any] = {"ok": self.ok, "outcome": self.outcome, "message": self.message}
        if self.cause is not None:
            body["cause"] = self.cause
        if self.sample is not None:
            body["sample"] = self.sample.to_message()
        return body


# --- formulas ------------------------------------------------------------------------

#: Most parameters (p1..pN) of one formula.
