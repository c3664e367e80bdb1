"""The OpenAPI 3.1 document, built from the routes and the entity declarations."""

from __future__ import annotations

import re
from typing import Any

from klein import Klein

from pydatacoll.api.plumbing import MAX_BATCH, MAX_INDEX, route_table
from pydatacoll.errors import ERROR_SCHEMA
from pydatacoll.model import (
    ATTRIBUTE_PATTERN,
    ENTITIES,
    HOSTNAME_PATTERN,
    ID_PATTERN,
    MAX_ATTRIBUTES,
    NUMBER_TEXT,
    Entity,
    Field,
)
from pydatacoll.protocols import device_protocols, get_protocol
from pydatacoll.protocols.modbus.codec import BYTE_ORDERS, BYTE_ORDERS_64

_ERROR = ERROR_SCHEMA
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


def _field_schema(f: Field) -> dict[str, Any]:
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

        properties = {f.name: _nullable(_field_schema(f)) for f in IEC104_SETTINGS}
        properties["endpoints"] = _nullable(
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
        properties["interrogation_groups"] = _nullable(
            {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 16}}
        )
        return properties, ["k", "w", "t0", "t1", "t2", "t3", "endpoints", "timezone"]
    if protocol == "modbus":
        from pydatacoll.protocols.modbus.config import SETTINGS as MODBUS_SETTINGS

        properties = {}
        for name, (f, default) in MODBUS_SETTINGS.items():
            schema = _field_schema(f)
            if isinstance(default, bool):
                schema = {"anyOf": [{"type": "boolean"}, schema], "description": f.description}
            if name == "byte_order":
                schema = {"enum": _ORDERS_32, "description": f.description}
            properties[name] = _nullable(schema)
        return properties, ["degrade_max"]
    return {}, []


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
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
        schema = _field_schema(f)
        # null leaves an optional field out (a PUT: removes it); a required one stays.
        properties[f.name] = schema if f.required else _nullable(schema)
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
        properties["protocol"] = _nullable(_one_of(protocols)) if update else _one_of(protocols)
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


def _collection_entity(path: str) -> str | None:
    if path.startswith(("/api/v1/gateways", "/api/v2/gateways")):
        return "gateway_point" if "/points" in path else "gateway"
    for name in ("term_items", "devices", "terms", "items", "formulas"):
        if f"/{name}" in path:
            return name[:-1]
    return None


def _parameter(name: str) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string"}
    if name == "index":
        schema = {"type": "integer", "minimum": -MAX_INDEX, "maximum": MAX_INDEX}
    return {"name": name, "in": "path", "required": True, "schema": schema}


def _body_schema(method: str, path: str) -> dict[str, Any]:
    entity = _collection_entity(path)
    if path.endswith("/items") and "/terms/" in path:
        return {"$ref": "#/components/schemas/term_item_in_term"}
    if path == "/api/v1/terms/{term_id}/items/{item_id}":
        return {"$ref": "#/components/schemas/term_item_update"}
    if path == "/api/v1/formula_check":
        return {"$ref": "#/components/schemas/FormulaCheck"}
    if path == "/api/v1/device_call":
        return {"$ref": "#/components/schemas/DeviceCall"}
    if path == "/api/v1/device_ctrl":
        return {"$ref": "#/components/schemas/DeviceCtrl"}
    if path.startswith("/api/v2/") and path.endswith("/del"):
        if entity == "term_item":
            item: dict[str, Any] = {
                "type": "object",
                "required": ["term_id", "item_id"],
                "properties": {
                    "term_id": _field_schema(ENTITIES["term_item"].FIELDS[0]),
                    "item_id": _field_schema(ENTITIES["term_item"].FIELDS[1]),
                },
            }
        elif entity == "gateway_point":
            item = _field_schema(
                Field("ioa", "integer", "an IOA of the gateway", minimum=1, maximum=16777215)
            )
        else:
            item = _field_schema(Field("id", "id", f"a {entity} id"))
        return {
            "type": "array",
            "maxItems": MAX_BATCH,
            "items": item,
            "description": "ids to delete (a repeated one: 409)",
        }
    ref = {"$ref": f"#/components/schemas/{entity}"}
    if path.startswith("/api/v2/"):
        return {
            "oneOf": [ref, {"type": "array", "maxItems": MAX_BATCH, "items": ref}],
            "description": "one entity or a list (all or nothing; a repeated id: 409)",
        }
    if method == "PUT":
        return {"$ref": f"#/components/schemas/{entity}_update"}
    return ref


