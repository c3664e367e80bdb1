"""A Python emulation of ``store/config.lua`` for `pydatacoll.testing.memory.MemoryRedis`.

Same checks in the same order, same writes, same change messages and the same reply
text as the Lua script; the contract tests (tests/store, run against MemoryRedis and a
real redis-server) hold the two together.
"""

from __future__ import annotations

import json
import re
from typing import Any

_LABEL = {
    "device": "device",
    "term": "term",
    "item": "item",
    "term_item": "term_item",
    "formula": "formula",
    "gateway": "gateway",
    "gateway_point": "gateway point",
}
_ID_FIELD = {"term_item": "item_id", "gateway_point": "ioa"}
_PARAM = re.compile(r"^p\d+$")


class _Refused(Exception):
    def __init__(self, reply: str) -> None:
        self.reply = reply


class _Retry(Exception):
    pass


def _quote(text: Any) -> str:
    return json.dumps(text, ensure_ascii=False)


def _flat_json(fields: dict[str, str]) -> str:
    if not fields:
        return "null"
    return "{" + ",".join(_quote(name) + ":" + text for name, text in fields.items()) + "}"


def _fail(status: int, code: str, message: str, field: str | None, index: int) -> None:
    named = _quote(field) if field else "null"
    raise _Refused(
        f'{{"error":{status},"code":{_quote(code)},"message":{_quote(message)},'
        f'"field":{named},"index":{index}}}'
    )


def _formula_from_fields(fields: dict[str, str]) -> dict[str, Any]:
    params = {name: json.loads(text) for name, text in fields.items() if _PARAM.match(name)}
    result = ":".join(str(json.loads(fields[n])) for n in ("device_id", "term_id", "item_id"))
    return {"result": result, "params": params}


def _decoded(text: str | None) -> Any:
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return text


