"""The stored JSON text of a sample, as the ingest path writes it (`encode`)."""

from __future__ import annotations

import json
import math
from typing import Any

from pydatacoll.model import Sample, iso_time

_INFINITIES = (math.inf, -math.inf)


class _Times:
    """ISO texts of epoch seconds, memoised: the samples of a frame share their times."""

    def __init__(self) -> None:
        self.cache: dict[float, str] = {}

    def text(self, seconds: float) -> str:
        text = self.cache.get(seconds)
        if text is None:
            if len(self.cache) > 4096:  # bounded: times move on
                self.cache.clear()
            try:
                text = iso_time(seconds) or ""
            except (ValueError, OverflowError, OSError, TypeError):
                text = ""  # NaN or out of range (a device's clock): no time, never a crash
            self.cache[seconds] = text
        return text


def _value_json(value: Any) -> str | None:
    """The JSON text of a value, or None for one JSON cannot carry (NaN, infinities)."""
    kind = type(value)
    if kind is float:
        if value != value or value in _INFINITIES:
            return None
        return repr(value)
    if kind is bool:
        return "true" if value else "false"
    if kind is int:
        return str(value)
    if value is None:
        return "null"
    return json.dumps(value, ensure_ascii=False, default=str)


def encode(sample: Sample, times: _Times) -> str:
    """The stored JSON text of a sample (as `Sample.to_json`, without spaces)."""
    value = _value_json(sample.value)
    quality = sample.quality
    flags = sample.flags
    if value is None:  # not JSON: stored as null, invalid
        value, quality, flags = "null", "invalid", (*flags, "not_finite")
    flags_text = json.dumps(list(flags)) if flags else "[]"
    source = sample.source_time
    source_text = "" if source is None else times.text(source)
    source_text = '"' + source_text + '"' if source_text else "null"  # no (valid) time: null
    return (
        f'{{"value":{value},"quality":"{quality}","flags":{flags_text},'
        f'"source_time":{source_text},"receive_time":"{times.text(sample.receive_time)}"}}'
    )
