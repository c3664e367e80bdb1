"""The state every route shares (stores, settings, clock) and the checks they share:
the token, JSON errors, entity look-ups, and atomic changes with their retries."""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.logger import Logger
from twisted.web.server import Site
from werkzeug.exceptions import HTTPException
from werkzeug.exceptions import MethodNotAllowed as WerkzeugMethodNotAllowed

from pydatacoll import errors
from pydatacoll.api.jsonbody import read_json
from pydatacoll.api.plumbing import (
    ApiResource,
    LimitedRequest,
    WallClock,
    error_response,
    json_response,
    routes,
)
from pydatacoll.config import Settings
from pydatacoll.control.commander import Commander, find_term_item
from pydatacoll.control.priority import CommandPriority
from pydatacoll.model import (
    ENTITIES,
    Device,
    Term,
    TermItem,
    decode_fields,
    is_valid_id,
    normalize_id,
)
from pydatacoll.processing.limits import LIMIT_FIELDS
from pydatacoll.processing.loader import PluginDirectory
from pydatacoll.protocols import get_protocol
from pydatacoll.store.config import MAX_RETRIES, RetryChange
from pydatacoll.store.config_cache import ConfigCache
from pydatacoll.store.events import EventStore
from pydatacoll.store.points import PointStore
from pydatacoll.store_interfaces import ICommandStore, IConfigStore, IEventStore, IPointStore


