"""Gateway and GatewayPoint: the northbound configuration entities and their validation.

A gateway is one IEC 104 controlled station (a listening endpoint and a common address);
a gateway point maps a PyDataColl point (``device_id``, ``term_id``, ``item_id``) to an
IOA and a monitor type, and optionally accepts commands for it.
"""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Mapping
from typing import Any, ClassVar

import attrs
from twisted.internet.endpoints import serverFromString

from pydatacoll.errors import ValidationError
from pydatacoll.model import ENTITIES, Entity, Field
from pydatacoll.protocols.iec104.link import LinkParams
from pydatacoll.protocols.iec104.tls import TlsSettings, parse_fingerprints, tls_settings

#: Monitor types a gateway point may have; the time-tagged twin is used for spontaneous data.
MONITOR_TIMED = {1: 30, 3: 31, 5: 32, 7: 33, 9: 34, 11: 35, 13: 36, 15: 37}
MONITOR_TYPES = frozenset(MONITOR_TIMED) | frozenset(MONITOR_TIMED.values())
#: The untimed type of each allowed monitor type (what interrogation answers with).
UNTIMED = {**{t: t for t in MONITOR_TIMED}, **{v: k for k, v in MONITOR_TIMED.items()}}
#: The command type that follows a monitor type (integrated totals have none).
COMMAND_OF = {1: 45, 3: 46, 5: 47, 7: 51, 9: 48, 11: 49, 13: 50}
#: Process command types a point may accept (time-tagged twins 58..64 are accepted too).
COMMAND_TYPES = frozenset(range(45, 52))
COUNTER_TYPES = frozenset({15, 37})


@attrs.frozen
class _Boolean(Field):
    """A JSON boolean field."""

    def _convert_boolean(self, value: Any) -> bool:
        if not isinstance(value, bool):
            raise ValidationError(f"{self.name} must be true or false", field=self.name)
        return value

    def json_schema(self) -> dict[str, Any]:
        return {"type": "boolean", "description": self.description}


@attrs.frozen
class _List(Field):
    """A JSON list field: IP addresses (``kind="addresses"``) or small integers."""

    item_minimum: int = 0
    item_maximum: int = 0
    max_items: int = 64

    def _convert_addresses(self, value: Any) -> tuple[str, ...]:
        if not isinstance(value, list) or len(value) > self.max_items:
            raise ValidationError(
                f"{self.name} must be a list of at most {self.max_items} IP addresses",
                field=self.name,
            )
        result = []
        for text in value:
            try:
                if not isinstance(text, str):
                    raise TypeError(text)
                result.append(str(ipaddress.ip_address(text)))
            except (ValueError, TypeError):
                raise ValidationError(
                    f"{self.name}: {str(text)[:64]!r} is not an IP address", field=self.name
                ) from None
        return tuple(result)

    def _convert_groups(self, value: Any) -> tuple[tuple[str, ...], ...]:
        if not isinstance(value, list) or len(value) > self.max_items:
            raise ValidationError(
                f"{self.name} must be a list of at most {self.max_items} lists of IP addresses",
                field=self.name,
            )
        groups = []
        seen: set[str] = set()
        for members in value:
            group = self._convert_addresses(members)
            if not group or seen & set(group):
                raise ValidationError(
                    f"{self.name}: every group names one or more addresses, each in one group",
                    field=self.name,
                )
            seen |= set(group)
            groups.append(group)
        return tuple(groups)

    def _convert_fingerprints(self, value: Any) -> tuple[str, ...]:
        if isinstance(value, list) and not all(isinstance(v, str) for v in value):
            raise ValidationError(
                f"{self.name} holds SHA-256 fingerprints as text (64 hex digits)",
                field=self.name,
            )
        return parse_fingerprints(value)

    def _convert_integers(self, value: Any) -> tuple[int, ...]:
        if not isinstance(value, list) or len(value) > self.max_items:
            raise ValidationError(f"{self.name} must be a list of integers", field=self.name)
        integers = []
        for v in value:
            # 4.0 is an integer for JSON Schema (and the OpenAPI document), as for Field.
            if isinstance(v, float) and math.isfinite(v) and v.is_integer():
                v = int(v)
            if (
                isinstance(v, bool)
                or not isinstance(v, int)
                or not self.item_minimum <= v <= self.item_maximum
            ):
                raise ValidationError(
                    f"{self.name} holds integers from {self.item_minimum} to {self.item_maximum}",
                    field=self.name,
                )
            integers.append(v)
        return tuple(sorted(set(integers)))

    def json_schema(self) -> dict[str, Any]:
        """Exactly what the conversion accepts (the OpenAPI document uses it)."""
        address = {
            "type": "string",
            "anyOf": [
                {"format": "ipv4", "pattern": r"^[0-9.]+$"},
                {"format": "ipv6", "pattern": r"^[0-9A-Fa-f:.]+$"},
            ],
        }
        kinds: dict[str, dict[str, Any]] = {
            "addresses": address,
            "groups": {"type": "array", "minItems": 1, "maxItems": 64, "items": address},
            # colons anywhere, blanks around: 64 hex digits (parse_fingerprints)
            "fingerprints": {
                "type": "string",
                "pattern": r"^[\s:]*([0-9A-Fa-f]:*){63}[0-9A-Fa-f][\s:]*$",
            },
        }
        items = kinds.get(
            self.kind,
            {"type": "integer", "minimum": self.item_minimum, "maximum": self.item_maximum},
        )
        schema: dict[str, Any] = {
            "type": "array",
            "items": items,
            "maxItems": self.max_items,
            "description": self.description,
        }
        if self.example is not None:
            schema["examples"] = [self.example]
        return schema


