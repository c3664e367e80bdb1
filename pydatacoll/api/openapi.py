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
    if path.startswith(("/api/v1/gateways", "/api/v2/gateways")):
        return "gateway_point" if "/points" in path else "gateway"
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
    _specialise(method, path, operation)
    return operation


def _ref(name: str) -> dict[str, Any]:
    return {"content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{name}"}}}}


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
        "schema": {"type": "string", "format": "date-time"},
        "description": "ISO 8601 time with a zone: entries written at or after it",
    },
    {
        "name": "until",
        "in": "query",
        "required": False,
        "schema": {"type": "string", "format": "date-time"},
        "description": "ISO 8601 time with a zone: entries written at or before it",
    },
]

_DEVICE_OUTCOMES = {
    "200": "confirmed or terminated: the answer (device_call: with the fresh sample)",
    "400": "invalid request, or the collector refused it (outcome refused)",
    "404": "unknown device/term/item/point, or the collector does not run it (not_found)",
    "409": "the device answered negatively (outcome negative, with its cause) or is busy",
    "502": "the request failed in the collector (outcome failed)",
    "503": "no collector, reply channel not subscribed, too many requests, device offline",
    "504": "no answer within [api] device_timeout (outcome timeout)",
}


def _specialise(method: str, path: str, operation: dict[str, Any]) -> None:
    """Descriptions and schemas of the routes that are not plain CRUD."""
    responses = operation["responses"]
    if method == "POST" and path in ("/api/v1/device_call", "/api/v1/device_ctrl"):
        responses.pop("201", None)
        for code, text in _DEVICE_OUTCOMES.items():
            responses[code] = {"description": text, **_ref("DeviceAnswer")}
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
                "refused",
                "not_found",
                "offline",
                "timeout",
                "failed",
                "unavailable",
            ]
        },
        "message": {"type": "string"},
        "cause": {"type": ["string", "null"], "description": "the device's own reason"},
        "sample": {
            "oneOf": [{"$ref": "#/components/schemas/Sample"}, {"type": "null"}],
            "description": "the value read (device_call) or read back, with its point ids",
        },
        "error": {"type": "string", "description": "errors only: the outcome"},
        "field": {"type": "null"},
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
    },
    "additionalProperties": True,
}


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
            "device_id": {"type": ["string", "integer"]},
            "term_id": {"type": ["string", "integer"]},
            "item_id": {"type": ["string", "integer"]},
            "value": {
                "type": ["number", "boolean", "string"],
                "description": "device_ctrl only (required): a number, true/false (a coil, an "
                "IEC 104 single command; a double command takes true as 2 on, false as 1 off), "
                "or a short string",
            },
            "select": {
                "type": ["boolean", "null"],
                "description": "device_ctrl only: select before operate; omitted or null: "
                "the term-item's default",
            },
        },
        "examples": [{"device_id": "1", "term_id": "10", "item_id": "1000", "value": 1}],
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
