"""Device / Term / Item / TermItem values and their validation.

Each entity declares its fields once (`Field`); the same declaration validates request
bodies, converts them to typed values, and describes them in the OpenAPI document.
Fields that are not declared are kept as free attributes (any JSON value).
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import math
import re
from collections.abc import Mapping
from typing import Any, ClassVar

import attrs

from pydatacoll.errors import ValidationError
from pydatacoll.protocols.registry import device_protocols, get_protocol, registered_protocols

#: What an id may be: it goes into Redis key names and URLs, so no ``:``, ``*``, ``/`` ...
ID_PATTERN = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
#: Names of free attributes.
ATTRIBUTE_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,63}$")
#: A host name (at most 253 characters): labels of letters, digits, ``_`` and inner ``-``.
HOSTNAME_PATTERN = (
    r"^[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
    r"(\.[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?)*\.?$"
)
_HOSTNAME_RE = re.compile(HOSTNAME_PATTERN)
_INTEGER_TEXT = re.compile(r"^\s*[+-]?[0-9]{1,20}\s*$")
#: A number as text, as the predecessor's clients send them (``"230.5"``): decimal, no
#: exponent, at most 18 integer digits (so within 2**63). The OpenAPI document says so.
NUMBER_TEXT = r"^\s*[+-]?([0-9]{1,18}(\.[0-9]*)?|\.[0-9]+)\s*$"
_NUMBER_TEXT = re.compile(NUMBER_TEXT)
MAX_ATTRIBUTES = 64
MAX_ATTRIBUTE_JSON = 64 * 1024


def is_valid_id(value: str) -> bool:
    """Whether ``value`` is a well-formed id (a string of ``[A-Za-z0-9_.-]``, not only dots)."""
    return bool(ID_PATTERN.match(value)) and value.strip(".") != ""


def normalize_id(value: Any, field: str) -> str:
    """An id from JSON: a string, or an integer (``7`` or ``7.0``) turned into its string."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise ValidationError(f"{field} must be a string or an integer", field=field)
    text = str(value)
    if not is_valid_id(text):
        raise ValidationError(
            f"{field} must be 1 to 64 characters of A-Z a-z 0-9 _ . - (not only dots)",
            field=field,
        )
    return text


