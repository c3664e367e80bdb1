"""Sparkplug B mode: the edge node's births, deaths, data and commands (docs/mqtt.rst).

Topics ``spBv1.0/{group_id}/{NBIRTH|NDEATH|DBIRTH|DDATA|DDEATH|NCMD|DCMD}/{edge_node_id}
[/{device_id}]``; payloads are the Eclipse Tahu protobuf ``Payload`` (``sparkplug_b_pb2``,
generated from the vendored ``sparkplug_b.proto``, EPL-2.0).

- bdSeq: one more (0-255, kept in the plugin's data dir) for each connection attempt; the
  NDEATH registered as the will and the NBIRTH that follows carry the same one.
- seq: 0 on NBIRTH, then one more (mod 256) for each DBIRTH, DDATA and DDEATH.
- A device is born (DBIRTH: every published point with name ``{term_id}/{item_id}``,
  alias, datatype and current value) at NBIRTH unless it is known to be offline, or
  before its first data; DDEATH when its state leaves online. A value that does not fit
  its metric's datatype, or a change of the device's points, gives a new DBIRTH.
- NCMD ``Node Control/Rebirth`` = true: NBIRTH and every DBIRTH again.
- DCMD metrics (by name or alias) are commands, handled like JSON ``.../set``.
"""

from __future__ import annotations

import math
import os
from typing import Any

from pydatacoll.processing.mqtt import sparkplug_b_pb2
from pydatacoll.processing.mqtt.codec import JsonEncoder, Message
from pydatacoll.processing.mqtt.link import Will
from pydatacoll.processing.mqtt.options import MqttOptions

#: The generated module defines its names at import time (mypy cannot see them).
pb: Any = sparkplug_b_pb2
NAMESPACE = "spBv1.0"
REBIRTH = "Node Control/Rebirth"
BD_SEQ = "bdSeq"
#: Sample quality -> the "Quality" metric property (OPC quality codes, as Ignition reads).
QUALITY_CODES = {"good": 192, "questionable": 64, "invalid": 0}
#: Modbus term-item data_type -> Sparkplug datatype.
DATA_TYPES = {
    "bool": pb.Boolean,
    "int16": pb.Int16,
    "uint16": pb.UInt16,
    "int32": pb.Int32,
    "uint32": pb.UInt32,
    "int64": pb.Int64,
    "uint64": pb.UInt64,
    "float32": pb.Float,
    "float64": pb.Double,
    "string": pb.String,
}
_RANGES = {
    pb.Int8: (-(2**7), 2**7 - 1),
    pb.Int16: (-(2**15), 2**15 - 1),
    pb.Int32: (-(2**31), 2**31 - 1),
    pb.Int64: (-(2**63), 2**63 - 1),
    pb.UInt8: (0, 2**8 - 1),
    pb.UInt16: (0, 2**16 - 1),
    pb.UInt32: (0, 2**32 - 1),
    pb.UInt64: (0, 2**64 - 1),
}
_SMALL_INTS = {pb.Int8, pb.Int16, pb.Int32, pb.UInt8, pb.UInt16, pb.UInt32}
#: Modbus tables whose points are single bits: Boolean whatever value has been read yet.
_BIT_TABLES = {"0", "1", "coil", "coils", "discrete_input", "discrete_inputs"}


def datatype_of(fields: dict[str, Any] | None, value: Any) -> int:
    """A metric's datatype: the term-item's unscaled Modbus data_type, else the value's."""
    fields = fields or {}
    scaled = fields.get("coefficient") not in (None, 1) or fields.get("base_val") not in (None, 0)
    declared = DATA_TYPES.get(str(fields.get("data_type")))
    if declared is not None and not (scaled and declared not in (pb.Boolean, pb.String)):
        return declared
    if str(fields.get("code_type", "")).lower() in _BIT_TABLES and not scaled:
        # a coil's birth before its first read (no value yet) is still a Boolean
        return pb.Boolean
    if scaled:
        return pb.Double
    if isinstance(value, bool):
        return pb.Boolean
    if isinstance(value, int):
        return pb.Int64
    if isinstance(value, str):
        return pb.String
    return pb.Double


def fits(datatype: int, value: Any) -> bool:
    """Whether ``value`` can be sent as ``datatype`` (None always can: is_null)."""
    if value is None:
        return True
    if datatype == pb.Boolean:
        return isinstance(value, bool)
    if datatype == pb.String:
        return isinstance(value, str)
    if datatype in (pb.Float, pb.Double):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if datatype in _RANGES:
        low, high = _RANGES[datatype]
        return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high
    return False


def set_value(metric: Any, datatype: int, value: Any) -> None:
    """Fill a metric's value field for its datatype (two's complement for signed ints)."""
    metric.datatype = datatype
    if value is None or (isinstance(value, float) and math.isnan(value) and datatype != pb.Double):
        metric.is_null = True
    elif datatype == pb.Boolean:
        metric.boolean_value = bool(value)
    elif datatype == pb.String:
        metric.string_value = str(value)
    elif datatype == pb.Float:
        metric.float_value = float(value)
    elif datatype == pb.Double:
        metric.double_value = float(value)
    elif datatype in _SMALL_INTS:
        metric.int_value = int(value) & 0xFFFFFFFF
    else:
        metric.long_value = int(value) & 0xFFFFFFFFFFFFFFFF