def _operation(method: str, path: str) -> dict[str, Any]:
    parameters = [_parameter(part[1:-1]) for part in path.split("/") if part.startswith("{")]
    responses: dict[str, Any] = {
        code: {"description": text, **_ref("Error")}
        for code, text in (
            ("400", "invalid request"),
            ("401", "token required"),
            ("404", "not found"),
            ("503", "Redis or the collector unreachable"),
        )
    }
    operation: dict[str, Any] = {
        "parameters": parameters,
        "responses": responses,
        "operationId": method.lower() + re.sub(r"[/{}]", "_", path),
    }
    if method == "GET":
        responses["200"] = {
            "description": "the resource",
            "content": {"application/json": {"schema": {}}},
        }
    elif method == "DELETE":
        responses["204"] = {"description": "deleted (with what hangs on it)"}
    else:
        schema = _body_schema(method, path)
        if path.startswith("/api/v1/device_"):
            responses["504"] = responses["503"]
        operation["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": schema}},
        }
        responses.update(
            {
                "409": {"description": "exists already / rename refused", **_ref("Error")},
                "413": {"description": "body too large", **_ref("Error")},
                "415": {"description": "not JSON", **_ref("Error")},
            }
        )
        responses["201" if method == "POST" and path.startswith("/api/v1/") else "200"] = {
            "description": "the stored entity",
            "content": {"application/json": {"schema": {}}},
        }
        if path.endswith("/del"):
            responses.pop("200", None)
            responses["204"] = {"description": "deleted"}
    _specialise(method, path, operation)
    return operation


def _ref(name: str) -> dict[str, Any]:
    return {"content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{name}"}}}}


#: ``?since=``/``?until=`` start in 1970 (the epoch of Redis stream ids); earlier: 400.
_YEAR_1970_ON = r"^(19[7-9][0-9]|[2-9][0-9]{3})-"

_QUERY = [
    {
        "name": "limit",
        "in": "query",
        "required": False,
        "schema": {"type": "integer", "minimum": 1, "maximum": 10000},
        "description": "at most this many entries (default 100 for the log, 1000 for datas)",
    },
    {
        "name": "since",
        "in": "query",
        "required": False,
        "schema": {"type": "string", "format": "date-time", "pattern": _YEAR_1970_ON},
        "description": "RFC 3339 time with a zone (1970 or later): entries written at or after it",
    },
    {
        "name": "until",
        "in": "query",
        "required": False,
        "schema": {"type": "string", "format": "date-time", "pattern": _YEAR_1970_ON},
        "description": "RFC 3339 time with a zone (1970 or later): entries written at or before it",
    },
]

_DEVICE_OUTCOMES = {
    "200": "confirmed or terminated: the answer (device_call: with the fresh sample)",
    "400": "invalid request (outcome invalid, field named), or the collector refused it "
    "(outcome refused)",
    "401": "token required (outcome unauthorized)",
    "404": "unknown device/term/item (outcome not_found, field named), or the collector "
    "does not run the point (not_found)",
    "409": "the device answered negatively (outcome negative, with its cause), or a "
    "command for the same point is in flight (outcome busy)",
    "413": "body too large (outcome too_large)",
    "415": "not JSON (outcome unsupported_media_type)",
    "502": "the request failed in the collector (outcome failed)",
    "503": "the device is offline (outcome offline), no collector or reply channel "
    "(unavailable), or overload: the collector already handles its most requests at once "
    "(outcome overloaded, with a Retry-After header in seconds; try again then)",
    "504": "no answer within [api] device_timeout (outcome timeout)",
}


