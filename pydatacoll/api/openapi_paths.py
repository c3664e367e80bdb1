"""The operations of the OpenAPI document: parameters, bodies and responses of each
route, and the schemas of the answers that are not entities."""

from __future__ import annotations

import re
from typing import Any

from pydatacoll.api.configio import openapi_operation
from pydatacoll.api.openapi_schemas import field_schema
from pydatacoll.api.plumbing import MAX_BATCH, MAX_INDEX
from pydatacoll.api.stream_events import HEARTBEAT, QUEUE_EVENTS
from pydatacoll.model import (
    ENTITIES,
    Field,
)


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
                    "term_id": field_schema(ENTITIES["term_item"].FIELDS[0]),
                    "item_id": field_schema(ENTITIES["term_item"].FIELDS[1]),
                },
            }
        elif entity == "gateway_point":
            item = field_schema(
                Field("ioa", "integer", "an IOA of the gateway", minimum=1, maximum=16777215)
            )
        else:
            item = field_schema(Field("id", "id", f"a {entity} id"))
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


def operation(method: str, path: str) -> dict[str, Any]:
    """The OpenAPI operation of one route: parameters, body and responses."""
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
        openapi_operation(method, operation)
    elif path == "/api/v1/devices/{device_id}/status":
        operation["description"] = (
            'The collector\'s status of the device; "state": "unknown" while none was written.'
        )
        responses["200"] = {"description": "the device status", **_ref("DeviceStatus")}
    elif path == "/api/v1/collectors":
        operation["description"] = (
            "The live collectors (cluster mode, docs/cluster.rst), by id; empty when none "
            "runs in cluster mode."
        )
        responses.pop("404", None)
        responses["200"] = {
            "description": "the collectors",
            "content": {
                "application/json": {
                    "schema": {"type": "array", "items": {"$ref": "#/components/schemas/Collector"}}
                }
            },
        }
    elif path in _LIVE_ROUTES:
        _LIVE_ROUTES[path](operation)


# -- the event stream and the metrics (issue 15) ---------------------------------------------
def _stream_operation(operation: dict[str, Any]) -> None:

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


SAMPLE = {
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

DEVICE_ANSWER = {
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

CTRL_LOG_ENTRY = {
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

DEVICE_STATUS = {
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
        "collector": {
            "type": ["string", "null"],
            "description": "cluster mode: the collector running the device (its lease holder)",
        },
        "epoch": {
            "type": "integer",
            "description": "cluster mode: the fencing epoch of the lease it runs under",
        },
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

COLLECTOR = {
    "type": "object",
    "required": ["collector", "devices", "heartbeat_age", "started_ms"],
    "properties": {
        "collector": {"type": "string", "description": "its id ([cluster] collector_id)"},
        "devices": {"type": "integer", "description": "devices it runs (leases it holds)"},
        "heartbeat_age": {
            "type": "number",
            "description": "seconds since its last heartbeat, by the Redis server's clock",
        },
        "started_ms": {"type": "integer", "description": "when it joined (epoch ms)"},
    },
}
