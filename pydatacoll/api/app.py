"""The Klein REST API: configuration CRUD, data reads, device_call and device_ctrl."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import time
import uuid
from datetime import datetime
from typing import Any

from klein import Klein
from klein._resource import KleinResource, URLDecodeError, extractURLparts
from twisted.internet.defer import CancelledError, Deferred, inlineCallbacks
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.server import Request, Site
from werkzeug.exceptions import HTTPException
from werkzeug.exceptions import MethodNotAllowed as WerkzeugMethodNotAllowed

from pydatacoll import errors
from pydatacoll.api.jsonbody import dumps, read_json
from pydatacoll.api.replies import DeviceAnswer, ReplyListener, ReplyTimeout
from pydatacoll.config import Settings
from pydatacoll.devices.manager import STALE_AFTER
from pydatacoll.model import (
    ENTITIES,
    Device,
    Term,
    TermItem,
    decode_fields,
    is_valid_id,
    iso_time,
    normalize_id,
)
from pydatacoll.protocols import TERM_PROTOCOLS, device_protocols, get_protocol
from pydatacoll.store import keys
from pydatacoll.store.config import MAX_RETRIES, ConfigStore, RetryChange, natural_key

MAX_BATCH = 10000
MAX_SAMPLES = 10000
#: Largest |index| of GET .../datas/{index}.
MAX_INDEX = 10**9
_INTEGER = re.compile(r"^-?[0-9]{1,19}$")
#: An RFC 3339 date-time (what OpenAPI's ``format: date-time`` means); the seconds may be
#: left out (``2026-01-31T08:00Z``).
_RFC3339 = re.compile(
    r"^(?P<year>[0-9]{4})-(?P<month>[0-9]{2})-(?P<day>[0-9]{2})[Tt ]"
    r"(?P<hour>[0-9]{2}):(?P<minute>[0-9]{2})(:(?P<second>[0-9]{2})(?P<fraction>\.[0-9]+)?)?"
    r"(?P<zone>[Zz]|[+-][0-9]{2}:[0-9]{2})$"
)


class LimitedRequest(Request):
    """A request that keeps at most ``max_body`` bytes of its body and flags the rest."""

    max_body = 1048576
    #: The limit of configuration imports (``[api] max_import_body``).
    max_import_body = 1048576
    body_too_large = False

    def gotLength(self, length: int | None) -> None:  # noqa: N802 (Twisted API)
        # Request.path is set only after the body; HTTP/1.1 channels know it from the
        # request line already, before the headers (HTTP/2 streams keep max_body).
        path = getattr(self.channel, "_path", None) or b""
        if path.split(b"?")[0] == b"/api/v1/config":
            self.max_body = self.max_import_body
        if length is not None and length > self.max_body:
            self.body_too_large = True
        super().gotLength(length)

    def handleContentChunk(self, data: bytes) -> None:  # noqa: N802 (Twisted API)
        content: Any = self.content
        if self.body_too_large or content.tell() + len(data) > self.max_body:
            self.body_too_large = True
            return
        super().handleContentChunk(data)


def _json(request: Any, status: int, body: Any) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"Content-Type", b"application/json; charset=utf-8")
    return dumps(body)


class _ApiResource(KleinResource):
    """Klein's resource, with a URL that is not UTF-8 answered in the JSON error shape.

    Klein itself answers it with a plain-text 400 and logs a traceback.
    """

    def render(self, request: Any) -> Any:
        try:
            extractURLparts(request)
        except URLDecodeError:
            return _json(
                request,
                400,
                errors.error_body("invalid", "the URL path is not valid UTF-8", "path"),
            )
        return super().render(request)


class _WallClock:
    """``seconds()`` from `time.time`, for an `ApiApp` built without a reactor."""

    @staticmethod
    def seconds() -> float:
        return time.time()


class ApiApp:
    """The REST API bound to a configuration store and the settings.

    ``replies`` receives the collector's answers to device_call/device_ctrl (without it
    those routes answer 503); ``clock`` gives the times of requests and audit entries.
    """

    app = Klein()
    log = Logger()

    def __init__(
        self,
        store: ConfigStore,
        settings: Settings,
        *,
        replies: ReplyListener | None = None,
        clock: Any = None,
        history: Any = None,
        plugins: Any = None,
        stream_hub: Any = None,
        metrics: Any = None,
    ) -> None:
        self.store = store
        self.settings = settings
        self.replies = replies
        #: The history database (`HistoryDatabase`), for ranges older than Redis holds.
        self.history = history
        #: The process's event stream (`pydatacoll.api.stream.StreamHub`) and metrics
        #: (`pydatacoll.metrics.ProcessMetrics`); without them those routes answer 503.
        self.stream_hub = stream_hub
        self.metrics = metrics
        self.clock = clock or (replies.clock if replies is not None else _WallClock())
        if plugins is None:
            from pydatacoll.processing.loader import PluginDirectory

            plugins = PluginDirectory(settings, store.redis, self.clock)
        #: The processor plugins and where they run (`PluginDirectory`).
        self.plugins = plugins
        #: A short, non-secret id of the API token for the audit log ("-" without one).
        self.token_id = (
            hashlib.sha256(settings.api_token.encode()).hexdigest()[:8]
            if settings.api_token
            else "-"
        )

    def site(self) -> Site:
        """A `Site` serving this API with the body size limit applied."""
        max_body = self.settings.max_body

        class _Request(LimitedRequest):
            pass

        _Request.max_body = max_body
        _Request.max_import_body = max(max_body, self.settings.max_import_body)
        site = Site(_ApiResource(self.app), requestFactory=_Request)
        if not self.settings.access_log:
            site.log = lambda request: None  # type: ignore[method-assign]
        site.displayTracebacks = False
        if self.metrics is not None:
            self.metrics.time_requests(site, self.app)
        return site

    # -- plumbing -----------------------------------------------------------------------
    @app.handle_errors(Exception)
    def handle_error(self, request: Any, failure: Any) -> bytes:
        """Every error becomes ``{"error", "message", "field"}`` JSON."""
        error = failure.value
        if isinstance(error, errors.ApiError):
            if isinstance(error, errors.Unauthorized):
                request.setHeader(b"WWW-Authenticate", b'Bearer realm="pydatacoll"')
            retry_after = getattr(error, "retry_after", None)
            if retry_after is not None:
                request.setHeader(b"Retry-After", str(retry_after).encode())
            return _json(request, error.status, error.to_json())
        if isinstance(error, HTTPException):
            code = error.code or 500
            name = {404: "not_found", 405: "method_not_allowed"}.get(code, "http_error")
            message = error.description or ""
            if isinstance(error, WerkzeugMethodNotAllowed):
                allowed = sorted(error.valid_methods or ())
                request.setHeader(b"Allow", ", ".join(allowed).encode())
                message = f"this URL answers {', '.join(allowed)}"
            return _json(request, code, errors.error_body(name, message, None))
        self.log.failure(
            "unexpected error in {method} {uri}", failure, method=request.method, uri=request.uri
        )
        return _json(request, 500, errors.error_body("internal", "internal error", None))

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
        point = (device_id, term_id, item_id)
        samples = yield self.store.read_samples(point, limit, since, until)
        if self.history is not None and len(samples) < limit:
            # Redis keeps the newest samples only: the older part of the range is in the
            # history database (strictly before the oldest one Redis gave, no duplicates).
            older = until
            if samples and samples[-1].get("receive_time"):
                oldest = datetime.fromisoformat(samples[-1]["receive_time"]).timestamp()
                older = int(oldest * 1000) - 1
            rows = yield self._history_rows(point, since, older, limit - len(samples))
            samples.extend(rows)
        return _json(request, 200, samples)

    @inlineCallbacks
    def _history_rows(self, point: Any, since: int | None, until: int | None, limit: int) -> Any:
        from pydatacoll.processing.history import row_sample

        try:
            rows = yield self.history.read(point, since, until, limit)
        except Exception as exc:
            # The samples Redis has are still worth answering with: say what is missing.
            self.log.warn("history database not readable: {error}", error=exc)
            return []
        return [row_sample(row).to_json() for row in rows]

    @app.route(
        "/api/v1/devices/<device_id>/terms/<term_id>/items/<item_id>/datas/<index>", methods=["GET"]
    )
    @inlineCallbacks
    def get_data(self, request: Any, device_id: str, term_id: str, item_id: str, index: str) -> Any:
        """One sample by its index in the list ``datas`` answers (newest first): 0 is the
        newest, 1 the one before it; -1 the oldest kept, -2 the one after it."""
        self._read(request)
        if not _INTEGER.match(index):
            raise errors.ValidationError("index must be an integer", field="index")
        position = int(index)
        if abs(position) > MAX_INDEX:
            raise errors.ValidationError(
                f"index must be from -{MAX_INDEX} to {MAX_INDEX}", field="index"
            )
        yield self._term_item_fields(term_id, item_id, device_id)
        sample = yield self.store.sample_at((device_id, term_id, item_id), position)
        if sample is None:
            raise errors.NotFound("no sample at this index", field="index")
        return _json(request, 200, sample)

    # -- changes --------------------------------------------------------------------------
    @inlineCallbacks
    def _check_points(self, points: list[tuple[int | None, TermItem]]) -> Any:
        """The driver of each point's device checks the point (a Modbus point needs its
        register and table), so a point the device could not read is refused with a 400."""
        owners: dict[str, Any] = {}
        for index, point in points:
            if point.term_id not in owners:
                owners[point.term_id] = yield self._term_device(point.term_id)
            owner = owners[point.term_id]
            if owner is None:
                continue  # no such term (the change answers 404) or no device to judge by
            device, term = owner
            protocol = get_protocol(device.protocol)
            if protocol is None:
                continue
            try:
                protocol.check_point(device, term, point)
            except errors.ApiError as e:
                e.index = index
                raise

    @inlineCallbacks
    def _term_device(self, term_id: str) -> Any:
        """``(device, term)`` of a stored term, or None."""
        term_fields = yield self.store.get_fields("term", term_id)
        if not term_fields:
            return None
        try:
            term = Term.from_json(decode_fields(term_fields))
        except errors.ApiError:
            return None
        device_fields = yield self.store.get_fields("device", term.device_id)
        if not device_fields:
            return None
        try:
            device = Device.from_json(decode_fields(device_fields))
        except errors.ApiError:
            return None
        return device, term

    @inlineCallbacks
    def plugin_warning(self, name: str) -> Any:
        """Why a feature of plugin ``name`` will do nothing, or None when a collector runs
        it (or Redis cannot tell)."""
        try:
            runs = yield self.plugins.runs_somewhere(name)
        except errors.StoreUnavailable:
            return None
        return None if runs else self.plugins.not_running_reason(name)

    def _limits_warned(self, stored: dict[str, Any]) -> Any:
        """A stored term-item, with a ``warning`` when it sets limits nothing checks."""
        return self._limits_warned_all([stored]).addCallback(lambda items: items[0])

    @inlineCallbacks
    def _limits_warned_all(self, stored: list[dict[str, Any]]) -> Any:
        """Stored term-items; those setting limits get a ``warning`` when nothing checks
        them (one look-up for the whole list)."""
        from pydatacoll.processing.limits import LIMIT_FIELDS

        def has_limits(item: dict[str, Any]) -> bool:
            return any(item.get(name) is not None for name in LIMIT_FIELDS)

        if not any(has_limits(item) for item in stored):
            return stored
        warning = yield self.plugin_warning("limits")
        if warning is None:
            return stored
        return [{**item, "warning": warning} if has_limits(item) else item for item in stored]

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
        if not is_valid_id(term_id):
            raise errors.NotFound("term_id not found!", field="term_id")
        if isinstance(body, dict):
            body = dict(body)
            if body.get("term_id") is None:
                body["term_id"] = term_id
            elif normalize_id(body["term_id"], "term_id") != term_id:
                # Like a rename by PUT: the URL names the term, the body may only repeat it.
                raise errors.Conflict("term_id mismatch in url and body!", field="term_id")
        entity = TermItem.from_json(body)
        yield self._check_points([(None, entity)])
        results = yield self._apply([_op("create", entity)], batch=False)
        answer = yield self._limits_warned(results[0])
        return _json(request, 201, answer)

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
            if entity == "term_item":
                yield self._check_points([(None, new)])
            op = _op("update", new)
            op["expect"] = fields
            try:
                results = yield self._apply([op], batch=False)
            except RetryChange:
                continue
            answer = results[0]
            if entity == "term_item":
                answer = yield self._limits_warned(answer)
            return _json(request, 200, answer)
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
        elements = _batch(self._body(request))
        ops = batch_put_ops(ENTITIES[collection[:-1]], elements)
        if collection == "term_items":
            yield self._check_points(
                [(index, TermItem.from_json(element)) for index, element in enumerate(elements)]
            )
        results = yield self._apply(ops, batch=True) if ops else []
        if collection == "term_items":
            results = yield self._limits_warned_all(results)
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
                raise errors.Conflict("duplicate id in the batch", field="id", index=index)
            seen.add(op["id"])
            ops.append(op)
        if ops:
            yield self._apply(ops, batch=True)
        request.setResponseCode(204)
        return b""

    # -- live values and status ------------------------------------------------------------
    @inlineCallbacks
    def _device_fields(self, device_id: str) -> Any:
        fields = (
            {} if not is_valid_id(device_id) else (yield self.store.get_fields("device", device_id))
        )
        if not fields:
            raise errors.NotFound("device_id not found!", field="device_id")
        return fields

    @app.route("/api/v1/devices/<device_id>/values", methods=["GET"])
    @inlineCallbacks
    def device_values(self, request: Any, device_id: str) -> Any:
        """The latest sample of every point of a device: ``{"term_id:item_id": sample}``."""
        self._read(request)
        yield self._device_fields(device_id)
        stored = yield self.store.redis.call("hgetall", keys.DEVICE_VALUES % device_id)
        values = decode_fields(stored)
        return _json(request, 200, {k: values[k] for k in sorted(values, key=natural_key)})

    @app.route("/api/v1/devices/<device_id>/status", methods=["GET"])
    @inlineCallbacks
    def device_status(self, request: Any, device_id: str) -> Any:
        """The collector's status of a device; ``"state": "unknown"`` before it wrote one,
        ``"stale": true`` when no collector has refreshed it for ``STALE_AFTER`` s."""
        self._read(request)
        fields = yield self._device_fields(device_id)
        text = yield self.store.redis.call("hget", keys.DEVICE_STATUS % device_id, "status")
        status: Any = None
        if text is not None:
            try:
                status = json.loads(text)
            except ValueError:
                status = None
        if not isinstance(status, dict):
            status = {
                "device_id": device_id,
                "protocol": decode_fields(fields).get("protocol"),
                "state": "unknown",
                "since": None,
                "last_error": None if text is None else "the stored status is not a JSON object",
                "counters": {},
                "points_updated": 0,
                "last_value_time": None,
                "collector": None,
            }
        else:
            status["stale"] = self._stale(status.get("updated"))
        return _json(request, 200, status)

    def _stale(self, updated: Any) -> bool:
        """Whether no collector has refreshed a status for ``STALE_AFTER`` seconds (its
        collector stopped or lost Redis: the state it says is not known to be true)."""
        try:
            written = datetime.fromisoformat(updated).timestamp()
        except (TypeError, ValueError):
            return True
        return bool(self.clock.seconds() - written > STALE_AFTER)

    # -- device_call / device_ctrl --------------------------------------------------------
    @app.route("/api/v1/<any(device_call,device_ctrl):action>", methods=["POST"])
    @inlineCallbacks
    def device_request(self, request: Any, action: str) -> Any:
        """Read a point now / command a point, through the collector running its device.

        The round trip runs to its end (reply or timeout, and the audit entry) even if
        the client goes away; the answer's outcome gives the HTTP status.
        """
        request_id = uuid.uuid4().hex
        try:
            body = self._body(request)
            if not isinstance(body, dict):
                raise errors.ValidationError("the request must be a JSON object")
            ids = {
                name: normalize_id(body.get(name), name)
                for name in ("device_id", "term_id", "item_id")
            }
            if action == "device_call":
                work = self._round_trip(action, request_id, ids, {})
            else:
                work = self._device_ctrl(request_id, ids, body, _client(request))
            answer = yield _detached(work)
        except DeviceAnswer:
            raise
        except errors.ApiError as e:
            # Every answer of these routes has the DeviceAnswer shape (which includes the
            # error shape): the outcome of a request the API refused is the error code.
            if isinstance(e, errors.Unauthorized):
                request.setHeader(b"WWW-Authenticate", b'Bearer realm="pydatacoll"')
            raise DeviceAnswer.refusal(request_id, e) from None
        return _json(request, answer.status, answer.to_json())

    def device_ctrl(
        self,
        ids: dict[str, str],
        body: dict[str, Any],
        client: str,
        *,
        token_id: str | None = None,
        refused: str | None = None,
    ) -> Deferred[Any]:
        """One command from elsewhere than HTTP (the MQTT plugin), on the route's path:
        validation, round trip, audit entry. Fires with the `DeviceAnswer` or fails with
        the `errors.ApiError` the route would answer; ``refused`` (a reason) audits the
        command as refused without sending it."""
        return self._device_ctrl(uuid.uuid4().hex, ids, body, client, token_id, refused)

    @inlineCallbacks
    def _device_ctrl(
        self,
        request_id: str,
        ids: dict[str, str],
        body: dict[str, Any],
        client: str,
        token_id: str | None = None,
        refused: str | None = None,
    ) -> Any:
        """Validate, send and audit one command; every outcome gets its audit entry."""
        token_id = token_id or self.token_id
        entry = {
            "time": iso_time(self.clock.seconds()),
            "request_id": request_id,
            "client": client,
            "token_id": token_id,
            **ids,
            "value": _short_json(body.get("value")),
            "select": _short_json(body.get("select")),
        }
        try:
            value = body.get("value")
            # JSON true/false go to the driver as they are: a coil or an IEC 104 single
            # command takes them, a double command maps them to 2/1, others to 1/0.
            if not isinstance(value, (bool, int, float, str)) or (
                isinstance(value, str) and len(value) > 256
            ):
                raise errors.ValidationError(
                    "value must be a number, true/false, or a short string", field="value"
                )
            select = body.get("select")  # None: the term-item's default mode
            if select is not None and not isinstance(select, bool):
                raise errors.ValidationError("select must be true, false or null", field="select")
            if refused is not None:
                raise DeviceAnswer(request_id, "refused", refused)
            extra = {"value": value, "select": select, "client": client, "token_id": token_id}
            answer = yield self._round_trip("device_ctrl", request_id, ids, extra)
        except errors.ApiError as e:
            outcome = e.outcome if isinstance(e, DeviceAnswer) else e.code
            yield self._audit(entry, outcome, e.status, e.message, getattr(e, "cause", None))
            raise
        except Exception:
            yield self._audit(entry, "failed", 500, "internal error", None)
            raise
        yield self._audit(entry, answer.outcome, answer.status, answer.message, answer.cause)
        return answer

    @inlineCallbacks
    def _round_trip(
        self, action: str, request_id: str, ids: dict[str, str], extra: dict[str, Any]
    ) -> Any:
        """Publish one request and await its own reply: a `DeviceAnswer` (raised if not 2xx)."""
        yield self._term_item_fields(ids["term_id"], ids["item_id"], ids["device_id"])
        if self.replies is None:
            raise DeviceAnswer(request_id, "unavailable", "device requests are not served here")
        timeout = self.settings.device_timeout
        waiting = self.replies.wait(request_id, timeout)  # before publishing: no reply missed
        message = {
            "request_id": request_id,
            **ids,
            **extra,
            "reply_to": self.replies.reply_channel(request_id),
            "deadline": self.clock.seconds() + timeout,
        }
        channel = keys.DEVICE_CALL if action == "device_call" else keys.DEVICE_CTRL
        try:
            receivers = yield self.store.publish(channel, message)
        except BaseException:
            _forget(waiting)
            raise
        if not receivers:
            _forget(waiting)
            raise DeviceAnswer(
                request_id, "unavailable", "no collector is running; nothing was sent"
            )
        try:
            reply = yield waiting
        except ReplyTimeout:
            maybe = "; the command may still have been executed" if action == "device_ctrl" else ""
            raise DeviceAnswer(
                request_id, "timeout", f"no answer from the collector within {timeout:g} s{maybe}"
            ) from None
        answer = DeviceAnswer.from_reply(request_id, reply)
        if action == "device_ctrl" and answer.outcome == "refused":
            answer.field = "value"  # the collector cannot send this value to this point
        if answer.status >= 400:
            raise answer
        return answer

    @inlineCallbacks
    def _audit(
        self, entry: dict[str, Any], outcome: str, status: int, message: str, cause: Any
    ) -> Any:
        """Append one command to the bounded audit stream; a failure is logged, not raised."""
        if self.metrics is not None:
            self.metrics.commands.labels(outcome).inc()
        fields = dict(
            entry, outcome=outcome, status=str(status), message=message[:500], cause=cause or ""
        )
        flat: list[str] = []
        for name, text in fields.items():
            flat += [name, str(text)]
        try:
            yield self.store.redis.call(
                "execute_command",
                "XADD",
                keys.CTRL_LOG,
                "MAXLEN",
                "=",
                self.settings.ctrl_log_length,
                "*",
                *flat,
            )
        except Exception:
            self.log.failure("device_ctrl audit entry not written: {entry}", entry=fields)
        # One line per command, with its outcome (the collector does not log it again).
        self.log.info(
            "device_ctrl {request_id} from {client} (token {token_id}): "
            "{device_id}:{term_id}:{item_id} = {value} select={select}: "
            "{outcome} ({status}) {message}",
            **{k: v for k, v in entry.items() if k != "time"},  # "time" is the logger's
            outcome=outcome,
            status=status,
            message=message,
        )

    @app.route("/api/v1/device_ctrl/log", methods=["GET"])
    @inlineCallbacks
    def device_ctrl_log(self, request: Any) -> Any:
        """The device_ctrl audit log, newest first (``?limit=``, ``?since=``, ``?until=``)."""
        self._read(request)
        limit = _int_arg(request, "limit", 100, 1, MAX_SAMPLES)
        since = _time_arg(request, "since")
        until = _time_arg(request, "until")
        entries = yield self.store.read_stream(keys.CTRL_LOG, limit, since, until)
        return _json(request, 200, [_audit_entry(e) for e in entries])


def _client(request: Any) -> str:
    address = request.getClientAddress()
    return str(getattr(address, "host", None) or type(address).__name__)


def _short_json(value: Any) -> str:
    """A value as JSON text of at most 256 characters (audit fields)."""
    try:
        text = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError, RecursionError):
        text = json.dumps(repr(value))
    return text[:256]


def _audit_entry(entry: Any) -> dict[str, Any]:
    entry_id, stored = entry
    fields: dict[str, Any] = dict(stored)
    for name in ("value", "select"):
        try:
            fields[name] = json.loads(fields.get(name, "null"))
        except ValueError:
            pass
    if str(fields.get("status", "")).isdigit():
        fields["status"] = int(fields["status"])
    fields["cause"] = fields.get("cause") or None
    return {"id": entry_id, **fields}


def _forget(waiting: Deferred[Any]) -> None:
    waiting.addErrback(lambda f: f.trap(CancelledError))
    waiting.cancel()


def _detached(work: Deferred[Any]) -> Deferred[Any]:
    """A Deferred following ``work``; cancelling it (client gone) leaves ``work`` running."""
    result: Deferred[Any] = Deferred()

    def forward(outcome: Any) -> None:
        if result.called:
            return
        if isinstance(outcome, Failure):
            result.errback(outcome)
        else:
            result.callback(outcome)

    work.addBoth(forward)
    return result


def _op(kind: str, entity: Any) -> dict[str, Any]:
    if entity.KIND == "device":
        # The protocol's own settings (IEC 104 k/w/timers, Modbus timeouts...) are checked
        # here, at the REST boundary, so a device that cannot run is refused with a 400.
        protocol = get_protocol(entity.protocol)
        if protocol is not None:
            protocol.check(entity)
    op: dict[str, Any] = {
        "op": kind,
        "entity": entity.KIND,
        "id": entity.key,
        "fields": entity.to_fields(),
    }
    if entity.KIND == "term_item":
        op.update(term_id=entity.term_id, item_id=entity.item_id)
    elif entity.KIND == "gateway_point":
        op.update(gateway_id=entity.gateway_id, ioa=str(entity.ioa))
    return op


def batch_put_ops(entity_type: Any, elements: list[Any]) -> list[dict[str, Any]]:
    """The "put" operations of a v2 batch; errors name the element's ``index``."""
    ops, seen = [], set()
    for index, element in enumerate(elements):
        try:
            entity = entity_type.from_json(element)
            op = _op("put", entity)
        except errors.ApiError as e:
            e.index = index
            raise
        if entity.key in seen:
            raise errors.Conflict(
                f"duplicate {entity.KIND} {entity.key} in the batch", field="id", index=index
            )
        seen.add(entity.key)
        ops.append(op)
    return ops


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
    if not _INTEGER.match(values[0].decode("latin-1")):
        raise errors.ValidationError(f"{name} must be an integer", field=name)
    value = int(values[0])
    if not low <= value <= high:
        raise errors.ValidationError(f"{name} must be from {low} to {high}", field=name)
    return value


