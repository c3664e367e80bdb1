"""Routes of the configured entities: devices, terms, items and term-items (v1 CRUD and
v2 batches)."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import inlineCallbacks

from pydatacoll import errors
from pydatacoll.api.core import ApiCore, batch_put_ops, entity_op, term_item_delete
from pydatacoll.api.jsonbody import dumps
from pydatacoll.api.plumbing import batch_elements, json_response, routes
from pydatacoll.model import ENTITIES, TermItem, decode_fields, is_valid_id, normalize_id

_COLLECTION = "<any(devices,terms,items):collection>"


# -- reads ----------------------------------------------------------------------------------
@routes.route(f"/api/v1/{_COLLECTION}", methods=["GET"])
@inlineCallbacks
def list_entities(self: ApiCore, request: Any, collection: str) -> Any:
    """Ids of all devices / terms / items."""
    self.check_read(request)
    ids = yield self.store.list_ids(collection[:-1])
    return json_response(request, 200, ids)


@routes.route(f"/api/v1/{_COLLECTION}/<entity_id>", methods=["GET"])
def get_entity(self: ApiCore, request: Any, collection: str, entity_id: str) -> Any:
    """One device / term / item (from the configuration cache when it is current)."""
    self.check_read(request)
    entity = collection[:-1]
    if not is_valid_id(entity_id):
        raise errors.NotFound(f"{entity}_id not found!", field=f"{entity}_id")
    d = self.config_cache.read(entity, entity_id, entity_body)
    return d.addCallback(_entity_answer, request, entity)


def entity_body(fields: dict[str, str]) -> bytes | None:
    """The JSON body of a stored entity hash; None when it is not stored."""
    return dumps(decode_fields(fields)) if fields else None


def _entity_answer(body: bytes | None, request: Any, entity: str) -> bytes:
    if body is None:
        raise errors.NotFound(f"{entity}_id not found!", field=f"{entity}_id")
    request.setResponseCode(200)
    request.setHeader(b"Content-Type", b"application/json; charset=utf-8")
    return body


@routes.route("/api/v1/devices/<device_id>/terms", methods=["GET"])
@inlineCallbacks
def device_terms(self: ApiCore, request: Any, device_id: str) -> Any:
    """Term ids of a device ([] for a device without terms)."""
    self.check_read(request)
    ids = None
    if is_valid_id(device_id):
        ids = yield self.store.child_ids("device", device_id)
    if ids is None:
        raise errors.NotFound("device_id not found!", field="device_id")
    return json_response(request, 200, ids)


@routes.route("/api/v1/terms/<term_id>/items", methods=["GET"])
@inlineCallbacks
def term_items(self: ApiCore, request: Any, term_id: str) -> Any:
    """Item ids linked to a term."""
    self.check_read(request)
    ids = None
    if is_valid_id(term_id):
        ids = yield self.store.child_ids("term", term_id)
    if ids is None:
        raise errors.NotFound("term_id not found!", field="term_id")
    return json_response(request, 200, ids)


@routes.route("/api/v1/terms/<term_id>/items/<item_id>", methods=["GET"])
@inlineCallbacks
def get_term_item(self: ApiCore, request: Any, term_id: str, item_id: str) -> Any:
    """One term-item (point)."""
    self.check_read(request)
    fields = yield self.term_item_fields(term_id, item_id)
    return json_response(request, 200, decode_fields(fields))


# -- changes --------------------------------------------------------------------------------
@routes.route(f"/api/v1/{_COLLECTION}", methods=["POST"])
@inlineCallbacks
def create_entity(self: ApiCore, request: Any, collection: str) -> Any:
    """Create a device / term / item: 201 with the stored entity, 409 if it exists."""
    body = self.read_body(request)
    entity = ENTITIES[collection[:-1]].from_json(body)
    results = yield self.apply_ops([entity_op("create", entity)], batch=False)
    return json_response(request, 201, results[0])


@routes.route("/api/v1/terms/<term_id>/items", methods=["POST"])
@inlineCallbacks
def create_term_item(self: ApiCore, request: Any, term_id: str) -> Any:
    """Link an item to a term: 201 with the stored term-item."""
    body = self.read_body(request)
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
    yield self.check_points([(None, entity)])
    results = yield self.apply_ops([entity_op("create", entity)], batch=False)
    answer = yield self.limits_warned(results[0])
    return json_response(request, 201, answer)


@routes.route(f"/api/v1/{_COLLECTION}/<entity_id>", methods=["PUT"])
def update_entity(self: ApiCore, request: Any, collection: str, entity_id: str) -> Any:
    """Change a device / term / item (fields merged; null removes one)."""
    body = self.read_body(request)
    entity = collection[:-1]
    return self.update_fields(
        request,
        entity,
        {"id": entity_id},
        body,
        lambda: self.store.get_fields(entity, entity_id),
    )


@routes.route("/api/v1/terms/<term_id>/items/<item_id>", methods=["PUT"])
def update_term_item(self: ApiCore, request: Any, term_id: str, item_id: str) -> Any:
    """Change a term-item (fields merged; null removes one)."""
    body = self.read_body(request)
    return self.update_fields(
        request,
        "term_item",
        {"term_id": term_id, "item_id": item_id},
        body,
        lambda: self.term_item_fields(term_id, item_id),
    )


@routes.route(f"/api/v1/{_COLLECTION}/<entity_id>", methods=["DELETE"])
@inlineCallbacks
def delete_entity(self: ApiCore, request: Any, collection: str, entity_id: str) -> Any:
    """Delete a device / term / item and what hangs on it: 204."""
    self.authorize(request, mutating=True)
    entity = collection[:-1]
    if not is_valid_id(entity_id):
        raise errors.NotFound(f"{entity}_id not found!", field=f"{entity}_id")
    yield self.apply_ops([{"op": "delete", "entity": entity, "id": entity_id}], batch=False)
    request.setResponseCode(204)
    return b""


@routes.route("/api/v1/terms/<term_id>/items/<item_id>", methods=["DELETE"])
@inlineCallbacks
def delete_term_item(self: ApiCore, request: Any, term_id: str, item_id: str) -> Any:
    """Delete a term-item and its data: 204."""
    self.authorize(request, mutating=True)
    yield self.term_item_fields(term_id, item_id)
    yield self.apply_ops([term_item_delete(term_id, item_id)], batch=False)
    request.setResponseCode(204)
    return b""


_BATCH = "<any(devices,terms,items,term_items):collection>"


@routes.route(f"/api/v2/{_BATCH}", methods=["POST"])
@inlineCallbacks
def batch_upsert(self: ApiCore, request: Any, collection: str) -> Any:
    """Create or replace many entities, all or nothing: 200 with the stored entities."""
    elements = batch_elements(self.read_body(request))
    ops = batch_put_ops(ENTITIES[collection[:-1]], elements)
    if collection == "term_items":
        yield self.check_points(
            [(index, TermItem.from_json(element)) for index, element in enumerate(elements)]
        )
    results = yield self.apply_ops(ops, batch=True) if ops else []
    if collection == "term_items":
        results = yield self.limits_warned_all(results)
    return json_response(request, 200, results)


@routes.route(f"/api/v2/{_BATCH}/del", methods=["POST"])
@inlineCallbacks
def batch_delete(self: ApiCore, request: Any, collection: str) -> Any:
    """Delete many entities, all or nothing: 204."""
    body = self.read_body(request)
    elements = batch_elements(body)
    entity = collection[:-1]
    ops, seen = [], set()
    for index, element in enumerate(elements):
        try:
            if entity == "term_item":
                if not isinstance(element, dict):
                    raise errors.ValidationError("each element must be {term_id, item_id}")
                op = term_item_delete(
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
        yield self.apply_ops(ops, batch=True)
    request.setResponseCode(204)
    return b""
