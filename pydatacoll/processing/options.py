"""Bounded numeric plugin options (``[plugin:NAME]`` values): the parsers are the ones of
the settings (`pydatacoll.config`), so each bound is checked and worded the same way."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TypeVar

from pydatacoll.config import integer_option, number_option
from pydatacoll.errors import ConfigError

__all__ = ["integer_option", "number_option", "option"]

T = TypeVar("T")


def option(
    options: Mapping[str, str], section: str, name: str, default: T, parse: Callable[[str], T]
) -> T:
    """The value of ``options[name]`` parsed (``default`` when absent); `ConfigError`
    naming ``section.name`` when it is not valid."""
    text = options.get(name)
    if text is None:
        return default
    try:
        return parse(text)
    except ValueError as e:
        raise ConfigError(f"{section}.{name}", str(e)) from None
