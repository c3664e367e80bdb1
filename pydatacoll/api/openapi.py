"""The OpenAPI 3.1 document, built from the routes and the entity declarations."""

from __future__ import annotations

import re
from typing import Any

from klein import Klein

from pydatacoll.model import ENTITIES, Entity

_ERROR = {
    "type": "object",
    "required": ["error", "message", "field"],
    "properties": {
        "error": {"type": "string"},
        "message": {"type": "string"},
        "field": {"type": ["string", "null"]},
        "index": {"type": "integer", "description": "element of a batch"},
    },
}


def entity_schema(entity: type[Entity]) -> dict[str, Any]:
    """The JSON Schema of an entity body (free attributes allowed)."""
    return {
        "type": "object",
        "required": [f.name for f in entity.FIELDS if f.required],
        "properties": {f.name: f.json_schema() for f in entity.FIELDS},
        "additionalProperties": True,
        "examples": [{f.name: f.example for f in entity.FIELDS if f.example is not None}],
    }


def _collection_entity(path: str) -> str | None:
    for name in ("term_items", "devices", "terms", "items"):
        if f"/{name}" in path:
            return name[:-1]
    return None


def _operation(method: str, path: str) -> dict[str, Any]:
    from pydatacoll.api.app import ApiApp  # noqa: F401  (routes are declared there)

    parameters = [
        {"name": part[1:-1], "in": "path", "required": True, "schema": {"type": "string"}}
        for part in path.split("/")
        if part.startswith("{")
    ]
    responses: dict[str, Any] = {
        code: {
            "description": text,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
        }
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
        entity = _collection_entity(path)
        if path.endswith("/items") and "/terms/" in path:
            entity = "term_item"
        if path.startswith("/api/v1/device_"):
            schema: dict[str, Any] = {"$ref": "#/components/schemas/DeviceRequest"}
            responses["504"] = responses["503"]
        elif path.startswith("/api/v2/") and path.endswith("/del"):
            schema = {"type": "array", "items": {}}
        elif path.startswith("/api/v2/"):
            ref = {"$ref": f"#/components/schemas/{entity}"}
            schema = {"oneOf": [ref, {"type": "array", "items": ref}]}
        else:
            schema = {"$ref": f"#/components/schemas/{entity}"}
        operation["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": schema}},
        }
        responses.update(
            {
                "409": {"description": "exists already / rename refused"},
                "413": {"description": "body too large"},
                "415": {"description": "not JSON"},
            }
        )
        responses["201" if method == "POST" and path.startswith("/api/v1/") else "200"] = {
            "description": "the stored entity"
        }
        if path.endswith("/del"):
            responses["204"] = {"description": "deleted"}
    return operation


def document(app: Klein) -> dict[str, Any]:
    """The whole OpenAPI 3.1 document for ``app``."""
    from pydatacoll.api.app import route_table

    paths: dict[str, Any] = {}
    for method, path in route_table(app):
        paths.setdefault(path, {})[method.lower()] = _operation(method, path)
    schemas: dict[str, Any] = {name: entity_schema(entity) for name, entity in ENTITIES.items()}
    schemas["Error"] = _ERROR
    schemas["DeviceRequest"] = {
        "type": "object",
        "required": ["device_id", "term_id", "item_id"],
        "properties": {
            "device_id": {},
            "term_id": {},
            "item_id": {},
            "value": {},
            "select": {"type": "boolean"},
        },
        "examples": [{"device_id": "1", "term_id": "10", "item_id": "1000", "value": 1}],
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "PyDataColl REST API", "version": "1"},
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "paths": paths,
    }