def _specialise(method: str, path: str, operation: dict[str, Any]) -> None:
    """Descriptions and schemas of the routes that are not plain CRUD."""
    responses = operation["responses"]
    if path == "/":
        responses["200"] = {
            "description": "the list of routes, one per line, for a person",
            "content": {"text/plain": {"schema": {"type": "string"}}},
        }
    elif path == "/api/v1/formula_check":
        responses.pop("201", None)
        responses.pop("409", None)
        responses["200"] = {
            "description": '{"ok": true, "value", "quality"} or {"ok": false, "error", '
            '"message", "field"} (the formula is not saved)',
            "content": {"application/json": {"schema": {"type": "object", "required": ["ok"]}}},
        }
    elif method == "POST" and path in ("/api/v1/device_call", "/api/v1/device_ctrl"):
        responses.pop("201", None)
        for code, text in _DEVICE_OUTCOMES.items():
            responses[code] = {"description": text, **_ref("DeviceAnswer")}
        responses["503"]["headers"] = {
            "Retry-After": {
                "description": "with outcome overloaded: seconds to wait before trying again",
                "schema": {"type": "integer", "minimum": 1},
            }
        }
        operation["description"] = (
            "Sent to the collector running the device; it answers on a reply channel of "
            "this request only. device_ctrl needs the token (when one is set), is logged, "
            "and is appended to the audit log whatever its outcome."
        )
    elif path == "/api/v1/device_ctrl/log":
        operation["parameters"] = _QUERY
        operation["description"] = "The device_ctrl audit log, newest first."
        responses["200"] = {
            "description": "audit entries",
            "content": {
                "application/json": {
                    "schema": {
                        "type": "array",
                        "items": {"$ref": "#/components/schemas/CtrlLogEntry"},
                    }
                }
            },
        }
    elif path.endswith("/datas"):
        operation["parameters"] = operation["parameters"] + _QUERY
    elif path == "/api/v1/devices/{device_id}/values":
        operation["description"] = "The latest sample of every point of the device ({} if none)."
        responses["200"] = {
            "description": 'field "{term_id}:{item_id}" -> sample',
            "content": {
                "application/json": {
                    "schema": {
                        "type": "object",
                        "additionalProperties": {"$ref": "#/components/schemas/Sample"},
                    }
                }
            },
        }
    elif path.startswith("/ui"):
        operation["description"] = "The status page (HTML, CSS, JavaScript; no token needed)."
        responses["200"] = {"description": "the file", "content": {"text/html": {}}}
    elif path == "/api/v1/config":
        from pydatacoll.api.configio import openapi_operation

        openapi_operation(method, operation)
    elif path == "/api/v1/devices/{device_id}/status":
        operation["description"] = (
            'The collector\'s status of the device; "state": "unknown" while none was written.'
        )
        responses["200"] = {"description": "the device status", **_ref("DeviceStatus")}
    elif path in _LIVE_ROUTES:
        _LIVE_ROUTES[path](operation)


# -- the event stream and the metrics (issue 15) ---------------------------------------------
def _stream_operation(operation: dict[str, Any]) -> None:
    from pydatacoll.api.stream import HEARTBEAT, QUEUE_EVENTS

    operation["parameters"] = [
        {
            "name": "device_id",
            "in": "query",
            "required": False,
            "schema": {"type": "array", "items": {"type": "string"}},
            "style": "form",
            "explode": True,
            "description": "only this device's events (repeatable; with point: either)",
        },
        {
            "name": "point",
            "in": "query",
            "required": False,
            "schema": {"type": "array", "items": {"type": "string"}},
            "style": "form",
            "explode": True,
            "description": "device_id:term_id:item_id: only this point's samples and alarms "
            "and its device's status (repeatable)",
        },
        {
            "name": "Last-Event-ID",
            "in": "header",
            "required": False,
            "schema": {"type": "string", "pattern": r"^\d+-\d+(,\d+-\d+)?$"},
            "description": "the id of the last event received: resume from there",
        },
    ]
    operation["description"] = (
        "Server-Sent Events. event: sample, data {device_id, term_id, item_id, value, "
        "quality, time}; event: status, data the device status with device_id; event: alarm, "
        "data the alarm event as on CHANNEL:ALARM (with its log id). Each event has an id "
        "'{sample stream entry id},{alarm log entry id}' to send back as Last-Event-ID. "
        f"A ': hb' comment every {HEARTBEAT:g} s. A client that lets more than "
        f"{QUEUE_EVENTS} events wait is disconnected."
    )
    operation["responses"]["200"] = {
        "description": "the event stream (never ends by itself)",
        "content": {"text/event-stream": {"schema": {"type": "string"}}},
    }
    operation["responses"]["400"]["description"] = (
        "a bad device_id, point or Last-Event-ID (named in field)"
    )
    operation["responses"]["503"]["description"] = (
        "Redis unreachable, or [api] stream_clients streams already open"
    )


