"""The OpenAPI 3.1 document, built from the routes and the entity declarations
(schemas in `pydatacoll.api.openapi_schemas`, operations in `pydatacoll.api.openapi_paths`)."""

from __future__ import annotations

from typing import Any

from klein import Klein

from pydatacoll.api.openapi_paths import (
    COLLECTOR,
    CTRL_LOG_ENTRY,
    DEVICE_ANSWER,
    DEVICE_STATUS,
    SAMPLE,
    operation,
)
from pydatacoll.api.openapi_schemas import (
    EXAMPLES,
    entity_schema,
    field_schema,
    integer_range_pattern,
    nullable,
)
from pydatacoll.api.plumbing import route_table
from pydatacoll.errors import ERROR_SCHEMA
from pydatacoll.model import (
    ENTITIES,
    Field,
)

__all__ = ["EXAMPLES", "document", "entity_schema", "integer_range_pattern"]


def document(app: Klein) -> dict[str, Any]:
    """The whole OpenAPI 3.1 document for ``app``."""

    paths: dict[str, Any] = {}
    for method, path in route_table(app):
        paths.setdefault(path, {})[method.lower()] = operation(method, path)
    schemas: dict[str, Any] = {name: entity_schema(entity) for name, entity in ENTITIES.items()}
    for name, entity in ENTITIES.items():
        schemas[f"{name}_update"] = entity_schema(entity, update=True)
    in_term = entity_schema(ENTITIES["term_item"])
    in_term["required"] = ["item_id"]
    in_term["properties"] = dict(in_term["properties"])
    in_term["properties"]["term_id"] = {
        **nullable(field_schema(ENTITIES["term_item"].FIELDS[0])),
        "description": "the term of the URL (may be left out; another term: 409)",
    }
    in_term["examples"] = [
        {k: v for k, v in example.items() if k != "term_id"} for example in in_term["examples"]
    ]
    schemas["term_item_in_term"] = in_term
    schemas["Error"] = ERROR_SCHEMA
    ids = {
        name: field_schema(Field(name, "id", f"the point's {name[:-3]}"))
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
    schemas["DeviceAnswer"] = DEVICE_ANSWER
    schemas["Sample"] = SAMPLE
    schemas["CtrlLogEntry"] = CTRL_LOG_ENTRY
    schemas["DeviceStatus"] = DEVICE_STATUS
    schemas["Collector"] = COLLECTOR
    return {
        "openapi": "3.1.0",
        "info": {"title": "PyDataColl REST API", "version": "1"},
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "paths": paths,
    }
