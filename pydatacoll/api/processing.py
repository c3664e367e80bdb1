"""REST routes of the processors: plugins, formulas (v1 CRUD, v2 batch, check), alarms.

The routes are registered on the API's route table (`pydatacoll.api.plumbing.routes`)
when this module is imported, so they share its errors and token checks.
"""

from __future__ import annotations

import json
import time
from typing import Any

from twisted.internet.defer import inlineCallbacks

from pydatacoll import errors
from pydatacoll.api.core import ApiCore, batch_put_ops, entity_op
from pydatacoll.api.plumbing import (
    batch_elements,
    int_arg,
    json_response,
    routes,
    time_arg,
)
from pydatacoll.model import Formula, decode_fields, is_valid_id, normalize_id
from pydatacoll.processing.formulas import check_formula
from pydatacoll.store.config import natural_key

#: Most events one GET /api/v1/alarms/history returns.
MAX_EVENTS = 10000


# -- plugins ---------------------------------------------------------------------------
@routes.route("/api/v1/plugins", methods=["GET"])
@inlineCallbacks
def list_plugins(self: ApiCore, request: Any) -> Any:
    """Every installed plugin (enabled or not): name, description, enabled, state and
    error in this process, counters, and ``collectors`` (how many collectors run it)."""
    self.check_read(request)
    entries = yield self.plugins.list()
    return json_response(request, 200, entries)


# -- formulas --------------------------------------------------------------------------
def _formula_id(formula_id: str) -> str:
    if not is_valid_id(formula_id):
        raise errors.NotFound("formula_id not found!", field="formula_id")
    return formula_id


@routes.route("/api/v1/formulas", methods=["GET"])
@inlineCallbacks
def list_formulas(self: ApiCore, request: Any) -> Any:
    """Ids of all formulas."""
    self.check_read(request)
    ids = yield self.store.list_ids("formula")
    return json_response(request, 200, ids)


@routes.route("/api/v1/formulas/<formula_id>", methods=["GET"])
@inlineCallbacks
def get_formula(self: ApiCore, request: Any, formula_id: str) -> Any:
    """One formula."""
    self.check_read(request)
    fields = yield self.store.get_fields("formula", _formula_id(formula_id))
    if not fields:
        raise errors.NotFound("formula_id not found!", field="formula_id")
    return json_response(request, 200, decode_fields(fields))


@routes.route("/api/v1/formulas/<formula_id>/status", methods=["GET"])
@inlineCallbacks
def get_formula_status(self: ApiCore, request: Any, formula_id: str) -> Any:
    """A formula's state as the formulas plugin last wrote it: ok, waiting or error,
    the last value and quality, the error message; ``disabled`` (and why) when the
    formulas plugin runs in no collector."""
    self.check_read(request)
    formula_id = _formula_id(formula_id)
    if not (yield self.store.entity_exists("formula", formula_id)):
        raise errors.NotFound("formula_id not found!", field="formula_id")
    warning = yield self.plugin_warning("formulas")
    if warning is not None:
        return json_response(
            request, 200, {"id": formula_id, "state": "disabled", "error": warning}
        )
    text = yield self.points.formula_status_text(formula_id)
    if not text:
        return json_response(request, 200, {"id": formula_id, "state": "unknown"})
    return json_response(request, 200, json.loads(text))


@routes.route("/api/v1/formulas", methods=["POST"])
@inlineCallbacks
def create_formula(self: ApiCore, request: Any) -> Any:
    """Create a formula: 201; 409 if it exists or would close a cycle (naming the
    parameter); 404 if a parameter or the result point is not configured."""
    formula = Formula.from_json(self.read_body(request))
    results = yield self.apply_ops([entity_op("create", formula)], batch=False)
    answer = dict(results[0])
    warning = yield self.plugin_warning("formulas")
    if warning is not None:
        answer["warning"] = warning
    return json_response(request, 201, answer)


@routes.route("/api/v1/formulas/<formula_id>", methods=["PUT"])
def update_formula(self: ApiCore, request: Any, formula_id: str) -> Any:
    """Change a formula (fields merged; null removes one, e.g. a parameter)."""
    body = self.read_body(request)
    formula_id = _formula_id(formula_id)
    return self.update_fields(
        request,
        "formula",
        {"id": formula_id},
        body,
        lambda: self.store.get_fields("formula", formula_id),
    )


@routes.route("/api/v1/formulas/<formula_id>", methods=["DELETE"])
@inlineCallbacks
def delete_formula(self: ApiCore, request: Any, formula_id: str) -> Any:
    """Delete a formula: 204."""
    self.authorize(request, mutating=True)
    formula_id = _formula_id(formula_id)
    yield self.apply_ops([{"op": "delete", "entity": "formula", "id": formula_id}], batch=False)
    request.setResponseCode(204)
    return b""


@routes.route("/api/v2/formulas", methods=["POST"])
@inlineCallbacks
def batch_formulas(self: ApiCore, request: Any) -> Any:
    """Create or replace many formulas, all or nothing: 200 with the stored formulas."""
    ops = batch_put_ops(Formula, batch_elements(self.read_body(request)))
    results = yield self.apply_ops(ops, batch=True) if ops else []
    warning = (yield self.plugin_warning("formulas")) if results else None
    if warning is not None:
        results = [{**result, "warning": warning} for result in results]
    return json_response(request, 200, results)


@routes.route("/api/v2/formulas/del", methods=["POST"])
@inlineCallbacks
def batch_delete_formulas(self: ApiCore, request: Any) -> Any:
    """Delete many formulas, all or nothing: 204."""
    elements = batch_elements(self.read_body(request))
    ops, seen = [], set()
    for index, element in enumerate(elements):
        try:
            formula_id = normalize_id(element, "id")
        except errors.ApiError as e:
            e.index = index
            raise
        if formula_id in seen:
            raise errors.Conflict("duplicate id in the batch", field="id", index=index)
        seen.add(formula_id)
        ops.append({"op": "delete", "entity": "formula", "id": formula_id})
    if ops:
        yield self.apply_ops(ops, batch=True)
    request.setResponseCode(204)
    return b""


@routes.route("/api/v1/formula_check", methods=["POST"])
@inlineCallbacks
def formula_check(self: ApiCore, request: Any) -> Any:
    """Evaluate a formula on the stored values without saving it: 200 with
    ``{"ok": true, "value", "quality"}`` or ``{"ok": false, "error", "message", "field"}``."""
    body = self.read_body(request)
    result = yield check_formula(self.store.redis, body, time.time())
    return json_response(request, 200, result)


# -- alarms ----------------------------------------------------------------------------
@routes.route("/api/v1/alarms", methods=["GET"])
@inlineCallbacks
def active_alarms(self: ApiCore, request: Any) -> Any:
    """The active alarms (the raise event of each), by point and kind."""
    self.check_read(request)
    alarms = yield self.events.active_alarms()
    return json_response(request, 200, [alarms[k] for k in sorted(alarms, key=natural_key)])


@routes.route("/api/v1/alarms/history", methods=["GET"])
@inlineCallbacks
def alarm_history(self: ApiCore, request: Any) -> Any:
    """Alarm events (raise and clear), newest first (``?limit=``, ``?since=``, ``?until=``)."""
    self.check_read(request)
    limit = int_arg(request, "limit", 100, 1, MAX_EVENTS)
    since = time_arg(request, "since")
    until = time_arg(request, "until")
    events = yield self.events.alarm_history(limit, since, until)
    return json_response(request, 200, events)