@attrs.frozen
class _Choice(Field):
    """An integer field taking only some values (``kind="choice"``; as text too)."""

    choices: tuple[int, ...] = ()

    def _convert_choice(self, value: Any) -> int:
        number = self._convert_integer(value)
        if number not in self.choices:
            raise ValidationError(
                f"{self.name} must be one of " + ", ".join(str(c) for c in self.choices),
                field=self.name,
            )
        return number


def _extra() -> Any:
    return attrs.field(factory=dict, kw_only=True)


@attrs.frozen
class Gateway(Entity):
    """A northbound IEC 104 controlled station."""

    KIND: ClassVar[str] = "gateway"
    FIELDS: ClassVar[tuple[Field, ...]] = (
        Field("id", "id", "gateway id", required=True, example="scada1"),
        Field(
            "protocol",
            "string",
            'the northbound protocol: "iec104"',
            required=True,
            max_length=16,
            example="iec104",
        ),
        Field("name", "string", "display name", example="control centre A"),
        Field(
            "listen",
            "string",
            "Twisted server endpoint string (default tcp:2404)",
            example="tcp:2404:interface=0.0.0.0",
        ),
        Field(
            "common_address",
            "integer",
            "the station's common address (default 1)",
            minimum=1,
            maximum=65534,
            example=1,
        ),
        Field("k", "integer", "k: unacknowledged I-frames (default 12)", minimum=1, maximum=32767),
        Field("w", "integer", "w: acknowledge after (default 8)", minimum=1, maximum=32767),
        Field("t1", "number", "t1: ack timeout, s (default 15)", minimum=1, maximum=255),
        Field("t2", "number", "t2: acknowledge after, s (default 10)", minimum=1, maximum=255),
        Field("t3", "number", "t3: test idle link, s (default 20)", minimum=1, maximum=1e5),
        _List(
            "allowed_clients",
            "addresses",
            "IP addresses of the masters allowed to connect (empty or absent: any)",
            example=["10.0.0.5"],
        ),
        _List(
            "redundancy_groups",
            "groups",
            "redundancy groups (IEC 60870-5-104 clause 10): lists of master addresses; one "
            "connection of a group is STARTDT-active at a time, the others are kept in "
            "STOPDT with test frames; the group's events are kept while none is active. "
            "A master in no group is a group of its own connection",
            max_items=16,
            example=[["10.0.0.5", "10.0.0.6"]],
        ),
        _Boolean(
            "clock_sync",
            "boolean",
            "accept clock synchronisation (C_CS_NA_1) from the master (default true; "
            "the daemon never sets the system clock, it confirms and records)",
        ),
        Field(
            "event_queue",
            "integer",
            "events kept per connection while the master does not acknowledge; past it the "
            "oldest is dropped (default 10000)",
            minimum=10,
            maximum=1000000,
        ),
        Field(
            "command_timeout",
            "number",
            "seconds a command waits for the field device (default 10)",
            minimum=0.5,
            maximum=600,
        ),
        Field(
            "tls_ca",
            "string",
            "IEC 62351-3 TLS: the CA file masters' certificates must chain to (a path "
            "where the gateway runs); with tls_cert and tls_key",
            max_length=1024,
        ),
        Field("tls_cert", "string", "TLS: the gateway's certificate (PEM file)", max_length=1024),
        Field("tls_key", "string", "TLS: the gateway's private key (PEM file)", max_length=1024),
        _List(
            "tls_fingerprints",
            "fingerprints",
            "TLS: SHA-256 fingerprints of the only master certificates accepted (optional)",
            max_items=32,
        ),
    )

    id: str
    protocol: str
    name: str | None = None
    listen: str | None = None
    common_address: int | None = None
    k: int | None = None
    w: int | None = None
    t1: int | float | None = None
    t2: int | float | None = None
    t3: int | float | None = None
    allowed_clients: tuple[str, ...] | None = None
    redundancy_groups: tuple[tuple[str, ...], ...] | None = None
    clock_sync: bool | None = None
    event_queue: int | None = None
    command_timeout: int | float | None = None
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_fingerprints: tuple[str, ...] | None = None
    extra: Mapping[str, Any] = _extra()

    @property
    def tls(self) -> TlsSettings | None:
        """The IEC 62351-3 TLS settings (None: plain TCP)."""
        return tls_settings(
            {
                "tls_ca": self.tls_ca,
                "tls_cert": self.tls_cert,
                "tls_key": self.tls_key,
                "tls_fingerprints": list(self.tls_fingerprints)
                if self.tls_fingerprints is not None
                else None,
            }
        )

    def check(self) -> None:
        """The protocol, the endpoint string and the link parameters must work together."""
        self.tls  # noqa: B018  (all three TLS files or none; raises naming the missing one)
        if self.protocol != "iec104":
            raise ValidationError('protocol must be "iec104"', field="protocol")
        if self.listen is not None:
            try:
                serverFromString(None, self.listen)  # type: ignore[arg-type]  # parse only
            except (ValueError, TypeError, KeyError) as e:
                raise ValidationError(
                    f"listen is not a Twisted server endpoint string ({e})", field="listen"
                ) from None
        try:
            self.link_params()
        except ValueError as e:
            field = "w" if "w (" in str(e) else "t2" if "t2" in str(e) else "k"
            raise ValidationError(str(e), field=field) from None

    def link_params(self) -> LinkParams:
        """The link parameters (defaults where none is given)."""
        given = {n: getattr(self, n) for n in ("k", "w", "t1", "t2", "t3")}
        return LinkParams(**{n: v for n, v in given.items() if v is not None})

    def to_json(self) -> dict[str, Any]:
        body = super().to_json()
        if self.allowed_clients is not None:
            body["allowed_clients"] = list(self.allowed_clients)
        if self.redundancy_groups is not None:
            body["redundancy_groups"] = [list(g) for g in self.redundancy_groups]
        if self.tls_fingerprints is not None:
            body["tls_fingerprints"] = list(self.tls_fingerprints)
        return body


