"""REST routes of configuration export and import: ``/api/v1/config``.

``GET`` exports every device, term, item, term-item and formula as JSON, a zip of CSV
files or an XLSX workbook; ``PUT`` replaces the whole configuration with a file and
``POST`` merges one into it, all or nothing, through the configuration script of the
batch routes (`ConfigStore.apply`). Files are encoded and decoded in the reactor's
thread pool: a 20,000-point workbook takes seconds of CPU the reactor must not wait on.
Registered on the API's route table (`pydatacoll.api.plumbing.routes`) when imported.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, inlineCallbacks, maybeDeferred
from twisted.internet.threads import deferToThreadPool

from pydatacoll import errors
from pydatacoll.api.core import ApiCore
from pydatacoll.api.plumbing import json_response, routes
from pydatacoll.configio.formats import COLLECTIONS, FORMATS, decode, encode, export_bodies
from pydatacoll.configio.plan import make_plan
from pydatacoll.store.config import MAX_RETRIES, RetryChange
from pydatacoll.store.snapshot import read_snapshot

#: The path whose requests may carry up to [api] max_import_body bytes.
CONFIG_PATH = b"/api/v1/config"
_CONTENT_TYPES = {
    b"application/json": "json",
    b"application/zip": "csv",
    b"application/x-zip-compressed": "csv",
    FORMATS["xlsx"][0].encode(): "xlsx",
}


def _in_pool(api: ApiCore, work: Any, *args: Any) -> Deferred[Any]:
    """Run CPU-bound ``work`` in the reactor's thread pool (inline without a reactor)."""
    reactor: Any = api.clock
    if hasattr(reactor, "getThreadPool") and hasattr(reactor, "callFromThread"):
        return deferToThreadPool(reactor, reactor.getThreadPool(), work, *args)
    return maybeDeferred(work, *args)


def _arg(request: Any, name: str) -> str | None:
    values = request.args.get(name.encode())
    if not values:
        return None
    if len(values) > 1:
        raise errors.ValidationError(f"{name} must be given once", field=name)
    try:
        return str(values[0].decode("utf-8"))
    except UnicodeDecodeError:
        raise errors.ValidationError(f"{name} must be UTF-8 text", field=name) from None


def _dry_run(request: Any) -> bool:
    value = _arg(request, "dry_run")  # a boolean query parameter: true or false
    if value is None or value == "false":
        return False
    if value == "true":
        return True
    raise errors.ValidationError("dry_run must be true or false", field="dry_run")


@routes.route("/api/v1/config", methods=["GET"])
@inlineCallbacks
def export_config(self: ApiCore, request: Any) -> Any:
    """The whole configuration as a file (``?format=json|csv|xlsx``, default json)."""
    self.check_read(request)
    fmt = _arg(request, "format")
    if fmt is None:
        fmt = "json"
    if fmt not in FORMATS:
        raise errors.ValidationError("format must be json, csv or xlsx", field="format")
    snapshot = yield read_snapshot(self.store.redis)
    body = yield _in_pool(self, lambda: encode(export_bodies(snapshot.entities), fmt))
    content_type, suffix = FORMATS[fmt]
    request.setResponseCode(200)
    request.setHeader(b"Content-Type", content_type.encode())
    request.setHeader(
        b"Content-Disposition", f'attachment; filename="pydatacoll-config{suffix}"'.encode()
    )
    request.setHeader(b"X-Config-Version", snapshot.version.encode())
    return body


@routes.route("/api/v1/config", methods=["PUT", "POST"])
@inlineCallbacks
def import_config(self: ApiCore, request: Any) -> Any:
    """Replace (PUT) or merge (POST) the configuration from a file, all or nothing.

    The format comes from Content-Type; ``?dry_run=true`` answers the same summary
    (created, changed, deleted, unchanged) and changes nothing.
    """
    self.authorize(request, mutating=True)
    replace = request.method == b"PUT"
    dry_run = _dry_run(request)
    if getattr(request, "body_too_large", False):
        raise errors.PayloadTooLarge(f"the request body is over {request.max_body} bytes")
    content_type = (request.getHeader(b"content-type") or b"").split(b";")[0].strip().lower()
    fmt = _CONTENT_TYPES.get(content_type)
    if fmt is None and content_type.endswith(b"+json"):
        fmt = "json"
    if fmt is None:
        raise errors.UnsupportedMediaType(
            "send the configuration as application/json, application/zip (CSV files) or "
            + FORMATS["xlsx"][0],
            field="Content-Type",
        )
    request.content.seek(0)
    raw = request.content.read()
    limit = 4 * max(self.settings.max_import_body, len(raw))
    imported = yield _in_pool(self, lambda: decode(raw, fmt, max_uncompressed=limit))
    started = self.clock.seconds()
    for _attempt in range(MAX_RETRIES):
        snapshot = yield read_snapshot(self.store.redis)
        plan = yield _in_pool(self, make_plan, imported, snapshot, replace)
        if plan.ops:
            try:
                yield self.store.apply(
                    plan.ops, check_only=dry_run, expect_version=snapshot.version
                )
            except RetryChange:
                continue  # the configuration changed since the snapshot: plan again
            except errors.ApiError as e:
                raise plan.locate(e) from None
        if not dry_run and plan.ops:
            self.log.info(
                "configuration {mode} from a {fmt} file: {n} changes (version {version}) "
                "in {seconds:.2f} s",
                mode="replaced" if replace else "merged",
                fmt=fmt,
                n=len(plan.ops),
                version=plan.summary(False)["version"],
                seconds=self.clock.seconds() - started,
            )
        return json_response(request, 200, plan.summary(dry_run))
    raise errors.Conflict("the configuration kept changing during the import; try again")


