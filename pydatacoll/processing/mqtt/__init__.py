"""The MQTT northbound plugin: JSON or Sparkplug B, with store-and-forward (docs/mqtt.rst).

``options`` (the ``[plugin:mqtt]`` section), ``link`` (paho-mqtt on the reactor),
``outbox`` (memory queue and disk spool, PUBACK-confirmed), ``codec`` (records, JSON
mode), ``sparkplug`` (Sparkplug B mode; ``sparkplug_b_pb2`` is generated from the
vendored Eclipse Tahu ``sparkplug_b.proto``, EPL-2.0) and ``processor`` (the wiring).
"""
