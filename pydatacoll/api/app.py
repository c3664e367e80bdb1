"""The Klein REST API: configuration CRUD, data reads, device_call and device_ctrl."""

from __future__ import annotations

import hmac
import json
import re
import time
import uuid
from datetime import datetime
from typing import Any

from klein import Klein
from twisted.internet.defer import inlineCallbacks
from twisted.logger import Logger
from twisted.web.server import Request, Site
from werkzeug.exceptions import HTTPException

from pydatacoll import errors
from pydatacoll.api.jsonbody import dumps, read_json
from pydatacoll.config import Settings
from pydatacoll.model import ENTITIES, TermItem, decode_fields, is_valid_id, normalize_id
from pydatacoll.protocols import TERM_PROTOCOLS, device_protocols
from pydatacoll.store import keys
from pydatacoll.store.config import MAX_RETRIES, ConfigStore, RetryChange

MAX_BATCH = 10000
MAX_SAMPLES = 10000


class LimitedRequest(Request):
    """A request that keeps at most ``max_body`` bytes of its body and flags the rest."""

    max_body = 1048576
    body_too_large = False

    def gotLength(self, length: int | None) -> None:  # noqa: N802 (Twisted API)
        if length is not None and length > self.max_body:
            self.body_too_large = True
        super().gotLength(length)

    def handleContentChunk(self, data: bytes) -> None:  # noqa: N802 (Twisted API)
        if self.body_too_large or self.content.tell() + len(data) > self.max_body:
            self.body_too_large = True
            return
        super().handleContentChunk(data)


def _json(request: Any, status: int, body: Any) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"Content-Type", b"application/json; charset=utf-8")
    return dumps(body)