@attrs.frozen
class Field:
    """A declared field: its JSON kind, whether it is required, its range."""

    name: str
    kind: str  # id | string | integer | number | host | scalar
    description: str
    required: bool = False
    minimum: float | None = None
    maximum: float | None = None
    max_length: int = 256
    example: Any = None

    def convert(self, value: Any) -> Any:
        """The typed value of ``value``, or `ValidationError` naming the field."""
        convert = getattr(self, f"_convert_{self.kind}")
        return convert(value)

    def _convert_id(self, value: Any) -> str:
        return normalize_id(value, self.name)

    def _convert_string(self, value: Any) -> str:
        if not isinstance(value, str):
            raise ValidationError(f"{self.name} must be a string", field=self.name)
        if len(value) > self.max_length:
            raise ValidationError(
                f"{self.name} must be at most {self.max_length} characters", field=self.name
            )
        return value

    def _convert_integer(self, value: Any) -> int:
        if isinstance(value, str) and _INTEGER_TEXT.match(value):
            value = int(value)
        elif isinstance(value, float) and math.isfinite(value) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValidationError(f"{self.name} must be an integer", field=self.name)
        self._check_range(value)
        return value

    def _convert_number(self, value: Any) -> int | float:
        if isinstance(value, str):
            # Text only for unbounded numbers (scaling, limits), the predecessor's way.
            if self.minimum is not None or self.maximum is not None:
                raise ValidationError(f"{self.name} must be a number", field=self.name)
            if not _NUMBER_TEXT.match(value):
                raise ValidationError(f"{self.name} must be a number", field=self.name)
            text = value.strip()
            value = int(text) if _INTEGER_TEXT.match(text) else float(text)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValidationError(f"{self.name} must be a number", field=self.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise ValidationError(f"{self.name} must be a finite number", field=self.name)
        if abs(value) > 2**63:
            raise ValidationError(f"{self.name} is out of range", field=self.name)
        self._check_range(value)
        return value

    def _convert_host(self, value: Any) -> str:
        if isinstance(value, str):
            try:
                return str(ipaddress.ip_address(value))
            except ValueError:
                if len(value) <= 253 and _HOSTNAME_RE.match(value):
                    return value
        raise ValidationError(
            f"{self.name} must be an IPv4/IPv6 address or a host name", field=self.name
        )

    def _convert_scalar(self, value: Any) -> int | str:
        if isinstance(value, str) and _INTEGER_TEXT.match(value):
            value = int(value)
        elif isinstance(value, float) and math.isfinite(value) and value.is_integer():
            value = int(value)
        if isinstance(value, int) and not isinstance(value, bool):
            if not 0 <= value <= 65535:
                raise ValidationError(f"{self.name} must be from 0 to 65535", field=self.name)
            return value
        if isinstance(value, str) and 0 < len(value) <= 32:
            return value
        raise ValidationError(
            f"{self.name} must be an integer or a name of at most 32 characters", field=self.name
        )

    def _check_range(self, value: float) -> None:
        if self.minimum is not None and value < self.minimum:
            raise ValidationError(f"{self.name} must be at least {self.minimum:g}", field=self.name)
        if self.maximum is not None and value > self.maximum:
            raise ValidationError(f"{self.name} must be at most {self.maximum:g}", field=self.name)

    def json_schema(self) -> dict[str, Any]:
        """This field as a JSON Schema (what the API accepts, numeric strings included)."""
        schema: dict[str, Any]
        if self.kind == "id":
            schema = {
                "oneOf": [
                    {"type": "string", "pattern": ID_PATTERN.pattern, "not": {"pattern": r"^\.+$"}},
                    {"type": "integer"},
                ]
            }
        elif self.kind in ("string", "host"):
            schema = {"type": "string", "maxLength": self.max_length}
        elif self.kind in ("integer", "number"):
            numeric: dict[str, Any] = {"type": self.kind}
            if self.minimum is not None:
                numeric["minimum"] = self.minimum
            if self.maximum is not None:
                numeric["maximum"] = self.maximum
            schema = {
                "oneOf": [numeric, {"type": "string", "pattern": r"^\s*[+-]?[0-9.eE+-]+\s*$"}]
            }
        else:
            schema = {
                "oneOf": [
                    {"type": "integer", "minimum": 0, "maximum": 65535},
                    {"type": "string", "minLength": 1, "maxLength": 32},
                ]
            }
        schema["description"] = self.description
        if self.example is not None:
            schema["examples"] = [self.example]
        return schema


class Entity:
    """Shared behaviour of the configuration entities (attrs classes below)."""

    KIND: ClassVar[str]
    FIELDS: ClassVar[tuple[Field, ...]]
    extra: Mapping[str, Any]

    @classmethod
    def field(cls, name: str) -> Field | None:
        """The declared field called ``name``."""
        for f in cls.FIELDS:
            if f.name == name:
                return f
        return None

    @classmethod
    def from_json(cls, body: Any) -> Any:
        """Validate a JSON object into an entity; `ValidationError` names the first bad field."""
        if not isinstance(body, dict):
            raise ValidationError(f"a {cls.KIND} must be a JSON object")
        known: dict[str, Any] = {}
        extra: dict[str, Any] = {}
        for f in cls.FIELDS:
            value = body.get(f.name)
            if value is None:
                if f.required:
                    raise ValidationError(f"{f.name} is required", field=f.name)
                continue
            known[f.name] = f.convert(value)
        for name, value in body.items():
            if cls.field(name) is not None:
                continue
            # A bad name is refused even with a null value (which would only drop it).
            if not isinstance(name, str) or not ATTRIBUTE_PATTERN.match(name):
                raise ValidationError(
                    "attribute names are 1 to 64 characters of A-Z a-z 0-9 _ . - "
                    "starting with a letter or _",
                    field=str(name)[:64],
                )
            if value is None:
                continue
            if len(json.dumps(value, ensure_ascii=False)) > MAX_ATTRIBUTE_JSON:
                raise ValidationError(f"{name} is longer than {MAX_ATTRIBUTE_JSON}", field=name)
            extra[name] = value
        if len(extra) > MAX_ATTRIBUTES:
            raise ValidationError(f"at most {MAX_ATTRIBUTES} free attributes are allowed")
        entity = cls(**known, extra=extra)  # type: ignore[call-arg]
        entity.check()
        return entity

    def check(self) -> None:
        """Cross-field rules; raise `ValidationError`."""

    def to_json(self) -> dict[str, Any]:
        """The entity as a JSON object (declared fields first, then free attributes)."""
        body = {f.name: getattr(self, f.name) for f in self.FIELDS}
        body = {k: v for k, v in body.items() if v is not None}
        body.update(self.extra)
        return body

    def to_fields(self) -> dict[str, str]:
        """The entity as Redis hash fields: name -> JSON text."""
        return {
            name: json.dumps(value, ensure_ascii=False, separators=(",", ":"))
            for name, value in self.to_json().items()
        }

    @property
    def key(self) -> str:
        """The entity's id as used in URLs and change messages."""
        return str(self.id)  # type: ignore[attr-defined]  # every entity but TermItem has it


def _extra() -> Any:
    return attrs.field(factory=dict, kw_only=True)


@attrs.frozen
class Device(Entity):
    """A connection to a field device (or a link-less ``formula`` device)."""

    KIND: ClassVar[str] = "device"
    FIELDS: ClassVar[tuple[Field, ...]] = (
        Field("id", "id", "device id", required=True, example="1"),
        Field("name", "string", "display name", example="concentrator 1"),
        Field(
            "protocol",
            "string",
            "device protocol, see GET /api/v1/device_protocols",
            required=True,
            max_length=64,
            example="iec104",
        ),
        Field(
            "ip",
            "host",
            "address of the device (required for protocols with a link)",
            example="127.0.0.1",
        ),
        Field(
            "port",
            "integer",
            "TCP port (default: the protocol's)",
            minimum=1,
            maximum=65535,
            example=2404,
        ),
        Field("identify", "string", "free identifier", example="111"),
    )

    id: str
    protocol: str
    name: str | None = None
    ip: str | None = None
    port: int | None = None
    identify: str | None = None
    extra: Mapping[str, Any] = _extra()

    @classmethod
    def from_json(cls, body: Any) -> Device:
        """Validate a device; the port defaults to the protocol's."""
        device: Device = super().from_json(body)
        protocol = get_protocol(device.protocol)
        if protocol is not None and device.port is None and protocol.default_port:
            device = attrs.evolve(device, port=protocol.default_port)
        return device

    def check(self) -> None:
        """The protocol must be registered; a protocol with a link needs ``ip``."""
        protocol = get_protocol(self.protocol)
        if protocol is None:
            raise ValidationError(
                f"protocol must be one of {', '.join(device_protocols())}", field="protocol"
            )
        if protocol.has_link and self.ip is None:
            raise ValidationError(f"ip is required for protocol {self.protocol}", field="ip")


@attrs.frozen
class Term(Entity):
    """A station behind a device: IEC 104 common address, Modbus unit id, meter."""

    KIND: ClassVar[str] = "term"
    FIELDS: ClassVar[tuple[Field, ...]] = (
        Field("id", "id", "term id", required=True, example="10"),
        Field(
            "device_id", "id", "the device the term is reached through", required=True, example="1"
        ),
        Field("name", "string", "display name", example="meter 1"),
        Field(
            "protocol",
            "string",
            "the term's own protocol (informational)",
            max_length=64,
            example="dlt645",
        ),
        Field(
            "address",
            "integer",
            "IEC 104 common address or Modbus unit id",
            minimum=0,
            maximum=65535,
            example=5,
        ),
        Field("identify", "string", "free identifier", example="term10"),
    )

    id: str
    device_id: str
    name: str | None = None
    protocol: str | None = None
    address: int | None = None
    identify: str | None = None
    extra: Mapping[str, Any] = _extra()


@attrs.frozen
class Item(Entity):
    """What is measured or commanded (phase-A voltage, a relay)."""

    KIND: ClassVar[str] = "item"
    FIELDS: ClassVar[tuple[Field, ...]] = (
        Field("id", "id", "item id", required=True, example="1000"),
        Field("name", "string", "display name", example="phase A voltage"),
        Field("view_code", "string", "display code", example="1000"),
        Field(
            "func_type",
            "string",
            "kind of item (measurement, telecontrol, ...)",
            example="measurement",
        ),
        Field("unit", "string", "engineering unit", max_length=32, example="V"),
    )

    id: str
    name: str | None = None
    view_code: str | None = None
    func_type: str | None = None
    unit: str | None = None
    extra: Mapping[str, Any] = _extra()


@attrs.frozen
class TermItem(Entity):
    """A point: an item on a term, with its protocol address, scaling and limits."""

    KIND: ClassVar[str] = "term_item"
    FIELDS: ClassVar[tuple[Field, ...]] = (
        Field("term_id", "id", "the term", required=True, example="10"),
        Field("item_id", "id", "the item", required=True, example="1000"),
        Field("device_id", "id", "the term's device (filled in from the term)", example="1"),
        Field(
            "protocol_code",
            "integer",
            "protocol address: IEC 104 information object address, Modbus register",
            minimum=0,
            maximum=16777215,
            example=100,
        ),
        Field(
            "code_type",
            "scalar",
            "IEC 104 type id used for commands; Modbus register table",
            example=36,
        ),
        Field("coefficient", "number", "scale: value = raw * coefficient + base_val", example=1),
        Field("base_val", "number", "offset: value = raw * coefficient + base_val", example=0),
        Field("up_limit", "number", "upper limit", example=230),
        Field("down_limit", "number", "lower limit", example=220),
        Field(
            "data_type",
            "string",
            "Modbus: bool, int16, uint16, int32, uint32, int64, uint64, float32, float64, "
            "string (default: bool for coils and discrete inputs, uint16 for registers)",
            max_length=16,
            example="float32",
        ),
        Field(
            "byte_order",
            "string",
            "Modbus: ABCD, BADC, CDAB or DCBA (64-bit also ABCDEFGH, BADCFEHG, GHEFCDAB, "
            "HGFEDCBA); default: the device's byte_order",
            max_length=8,
            example="CDAB",
        ),
        Field(
            "bit",
            "integer",
            "Modbus: the bit (0 = least significant) of a bool point in a register",
            minimum=0,
            maximum=15,
            example=3,
        ),
        Field(
            "count",
            "integer",
            "Modbus: registers of a string point (2 characters each)",
            minimum=1,
            maximum=125,
            example=8,
        ),
    )

    term_id: str
    item_id: str
    device_id: str | None = None
    protocol_code: int | None = None
    code_type: int | str | None = None
    coefficient: int | float | None = None
    base_val: int | float | None = None
    up_limit: int | float | None = None
    down_limit: int | float | None = None
    data_type: str | None = None
    byte_order: str | None = None
    bit: int | None = None
    count: int | None = None
    extra: Mapping[str, Any] = _extra()

    def check(self) -> None:
        """``down_limit`` may not exceed ``up_limit``; a protocol's own fields must fit.

        A protocol's rules (the registry's ``item_fields``: Modbus ``data_type``,
        ``byte_order``, ``bit``, ``count``) apply only when one of its fields is present:
        a term-item does not know its device's protocol, so an IEC 104 point
        (``code_type`` 45, say) is not judged by them. The driver checks every point of
        its device in full when it loads it.
        """
        if (
            self.up_limit is not None
            and self.down_limit is not None
            and self.down_limit > self.up_limit
        ):
            raise ValidationError("down_limit must not exceed up_limit", field="down_limit")
        for protocol in registered_protocols():
            protocol.check_item(self)

    @property
    def key(self) -> str:
        """``{term_id}:{item_id}``."""
        return f"{self.term_id}:{self.item_id}"


ENTITIES: dict[str, type[Entity]] = {
    "device": Device,
    "term": Term,
    "item": Item,
    "term_item": TermItem,
}


def decode_fields(fields: Mapping[str, str]) -> dict[str, Any]:
    """A stored hash (name -> JSON text) as a JSON object; text that is not JSON stays text."""
    body: dict[str, Any] = {}
    for name, text in fields.items():
        try:
            body[name] = json.loads(text)
        except ValueError:
            body[name] = text
    return body


# --- samples -------------------------------------------------------------------------

#: Sample qualities, best first: the worst of several inputs is the one latest here.
QUALITIES = ("good", "questionable", "invalid")


def worst_quality(qualities: Any) -> str:
    """The worst of ``qualities`` ("good" for none)."""
    return max(qualities, key=QUALITIES.index, default="good")


def iso_time(seconds: float | None) -> str | None:
    """Epoch seconds as an ISO 8601 UTC time with milliseconds (``...T06:40:00.123+00:00``)."""
    if seconds is None:
        return None
    moment = datetime.datetime.fromtimestamp(seconds, datetime.UTC)
    return moment.isoformat(timespec="milliseconds")


@attrs.frozen(slots=True)
class Sample:
    """One value of a point, scaled, with its quality and times (epoch seconds).

    ``quality`` is one of `QUALITIES`; ``flags`` keeps the protocol's own reasons
    (``"NT"``, ``"SB"``, ``"OV"``, ``"timeout"``, ...) so that none is lost.
    """

    device_id: str
    term_id: str
    item_id: str
    value: Any
    quality: str = "good"
    flags: tuple[str, ...] = ()
    source_time: float | None = None
    receive_time: float = 0.0

    @property
    def point(self) -> tuple[str, str, str]:
        """``(device_id, term_id, item_id)``."""
        return (self.device_id, self.term_id, self.item_id)

    def to_json(self) -> dict[str, Any]:
        """The sample as stored and served: value, quality, flags, ISO times."""
        return {
            "value": self.value,
            "quality": self.quality,
            "flags": list(self.flags),
            "source_time": iso_time(self.source_time),
            "receive_time": iso_time(self.receive_time),
        }

    def to_message(self) -> dict[str, Any]:
        """The sample with its point ids, as published on the data channels."""
        return {
            "device_id": self.device_id,
            "term_id": self.term_id,
            "item_id": self.item_id,
            **self.to_json(),
        }

    @classmethod
    def from_message(cls, message: Mapping[str, Any]) -> Sample:
        """The inverse of `to_message` (times back to epoch seconds)."""

        def seconds(text: str | None) -> float | None:
            return None if text is None else datetime.datetime.fromisoformat(text).timestamp()

        return cls(
            str(message["device_id"]),
            str(message["term_id"]),
            str(message["item_id"]),
            message.get("value"),
            message.get("quality", "good"),
            tuple(message.get("flags", ())),
            seconds(message.get("source_time")),
            seconds(message.get("receive_time")) or 0.0,
        )


#: device_call / device_ctrl outcomes and the HTTP status the API answers with.
OUTCOME_STATUS = {
    "confirmed": 200,
    "terminated": 200,
    "negative": 409,
    "busy": 409,
    "overloaded": 503,
    "refused": 400,
    "not_found": 404,
    "offline": 503,
    "timeout": 504,
    "failed": 502,
}


@attrs.frozen
class ControlOutcome:
    """How a command (or a read) ended, as a collector replies to the API."""

    outcome: str  #: a key of `OUTCOME_STATUS`
    message: str = ""
    cause: str | None = None  #: the device's own reason (e.g. IEC 104 COT name)
    sample: Sample | None = None  #: the value read (device_call) or read back

    @property
    def ok(self) -> bool:
        """Whether the device confirmed."""
        return self.outcome in ("confirmed", "terminated")

    def to_json(self) -> dict[str, Any]:
        """The reply body (without the request id)."""
        body: dict[str, Any] = {"ok": self.ok, "outcome": self.outcome, "message": self.message}
        if self.cause is not None:
            body["cause"] = self.cause
        if self.sample is not None:
            body["sample"] = self.sample.to_message()
        return body


# --- formulas ------------------------------------------------------------------------

#: Most parameters (p1..pN) of one formula.
MAX_FORMULA_PARAMS = 32
_PARAM_NAME = re.compile(r"^p[0-9]{1,3}$")


def parse_point(value: Any, field: str) -> tuple[str, str, str]:
    """A point named ``"device_id:term_id:item_id"``; `ValidationError` naming ``field``."""
    if not isinstance(value, str):
        raise ValidationError(f"{field} must be a point 'device_id:term_id:item_id'", field=field)
    parts = value.split(":")
    if len(parts) != 3 or not all(is_valid_id(part) for part in parts):
        raise ValidationError(
            f"{field} must be a point 'device_id:term_id:item_id' of valid ids", field=field
        )
    return (parts[0], parts[1], parts[2])


@attrs.frozen
class Formula(Entity):
    """A calculated point: an expression over input points (``p1``..``pN``) and a result point.

    Fields named ``p`` + digits are the parameters; other free attributes are kept.
    The expression is checked by `pydatacoll.processing.expression.compile_expression`.
    """

    KIND: ClassVar[str] = "formula"
    FIELDS: ClassVar[tuple[Field, ...]] = (
        Field("id", "id", "formula id", required=True, example="1"),
        Field(
            "formula",
            "string",
            "expression over p1..pN (latest values) and avg/min/max/delta/sum/count(pN, '15m')",
            required=True,
            max_length=1024,
            example="max(p1, p2) * 2",
        ),
        Field("device_id", "id", "device of the result point", required=True, example="3"),
        Field("term_id", "id", "term of the result point", required=True, example="40"),
        Field("item_id", "id", "item of the result point", required=True, example="1000"),
        Field("name", "string", "display name", example="total load"),
    )

    id: str
    formula: str
    device_id: str
    term_id: str
    item_id: str
    name: str | None = None
    extra: Mapping[str, Any] = _extra()

    @property
    def result(self) -> tuple[str, str, str]:
        """The result point ``(device_id, term_id, item_id)``."""
        return (self.device_id, self.term_id, self.item_id)

    @property
    def params(self) -> dict[str, tuple[str, str, str]]:
        """Parameter name -> input point."""
        return {
            name: parse_point(value, name)
            for name, value in sorted(self.extra.items())
            if _PARAM_NAME.match(name)
        }

    def check(self) -> None:
        """Parameters must name points; the expression must pass the sandbox's checks."""
        from pydatacoll.processing.expression import ExpressionError, compile_expression

        for name in self.extra:
            if name.startswith("p") and name[1:].isdigit() and not _PARAM_NAME.match(name):
                raise ValidationError("parameters are named p0 to p999", field=name)
        params = self.params
        if len(params) > MAX_FORMULA_PARAMS:
            raise ValidationError(f"at most {MAX_FORMULA_PARAMS} parameters are allowed")
        try:
            compile_expression(self.formula, params)
        except ExpressionError as e:
            raise ValidationError(e.message, field="formula") from None


ENTITIES["formula"] = Formula
