"""The JSON Schemas of the OpenAPI document: each declared field and entity, exactly
what the model accepts."""

from __future__ import annotations

from typing import Any

from pydatacoll.model import (
    ATTRIBUTE_PATTERN,
    HOSTNAME_PATTERN,
    ID_PATTERN,
    MAX_ATTRIBUTES,
    NUMBER_TEXT,
    Entity,
    Field,
)
from pydatacoll.protocols import device_protocols, get_protocol
from pydatacoll.protocols.modbus.codec import BYTE_ORDERS, BYTE_ORDERS_64

_NULL = {"type": "null"}
#: Numbers without a declared range are refused beyond this (`Field` does the same).
_NUMBER_LIMIT = 2**63


def _range_stops(low: int, high: int) -> list[int]:
    """Ends of the sub-ranges of [low, high] that one digit pattern each can match."""
    stops = {high}
    nines = 1
    stop = int(str(low)[:-nines] + "9" * nines)
    while low <= stop < high:
        stops.add(stop)
        nines += 1
        stop = int(str(low)[:-nines] + "9" * nines)
    zeros = 1
    stop = (high + 1) - (high + 1) % 10**zeros - 1
    while low < stop <= high:
        stops.add(stop)
        zeros += 1
        stop = (high + 1) - (high + 1) % 10**zeros - 1
    return sorted(stops)


def integer_range_pattern(low: int, high: int) -> str:
    """A regular expression matching exactly the decimal texts of ``low..high`` (>= 0)."""
    parts, start = [], low
    for stop in _range_stops(low, high):
        pattern, any_digits = "", 0
        for a, b in zip(str(start), str(stop), strict=True):
            if a == b:
                pattern += a
            elif a != "0" or b != "9":
                pattern += f"[{a}-{b}]"
            else:
                any_digits += 1
        if any_digits:
            pattern += "[0-9]" if any_digits == 1 else f"[0-9]{{{any_digits}}}"
        parts.append(pattern)
        start = stop + 1
    return "|".join(parts)


def _integer_text(low: float, high: float) -> dict[str, Any]:
    """The texts `Field` takes for an integer in ``low..high`` (the predecessor's clients
    send numbers as strings): optional spaces, ``+``, leading zeros."""
    # `Field` reads at most 20 digits: leading zeros up to that (for the largest value).
    zeros = 20 - len(str(int(high)))
    digits = integer_range_pattern(int(low), int(high))
    alternatives = [rf"^\s*\+?0{{0,{zeros}}}({digits})\s*$"]
    if low == 0:
        alternatives.append(r"^\s*-0{1,20}\s*$")
    return {"type": "string", "pattern": "|".join(alternatives)}


def field_schema(f: Field) -> dict[str, Any]:
    """A declared field as JSON Schema: exactly what `Field.convert` accepts."""
    schema: dict[str, Any]
    if f.kind == "id":
        schema = {
            "oneOf": [
                {"type": "string", "pattern": ID_PATTERN.pattern, "not": {"pattern": r"^\.+$"}},
                {"type": "integer", "minimum": -(10**63 - 1), "maximum": 10**64 - 1},
            ]
        }
    elif f.kind == "string":
        schema = {"type": "string", "maxLength": f.max_length}
    elif f.kind == "choice":  # an integer of a few values (as text too)
        choices: list[int] = list(f.choices)  # type: ignore[attr-defined]
        zeros = 20 - len(str(max(choices)))
        digits = "|".join(str(c) for c in choices)
        schema = {
            "anyOf": [
                {"type": "integer", "enum": choices},
                {"type": "string", "pattern": rf"^\s*\+?0{{0,{zeros}}}({digits})\s*$"},
            ]
        }
    elif f.kind in ("boolean", "addresses", "groups", "fingerprints", "integers"):
        schema = f.json_schema()  # the gateway's own field kinds (pydatacoll.gateway.model)
    elif f.kind == "host":
        schema = {
            "type": "string",
            "anyOf": [
                {"format": "ipv4", "pattern": r"^[0-9.]+$"},
                {"format": "ipv6", "pattern": r"^[0-9A-Fa-f:.]+$"},
                {"pattern": HOSTNAME_PATTERN, "maxLength": 253},
            ],
        }
    elif f.kind in ("integer", "number"):
        numeric = {
            "type": f.kind,
            "minimum": -_NUMBER_LIMIT if f.minimum is None else f.minimum,
            "maximum": _NUMBER_LIMIT if f.maximum is None else f.maximum,
        }
        if f.kind == "integer" and f.minimum is not None and f.minimum >= 0:
            assert f.maximum is not None
            schema = {"anyOf": [numeric, _integer_text(f.minimum, f.maximum)]}
        elif f.kind == "number" and f.minimum is None and f.maximum is None:
            schema = {"anyOf": [numeric, {"type": "string", "pattern": NUMBER_TEXT}]}
        else:
            schema = numeric
    else:  # scalar: a number 0..65535 or a short name (not an integer's text)
        schema = {
            "oneOf": [
                {"type": "integer", "minimum": 0, "maximum": 65535},
                {
                    "type": "string",
                    "minLength": 1,
                    "maxLength": 32,
                    "not": {"pattern": r"^\s*[+-]?[0-9]{1,20}\s*$"},
                },
                _integer_text(0, 65535),
            ]
        }
    schema["description"] = f.description
    return schema