class ApiApp:
    """The REST API bound to a configuration store and the settings."""

    app = Klein()
    log = Logger()

    def __init__(self, store: ConfigStore, settings: Settings) -> None:
        self.store = store
        self.settings = settings

    def site(self) -> Site:
        """A `Site` serving this API with the body size limit applied."""
        max_body = self.settings.max_body

        class _Request(LimitedRequest):
            pass

        _Request.max_body = max_body
        site = Site(self.app.resource(), requestFactory=_Request)
        if not self.settings.access_log:
            site.log = lambda request: None  # type: ignore[method-assign]
        site.displayTracebacks = False
        return site

    # -- plumbing -----------------------------------------------------------------------
    @app.handle_errors(Exception)
    def handle_error(self, request: Any, failure: Any) -> bytes:
        """Every error becomes ``{"error", "message", "field"}`` JSON."""
        error = failure.value
        if isinstance(error, errors.ApiError):
            if isinstance(error, errors.Unauthorized):
                request.setHeader(b"WWW-Authenticate", b'Bearer realm="pydatacoll"')
            return _json(request, error.status, error.to_json())
        if isinstance(error, HTTPException):
            code = error.code or 500
            name = {404: "not_found", 405: "method_not_allowed"}.get(code, "http_error")
            return _json(
                request, code, {"error": name, "message": error.description or "", "field": None}
            )
        self.log.failure(
            "unexpected error in {method} {uri}", failure, method=request.method, uri=request.uri
        )
        return _json(
            request, 500, {"error": "internal", "message": "internal error", "field": None}
        )

    def _authorize(self, request: Any, mutating: bool) -> None:
        token = self.settings.api_token
        if token is None or (not mutating and not self.settings.protect_reads):
            return
        header = request.getHeader(b"authorization") or b""
        scheme, _, given = header.partition(b" ")
        if scheme.lower() != b"bearer" or not hmac.compare_digest(given.strip(), token.encode()):
            raise errors.Unauthorized("a valid Authorization: Bearer token is required")

    def _body(self, request: Any) -> Any:
        self._authorize(request, mutating=True)
        return read_json(request)

    def _read(self, request: Any) -> None:
        self._authorize(request, mutating=False)

    # -- index and catalogues -----------------------------------------------------------
    @app.route("/", methods=["GET"])
    def index(self, request: Any) -> bytes:
        """The list of routes, as text."""
        self._read(request)
        request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
        base = (
            f"{'https' if request.isSecure() else 'http'}://{request.getRequestHostname().decode()}"
        )
        port = request.getHost().port
        base += f":{port}"
        lines = ["PyDataColl is running, available API:", ""]
        for method in ("GET", "POST", "PUT", "DELETE"):
            for path in sorted(p for m, p in route_table(self.app) if m == method):
                lines.append(f"method: {method:<8} URL: {base}{path}")
        return ("\n".join(lines) + "\n").encode()

    @app.route("/api/v1/openapi.json", methods=["GET"])
    def openapi(self, request: Any) -> bytes:
        """The OpenAPI 3.1 document."""
        from pydatacoll.api.openapi import document

        self._read(request)
        return _json(request, 200, document(self.app))

    @app.route("/api/v1/redis_key", methods=["GET"])
    def redis_key(self, request: Any) -> bytes:
        """Every Redis key and channel with its meaning."""
        self._read(request)
        return _json(request, 200, keys.documentation())

    @app.route("/api/v1/device_protocols", methods=["GET"])
    def get_device_protocols(self, request: Any) -> bytes:
        """The registered device protocols."""
        self._read(request)
        return _json(request, 200, device_protocols())

    @app.route("/api/v1/term_protocols", methods=["GET"])
    def get_term_protocols(self, request: Any) -> bytes:
        """The term protocols (informational)."""
        self._read(request)
        return _json(request, 200, TERM_PROTOCOLS)

    # -- reads ----------------------------------------------------------------------------
    @app.route("/api/v1/<any(devices,terms,items):collection>", methods=["GET"])
    @inlineCallbacks
    def list_entities(self, request: Any, collection: str) -> Any:
        """Ids of all devices / terms / items."""
        self._read(request)
        ids = yield self.store.list_ids(collection[:-1])
        return _json(request, 200, ids)

    @app.route("/api/v1/<any(devices,terms,items):collection>/<entity_id>", methods=["GET"])
    @inlineCallbacks
    def get_entity(self, request: Any, collection: str, entity_id: str) -> Any:
        """One device / term / item."""
        self._read(request)
        entity = collection[:-1]
        fields = (
            {} if not is_valid_id(entity_id) else (yield self.store.get_fields(entity, entity_id))
        )
        if not fields:
            raise errors.NotFound(f"{entity}_id not found!", field=f"{entity}_id")
        return _json(request, 200, decode_fields(fields))

    @app.route("/api/v1/devices/<device_id>/terms", methods=["GET"])
    @inlineCallbacks
    def device_terms(self, request: Any, device_id: str) -> Any:
        """Term ids of a device ([] for a device without terms)."""
        self._read(request)
        ids = None
        if is_valid_id(device_id):
            ids = yield self.store.members(keys.DEVICE % device_id, keys.DEVICE_TERMS % device_id)
        if ids is None:
            raise errors.NotFound("device_id not found!", field="device_id")
        return _json(request, 200, ids)

    @app.route("/api/v1/terms/<term_id>/items", methods=["GET"])
    @inlineCallbacks
    def term_items(self, request: Any, term_id: str) -> Any:
        """Item ids linked to a term."""
        self._read(request)
        ids = None
        if is_valid_id(term_id):
            ids = yield self.store.members(keys.TERM % term_id, keys.TERM_ITEMS % term_id)
        if ids is None:
            raise errors.NotFound("term_id not found!", field="term_id")
        return _json(request, 200, ids)

    @inlineCallbacks
    def _term_item_fields(self, term_id: str, item_id: str, device_id: str | None = None) -> Any:
        for name, value in (("term_id", term_id), ("item_id", item_id), ("device_id", device_id)):
            if value is not None and not is_valid_id(value):
                raise errors.NotFound(f"{name} not found!", field=name)
        if device_id is not None and not (yield self.store.exists(keys.DEVICE % device_id)):
            raise errors.NotFound("device_id not found!", field="device_id")
        if not (yield self.store.exists(keys.TERM % term_id)):
            raise errors.NotFound("term_id not found!", field="term_id")
        if not (yield self.store.exists(keys.ITEM % item_id)):
            raise errors.NotFound("item_id not found!", field="item_id")
        fields = yield self.store.get_term_item_fields(term_id, item_id)
        if not fields or (
            device_id is not None and json.loads(fields.get("device_id", "null")) != device_id
        ):
            raise errors.NotFound("term_item not found!", field="term_item")
        return fields

    @app.route("/api/v1/terms/<term_id>/items/<item_id>", methods=["GET"])
    @inlineCallbacks
    def get_term_item(self, request: Any, term_id: str, item_id: str) -> Any:
        """One term-item (point)."""
        self._read(request)
        fields = yield self._term_item_fields(term_id, item_id)
        return _json(request, 200, decode_fields(fields))

    @app.route("/api/v1/devices/<device_id>/terms/<term_id>/items/<item_id>/datas", methods=["GET"])
    @inlineCallbacks
    def get_datas(self, request: Any, device_id: str, term_id: str, item_id: str) -> Any:
        """A point's samples, newest first (``?limit=``, ``?since=``, ``?until=``)."""
        self._read(request)
        limit = _int_arg(request, "limit", 1000, 1, MAX_SAMPLES)
        since = _time_arg(request, "since")
        until = _time_arg(request, "until")
        yield self._term_item_fields(term_id, item_id, device_id)
        samples = yield self.store.read_samples((device_id, term_id, item_id), limit, since, until)
        return _json(request, 200, samples)

    @app.route(
        "/api/v1/devices/<device_id>/terms/<term_id>/items/<item_id>/datas/<index>", methods=["GET"]
    )
    @inlineCallbacks
    def get_data(self, request: Any, device_id: str, term_id: str, item_id: str, index: str) -> Any:
        """One sample by arrival index (-1 = latest)."""
        self._read(request)
        try:
            position = int(index)
        except ValueError:
            raise errors.ValidationError("index must be an integer", field="index") from None
        if abs(position) > 10**9:
            raise errors.ValidationError("index is out of range", field="index")
        yield self._term_item_fields(term_id, item_id, device_id)
        sample = yield self.store.sample_at((device_id, term_id, item_id), position)
        if sample is None:
            raise errors.NotFound("no sample at this index", field="index")
        return _json(request, 200, sample)

    # -- changes --------------------------------------------------------------------------
    @inlineCallbacks
    def _apply(self, ops: list[dict[str, Any]], batch: bool) -> Any:
        try:
            results = yield self.store.apply(ops)
        except errors.ApiError as e:
            if not batch:
                e.index = None
            raise
        return results

    @app.route("/api/v1/<any(devices,terms,items):collection>", methods=["POST"])
    @inlineCallbacks
    def create_entity(self, request: Any, collection: str) -> Any:
        """Create a device / term / item: 201 with the stored entity, 409 if it exists."""
        body = self._body(request)
        entity = ENTITIES[collection[:-1]].from_json(body)
        results = yield self._apply([_op("create", entity)], batch=False)
        return _json(request, 201, results[0])

    @app.route("/api/v1/terms/<term_id>/items", methods=["POST"])
    @inlineCallbacks
    def create_term_item(self, request: Any, term_id: str) -> Any:
        """Link an item to a term: 201 with the stored term-item."""
        body = self._body(request)
        if isinstance(body, dict):
            body = dict(body)
            if body.get("term_id") is None:
                body["term_id"] = term_id
            elif normalize_id(body["term_id"], "term_id") != term_id:
                raise errors.ValidationError("term_id mismatch in url and body!", field="term_id")
        entity = TermItem.from_json(body)
        results = yield self._apply([_op("create", entity)], batch=False)
        return _json(request, 201, results[0])

    @app.route("/api/v1/<any(devices,terms,items):collection>/<entity_id>", methods=["PUT"])
    def update_entity(self, request: Any, collection: str, entity_id: str) -> Any:
        """Change a device / term / item (fields merged; null removes one)."""
        body = self._body(request)
        entity = collection[:-1]
        return self._update(
            request,
            entity,
            {"id": entity_id},
            body,
            lambda: self.store.get_fields(entity, entity_id),
        )

    @app.route("/api/v1/terms/<term_id>/items/<item_id>", methods=["PUT"])
    def update_term_item(self, request: Any, term_id: str, item_id: str) -> Any:
        """Change a term-item (fields merged; null removes one)."""
        body = self._body(request)
        return self._update(
            request,
            "term_item",
            {"term_id": term_id, "item_id": item_id},
            body,
            lambda: self._term_item_fields(term_id, item_id),
        )

    @inlineCallbacks
    def _update(self, request: Any, entity: str, ids: dict[str, str], body: Any, read: Any) -> Any:
        if not isinstance(body, dict):
            raise errors.ValidationError(f"a {entity} must be a JSON object")
        for name, value in ids.items():
            if not is_valid_id(value):
                raise errors.NotFound(
                    f"{entity}_id not found!" if name == "id" else f"{name} not found!", field=name
                )
            if body.get(name) is not None and normalize_id(body[name], name) != value:
                raise errors.Conflict(
                    f"{name} cannot be changed by PUT (create a new {entity})", field=name
                )
        for _attempt in range(MAX_RETRIES):
            fields = yield read()
            if not fields:
                raise errors.NotFound(f"{entity}_id not found!", field=f"{entity}_id")
            merged = decode_fields(fields)
            merged.update(body)
            merged.update(ids)
            merged = {k: v for k, v in merged.items() if v is not None}
            new = ENTITIES[entity].from_json(merged)
            op = _op("update", new)
            op["expect"] = fields
            try:
                results = yield self._apply([op], batch=False)
            except RetryChange:
                continue
            return _json(request, 200, results[0])
        raise errors.Conflict("the entity kept changing; try again")

    @app.route("/api/v1/<any(devices,terms,items):collection>/<entity_id>", methods=["DELETE"])
    @inlineCallbacks
    def delete_entity(self, request: Any, collection: str, entity_id: str) -> Any:
        """Delete a device / term / item and what hangs on it: 204."""
        self._authorize(request, mutating=True)
        entity = collection[:-1]
        if not is_valid_id(entity_id):
            raise errors.NotFound(f"{entity}_id not found!", field=f"{entity}_id")
        yield self._apply([{"op": "delete", "entity": entity, "id": entity_id}], batch=False)
        request.setResponseCode(204)
        return b""

    @app.route("/api/v1/terms/<term_id>/items/<item_id>", methods=["DELETE"])
    @inlineCallbacks
    def delete_term_item(self, request: Any, term_id: str, item_id: str) -> Any:
        """Delete a term-item and its data: 204."""
        self._authorize(request, mutating=True)
        yield self._term_item_fields(term_id, item_id)
        yield self._apply([_term_item_delete(term_id, item_id)], batch=False)
        request.setResponseCode(204)
        return b""

    @app.route("/api/v2/<any(devices,terms,items,term_items):collection>", methods=["POST"])
    @inlineCallbacks
    def batch_upsert(self, request: Any, collection: str) -> Any:
        """Create or replace many entities, all or nothing: 200 with the stored entities."""
        body = self._body(request)
        elements = _batch(body)
        entity_type = ENTITIES[collection[:-1]]
        ops, seen = [], set()
        for index, element in enumerate(elements):
            try:
                entity = entity_type.from_json(element)
            except errors.ApiError as e:
                e.index = index
                raise
            if entity.key in seen:
                raise errors.ValidationError(
                    f"duplicate {entity.KIND} {entity.key} in the batch", field="id", index=index
                )
            seen.add(entity.key)
            ops.append(_op("put", entity))
        results = yield self._apply(ops, batch=True) if ops else []
        return _json(request, 200, results)

    @app.route("/api/v2/<any(devices,terms,items,term_items):collection>/del", methods=["POST"])
    @inlineCallbacks
    def batch_delete(self, request: Any, collection: str) -> Any:
        """Delete many entities, all or nothing: 204."""
        body = self._body(request)
        elements = _batch(body)
        entity = collection[:-1]
        ops, seen = [], set()
        for index, element in enumerate(elements):
            try:
                if entity == "term_item":
                    if not isinstance(element, dict):
                        raise errors.ValidationError("each element must be {term_id, item_id}")
                    op = _term_item_delete(
                        normalize_id(element.get("term_id"), "term_id"),
                        normalize_id(element.get("item_id"), "item_id"),
                    )
                else:
                    op = {"op": "delete", "entity": entity, "id": normalize_id(element, "id")}
            except errors.ApiError as e:
                e.index = index
                raise
            if op["id"] in seen:
                raise errors.ValidationError("duplicate id in the batch", field="id", index=index)
            seen.add(op["id"])
            ops.append(op)
        if ops:
            yield self._apply(ops, batch=True)
        request.setResponseCode(204)
        return b""

    # -- device_call / device_ctrl --------------------------------------------------------
    @app.route("/api/v1/<any(device_call,device_ctrl):action>", methods=["POST"])
    @inlineCallbacks
    def device_request(self, request: Any, action: str) -> Any:
        """Validate a read-now or command request and hand it to the collector."""
        body = self._body(request)
        if not isinstance(body, dict):
            raise errors.ValidationError("the request must be a JSON object")
        ids = {
            name: normalize_id(body.get(name), name) for name in ("device_id", "term_id", "item_id")
        }
        message: dict[str, Any] = {"request_id": uuid.uuid4().hex, **ids}
        if action == "device_ctrl":
            value = body.get("value")
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, float, str))
                or (isinstance(value, str) and len(value) > 256)
            ):
                raise errors.ValidationError(
                    "value must be a number, a boolean as 0/1, or a short string", field="value"
                )
            select = body.get("select", False)
            if not isinstance(select, bool):
                raise errors.ValidationError("select must be true or false", field="select")
            message.update(
                value=value,
                select=select,
                client=request.getClientAddress().host if request.getClientAddress() else None,
            )
        yield self._term_item_fields(ids["term_id"], ids["item_id"], ids["device_id"])
        message["deadline"] = time.time() + self.settings.device_timeout
        channel = keys.DEVICE_CALL if action == "device_call" else keys.DEVICE_CTRL
        if action == "device_ctrl":
            self.log.info(
                "device_ctrl {request_id} from {client}: {device_id}:{term_id}:{item_id} = {value}",
                **message,
            )
        receivers = yield self.store.publish(channel, message)
        if not receivers:
            raise errors.Unavailable(
                "no collector is running for this device; nothing was sent", field="device_id"
            )
        raise errors.GatewayTimeout("the collector did not answer in time", field="device_id")