def _collections_schema() -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {
            name: {"type": "array", "items": {"$ref": f"#/components/schemas/{entity}"}}
            for entity, name in COLLECTIONS.items()
        },
        "additionalProperties": False,
    }


#: A whole configuration whose references all hold (the entities' own examples are
#: separate bodies: put together they would refer to entities the file does not have).
CONFIG_EXAMPLE: dict[str, Any] = {
    "devices": [
        {"id": "1", "name": "substation 1", "protocol": "iec104", "ip": "127.0.0.1", "port": 2404}
    ],
    "terms": [{"id": "10", "device_id": "1", "name": "meter 1", "address": 1}],
    "items": [
        {"id": "1000", "name": "phase A voltage", "unit": "V"},
        {"id": "1001", "name": "phase A voltage doubled", "unit": "V"},
    ],
    "term_items": [
        {"term_id": "10", "item_id": "1000", "protocol_code": 100, "code_type": 13},
        {"term_id": "10", "item_id": "1001", "protocol_code": 101, "code_type": 13},
    ],
    "formulas": [
        {
            "id": "1",
            "formula": "p1 * 2",
            "device_id": "1",
            "term_id": "10",
            "item_id": "1001",
            "p1": "1:10:1000",
        }
    ],
}

#: Rules over the whole file and the stored configuration (a row naming a device, term,
#: item or point that neither has is refused with 400 naming the field).
CONFIG_RULES = {
    "id": "ids are unique within a collection",
    "device_id": "a term's device, a term-item's device, exist (in the file or stored)",
    "term_id": "a term-item's term exists (in the file or stored)",
    "item_id": "a term-item's item and a formula's result point exist (file or stored); "
    "a term-item's item_id is unique within its term",
    "p1": "a formula's input points exist (in the file or stored)",
}


def openapi_operation(method: str, operation: dict[str, Any]) -> None:
    """The OpenAPI description of ``/api/v1/config`` (called by `pydatacoll.api.openapi`)."""
    responses = operation["responses"]
    files = {
        "application/zip": {
            "schema": {"type": "string", "contentMediaType": "application/zip"},
            "description": "devices.csv, terms.csv, items.csv, term_items.csv, formulas.csv",
        },
        FORMATS["xlsx"][0]: {
            "schema": {"type": "string", "contentMediaType": FORMATS["xlsx"][0]},
            "description": "sheets devices, terms, items, term_items, formulas",
        },
    }
    content = {"application/json": {"schema": _collections_schema()}, **files}
    if method == "GET":
        operation["description"] = (
            "Every device, term, item, term-item and formula as one file; a header row "
            "names the fields of each CSV file and sheet."
        )
        operation["parameters"] = [
            {
                "name": "format",
                "in": "query",
                "required": False,
                "schema": {"enum": list(FORMATS), "default": "json"},
            }
        ]
        responses["200"] = {"description": "the configuration file", "content": content}
        return
    replace = method == "PUT"
    operation["description"] = (
        ("Replace the whole configuration with" if replace else "Merge into the configuration")
        + " a file (the format follows Content-Type), all or nothing, in one atomic script "
        "call. Unchanged entities are left alone."
        + (" Every collection must be present; what the file lacks is deleted." if replace else "")
        + " An invalid row answers 400 (404/409 when the configuration refuses it) with "
        '"sheet" (sheet, CSV file or JSON key), "row" (the header is row 1; in JSON the '
        'first element is row 1) and "field".'
    )
    operation["parameters"] = [
        {
            "name": "dry_run",
            "in": "query",
            "required": False,
            "schema": {"type": "boolean", "default": False},
            "description": "check and answer what would change; change nothing",
        }
    ]
    body = {
        **_collections_schema(),
        "x-cross-field-rules": CONFIG_RULES,
        "examples": [CONFIG_EXAMPLE],
    }
    if replace:  # every collection (an empty one deletes them all)
        body["required"] = list(body["properties"])
    operation["requestBody"] = {
        "required": True,
        "content": {**content, "application/json": {"schema": body}},
    }
    responses.pop("201", None)
    responses["200"] = {
        "description": "what was (dry run: would be) created, changed and deleted",
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "mode": {"enum": ["replace", "merge"]},
                        "dry_run": {"type": "boolean"},
                        "version": {"type": "string", "description": "configuration version"},
                        "created": {"type": "object", "description": "collection -> ids"},
                        "changed": {"type": "object", "description": "collection -> ids"},
                        "deleted": {"type": "object", "description": "collection -> ids"},
                        "unchanged": {"type": "object", "description": "collection -> count"},
                    },
                }
            }
        },
    }
    responses["409"] = {"description": "a row the configuration refuses (formula cycle) or races"}
    responses["413"] = {"description": "over [api] max_import_body, or a zip that expands too far"}
    responses["415"] = {"description": "not JSON, zip or XLSX"}