class _ConfigScript:
    def __init__(self, store: Any, request: dict[str, Any]) -> None:
        self.store = store
        self.request = request
        self.templates: dict[str, str] = request["k"]
        self.present_overlay: dict[str, bool] = {}
        self.fields_overlay: dict[str, dict[str, str] | None] = {}
        self.formula_overlay: dict[str, Any] = {}
        self.stored_results: dict[str, str] | None = None

    # -- helpers ------------------------------------------------------------------------------
    def key(self, name: str, *args: Any) -> str:
        template = self.templates[name]
        return template % args if args else template

    def entity_key(self, op: dict[str, Any]) -> str:
        if op["entity"] == "term_item":
            return self.key("term_item", op["term_id"], op["item_id"])
        if op["entity"] == "gateway_point":
            return self.key("gateway_point", op["gateway_id"], op["ioa"])
        return self.key(op["entity"], op["id"])

    def exists(self, key: str) -> bool:
        return bool(self.store._exists(key))

    def present(self, key: str) -> bool:
        found = self.present_overlay.get(key)
        return self.exists(key) if found is None else found

    def term_device_text(self, term_id: str) -> Any:
        k = self.key("term", term_id)
        if self.fields_overlay.get(k):
            return self.fields_overlay[k].get("device_id")  # type: ignore[union-attr]
        if self.present_overlay.get(k) is False:
            return False
        return self.store._hget(k, "device_id")

    def hgetall(self, key: str) -> dict[str, str]:
        return dict(self.store._hgetall(key))

    # -- formulas -----------------------------------------------------------------------------
    def formula_def(self, formula_id: str) -> Any:
        if formula_id in self.formula_overlay:
            return self.formula_overlay[formula_id] or None
        fields = self.hgetall(self.key("formula", formula_id))
        return _formula_from_fields(fields) if fields else None

    def formula_users(self, point: str) -> list[str]:
        users = [
            formula_id
            for formula_id in self.store._smembers(self.key("formula_param", point))
            if formula_id not in self.formula_overlay
        ]
        for formula_id, found in self.formula_overlay.items():
            if found and point in found["params"].values():
                users.append(formula_id)
        return sorted(users)

    def point_exists(self, point: str) -> bool:
        device_id, term_id, item_id = point.split(":")
        if not self.present(self.key("term_item", term_id, item_id)):
            return False
        text = self.term_device_text(term_id)
        return bool(text) and text == _quote(device_id)

    def result_writer(self, point: str, formula_id: str) -> str | None:
        if self.stored_results is None:
            self.stored_results = {}
            for other in self.store._smembers(self.key("formulas")):
                fields = self.hgetall(self.key("formula", other))
                parts = [fields.get(n) for n in ("device_id", "term_id", "item_id")]
                if all(parts):
                    self.stored_results[other] = ":".join(str(json.loads(p)) for p in parts)  # type: ignore[arg-type]
        writers = [
            other
            for other, result in self.stored_results.items()
            if other not in self.formula_overlay and other != formula_id and result == point
        ]
        writers += [
            other
            for other, found in self.formula_overlay.items()
            if found and other != formula_id and found["result"] == point
        ]
        return min(writers) if writers else None

    def check_formula(self, op: dict[str, Any], index: int) -> None:
        if op["op"] == "delete":
            self.formula_overlay[op["id"]] = False
            return
        found = _formula_from_fields(op["fields"])
        names = sorted(found["params"])
        for name in names:
            if not self.point_exists(found["params"][name]):
                message = f"parameter not found: {name}={found['params'][name]}"
                _fail(404, "not_found", message, name, index)
        if not self.point_exists(found["result"]):
            _fail(404, "not_found", f"result point {found['result']} not found!", "item_id", index)
        writer = self.result_writer(found["result"], op["id"])
        if writer:
            message = f"result point {found['result']} is already written by formula {writer}"
            _fail(409, "conflict", message, "item_id", index)
        self.formula_overlay[op["id"]] = found
        visited: set[str] = set()
        stack = [(found["result"], op["id"])]
        while stack:
            point, path = stack.pop()
            for user in self.formula_users(point):
                if user == op["id"]:
                    field = next((n for n in names if found["params"][n] == point), "formula")
                    message = f"cycle: formula {path} -> formula {op['id']} ({field} = {point})"
                    _fail(409, "conflict", message, field, index)
                if user not in visited:
                    visited.add(user)
                    user_def = self.formula_def(user)
                    if user_def:
                        stack.append((user_def["result"], f"{path} -> {user}"))

    # -- phase 1 ------------------------------------------------------------------------------
    def check_op(self, op: dict[str, Any], index: int) -> None:
        entity, kind = op["entity"], op["op"]
        k = self.entity_key(op)
        stored = self.present(k)
        if kind == "create" and stored:
            _fail(
                409,
                "conflict",
                f"{_LABEL[entity]} already exists!",
                _ID_FIELD.get(entity, "id"),
                index,
            )
        if kind in ("update", "delete") and not stored:
            if entity == "term_item":
                field, message = "term_item", "term_item not found!"
            elif entity == "gateway_point":
                field, message = "ioa", "gateway point (ioa) not found!"
            else:
                field, message = f"{entity}_id", f"{entity}_id not found!"
            _fail(404, "not_found", message, field, index)
        if kind == "update" and self.hgetall(k) != op["expect"]:
            raise _Retry()
        if entity == "formula":
            self.check_formula(op, index)
            return
        if kind == "delete":
            return
        fields = op["fields"]
        if entity == "term":
            if not self.present(self.key("device", json.loads(fields["device_id"]))):
                _fail(404, "not_found", "device_id not found!", "device_id", index)
        elif entity == "gateway_point":
            if not self.exists(self.key("gateway", op["gateway_id"])):
                _fail(404, "not_found", "gateway_id not found!", "gateway_id", index)
            point = ":".join(
                str(json.loads(fields[n])) for n in ("device_id", "term_id", "item_id")
            )
            if not self.point_exists(point):
                _fail(404, "not_found", f"point {point} not found!", "item_id", index)
        elif entity == "term_item":
            if not self.present(self.key("term", op["term_id"])):
                _fail(404, "not_found", "term_id not found!", "term_id", index)
            if not self.present(self.key("item", op["item_id"])):
                _fail(404, "not_found", "item_id not found!", "item_id", index)
            device_text = self.term_device_text(op["term_id"])
            if fields.get("device_id") and fields["device_id"] != device_text:
                message = "device_id does not match the term's device"
                _fail(409, "conflict", message, "device_id", index)

    def check(self, op: dict[str, Any], index: int) -> None:
        self.check_op(op, index)
        k = self.entity_key(op)
        if op["op"] == "delete":
            self.present_overlay[k], self.fields_overlay[k] = False, None
        else:
            self.present_overlay[k], self.fields_overlay[k] = True, op["fields"]

    # -- phase 2 ------------------------------------------------------------------------------
    def remove_point(self, device_id: Any, term_id: str, item_id: str) -> None:
        s = self.store
        s._delete(self.key("term_item", term_id, item_id))
        s._srem(self.key("term_items", term_id), item_id)
        s._srem(self.key("item_terms", item_id), term_id)
        s._delete(self.key("point_data", device_id, term_id, item_id))
        s._hdel(self.key("device_values", device_id), f"{term_id}:{item_id}")
        self.cascade_points.append(
            "{"
            + f'"device_id":{_quote(device_id)},"term_id":{_quote(term_id)},'
            + f'"item_id":{_quote(item_id)}'
            + "}"
        )

    def remove_term(self, term_id: str) -> None:
        s = self.store
        device_id = _decoded(s._hget(self.key("term", term_id), "device_id"))
        for item_id in sorted(s._smembers(self.key("term_items", term_id))):
            self.remove_point(device_id, term_id, item_id)
        s._delete([self.key("term", term_id), self.key("term_items", term_id)])
        s._srem(self.key("terms"), term_id)
        s._srem(self.key("device_terms", device_id), term_id)
        self.cascade_terms.append(_quote(term_id))

    def write_hash(self, key: str, fields: dict[str, str]) -> None:
        self.store._delete(key)
        if fields:
            self.store._hmset(key, fields)

    def move_term(self, term_id: str, old_device: Any, new_device: Any) -> None:
        s = self.store
        s._srem(self.key("device_terms", old_device), term_id)
        s._sadd(self.key("device_terms", new_device), term_id)
        old_values = self.key("device_values", old_device)
        new_values = self.key("device_values", new_device)
        for item_id in sorted(s._smembers(self.key("term_items", term_id))):
            s._hset(self.key("term_item", term_id, item_id), "device_id", _quote(new_device))
            old_data = self.key("point_data", old_device, term_id, item_id)
            if self.exists(old_data):
                s._rename(old_data, self.key("point_data", new_device, term_id, item_id))
            field = f"{term_id}:{item_id}"
            value = s._hget(old_values, field)
            if value is not None:
                s._hset(new_values, field, value)
                s._hdel(old_values, field)

    def apply(self, op: dict[str, Any]) -> str:
        s = self.store
        entity = op["entity"]
        k = self.entity_key(op)
        old = self.hgetall(k)
        self.cascade_terms: list[str] = []
        self.cascade_points: list[str] = []
        if entity == "formula":
            if old:
                for point in _formula_from_fields(old)["params"].values():
                    s._srem(self.key("formula_param", point), op["id"])
            if op["op"] == "delete":
                kind = "del"
                s._delete(k)
                s._srem(self.key("formulas"), op["id"])
                s._hdel(self.key("formula_status"), op["id"])
            else:
                kind = "fresh" if old else "add"
                self.write_hash(k, op["fields"])
                s._sadd(self.key("formulas"), op["id"])
                for point in _formula_from_fields(op["fields"])["params"].values():
                    s._sadd(self.key("formula_param", point), op["id"])
        elif op["op"] == "delete":
            kind = "del"
            if entity == "device":
                for term_id in sorted(s._smembers(self.key("device_terms", op["id"]))):
                    self.remove_term(term_id)
                s._delete(
                    [
                        k,
                        self.key("device_terms", op["id"]),
                        self.key("device_values", op["id"]),
                        self.key("device_status", op["id"]),
                        self.key("frame_log", op["id"]),
                    ]
                )
                s._srem(self.key("devices"), op["id"])
            elif entity == "term":
                self.remove_term(op["id"])
            elif entity == "gateway":
                for ioa in sorted(s._smembers(self.key("gateway_points", op["id"]))):
                    s._delete(self.key("gateway_point", op["id"], ioa))
                s._delete([k, self.key("gateway_points", op["id"])])
                s._srem(self.key("gateways"), op["id"])
            elif entity == "gateway_point":
                s._delete(k)
                s._srem(self.key("gateway_points", op["gateway_id"]), op["ioa"])
            elif entity == "item":
                for term_id in sorted(s._smembers(self.key("item_terms", op["id"]))):
                    device_id = _decoded(s._hget(self.key("term", term_id), "device_id"))
                    self.remove_point(device_id, term_id, op["id"])
                s._delete([k, self.key("item_terms", op["id"])])
                s._srem(self.key("items"), op["id"])
            else:
                device_id = _decoded(s._hget(self.key("term", op["term_id"]), "device_id"))
                self.remove_point(device_id, op["term_id"], op["item_id"])
        else:
            kind = "fresh" if old else "add"
            fields = dict(op["fields"])
            if entity == "term":
                new_device = json.loads(fields["device_id"])
                old_device = _decoded(old.get("device_id"))
                if old_device is not None and old_device != new_device:
                    self.move_term(op["id"], old_device, new_device)
                else:
                    s._sadd(self.key("device_terms", new_device), op["id"])
                s._sadd(self.key("terms"), op["id"])
            elif entity == "term_item":
                device_text = s._hget(self.key("term", op["term_id"]), "device_id")
                if device_text is None:
                    fields.pop("device_id", None)
                else:
                    fields["device_id"] = device_text
                s._sadd(self.key("term_items", op["term_id"]), op["item_id"])
                s._sadd(self.key("item_terms", op["item_id"]), op["term_id"])
            elif entity == "gateway_point":
                s._sadd(self.key("gateway_points", op["gateway_id"]), op["ioa"])
            else:
                s._sadd(self.key(entity + "s"), op["id"])
            self.write_hash(k, fields)
        data = _flat_json(self.hgetall(k))
        version = s._incr(self.key("config_version"))
        history = f"{self.origin}:{self.stamp}"
        s._set(self.key("config_history"), history)
        message = (
            "{"
            + f'"entity":{_quote(entity)},"op":{_quote(kind)},"id":{_quote(op["id"])},'
            + f'"data":{data},"old":{_flat_json(old)}'
        )
        if kind == "del":
            message += (
                f',"cascade":{{"terms":[{",".join(self.cascade_terms)}],'
                f'"term_items":[{",".join(self.cascade_points)}]}}'
            )
        message += f',"version":{version},"history":{_quote(history)}}}'
        s._publish(self.request["c"][entity][kind], message)
        return data

    def run(self) -> str:
        ops = self.request["ops"]
        try:
            expected = self.request.get("version")
            if (
                expected is not None
                and (self.store._get(self.key("config_version")) or "") != expected
            ):
                raise _Retry()
            for index, op in enumerate(ops):
                self.check(op, index)
        except _Refused as refused:
            return refused.reply
        except _Retry:
            return '{"retry":true}'
        if self.request.get("check_only"):
            return '{"ok":true,"results":[]}'
        current = self.store._get(self.key("config_version"))
        if current is not None and (not re.fullmatch(r"-?\d+", current) or len(current) > 18):
            raise RuntimeError(f"ERR STR:CONFIG_VERSION cannot be incremented: {current}")
        self.stamp = _stamp(self.store)
        history = self.store._get(self.key("config_history")) or ""
        self.origin = history.partition(":")[0] if ":" in history else self.stamp
        results = [self.apply(op) for op in ops]
        return '{"ok":true,"results":[' + ",".join(results) + "]}"