class ApiCore:
    """The REST API's state and shared checks; `pydatacoll.api.app.ApiApp` adds the routes.

    ``store`` holds the configuration; ``points`` and ``events`` (built on the same Redis
    client when not given) the values, statuses, channels, audit log and alarms;
    ``replies`` receives the collector's answers to device_call/device_ctrl (without it
    those routes answer 503); ``commands`` (an `ICommandStore`, default on the same
    client) sends their requests and takes the audit entries; ``priority`` (a
    `CommandPriority`) holds this process's data back while one is in flight;
    ``clock`` gives the times of requests and audit entries;
    ``history`` (an `IHistoryReader`) serves ranges older than Redis holds;
    ``config_cache`` (a started `ConfigCache`) serves entity reads from memory when that
    is provably current (without it every read is one HGETALL).
    """

    app = routes
    log = Logger()

    def __init__(
        self,
        store: IConfigStore,
        settings: Settings,
        *,
        replies: Any = None,
        clock: Any = None,
        history: Any = None,
        plugins: Any = None,
        stream_hub: Any = None,
        metrics: Any = None,
        points: IPointStore | None = None,
        events: IEventStore | None = None,
        config_cache: ConfigCache[Any] | None = None,
        commands: ICommandStore | None = None,
        priority: CommandPriority | None = None,
    ) -> None:
        self.store = store
        self.config_cache: ConfigCache[Any] = (
            config_cache if config_cache is not None else ConfigCache(store.redis)
        )
        self.points: IPointStore = points if points is not None else PointStore(store.redis)
        self.events: IEventStore = events if events is not None else EventStore(store.redis)
        self.settings = settings
        self.replies = replies
        self.history = history
        #: The process's event stream (`pydatacoll.api.stream.StreamHub`) and metrics
        #: (`pydatacoll.metrics.ProcessMetrics`); without them those routes answer 503.
        self.stream_hub = stream_hub
        self.metrics = metrics
        self.clock = clock or (replies.clock if replies is not None else WallClock())
        #: device_call / device_ctrl and their audit (the one command path).
        self.commander = Commander(
            store,
            self.points,
            self.events,
            replies,
            settings,
            self.clock,
            metrics,
            commands,
            priority,
        )
        if plugins is None:
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
        site = Site(ApiResource(self.app), requestFactory=_Request)
        if not self.settings.access_log:
            site.log = lambda request: None  # type: ignore[method-assign]
        site.displayTracebacks = False
        if self.metrics is not None:
            self.metrics.time_requests(site, self.app)
        return site

    # -- errors and the token ---------------------------------------------------------------
    @routes.handle_errors(Exception)
    def handle_error(self, request: Any, failure: Any) -> bytes:
        """Every error becomes ``{"error", "message", "field"}`` JSON."""
        error = failure.value
        if isinstance(error, errors.ApiError):
            if isinstance(error, errors.Unauthorized):
                request.setHeader(b"WWW-Authenticate", b'Bearer realm="pydatacoll"')
            retry_after = getattr(error, "retry_after", None)
            if retry_after is not None:
                request.setHeader(b"Retry-After", str(retry_after).encode())
            return error_response(request, error.status, error)
        if isinstance(error, HTTPException):
            code = error.code or 500
            name = {404: "not_found", 405: "method_not_allowed"}.get(code, "http_error")
            message = error.description or ""
            if isinstance(error, WerkzeugMethodNotAllowed):
                allowed = sorted(error.valid_methods or ())
                request.setHeader(b"Allow", ", ".join(allowed).encode())
                message = f"this URL answers {', '.join(allowed)}"
            return error_response(request, code, errors.error_body(name, message, None))
        self.log.failure(
            "unexpected error in {method} {uri}", failure, method=request.method, uri=request.uri
        )
        return error_response(request, 500, errors.error_body("internal", "internal error"))

    def authorize(self, request: Any, mutating: bool) -> None:
        """Refuse (401) a request without the token it needs (writes always; reads when
        ``[api] protect_reads``)."""
        token = self.settings.api_token
        if token is None or (not mutating and not self.settings.protect_reads):
            return
        header = request.getHeader(b"authorization") or b""
        scheme, _, given = header.partition(b" ")
        if scheme.lower() != b"bearer" or not hmac.compare_digest(given.strip(), token.encode()):
            raise errors.Unauthorized("a valid Authorization: Bearer token is required")

    def read_body(self, request: Any) -> Any:
        """The JSON body of a write, once the token is checked."""
        self.authorize(request, mutating=True)
        return read_json(request)

    def check_read(self, request: Any) -> None:
        """Check the token of a read."""
        self.authorize(request, mutating=False)

    # -- look-ups ---------------------------------------------------------------------------
    def term_item_fields(
        self, term_id: str, item_id: str, device_id: str | None = None
    ) -> Deferred[Any]:
        """The stored hash of a term-item (of ``device_id`` when given), or a 404 naming
        the first id that is not found."""
        return find_term_item(self.store, term_id, item_id, device_id)

    @inlineCallbacks
    def device_fields(self, device_id: str) -> Any:
        """The stored hash of a device, or a 404."""
        fields = (
            {} if not is_valid_id(device_id) else (yield self.store.get_fields("device", device_id))
        )
        if not fields:
            raise errors.NotFound("device_id not found!", field="device_id")
        return fields

    @inlineCallbacks
    def plugin_warning(self, name: str) -> Any:
        """Why a feature of plugin ``name`` will do nothing, or None when a collector runs
        it (or Redis cannot tell)."""
        try:
            runs = yield self.plugins.runs_somewhere(name)
        except errors.StoreUnavailable:
            return None
        return None if runs else self.plugins.not_running_reason(name)

    # -- changes ----------------------------------------------------------------------------
    @inlineCallbacks
    def check_points(self, points: list[tuple[int | None, TermItem]]) -> Any:
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

    def limits_warned(self, stored: dict[str, Any]) -> Any:
        """A stored term-item, with a ``warning`` when it sets limits nothing checks."""
        return self.limits_warned_all([stored]).addCallback(lambda items: items[0])

    @inlineCallbacks
    def limits_warned_all(self, stored: list[dict[str, Any]]) -> Any:
        """Stored term-items; those setting limits get a ``warning`` when nothing checks
        them (one look-up for the whole list)."""

        def has_limits(item: dict[str, Any]) -> bool:
            return any(item.get(name) is not None for name in LIMIT_FIELDS)

        if not any(has_limits(item) for item in stored):
            return stored
        warning = yield self.plugin_warning("limits")
        if warning is None:
            return stored
        return [{**item, "warning": warning} if has_limits(item) else item for item in stored]

    @inlineCallbacks
    def apply_ops(self, ops: list[dict[str, Any]], batch: bool) -> Any:
        """Run configuration operations; a single change's error names no ``index``."""
        try:
            results = yield self.store.apply(ops)
        except errors.ApiError as e:
            if not batch:
                e.index = None
            raise
        return results

    @inlineCallbacks
    def update_fields(
        self, request: Any, entity: str, ids: dict[str, str], body: Any, read: Any
    ) -> Any:
        """PUT: merge ``body`` into the stored entity (``read()`` fires with its hash) and
        store it, read again and retried when it raced another change."""
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
                yield self.check_points([(None, new)])
            op = entity_op("update", new)
            op["expect"] = fields
            try:
                results = yield self.apply_ops([op], batch=False)
            except RetryChange:
                continue
            answer = results[0]
            if entity == "term_item":
                answer = yield self.limits_warned(answer)
            return json_response(request, 200, answer)
        raise errors.Conflict("the entity kept changing; try again")


def entity_op(kind: str, entity: Any) -> dict[str, Any]:
    """The configuration operation ``kind`` (create, put, update) writing ``entity``."""
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
            op = entity_op("put", entity)
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


def term_item_delete(term_id: str, item_id: str) -> dict[str, Any]:
    """The configuration operation deleting a term-item."""
    return {
        "op": "delete",
        "entity": "term_item",
        "id": f"{term_id}:{item_id}",
        "term_id": term_id,
        "item_id": item_id,
    }
