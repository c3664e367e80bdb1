"""The built-in MQTT northbound processor plugin (JSON or Sparkplug B); see docs/mqtt.rst."""

from __future__ import annotations

from typing import Any

from twisted.plugin import IPlugin
from zope.interface import implementer

from pydatacoll.interfaces import IProcessorFactory


@implementer(IPlugin, IProcessorFactory)
class MqttFactory:
    """Builds the `pydatacoll.processing.mqtt.processor.MqttProcessor` from its context."""

    name = "mqtt"
    description = "samples, device states and alarms to an MQTT broker (JSON or Sparkplug B)"

    def build(self, context: Any) -> Any:
        """The processor service; `pydatacoll.errors.ConfigError` for bad options."""
        from pydatacoll.processing.mqtt.processor import MqttProcessor

        return MqttProcessor.from_context(context)


mqtt = MqttFactory()
