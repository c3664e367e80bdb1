"""REST routes of the processors: plugins, formulas (v1 CRUD, v2 batch, check), alarms.

The routes are registered on `pydatacoll.api.app.ApiApp.app` when this module is
imported (the last line of app.py does it), so they share its errors and token checks.
"""

from __future__ import annotations

import json
import time
from typing import Any

from twisted.internet.defer import inlineCallbacks

from pydatacoll import errors
from pydatacoll.api.app import ApiApp, _batch, _int_arg, _json, _op, _time_arg, batch_put_ops
from pydatacoll.model import Formula, decode_fields, is_valid_id, normalize_id
from pydatacoll.processing.formulas import check_formula
from pydatacoll.store import keys
from pydatacoll.store.config import natural_key

app = ApiApp.app
#: Most events one GET /api/v1/alarms/history returns.
MAX_EVENTS = 10000


def _decode_json_values(fields: dict[str, str]) -> list[Any]:
    values = []
    for _name, text in sorted(fields.items(), key=lambda item: natural_key(item[0])):
        try:
            values.append(json.loads(text))
        except ValueError:
            continue
    return values


# -- plugins ---------------------------------------------------------------------------
@app.route("/api/v1/plugins", methods=["GET"])
@inlineCallbacks
def list_plugins(self: ApiApp, request: Any) -> Any:
    """Every installed plugin (enabled or not): name, description, enabled, state and
    error in this process, counters, and ``collectors`` (how many collectors run it)."""
    self._read(request)
    entries = yield self.plugins.list()
    return _json(request, 200, entries)


# -- formulas --------------------------------------------------------------------------
def _formula_id(formula_id: str) -> str:
    if not is_valid_id(formula_id):
        raise errors.NotFound("formula_id not found!", field="formula_id")
    return formula_id


@app.route("/api/v1/formulas", methods=["GET"])
@inlineCallbacks
def list_formulas(self: ApiApp, request: Any) -> Any:
    """Ids of all formulas."""
    self._read(request)
    ids = yield self.store.list_ids("formula")
    return _json(request, 200, ids)


@app.route("/api/v1/formulas/<formula_id>", methods=["GET"])
@inlineCallbacks
def get_formula(self: ApiApp, request: Any, formula_id: str) -> Any:
    """One formula."""
    self._read(request)
    fields = yield self.store.get_fields("formula", _formula_id(formula_id))
    if not fields:
        raise errors.NotFound("formula_id not found!", field="formula_id")
    return _json(request, 200, decode_fields(fields))


@app.route("/api/v1/formulas/<formula_id>/status", methods=["GET"])
@inlineCallbacks
def get_formula_status(self: ApiApp, request: Any, formula_id: str) -> Any:
    """A formula's state as the formulas plugin last wrote it: ok, waiting or error,
    the last value and quality, the error message; ``disabled`` (and why) when the
    formulas plugin runs in no collector."""
    self._read(request)
    formula_id = _formula_id(formula_id)
    if not (yield self.store.exists(keys.FORMULA % formula_id)):
        raise errors.NotFound("formula_id not found!", field="formula_id")
    warning = yield self.plugin_warning("formulas")
    if warning is not None:
        return _json(request, 200, {"id": formula_id, "state": "disabled", "error": warning})
    text = yield self.store.redis.call("hget", keys.FORMULA_STATUS, formula_id)
    if not text:
        return _json(request, 200, {"id": formula_id, "state": "unknown"})
    return _json(request, 200, json.loads(text))


@app.route("/api/v1/formulas", methods=["POST"])
@inlineCallbacks
def create_formula(self: ApiApp, request: Any) -> Any:
    """Create a formula: 201; 409 if it exists or would close a cycle (naming the
    parameter); 404 if a parameter or the result point is not configured."""
    formula = Formula.from_json(self._body(request))
    results = yield self._apply([_op("create", formula)], batch=False)
    answer = dict(results[0])
    warning = yield self.plugin_warning("formulas")
    if warning is not None:
        answer["warning"] = warning
    return _json(request, 201, answer)