def metric_value(metric: Any) -> Any:
    """The value a received metric carries (signed types decoded)."""
    field = metric.WhichOneof("value")
    if field is None or metric.is_null:
        return None
    value = getattr(metric, field)
    bits = {pb.Int8: 32, pb.Int16: 32, pb.Int32: 32, pb.Int64: 64}.get(metric.datatype)
    if bits is not None and isinstance(value, int) and value >= 2 ** (bits - 1):
        value -= 2**bits
    return value


def _ms(seconds: float) -> int:
    return int(round(seconds * 1000))


class SparkplugEncoder:
    """The Sparkplug B edge node's state for one processor (see the module docstring)."""

    mode = "sparkplug"

    def __init__(self, options: MqttOptions, data_dir: str, processor: Any) -> None:
        self.options = options
        self.processor = processor
        self.group = options.group_id
        self.node = options.edge_node_id
        self.json = JsonEncoder(options)
        self._bd_path = os.path.join(data_dir, "bdseq")
        self.bd_seq = -1
        self.seq = 0
        self.aliases: dict[tuple[str, str, str], int] = {}
        self._by_alias: dict[int, tuple[str, str, str]] = {}
        #: Born devices -> their metrics' datatypes.
        self.born: dict[str, dict[tuple[str, str, str], int]] = {}
        self.counters = {"nbirth": 0, "dbirth": 0, "ddeath": 0, "rebirths": 0, "dcmd": 0}

    # -- topics and payloads --------------------------------------------------------

    def topic(self, kind: str, device_id: str | None = None) -> str:
        """``spBv1.0/{group}/{kind}/{node}[/{device}]``."""
        base = f"{NAMESPACE}/{self.group}/{kind}/{self.node}"
        return base if device_id is None else f"{base}/{device_id}"

    def _now(self) -> int:
        return _ms(self.processor.reactor.seconds())

    def _payload(self, with_seq: bool = True) -> Any:
        payload = pb.Payload()
        payload.timestamp = self._now()
        if with_seq:
            payload.seq = self.seq
            self.seq = (self.seq + 1) % 256
        return payload

    def _message(self, kind: str, payload: Any, device_id: str | None = None) -> Message:
        return Message(self.topic(kind, device_id), payload.SerializeToString(), self.options.qos)

    def alias(self, point: tuple[str, str, str]) -> int:
        """A point's alias: unique in this edge node, stable while the daemon runs."""
        alias = self.aliases.get(point)
        if alias is None:
            alias = len(self.aliases) + 1
            self.aliases[point] = alias
            self._by_alias[alias] = point
        return alias

    def _metric(
        self,
        payload: Any,
        point: tuple[str, str, str],
        datatype: int,
        value: Any,
        quality: str,
        time: float,
        birth: bool,
    ) -> Any:
        metric = payload.metrics.add()
        if birth:
            metric.name = f"{point[1]}/{point[2]}"
        metric.alias = self.alias(point)
        metric.timestamp = _ms(time)
        set_value(metric, datatype, value)
        metric.properties.keys.append("Quality")
        quality_value = metric.properties.values.add()
        quality_value.type = pb.Int32
        quality_value.int_value = QUALITY_CODES.get(quality, 0)
        return metric

    # -- session --------------------------------------------------------------------

    def will(self) -> Will:
        """NDEATH with the next bdSeq (one per connection attempt, kept on disk)."""
        if self.bd_seq < 0:
            try:
                with open(self._bd_path, encoding="ascii") as f:
                    self.bd_seq = int(f.read().strip()) % 256
            except (OSError, ValueError):
                self.bd_seq = 255  # the first one is 0
        self.bd_seq = (self.bd_seq + 1) % 256
        try:
            with open(self._bd_path + ".tmp", "w", encoding="ascii") as f:
                f.write(str(self.bd_seq))
            os.replace(self._bd_path + ".tmp", self._bd_path)
        except OSError:
            pass  # bdSeq still pairs NDEATH and NBIRTH of this attempt
        return Will(self.topic("NDEATH"), self._death().SerializeToString(), qos=1, retain=False)

    def _death(self) -> Any:
        payload = pb.Payload()
        payload.timestamp = self._now()
        metric = payload.metrics.add()
        metric.name = BD_SEQ
        metric.datatype = pb.UInt64
        metric.long_value = self.bd_seq
        return payload

    def session_start(self) -> list[Message]:
        """NBIRTH (seq 0, bdSeq, Node Control/Rebirth) and a DBIRTH per live device."""
        self.seq = 0
        self.born = {}
        payload = self._payload()
        bd = payload.metrics.add()
        bd.name, bd.datatype, bd.long_value = BD_SEQ, pb.UInt64, self.bd_seq
        rebirth = payload.metrics.add()
        rebirth.name, rebirth.datatype, rebirth.boolean_value = REBIRTH, pb.Boolean, False
        self.counters["nbirth"] += 1
        messages = [self._message("NBIRTH", payload)]
        devices = sorted({p[0] for p in (self.processor.points or {})})
        for device_id in devices:
            if self.processor.states.get(device_id, "unknown") in ("online", "unknown"):
                messages += self._dbirth(device_id)
        return messages

    def session_stop(self) -> list[Message]:
        """NDEATH before a clean DISCONNECT (which cancels the will)."""
        return [self._message("NDEATH", self._death())]

    def session_lost(self) -> None:
        """Births belong to a connection."""
        self.born = {}

    def subscriptions(self) -> list[str]:
        """NCMD always (rebirth requests); DCMD only when commands are on."""
        topics = [self.topic("NCMD")]
        if self.options.commands:
            topics.append(self.topic("DCMD", "+"))
        return topics

    def points_loaded(self) -> None:
        """The configuration is known: births say all of it from now on."""
        self.born = {}

    def points_changed(self, device_id: str) -> None:
        """A device's metrics changed: it is born again before its next data."""
        self.born.pop(device_id, None)

    def status(self) -> dict[str, Any]:
        return {
            "bd_seq": self.bd_seq,
            "seq": self.seq,
            "born_devices": len(self.born),
            "aliases": len(self.aliases),
            "sparkplug": dict(self.counters),
        }

    # -- records --------------------------------------------------------------------

    def _dbirth(
        self, device_id: str, extra: tuple[tuple[str, str, str], Any] | None = None
    ) -> list[Message]:
        payload = self._payload()
        types: dict[tuple[str, str, str], int] = {}
        points = self.processor.selected_points(device_id)
        if extra is not None and extra[0] not in points:
            points.append(extra[0])
        fields_of = self.processor.points or {}
        for point in points:
            value, quality, time = self.processor.values.get(point, (None, "invalid", 0.0))
            if extra is not None and point == extra[0]:
                # the value about to be sent decides the type (the birth's may be older)
                datatype = datatype_of(fields_of.get(point), extra[1])
                if not fits(datatype, extra[1]):
                    datatype = datatype_of(None, extra[1])
                if not fits(datatype, value):
                    value = extra[1]
            else:
                datatype = datatype_of(fields_of.get(point), value)
            if not fits(datatype, value):
                datatype = datatype_of(None, value)
            types[point] = datatype
            self._metric(payload, point, datatype, value, quality, time or 0.0, birth=True)
        self.born[device_id] = types
        self.counters["dbirth"] += 1
        return [self._message("DBIRTH", payload, device_id)]

    def encode(self, record: tuple[Any, ...], historical: bool) -> list[Message]:
        """DDATA (with a DBIRTH first when needed), DBIRTH/DDEATH for states, results."""
        kind = record[0]
        if kind == "v":
            _, device_id, term_id, item_id, value, quality, time = record
            point = (device_id, term_id, item_id)
            messages = []
            types = self.born.get(device_id)
            if types is None or point not in types or not fits(types[point], value):
                messages += self._dbirth(device_id, (point, value))
                types = self.born[device_id]
            payload = self._payload()
            metric = self._metric(payload, point, types[point], value, quality, time, birth=False)
            if historical:
                metric.is_historical = True
            messages.append(self._message("DDATA", payload, device_id))
            return messages
        if kind == "s":
            _, device_id, state, _time = record
            if state == "online":
                return [] if device_id in self.born else self._dbirth(device_id)
            if device_id in self.born:
                del self.born[device_id]
                self.counters["ddeath"] += 1
                return [self._message("DDEATH", self._payload(), device_id)]
            return []
        if kind == "r":
            return self.json.encode(record, historical)
        return []  # alarms have no Sparkplug message

    # -- commands -------------------------------------------------------------------

    def handle(self, topic: str, payload: bytes) -> bool:
        """NCMD (rebirth) and DCMD (commands); True when the topic was Sparkplug's."""
        if topic == self.topic("NCMD"):
            message = pb.Payload.FromString(payload)
            for metric in message.metrics:
                if metric.name == REBIRTH and metric_value(metric) is True:
                    self.counters["rebirths"] += 1
                    self.processor.rebirth()
            return True
        prefix = self.topic("DCMD", "")
        if not topic.startswith(prefix):
            return False
        device_id = topic[len(prefix) :]
        message = pb.Payload.FromString(payload)
        for metric in message.metrics:
            point = self._by_alias.get(metric.alias) if metric.HasField("alias") else None
            if point is None and metric.name:
                term_id, _, item_id = metric.name.partition("/")
                point = (device_id, term_id, item_id)
            if point is None or point[0] != device_id:
                continue
            self.counters["dcmd"] += 1
            value = metric_value(metric)
            if isinstance(value, bool):
                value = int(value)
            self.processor.command(point, {"value": value, "client": "sparkplug"})
        return True