def _metrics_operation(operation: dict[str, Any]) -> None:
    operation["description"] = (
        "Prometheus text exposition (pydatacoll_* families, see docs/operations.rst)."
    )
    operation["responses"]["200"] = {
        "description": "the metrics of this process",
        "content": {"text/plain": {"schema": {"type": "string"}}},
    }
    operation["responses"].pop("404", None)


_LIVE_ROUTES = {"/api/v1/stream": _stream_operation, "/metrics": _metrics_operation}


_SAMPLE = {
    "type": "object",
    "properties": {
        "value": {},
        "quality": {"enum": ["good", "questionable", "invalid"]},
        "flags": {"type": "array", "items": {"type": "string"}},
        "source_time": {"type": ["string", "null"], "format": "date-time"},
        "receive_time": {"type": ["string", "null"], "format": "date-time"},
    },
    "additionalProperties": True,
}

_DEVICE_ANSWER = {
    "type": "object",
    "required": ["request_id", "outcome", "message"],
    "properties": {
        "request_id": {"type": "string"},
        "outcome": {
            "enum": [
                "confirmed",
                "terminated",
                "negative",
                "busy",
                "overloaded",
                "refused",
                "not_found",
                "offline",
                "timeout",
                "failed",
                "unavailable",
                # refused by the API before anything was sent (the error codes):
                "invalid",
                "unauthorized",
                "too_large",
                "unsupported_media_type",
                "redis_unavailable",
            ]
        },
        "message": {"type": "string"},
        "cause": {"type": ["string", "null"], "description": "the device's own reason"},
        "sample": {
            "oneOf": [{"$ref": "#/components/schemas/Sample"}, {"type": "null"}],
            "description": "the value read (device_call) or read back, with its point ids",
        },
        "error": {"type": "string", "description": "errors only: the outcome"},
        "field": {
            "type": ["string", "null"],
            "description": "errors only: the field at fault (null: none in particular)",
        },
    },
}

_CTRL_LOG_ENTRY = {
    "type": "object",
    "properties": {
        "id": {"type": "string", "description": "stream entry id (ms of the outcome)"},
        "time": {"type": "string", "format": "date-time", "description": "request received"},
        "request_id": {"type": "string"},
        "client": {"type": "string", "description": "client address"},
        "token_id": {"type": "string", "description": "sha256 prefix of the token, or -"},
        "device_id": {"type": "string"},
        "term_id": {"type": "string"},
        "item_id": {"type": "string"},
        "value": {"description": "the value as sent"},
        "select": {"description": "as sent (true, false, or null for the point's default)"},
        "outcome": {"type": "string", "description": "a device outcome or an API error code"},
        "status": {"type": "integer", "description": "the HTTP status answered"},
        "message": {"type": "string"},
        "cause": {"type": ["string", "null"]},
    },
}

