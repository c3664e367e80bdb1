"""Records and the JSON mode's topics and payloads (pure: no I/O, no reactor).

A record is what the outbox keeps (in memory and on disk); it becomes MQTT messages only
when sent, by the mode's encoder (`JsonEncoder` here, `SparkplugEncoder` for Sparkplug B):

- ``("v", device_id, term_id, item_id, value, quality, time)``: a sample (epoch seconds);
- ``("s", device_id, state, time)``: a device's state changed (online, offline, ...);
- ``("a", event_json)``: an alarm raised or cleared (the limits plugin's event);
- ``("r", device_id, term_id, item_id, result_json)``: the outcome of an MQTT command.
"""

from __future__ import annotations

import json
from typing import Any

import attrs

from pydatacoll.model import Sample, iso_time
from pydatacoll.processing.mqtt.link import Will
from pydatacoll.processing.mqtt.options import MqttOptions


@attrs.frozen
class Message:
    """One MQTT message to publish."""

    topic: str
    payload: bytes
    qos: int
    retain: bool = False


def sample_record(sample: Sample) -> tuple[Any, ...]:
    """The record of a sample; its time is the source time if the device gave one."""
    time = sample.source_time if sample.source_time is not None else sample.receive_time
    return (
        "v",
        sample.device_id,
        sample.term_id,
        sample.item_id,
        sample.value,
        sample.quality,
        time,
    )


def _dumps(body: Any) -> bytes:
    return json.dumps(body, ensure_ascii=False, separators=(",", ":"), default=str).encode()


def format_topic(template: str, collector: str, point: tuple[str, ...] = ()) -> str:
    """A topic from its template; ids hold no MQTT wildcard (model.ID_PATTERN)."""
    fields = dict(zip(("device_id", "term_id", "item_id"), point, strict=False))
    return template.format(
        collector=collector, **{k: fields.get(k, "") for k in ("device_id", "term_id", "item_id")}
    )


def subscription_filter(template: str, collector: str) -> str:
    """The topic filter matching every topic the template gives (ids as ``+``)."""
    return template.format(collector=collector, device_id="+", term_id="+", item_id="+")


class JsonEncoder:
    """JSON mode: one topic per point (``topic``), device states, alarms, a will."""

    mode = "json"

    def __init__(self, options: MqttOptions) -> None:
        self.options = options
        self.collector = options.collector

    def point_topic(self, point: tuple[str, str, str]) -> str:
        """The data topic of a point."""
        return format_topic(self.options.topic, self.collector, point)

    def state_topic(self) -> str:
        """The collector's online/offline topic (retained)."""
        return format_topic(self.options.state_topic, self.collector)

    def will(self) -> Will:
        """``offline`` on the state topic, retained, if the link dies."""
        return Will(self.state_topic(), b"offline", qos=1, retain=True)

    def session_start(self) -> list[Message]:
        """What a new connection publishes first: ``online``, retained."""
        return [Message(self.state_topic(), b"online", 1, True)]

    def session_stop(self) -> list[Message]:
        """What a graceful stop publishes before DISCONNECT (the will is then dropped)."""
        return [Message(self.state_topic(), b"offline", 1, True)]

    def subscriptions(self) -> list[str]:
        """Topic filters of the mode itself (commands are the processor's)."""
        return []

    def handle(self, topic: str, payload: bytes) -> bool:
        """Whether a received message was the mode's own (none in JSON mode)."""
        return False

    def session_lost(self) -> None:
        """The connection is gone (nothing to forget in JSON mode)."""

    def points_loaded(self) -> None:
        """The point configuration is known."""

    def points_changed(self, device_id: str) -> None:
        """A device's points changed."""

    def status(self) -> dict[str, Any]:
        """The mode's own status fields."""
        return {}

    def encode(self, record: tuple[Any, ...], historical: bool) -> list[Message]:
        """The messages of a record (see the module docstring)."""
        kind = record[0]
        qos = self.options.qos
        if kind == "v":
            _, device_id, term_id, item_id, value, quality, time = record
            payload = _dumps({"value": value, "quality": quality, "time": iso_time(time)})
            topic = self.point_topic((device_id, term_id, item_id))
            return [Message(topic, payload, qos, self.options.retain)]
        if kind == "s":
            _, device_id, state, time = record
            topic = format_topic(self.options.status_topic, self.collector, (device_id,))
            payload = _dumps({"device_id": device_id, "state": state, "time": iso_time(time)})
            return [Message(topic, payload, qos, True)]
        if kind == "a":
            topic = format_topic(self.options.alarm_topic, self.collector)
            return [Message(topic, str(record[1]).encode(), qos, False)]
        if kind == "r":
            _, device_id, term_id, item_id, result = record
            topic = self.point_topic((device_id, term_id, item_id)) + "/set/result"
            return [Message(topic, str(result).encode(), qos, False)]
        raise ValueError(f"unknown record kind {kind!r}")