@attrs.frozen
class GatewayPoint(Entity):
    """A point a gateway serves: its IOA, monitor type and source point."""

    KIND: ClassVar[str] = "gateway_point"
    FIELDS: ClassVar[tuple[Field, ...]] = (
        Field("gateway_id", "id", "the gateway (from the URL)", example="scada1"),
        Field(
            "ioa",
            "integer",
            "information object address",
            required=True,
            minimum=1,
            maximum=16777215,
            example=1001,
        ),
        _Choice(
            "type_id",
            "choice",
            "monitor type: 1, 3, 5, 7, 9, 11, 13, 15 or their CP56 twins 30..37; "
            "interrogation and read answer with it, spontaneous data always carries "
            "CP56Time2a (an untimed type goes as its CP56 twin)",
            required=True,
            minimum=1,
            maximum=37,
            example=13,
            choices=tuple(sorted(MONITOR_TYPES)),
        ),
        Field("device_id", "id", "the source point's device", required=True, example="1"),
        Field("term_id", "id", "the source point's term", required=True, example="10"),
        Field("item_id", "id", "the source point's item", required=True, example="1000"),
        _Boolean(
            "command",
            "boolean",
            "accept commands for this IOA and pass them to the field device (default false)",
        ),
        Field(
            "command_type",
            "integer",
            "the accepted command type 45..51 (default: the one of type_id)",
            minimum=45,
            maximum=51,
        ),
        _List(
            "groups",
            "integers",
            "interrogation groups 1..16 the point also answers",
            item_minimum=1,
            item_maximum=16,
            max_items=16,
            example=[1],
        ),
        Field(
            "counter_group",
            "integer",
            "counter interrogation group 1..4 of an integrated total (0: general only)",
            minimum=0,
            maximum=4,
        ),
    )

    gateway_id: str | None
    ioa: int
    type_id: int
    device_id: str
    term_id: str
    item_id: str
    command: bool | None = None
    command_type: int | None = None
    groups: tuple[int, ...] | None = None
    counter_group: int | None = None
    extra: Mapping[str, Any] = _extra()

    def check(self) -> None:
        """The type must be a monitor type; a command needs a command type."""
        if self.type_id not in MONITOR_TYPES:
            raise ValidationError(
                "type_id must be one of " + ", ".join(str(t) for t in sorted(MONITOR_TYPES)),
                field="type_id",
            )
        if self.command and self.accepted_command is None:
            raise ValidationError(
                "integrated totals take no commands: give no command (or a command_type)",
                field="command",
            )

    @property
    def accepted_command(self) -> int | None:
        """The command type accepted for this IOA (None: commands are refused)."""
        if not self.command:
            return None
        return self.command_type or COMMAND_OF.get(UNTIMED[self.type_id])

    @property
    def point(self) -> tuple[str, str, str]:
        """The source point ``(device_id, term_id, item_id)``."""
        return (self.device_id, self.term_id, self.item_id)

    @property
    def key(self) -> str:
        """``{gateway_id}:{ioa}``."""
        return f"{self.gateway_id}:{self.ioa}"

    def to_json(self) -> dict[str, Any]:
        body = super().to_json()
        if self.groups is not None:
            body["groups"] = list(self.groups)
        return body


ENTITIES["gateway"] = Gateway
ENTITIES["gateway_point"] = GatewayPoint