def _stamp(store: Any) -> str:
    """config.lua's TIME as "seconds.microseconds", later than the store's last stamp
    (a MemoryRedis clock may stand still; Redis's TIME does not repeat)."""
    now = max(int(store._seconds() * 1_000_000), getattr(store, "_config_stamp", 0) + 1)
    store._config_stamp = now
    return f"{now // 1_000_000}.{now % 1_000_000:06d}"


def config_script(store: Any, keys: Any, args: list[str]) -> str:
    """store/config.lua: check every operation, then apply them all (or none)."""
    return _ConfigScript(store, json.loads(args[0])).run()


def config_dump_script(store: Any, keys: Any, args: list[str]) -> str:
    """store/config_dump.lua: the whole configuration in one read."""
    templates = json.loads(args[0])["k"]

    def key(name: str, *ids: Any) -> str:
        return templates[name] % ids if ids else templates[name]

    def collection(set_name: str, hash_name: str) -> dict[str, Any]:
        found = {}
        for entity_id in sorted(store._smembers(key(set_name))):
            fields = store._hgetall(key(hash_name, entity_id))
            if fields:
                found[entity_id] = dict(fields)
        return found

    points = {}
    for term_id in sorted(store._smembers(key("terms"))):
        for item_id in sorted(store._smembers(key("term_items", term_id))):
            fields = store._hgetall(key("term_item", term_id, item_id))
            if fields:
                points[f"{term_id}:{item_id}"] = dict(fields)
    return json.dumps(
        {
            "version": store._get(key("config_version")) or "",
            "device": collection("devices", "device"),
            "term": collection("terms", "term"),
            "item": collection("items", "item"),
            "term_item": points,
            "formula": collection("formulas", "formula"),
        },
        ensure_ascii=False,
    )