def _op(kind: str, entity: Any) -> dict[str, Any]:
    op: dict[str, Any] = {
        "op": kind,
        "entity": entity.KIND,
        "id": entity.key,
        "fields": entity.to_fields(),
    }
    if entity.KIND == "term_item":
        op.update(term_id=entity.term_id, item_id=entity.item_id)
    return op


def _term_item_delete(term_id: str, item_id: str) -> dict[str, Any]:
    return {
        "op": "delete",
        "entity": "term_item",
        "id": f"{term_id}:{item_id}",
        "term_id": term_id,
        "item_id": item_id,
    }


def _batch(body: Any) -> list[Any]:
    elements = body if isinstance(body, list) else [body]
    if len(elements) > MAX_BATCH:
        raise errors.ValidationError(f"at most {MAX_BATCH} elements per batch")
    return elements


def _int_arg(request: Any, name: str, default: int, low: int, high: int) -> int:
    values = request.args.get(name.encode())
    if not values:
        return default
    try:
        value = int(values[0])
    except ValueError:
        raise errors.ValidationError(f"{name} must be an integer", field=name) from None
    if not low <= value <= high:
        raise errors.ValidationError(f"{name} must be from {low} to {high}", field=name)
    return value


def _time_arg(request: Any, name: str) -> int | None:
    values = request.args.get(name.encode())
    if not values:
        return None
    try:
        moment = datetime.fromisoformat(values[0].decode())
    except (ValueError, UnicodeDecodeError):
        raise errors.ValidationError(f"{name} must be an ISO 8601 time", field=name) from None
    if moment.tzinfo is None:
        raise errors.ValidationError(f"{name} needs a time zone (Z or +hh:mm)", field=name)
    return int(moment.timestamp() * 1000)


def route_table(app: Klein) -> list[tuple[str, str]]:
    """Every (method, path template) the app serves, paths in OpenAPI form."""
    table = []
    for rule in app.url_map.iter_rules():
        expanded = _expand(rule.rule)
        for method in sorted(rule.methods or ()):
            if method in ("HEAD", "OPTIONS"):
                continue
            for p in expanded:
                table.append((method, p))
    return sorted(set(table))


def _expand(path: str) -> list[str]:
    match = re.search(r"<any\(([^)]*)\):\w+>", path)
    if match is None:
        return [re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", path)]
    results = []
    for option in match.group(1).split(","):
        results.extend(_expand(path[: match.start()] + option.strip() + path[match.end() :]))
    return results