_DEVICE_STATUS = {
    "type": "object",
    "required": ["state"],
    "properties": {
        "device_id": {"type": "string"},
        "protocol": {"type": ["string", "null"]},
        "state": {
            "type": "string",
            "description": "connecting, started, stopped, offline, error, ...; unknown before "
            "the collector wrote a status",
        },
        "since": {"type": ["string", "null"], "format": "date-time"},
        "last_error": {"type": ["string", "null"]},
        "counters": {"type": "object"},
        "points_updated": {"type": "integer"},
        "last_value_time": {"type": ["string", "null"], "format": "date-time"},
        "collector": {"type": ["string", "null"]},
        "updated": {
            "type": "string",
            "format": "date-time",
            "description": "when the collector wrote this status (on every state change, "
            "within 1 s, and every 2 s)",
        },
        "stale": {
            "type": "boolean",
            "description": "true when no collector has refreshed the status for 6 s (3 "
            "status intervals): its state is not known to be true",
        },
    },
    "additionalProperties": True,
}


def document(app: Klein) -> dict[str, Any]:
    """The whole OpenAPI 3.1 document for ``app``."""

    paths: dict[str, Any] = {}
    for method, path in route_table(app):
        paths.setdefault(path, {})[method.lower()] = _operation(method, path)
    schemas: dict[str, Any] = {name: entity_schema(entity) for name, entity in ENTITIES.items()}
    for name, entity in ENTITIES.items():
        schemas[f"{name}_update"] = entity_schema(entity, update=True)
    in_term = entity_schema(ENTITIES["term_item"])
    in_term["required"] = ["item_id"]
    in_term["properties"] = dict(in_term["properties"])
    in_term["properties"]["term_id"] = {
        **_nullable(_field_schema(ENTITIES["term_item"].FIELDS[0])),
        "description": "the term of the URL (may be left out; another term: 409)",
    }
    in_term["examples"] = [
        {k: v for k, v in example.items() if k != "term_id"} for example in in_term["examples"]
    ]
    schemas["term_item_in_term"] = in_term
    schemas["Error"] = _ERROR
    ids = {
        name: _field_schema(Field(name, "id", f"the point's {name[:-3]}"))
        for name in ("device_id", "term_id", "item_id")
    }
    schemas["DeviceCall"] = {
        "type": "object",
        "required": ["device_id", "term_id", "item_id"],
        "properties": ids,
        "examples": [{"device_id": "1", "term_id": "10", "item_id": "1000"}],
    }
    schemas["DeviceCtrl"] = {
        "type": "object",
        "required": ["device_id", "term_id", "item_id", "value"],
        "properties": {
            **ids,
            "value": {
                "anyOf": [
                    {"type": "number"},
                    {"type": "boolean"},
                    {"type": "string", "maxLength": 256},
                ],
                "description": "the value to write or command: a number, true/false (a coil, "
                "an IEC 104 single command; a double command takes true as 2 on, false as 1 "
                "off), or a short string",
            },
            "select": {
                "type": ["boolean", "null"],
                "description": "select before operate; omitted or null: the term-item's default",
            },
        },
        "x-cross-field-rules": {
            "value": "the value must suit the point's configured type (else outcome refused)"
        },
        "examples": [{"device_id": "1", "term_id": "10", "item_id": "1000", "value": 1}],
    }
    formula = entity_schema(ENTITIES["formula"])
    schemas["FormulaCheck"] = {
        "type": "object",
        "required": ["formula"],
        "properties": {
            "formula": {
                "type": "string",
                "description": 'the expression; one that does not compile answers {"ok": false}',
            }
        },
        "patternProperties": formula["patternProperties"],
        "propertyNames": {"not": {"pattern": r"^p[0-9]{4,}$"}},
        "examples": [{"formula": "p1 * 2", "p1": "1:10:1000"}],
    }
    schemas["DeviceAnswer"] = _DEVICE_ANSWER
    schemas["Sample"] = _SAMPLE
    schemas["CtrlLogEntry"] = _CTRL_LOG_ENTRY
    schemas["DeviceStatus"] = _DEVICE_STATUS
    return {
        "openapi": "3.1.0",
        "info": {"title": "PyDataColl REST API", "version": "1"},
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "paths": paths,
    }
