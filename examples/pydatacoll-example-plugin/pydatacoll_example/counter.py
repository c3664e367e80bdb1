"""A processor that counts the samples it sees, per device, and shows them in its status."""

from __future__ import annotations

from collections import Counter
from typing import Any

from twisted.application.service import Service
from twisted.logger import Logger
from twisted.plugin import IPlugin
from zope.interface import implementer

from pydatacoll.interfaces import IProcessor, IProcessorFactory


@implementer(IProcessor)
class SampleCounter(Service):
    """Counts samples per device and configuration changes."""

    log = Logger()
    name = "example_counter"

    def __init__(self, context: Any) -> None:
        self.per_device: Counter[str] = Counter()
        self.changes = 0
        # [plugin:example_counter] greeting = ... (an option, read as text)
        self.greeting = context.options.get("greeting", "counting")

    def startService(self) -> None:
        """Say hello."""
        super().startService()
        self.log.info("example_counter: {greeting}", greeting=self.greeting)

    def samples_received(self, samples: Any) -> None:
        """Count; never block."""
        self.per_device.update(sample.device_id for sample in samples)

    def config_changed(self, change: Any) -> None:
        """Count the changes."""
        self.changes += 1

    def status(self) -> dict[str, Any]:
        """The counts."""
        return {
            "samples": sum(self.per_device.values()),
            "per_device": dict(self.per_device),
            "changes": self.changes,
            "greeting": self.greeting,
        }


@implementer(IPlugin, IProcessorFactory)
class CounterFactory:
    """Builds the ``example_counter`` processor."""

    name = "example_counter"
    description = "example: counts the samples of each device"
    #: The keys of [plugin:example_counter]; any other is refused when the daemon starts.
    options = ("greeting",)

    def build(self, context: Any) -> SampleCounter:
        """A `SampleCounter`."""
        return SampleCounter(context)
