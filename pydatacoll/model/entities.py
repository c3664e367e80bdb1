"""Device / Term / Item / TermItem values and their validation.

Each entity declares its fields once (`fields.Field`). Fields that are not declared are
kept as free attributes (any JSON value). A device's protocol and a point's protocol
fields are checked through the protocol registry (`pydatacoll.protocols.registry`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, ClassVar

import attrs

from pydatacoll.errors import ValidationError

#: What an id may be: it goes into Redis key names and URLs, so no ``:``, ``*``, ``/`` ...
from pydatacoll.model.fields import ATTRIBUTE_PATTERN, MAX_ATTRIBUTE_JSON, MAX_ATTRIBUTES, Field
from pydatacoll.protocols.registry import device_protocols, get_protocol, registered_protocols


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