def _present(name: str) -> dict[str, Any]:
    """``name`` is given, and not null (a null field counts as left out)."""
    return {"required": [name], "properties": {name: {"not": _NULL}}}


def _absent(name: str) -> dict[str, Any]:
    return {"not": _present(name)}


def _one_of(names: Any) -> dict[str, Any]:
    return {"enum": list(names)}


_BIT_TABLES = ("coil", "coils", "discrete_input", "discrete_inputs", 0, 1, "0", "1")
_REGISTER_TABLES = (
    "input", "input_register", "input_registers", "holding", "holding_register",
    "holding_registers", 3, 4, "3", "4",
)  # fmt: skip
_ORDERS_32 = list(BYTE_ORDERS)
_MODBUS_FIELDS = ("data_type", "byte_order", "bit", "count")


def _modbus_point(
    tables: dict[str, Any],
    data_types: list[str] | None,
    *,
    orders: list[str] | None = None,
    bit: bool = False,
    count: bool = False,
    width: int = 1,
) -> dict[str, Any]:
    """One allowed combination of a Modbus point's fields (see `point_format`)."""
    rules: list[dict[str, Any]] = [tables]
    if data_types is None:  # data_type left out: the table's default type
        rules.append(_absent("data_type"))
    else:
        rules.append({**_present("data_type"), "properties": {"data_type": _one_of(data_types)}})
    rules.append(_present("bit") if bit else _absent("bit"))
    rules.append(_present("count") if count else _absent("count"))
    if orders is None:
        rules.append(_absent("byte_order"))
    else:
        rules.append({"properties": {"byte_order": {"anyOf": [_one_of(orders), _NULL]}}})
    if not count:
        rules.append({"properties": {"protocol_code": {"maximum": 65536 - width}}})
    return {"allOf": rules}


def _device_point_rules(rules: dict[str, str]) -> None:
    """The point is checked by its term's device driver (Modbus needs a register
    code_type and protocol_code, IEC 104 an IOA): a rule of the stored device."""
    for name in ("code_type", "protocol_code", "data_type", "byte_order", "bit", "count"):
        rules.setdefault(name, "the term's device's protocol must be able to read the point")


def _term_item_rules() -> dict[str, Any]:
    """How a term-item's Modbus fields go together: any one of these (`point_format`)."""
    bits = {"required": ["code_type"], "properties": {"code_type": _one_of(_BIT_TABLES)}}
    registers = {
        "anyOf": [
            _absent("code_type"),
            {"properties": {"code_type": _one_of(_REGISTER_TABLES)}},
        ]
    }
    return {
        "anyOf": [
            {"allOf": [_absent(name) for name in _MODBUS_FIELDS]},
            _modbus_point(bits, ["bool"]),
            _modbus_point(registers, ["bool"], bit=True),
            _modbus_point(registers, ["int16", "uint16"], orders=[*_ORDERS_32, "AB", "BA"]),
            {
                "allOf": [
                    _present("byte_order"),
                    _modbus_point(registers, None, orders=[*_ORDERS_32, "AB", "BA"]),
                ]
            },
            _modbus_point(registers, ["int32", "uint32", "float32"], orders=_ORDERS_32, width=2),
            _modbus_point(
                registers,
                ["int64", "uint64", "float64"],
                orders=[*_ORDERS_32, *BYTE_ORDERS_64],
                width=4,
            ),
            _modbus_point(
                registers, ["string"], orders=[*_ORDERS_32, "AB", "BA"], count=True, width=125
            ),
        ]
    }


