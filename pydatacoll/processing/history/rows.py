"""Database rows of samples: the one encoding the writer stores and the readers decode."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from pydatacoll.model import Sample

#: Longest id, quality, value text and flags text a row may carry (longer: refused).
MAX_ID = 128
MAX_QUALITY = 16
MAX_VALUE_TEXT = 65535
MAX_FLAGS_TEXT = 4096

Row = tuple[Any, ...]


def milliseconds(seconds: float | None) -> int | None:
    return None if seconds is None else int(round(seconds * 1000))


def sample_row(sample: Sample) -> Row | None:
    """The database row of a sample, or None when it cannot be stored (see MAX_*).

    ``value`` holds every finite number (booleans as 1/0); ``value_text`` holds the
    value's JSON text unless it is a finite float, so that `read` gives back exactly
    the value stored (integers stay integers, strings stay strings).
    """
    # The hot path of the plugin (one call per stored sample): kept lean on purpose.
    value = sample.value
    number: float | None
    text: str | None
    if type(value) is float and value - value == 0.0:  # finite float
        number, text = value, None
    else:
        if isinstance(value, bool) or (isinstance(value, int) and abs(value) < 2**1000):
            number = float(value)
        else:
            number = None  # NaN, infinities, strings, ...: as JSON text only
        text = json.dumps(value, ensure_ascii=False, default=str)
        if len(text) > MAX_VALUE_TEXT:
            return None
    device_id, term_id, item_id = sample.device_id, sample.term_id, sample.item_id
    if type(device_id) is not str or type(term_id) is not str or type(item_id) is not str:
        device_id, term_id, item_id = str(device_id), str(term_id), str(item_id)
    quality = sample.quality
    if (
        len(device_id) > MAX_ID
        or len(term_id) > MAX_ID
        or len(item_id) > MAX_ID
        or len(quality) > MAX_QUALITY
    ):
        return None
    if sample.flags:
        flags = json.dumps(list(sample.flags), ensure_ascii=False, default=str)
        if len(flags) > MAX_FLAGS_TEXT:
            return None
    else:
        flags = "[]"
    source = sample.source_time
    return (
        device_id,
        term_id,
        item_id,
        None if source is None else int(round(source * 1000)),
        int(round(sample.receive_time * 1000)),
        number,
        text,
        quality,
        flags,
    )


def row_sample(row: Sequence[Any]) -> Sample:
    """The sample a stored row holds (the inverse of `sample_row`)."""
    device_id, term_id, item_id, source_ms, receive_ms, number, text, quality, flags = row
    value = json.loads(text) if text is not None else number
    return Sample(
        device_id,
        term_id,
        item_id,
        value,
        quality,
        tuple(json.loads(flags)) if flags else (),
        None if source_ms is None else source_ms / 1000.0,
        receive_ms / 1000.0,
    )


# -- spool ------------------------------------------------------------------------------
