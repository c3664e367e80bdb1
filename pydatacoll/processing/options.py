"""Parsers for bounded numeric plugin options (``[plugin:NAME]`` values), shared by the
processors so each bound is checked and worded the same way."""

from __future__ import annotations

import math
from collections.abc import Callable


def number_option(low: float, high: float) -> Callable[[str], float]:
    """A parser of a finite number in ``low..high``; it raises `ValueError` saying why."""

    def parse(text: str) -> float:
        value = float(text)
        if not math.isfinite(value) or not low <= value <= high:
            raise ValueError(f"must be between {low:g} and {high:g}")
        return value

    return parse


def integer_option(low: int, high: int) -> Callable[[str], int]:
    """A parser of an integer in ``low..high``; it raises `ValueError` saying why."""

    def parse(text: str) -> int:
        value = int(text)
        if not low <= value <= high:
            raise ValueError(f"must be between {low} and {high}")
        return value

    return parse