def _settings_schema(protocol: str) -> tuple[dict[str, Any], list[str]]:
    """The device settings (free attributes) a protocol reads, and its cross-field rules."""
    if protocol == "iec104":
        from pydatacoll.protocols.iec104.runtime import SETTINGS as IEC104_SETTINGS

        properties = {f.name: nullable(field_schema(f)) for f in IEC104_SETTINGS}
        properties["endpoints"] = nullable(
            {
                "type": "array",
                "maxItems": 8,
                "items": {"type": "string", "pattern": r"^.+:[0-9]{1,5}$"},
                "description": "more host:port endpoints of a redundant station, tried in turn",
            }
        )
        properties["timezone"] = {
            "type": ["string", "null"],
            "description": "IANA time zone of the station's time tags (default UTC)",
        }
        properties["interrogation_groups"] = nullable(
            {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 16}}
        )
        return properties, ["k", "w", "t0", "t1", "t2", "t3", "endpoints", "timezone"]
    if protocol == "modbus":
        from pydatacoll.protocols.modbus.config import SETTINGS as MODBUS_SETTINGS

        properties = {}
        for name, (f, default) in MODBUS_SETTINGS.items():
            schema = field_schema(f)
            if isinstance(default, bool):
                schema = {"anyOf": [{"type": "boolean"}, schema], "description": f.description}
            if name == "byte_order":
                schema = {"enum": _ORDERS_32, "description": f.description}
            properties[name] = nullable(schema)
        return properties, ["degrade_max"]
    return {}, []


