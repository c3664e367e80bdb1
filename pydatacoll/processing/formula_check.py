"""The formula check of ``POST /api/v1/formula_check``: a formula evaluated once on the
stored values, without saving it; and the window values the formulas processor shares."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

from twisted.internet.defer import inlineCallbacks

from pydatacoll.errors import ValidationError
from pydatacoll.expression import ExpressionError, compile_expression, evaluate
from pydatacoll.model import parse_point, worst_quality
from pydatacoll.store.processing import PointConfigStore
from pydatacoll.store_interfaces import IPointConfigStore

Point = tuple[str, str, str]


def _numeric(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return float(value)


def window_values(samples: Iterable[Mapping[str, Any]]) -> tuple[list[float], list[str]]:
    """The usable values of window samples (numbers, not invalid) and their qualities."""
    values, qualities = [], []
    for sample in samples:
        quality = sample.get("quality", "good")
        value = _numeric(sample.get("value"))
        if value is None or quality == "invalid":
            continue
        values.append(value)
        qualities.append(quality if quality in ("good", "questionable") else "questionable")
    return values, qualities


@inlineCallbacks
def check_formula(points: Any, body: Any, now: float, window_samples: int = 1000) -> Any:
    """What POST /api/v1/formula_check answers: the formula evaluated on stored values
    (``points`` provides `IPointConfigStore`; a Redis client is wrapped in one).

    ``{"ok": true, "value", "quality"}`` or ``{"ok": false, "error", "message", "field"}``.
    """
    if not isinstance(body, dict):
        raise ValidationError("the request must be a JSON object")
    text = body.get("formula")
    if not isinstance(text, str):
        raise ValidationError("formula must be a string", field="formula")
    params: dict[str, Point] = {}
    for name, value in body.items():
        if isinstance(name, str) and name.startswith("p") and name[1:].isdigit():
            if len(params) >= 32 or len(name) > 4:
                raise ValidationError("at most 32 parameters p0..p999", field=name[:8])
            params[name] = parse_point(value, name)
    try:
        expression = compile_expression(text, params)
    except ExpressionError as e:
        return {"ok": False, "error": "invalid", "message": e.message, "field": "formula"}
    if not IPointConfigStore.providedBy(points):
        points = PointConfigStore(points)
    values, qualities = {}, []
    for name in sorted(expression.params):
        point = params[name]
        fields = yield points.term_item(*point[1:])
        if fields.get("device_id") != point[0]:
            message = f"parameter not found: {name}={':'.join(point)}"
            return {"ok": False, "error": "not_found", "message": message, "field": name}
        sample = yield points.latest_sample(point)
        if sample is not None:
            values[name] = sample.get("value")
            qualities.append(sample.get("quality", "good"))
    windows = {}
    for window in expression.windows:
        stored = yield points.sample_window(
            params[window.param], now - window.seconds, window_samples
        )
        windows[window], window_qualities = window_values(stored)
        qualities.extend(window_qualities)
    try:
        value = evaluate(expression, values, windows)
    except ExpressionError as e:
        return {"ok": False, "error": "failed", "message": e.message, "field": "formula"}
    return {"ok": True, "value": value, "quality": worst_quality(qualities)}