def _time_arg(request: Any, name: str) -> int | None:
    """Query parameter ``name`` as epoch milliseconds (None when absent)."""
    values = request.args.get(name.encode())
    if not values:
        return None
    return parse_time(values[0].decode("latin-1"), name)


def parse_time(text: str, name: str) -> int:
    """An RFC 3339 time (``2026-12-03T10:00:00Z``, with a zone) as epoch milliseconds.

    Years before 1970 are refused with a 400 naming ``name`` (Redis stream ids start at
    the epoch); a time in the first hours of 1970 that is before the epoch in UTC counts
    from the epoch. A leap second (``:60``) counts as the last millisecond before it.
    """
    match = _RFC3339.match(text)
    if match is None:
        raise errors.ValidationError(
            f"{name} must be an RFC 3339 time with a zone, e.g. 2026-01-31T08:00:00Z",
            field=name,
        )
    if int(match["year"]) < 1970:
        raise errors.ValidationError(f"{name} must be in 1970 or later", field=name)
    second = int(match["second"] or 0)
    try:
        moment = datetime.fromisoformat(
            f"{match['year']}-{match['month']}-{match['day']}T{match['hour']}:"
            f"{match['minute']}:{min(second, 59):02d}"
            + ("+00:00" if match["zone"] in "Zz" else match["zone"])
        )
    except ValueError:
        raise errors.ValidationError(f"{name} is not a valid date and time", field=name) from None
    if second > 60:
        raise errors.ValidationError(f"{name} is not a valid date and time", field=name)
    fraction = float("0" + match["fraction"]) if match["fraction"] else 0.0
    if second == 60:
        fraction = 0.999
    milliseconds = int(moment.timestamp()) * 1000 + int(fraction * 1000)
    return max(milliseconds, 0)


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


from pydatacoll.api import configio as _configio  # noqa: E402,F401
from pydatacoll.api import gateways as _gateways  # noqa: E402,F401
from pydatacoll.api import metrics as _metrics  # noqa: E402,F401
from pydatacoll.api import processing as _processing  # noqa: E402,F401
from pydatacoll.api import stream as _stream  # noqa: E402,F401
from pydatacoll.api import ui as _ui  # noqa: E402,F401