@app.route("/api/v1/formulas/<formula_id>", methods=["PUT"])
def update_formula(self: ApiApp, request: Any, formula_id: str) -> Any:
    """Change a formula (fields merged; null removes one, e.g. a parameter)."""
    body = self._body(request)
    formula_id = _formula_id(formula_id)
    return self._update(
        request,
        "formula",
        {"id": formula_id},
        body,
        lambda: self.store.get_fields("formula", formula_id),
    )


@app.route("/api/v1/formulas/<formula_id>", methods=["DELETE"])
@inlineCallbacks
def delete_formula(self: ApiApp, request: Any, formula_id: str) -> Any:
    """Delete a formula: 204."""
    self._authorize(request, mutating=True)
    formula_id = _formula_id(formula_id)
    yield self._apply([{"op": "delete", "entity": "formula", "id": formula_id}], batch=False)
    request.setResponseCode(204)
    return b""


@app.route("/api/v2/formulas", methods=["POST"])
@inlineCallbacks
def batch_formulas(self: ApiApp, request: Any) -> Any:
    """Create or replace many formulas, all or nothing: 200 with the stored formulas."""
    ops = batch_put_ops(Formula, _batch(self._body(request)))
    results = yield self._apply(ops, batch=True) if ops else []
    warning = (yield self.plugin_warning("formulas")) if results else None
    if warning is not None:
        results = [{**result, "warning": warning} for result in results]
    return _json(request, 200, results)


@app.route("/api/v2/formulas/del", methods=["POST"])
@inlineCallbacks
def batch_delete_formulas(self: ApiApp, request: Any) -> Any:
    """Delete many formulas, all or nothing: 204."""
    elements = _batch(self._body(request))
    ops, seen = [], set()
    for index, element in enumerate(elements):
        try:
            formula_id = normalize_id(element, "id")
        except errors.ApiError as e:
            e.index = index
            raise
        if formula_id in seen:
            raise errors.ValidationError("duplicate id in the batch", field="id", index=index)
        seen.add(formula_id)
        ops.append({"op": "delete", "entity": "formula", "id": formula_id})
    if ops:
        yield self._apply(ops, batch=True)
    request.setResponseCode(204)
    return b""


@app.route("/api/v1/formula_check", methods=["POST"])
@inlineCallbacks
def formula_check(self: ApiApp, request: Any) -> Any:
    """Evaluate a formula on the stored values without saving it: 200 with
    ``{"ok": true, "value", "quality"}`` or ``{"ok": false, "error", "message", "field"}``."""
    body = self._body(request)
    result = yield check_formula(self.store.redis, body, time.time())
    return _json(request, 200, result)


# -- alarms ----------------------------------------------------------------------------
@app.route("/api/v1/alarms", methods=["GET"])
@inlineCallbacks
def active_alarms(self: ApiApp, request: Any) -> Any:
    """The active alarms (the raise event of each), by point and kind."""
    self._read(request)
    fields = yield self.store.redis.call("hgetall", keys.ALARMS)
    return _json(request, 200, _decode_json_values(fields))


@app.route("/api/v1/alarms/history", methods=["GET"])
@inlineCallbacks
def alarm_history(self: ApiApp, request: Any) -> Any:
    """Alarm events (raise and clear), newest first (``?limit=``, ``?since=``, ``?until=``)."""
    self._read(request)
    limit = _int_arg(request, "limit", 100, 1, MAX_EVENTS)
    since = _time_arg(request, "since")
    until = _time_arg(request, "until")
    entries = yield self.store.read_stream(keys.ALARM_LOG, limit, since, until)
    events = []
    for entry_id, fields in entries:
        try:
            event = json.loads(fields.get("event", "null"))
        except ValueError:
            continue
        if isinstance(event, dict):
            events.append({"id": entry_id, **event})
    return _json(request, 200, events)
