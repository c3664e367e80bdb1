"""REST routes of the northbound gateways and their points (see docs/gateway.rst).

Registered on the API's route table (`pydatacoll.api.plumbing.routes`) when this module
is imported. Gateways and points go through the configuration script like every
other entity: atomic, versioned, announced on their change channels, so a running
gateway takes them at once.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import inlineCallbacks

from pydatacoll import errors
from pydatacoll.api.core import ApiCore, batch_put_ops, entity_op
from pydatacoll.api.plumbing import batch_elements, json_response, routes
from pydatacoll.gateway.model import Gateway, GatewayPoint
from pydatacoll.model import Field, decode_fields, is_valid_id
from pydatacoll.store.gateway import GatewayStore

_IOA = Field("ioa", "integer", "information object address", minimum=1, maximum=16777215)


def _gateway_id(gateway_id: str) -> str:
    if not is_valid_id(gateway_id):
        raise errors.NotFound("gateway_id not found!", field="gateway_id")
    return gateway_id


def _ioa(text: Any) -> int:
    try:
        ioa: int = _IOA.convert(text)
    except errors.ValidationError:
        raise errors.NotFound("gateway point (ioa) not found!", field="ioa") from None
    return ioa


@inlineCallbacks
def _gateway_fields(self: ApiCore, gateway_id: str) -> Any:
    fields = yield self.store.get_fields("gateway", _gateway_id(gateway_id))
    if not fields:
        raise errors.NotFound("gateway_id not found!", field="gateway_id")
    return fields


@inlineCallbacks
def _point_fields(self: ApiCore, gateway_id: str, ioa: int) -> Any:
    yield _gateway_fields(self, gateway_id)
    fields = yield GatewayStore(self.store.redis).point_fields(gateway_id, ioa)
    if not fields:
        raise errors.NotFound("gateway point (ioa) not found!", field="ioa")
    return fields


def _with_gateway(body: Any, gateway_id: str) -> Any:
    if not isinstance(body, dict):
        return body
    body = dict(body)
    given = body.get("gateway_id")
    if given is not None and str(given) != gateway_id:
        raise errors.Conflict("gateway_id mismatch in url and body!", field="gateway_id")
    body["gateway_id"] = gateway_id
    return body


def _point_delete(gateway_id: str, ioa: int) -> dict[str, Any]:
    return {
        "op": "delete",
        "entity": "gateway_point",
        "id": f"{gateway_id}:{ioa}",
        "gateway_id": gateway_id,
        "ioa": str(ioa),
    }


# -- gateways --------------------------------------------------------------------------
@routes.route("/api/v1/gateways", methods=["GET"])
@inlineCallbacks
def list_gateways(self: ApiCore, request: Any) -> Any:
    """Ids of all gateways."""
    self.check_read(request)
    ids = yield self.store.list_ids("gateway")
    return json_response(request, 200, ids)


@routes.route("/api/v1/gateways", methods=["POST"])
@inlineCallbacks
def create_gateway(self: ApiCore, request: Any) -> Any:
    """Create a gateway: 201; it listens at once (in the processes of role all/gateway)."""
    gateway = Gateway.from_json(self.read_body(request))
    results = yield self.apply_ops([entity_op("create", gateway)], batch=False)
    return json_response(request, 201, results[0])


@routes.route("/api/v1/gateways/<gateway_id>", methods=["GET"])
@inlineCallbacks
def get_gateway(self: ApiCore, request: Any, gateway_id: str) -> Any:
    """One gateway."""
    self.check_read(request)
    fields = yield _gateway_fields(self, gateway_id)
    return json_response(request, 200, decode_fields(fields))


@routes.route("/api/v1/gateways/<gateway_id>", methods=["PUT"])
def update_gateway(self: ApiCore, request: Any, gateway_id: str) -> Any:
    """Change a gateway (fields merged; null removes one); it restarts, points stay."""
    body = self.read_body(request)
    gateway_id = _gateway_id(gateway_id)
    return self.update_fields(
        request,
        "gateway",
        {"id": gateway_id},
        body,
        lambda: self.store.get_fields("gateway", gateway_id),
    )


@routes.route("/api/v1/gateways/<gateway_id>", methods=["DELETE"])
@inlineCallbacks
def delete_gateway(self: ApiCore, request: Any, gateway_id: str) -> Any:
    """Delete a gateway and its points: 204; its connections close."""
    self.authorize(request, mutating=True)
    gateway_id = _gateway_id(gateway_id)
    yield self.apply_ops([{"op": "delete", "entity": "gateway", "id": gateway_id}], batch=False)
    request.setResponseCode(204)
    return b""


@routes.route("/api/v1/gateways/<gateway_id>/status", methods=["GET"])
@inlineCallbacks
def gateway_status(self: ApiCore, request: Any, gateway_id: str) -> Any:
    """The gateway's state as the gateway service last wrote it: listening or not (and
    why), each upstream connection with its counters."""
    self.check_read(request)
    yield _gateway_fields(self, gateway_id)
    status = yield GatewayStore(self.store.redis).read_status(gateway_id)
    if status is None:
        status = {"gateway_id": gateway_id, "state": "unknown", "connections": []}
    return json_response(request, 200, status)


# -- points ----------------------------------------------------------------------------
@routes.route("/api/v1/gateways/<gateway_id>/points", methods=["GET"])
@inlineCallbacks
def list_points(self: ApiCore, request: Any, gateway_id: str) -> Any:
    """Every point of a gateway, by IOA."""
    self.check_read(request)
    yield _gateway_fields(self, gateway_id)
    store = GatewayStore(self.store.redis)
    points = []
    for ioa in (yield store.point_ioas(gateway_id)):
        fields = yield store.point_fields(gateway_id, ioa)
        if fields:
            points.append(decode_fields(fields))
    return json_response(request, 200, points)


@routes.route("/api/v1/gateways/<gateway_id>/points", methods=["POST"])
@inlineCallbacks
def create_point(self: ApiCore, request: Any, gateway_id: str) -> Any:
    """Map a point to an IOA: 201; 404 when the gateway or the point does not exist."""
    body = _with_gateway(self.read_body(request), _gateway_id(gateway_id))
    point = GatewayPoint.from_json(body)
    results = yield self.apply_ops([entity_op("create", point)], batch=False)
    return json_response(request, 201, results[0])


@routes.route("/api/v1/gateways/<gateway_id>/points/<ioa>", methods=["GET"])
@inlineCallbacks
def get_point(self: ApiCore, request: Any, gateway_id: str, ioa: str) -> Any:
    """One gateway point."""
    self.check_read(request)
    fields = yield _point_fields(self, gateway_id, _ioa(ioa))
    return json_response(request, 200, decode_fields(fields))


@routes.route("/api/v1/gateways/<gateway_id>/points/<ioa>", methods=["PUT"])
def update_point(self: ApiCore, request: Any, gateway_id: str, ioa: str) -> Any:
    """Change a gateway point (fields merged; null removes one)."""
    body = self.read_body(request)
    gateway_id, number = _gateway_id(gateway_id), _ioa(ioa)
    return self.update_fields(
        request,
        "gateway_point",
        {"gateway_id": gateway_id, "ioa": str(number)},
        body,
        lambda: _point_fields(self, gateway_id, number),
    )


@routes.route("/api/v1/gateways/<gateway_id>/points/<ioa>", methods=["DELETE"])
@inlineCallbacks
def delete_point(self: ApiCore, request: Any, gateway_id: str, ioa: str) -> Any:
    """Remove a point from a gateway: 204."""
    self.authorize(request, mutating=True)
    gateway_id, number = _gateway_id(gateway_id), _ioa(ioa)
    yield _point_fields(self, gateway_id, number)
    yield self.apply_ops([_point_delete(gateway_id, number)], batch=False)
    request.setResponseCode(204)
    return b""


@routes.route("/api/v2/gateways/<gateway_id>/points", methods=["POST"])
@inlineCallbacks
def batch_points(self: ApiCore, request: Any, gateway_id: str) -> Any:
    """Create or replace many points of a gateway, all or nothing: 200 with them."""
    gateway_id = _gateway_id(gateway_id)
    elements = [_with_gateway(e, gateway_id) for e in batch_elements(self.read_body(request))]
    ops = batch_put_ops(GatewayPoint, elements)
    results = yield self.apply_ops(ops, batch=True) if ops else []
    return json_response(request, 200, results)


@routes.route("/api/v2/gateways/<gateway_id>/points/del", methods=["POST"])
@inlineCallbacks
def batch_delete_points(self: ApiCore, request: Any, gateway_id: str) -> Any:
    """Remove many points (a list of IOAs) from a gateway, all or nothing: 204."""
    gateway_id = _gateway_id(gateway_id)
    ops, seen = [], set()
    for index, element in enumerate(batch_elements(self.read_body(request))):
        try:
            ioa = _IOA.convert(element)
        except errors.ApiError as e:
            e.index = index
            raise
        if ioa in seen:
            raise errors.Conflict("duplicate ioa in the batch", field="ioa", index=index)
        seen.add(ioa)
        ops.append(_point_delete(gateway_id, ioa))
    if ops:
        yield self.apply_ops(ops, batch=True)
    request.setResponseCode(204)
    return b""
