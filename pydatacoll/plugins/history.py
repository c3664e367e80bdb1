"""The built-in history processor plugin (MySQL/MariaDB or SQLite); see docs/history.rst."""

from __future__ import annotations

from typing import Any

from twisted.plugin import IPlugin
from zope.interface import implementer

from pydatacoll.interfaces import IProcessorFactory


@implementer(IPlugin, IProcessorFactory)
class HistoryFactory:
    """Builds the `pydatacoll.processing.history.HistoryProcessor` from its context."""

    name = "history"
    description = "history of every sample in MySQL/MariaDB (or SQLite), spooled while it is away"

    @property
    def options(self) -> tuple[str, ...]:
        """The keys of ``[plugin:history]`` (any other is refused at start)."""
        from pydatacoll.processing.history import OPTION_DEFAULTS

        return tuple(OPTION_DEFAULTS)

    def build(self, context: Any) -> Any:
        """The processor service; `pydatacoll.errors.ConfigError` for bad options."""
        from pydatacoll.processing.history import HistoryProcessor

        return HistoryProcessor.from_context(context)


history = HistoryFactory()