def nullable(schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` or null (its description kept outside the alternatives)."""
    description = schema.pop("description", None)
    wrapped: dict[str, Any] = {"anyOf": [schema, _NULL]}
    if description:
        wrapped["description"] = description
    return wrapped


#: Names a free attribute may have.
_ATTRIBUTE_NAMES = {"pattern": ATTRIBUTE_PATTERN.pattern}

#: Coherent example bodies of each entity (field examples alone would not fit together).
EXAMPLES: dict[str, list[dict[str, Any]]] = {
    "device": [
        {"id": "1", "name": "substation 1", "protocol": "iec104", "ip": "127.0.0.1", "port": 2404},
        {"id": "2", "name": "meter rack", "protocol": "modbus", "ip": "127.0.0.1", "port": 5020},
    ],
    "term": [{"id": "10", "device_id": "1", "name": "meter 1", "address": 1}],
    "item": [
        {"id": "1000", "name": "phase A voltage", "unit": "V"},
        {"id": "1001", "name": "active power", "unit": "kW"},
    ],
    "term_item": [
        {
            "term_id": "10",
            "item_id": "1000",
            "protocol_code": 100,
            "code_type": 50,
            "coefficient": 1,
            "base_val": 0,
            "up_limit": 230,
            "down_limit": 220,
        },
        {
            "term_id": "10",
            "item_id": "1001",
            "protocol_code": 0,
            "code_type": "holding",
            "data_type": "float32",
            "byte_order": "CDAB",
        },
    ],
    "formula": [
        {
            "id": "1",
            "formula": "p1 * 2",
            "device_id": "1",
            "term_id": "10",
            "item_id": "1002",
            "p1": "1:10:1000",
        }
    ],
}

#: Rules over several fields (or over the stored configuration) that JSON Schema does not
#: state; a body breaking one is refused with 400 naming one of these fields.
CROSS_FIELD_RULES: dict[str, dict[str, str]] = {
    "term_item": {
        "down_limit": "down_limit must not exceed up_limit",
        "protocol_code": "a Modbus string's registers (protocol_code + count) end by 65535",
    },
    "formula": {
        "formula": "the expression must compile (names p1..pN given, functions allowed)",
    },
    "gateway": {
        **dict.fromkeys(
            ("k", "w", "t1", "t2"),
            "w must not exceed k, t2 must be less than t1 (defaults k 12, w 8, t1 15, t2 10)",
        ),
        "listen": "a Twisted server endpoint string (tcp:PORT[:interface=ADDRESS], ...)",
        **dict.fromkeys(
            ("tls_ca", "tls_cert", "tls_key"),
            "TLS (and tls_fingerprints) needs tls_ca, tls_cert and tls_key: file paths",
        ),
        "redundancy_groups": "an address is in one group at most",
    },
    "gateway_point": {
        "command": "integrated totals (type_id 15, 37) accept commands only with command_type",
    },
}


def entity_schema(entity: type[Entity], *, update: bool = False) -> dict[str, Any]:
    """The JSON Schema of an entity body: declared fields, free attributes by name.

    ``update``: a PUT body, merged into the stored entity (nothing required; null removes
    a field; a changed id is refused with 409).
    """
    properties: dict[str, Any] = {}
    for f in entity.FIELDS:
        schema = field_schema(f)
        # null leaves an optional field out (a PUT: removes it); a required one stays.
        properties[f.name] = schema if f.required else nullable(schema)
    names: dict[str, Any] = dict(_ATTRIBUTE_NAMES)
    schema = {
        "type": "object",
        "required": [] if update else [f.name for f in entity.FIELDS if f.required],
        "properties": properties,
        "propertyNames": names,
        "maxProperties": len(entity.FIELDS) + MAX_ATTRIBUTES,
        "additionalProperties": {"description": "a free attribute (any JSON value)"},
    }
    rules: dict[str, str] = dict(CROSS_FIELD_RULES.get(entity.KIND, {}))
    all_of: list[dict[str, Any]] = []
    if entity.KIND == "device":
        protocols = list(device_protocols())
        properties["protocol"] = nullable(_one_of(protocols)) if update else _one_of(protocols)
        properties["protocol"]["description"] = "see GET /api/v1/device_protocols"
        branches = []
        for name in protocols:
            settings, protocol_rules = _settings_schema(name)
            protocol = get_protocol(name)
            branch: dict[str, Any] = {
                "properties": {"protocol": {"const": name}, **settings},
                "required": ["protocol"],
            }
            if protocol is not None and protocol.has_link and not update:
                branch["required"] = ["protocol", "ip"]
                branch["properties"]["ip"] = {"not": _NULL}
            branches.append(branch)
            rules.update({r: f"{name} device settings that go together" for r in protocol_rules})
        if update:
            branches.append(_absent("protocol"))
            rules["ip"] = "a protocol with a link needs ip"
        all_of.append({"anyOf": branches})
    elif entity.KIND == "gateway":
        properties["protocol"] = {"enum": ["iec104"], "description": "the northbound protocol"}
    elif entity.KIND == "gateway_point":
        properties["gateway_id"]["description"] = (
            "the gateway of the URL (may be left out; another gateway: 409)"
        )
    elif entity.KIND == "term_item" and not update:
        all_of.append(_term_item_rules())
        _device_point_rules(rules)
    elif entity.KIND == "term_item":
        # A PUT is merged into the stored point: the merged point must fit together.
        for name in ("code_type", "data_type", "byte_order", "bit", "count", "protocol_code"):
            rules[name] = "merged with the stored point, the Modbus fields must go together"
        rules["up_limit"] = "merged with the stored point, down_limit must not exceed up_limit"
        _device_point_rules(rules)
    elif entity.KIND == "formula":
        schema["patternProperties"] = {
            r"^p[0-9]{1,3}$": {
                "type": ["string", "null"],
                "pattern": r"^[A-Za-z0-9_.-]{1,64}:[A-Za-z0-9_.-]{1,64}:[A-Za-z0-9_.-]{1,64}$",
                "description": "an input point 'device_id:term_id:item_id'",
            }
        }
        names["not"] = {"pattern": r"^p[0-9]{4,}$"}
        rules["p1"] = "at most 32 parameters; each names ids that are not only dots"
    if all_of:
        schema["allOf"] = all_of
    if rules:
        schema["x-cross-field-rules"] = rules
    if not update:
        schema["examples"] = EXAMPLES.get(entity.KIND, [])
    return schema
