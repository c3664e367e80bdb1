"""Scaling of raw device values to engineering units, shared by the protocol drivers."""

from __future__ import annotations

import math
from typing import Any


def apply_scaling(raw: Any, coefficient: float | None, base_val: float | None) -> Any:
    """``raw * coefficient + base_val`` without the binary noise of the product.

    The raw value of a register is exact (an integer, or a float of the register's own
    precision); ``2401 * 0.1`` is ``240.10000000000002`` in binary floating point, so the
    result is rounded to 15 significant digits (what a double holds exactly): 240.1.
    Without scaling, and for booleans and text, the raw value is returned as it is.
    """
    if coefficient is None and base_val is None:
        return raw
    if isinstance(raw, bool) or not isinstance(raw, (int, float)):
        return raw
    value = raw * (1 if coefficient is None else coefficient) + (base_val or 0)
    if isinstance(value, float) and math.isfinite(value):
        return float(f"{value:.15g}")
    return value
