"""What an import changes: the atomic batch (one Lua script call) and its summary.

Pure: it compares the imported entities with a `ConfigSnapshot` and gives the "put"
operations of what is new or different (unchanged entities are left alone) and, for a
replace, the "delete" operations of what the file no longer has. Puts run first
(devices, terms, items, term-items, formulas) so that a term moved to another device
keeps its points and their data; deletes follow, the dependants first.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import attrs

from pydatacoll import errors
from pydatacoll.configio.formats import COLLECTIONS, ImportedConfig, Row, RowError, invalid
from pydatacoll.store.config import natural_key
from pydatacoll.store.snapshot import ConfigSnapshot


@attrs.frozen
class Plan:
    """The operations of an import and what they do, by collection name."""

    replace: bool
    ops: list[dict[str, Any]]
    #: For each op: the (sheet, row) it came from, or None for a delete.
    places: list[tuple[str, int] | None]
    created: dict[str, list[str]]
    changed: dict[str, list[str]]
    deleted: dict[str, list[str]]
    unchanged: dict[str, int]
    version: str

    def summary(self, dry_run: bool) -> dict[str, Any]:
        """The answer of the import route."""
        after = self.version
        if not dry_run and self.ops:
            after = str(int(self.version or 0) + len(self.ops))
        return {
            "mode": "replace" if self.replace else "merge",
            "dry_run": dry_run,
            "version": after,
            "created": self.created,
            "changed": self.changed,
            "deleted": self.deleted,
            "unchanged": self.unchanged,
        }

    def locate(self, error: errors.ApiError) -> errors.ApiError:
        """The script's error (``index`` = op) as the row of the file that caused it."""
        if error.index is None or not 0 <= error.index < len(self.ops):
            return error
        op = self.ops[error.index]
        place = self.places[error.index]
        error.index = None
        if place is not None:
            return RowError(place[0], place[1], error)
        error.message = f"deleting {op['entity']} {op['id']}: {error.message}"
        error.args = (error.message,)
        return error


def make_plan(imported: ImportedConfig, snapshot: ConfigSnapshot, replace: bool) -> Plan:
    """The batch that makes the configuration what ``imported`` says.

    ``replace``: the file is the whole configuration (every collection must be in it);
    otherwise it is merged (created or replaced entity by entity, nothing deleted).
    Raises `RowError` for a duplicate or a reference to nothing.
    """
    if replace:
        missing = [COLLECTIONS[e] for e in COLLECTIONS if e not in imported.present]
        if missing:
            raise errors.ValidationError(
                "a replace needs every collection (an empty one deletes them all); missing: "
                + ", ".join(missing),
                field=missing[0],
            )
    stored = snapshot.entities
    rows: dict[str, dict[str, Row]] = {}
    for entity in COLLECTIONS:
        rows[entity] = {}
        for row in imported.rows.get(entity, ()):
            key = row.entity.key
            if key in rows[entity]:
                first = rows[entity][key]
                raise invalid(
                    row.sheet,
                    row.row,
                    f"{key} is also in row {first.row}",
                    "item_id" if entity == "term_item" else "id",
                )
            rows[entity][key] = row
    view = _Effective(rows, stored, replace)
    view.check_references()

    from pydatacoll.api.core import entity_op as _op  # the REST boundary's protocol checks

    ops: list[dict[str, Any]] = []
    places: list[tuple[str, int] | None] = []
    created: dict[str, list[str]] = {COLLECTIONS[e]: [] for e in COLLECTIONS}
    changed: dict[str, list[str]] = {COLLECTIONS[e]: [] for e in COLLECTIONS}
    unchanged = {COLLECTIONS[e]: 0 for e in COLLECTIONS}
    for entity in COLLECTIONS:
        for key, row in rows[entity].items():
            try:
                op = _op("put", row.entity)
            except errors.ApiError as e:
                raise RowError(row.sheet, row.row, e) from None
            if entity == "term_item":
                # the script fills it from the term: compare with what will be stored
                term_id = row.entity.term_id  # type: ignore[attr-defined]
                op["fields"]["device_id"] = _text(view.term_device(term_id))
            before = stored[entity].get(key)
            if before is not None and dict(before) == op["fields"]:
                unchanged[COLLECTIONS[entity]] += 1
                continue
            (created if before is None else changed)[COLLECTIONS[entity]].append(key)
            ops.append(op)
            places.append((row.sheet, row.row))
    deleted: dict[str, list[str]] = {COLLECTIONS[e]: [] for e in COLLECTIONS}
    if replace:
        for entity in reversed(COLLECTIONS):
            for key in sorted(set(stored[entity]) - set(rows[entity]), key=_natural):
                op = {"op": "delete", "entity": entity, "id": key}
                if entity == "term_item":
                    op["term_id"], op["item_id"] = key.split(":")
                ops.append(op)
                places.append(None)
                deleted[COLLECTIONS[entity]].append(key)
    for listing in (created, changed):
        for keys in listing.values():
            keys.sort(key=_natural)
    return Plan(
        replace=replace,
        ops=ops,
        places=places,
        created=created,
        changed=changed,
        deleted=deleted,
        unchanged=unchanged,
        version=snapshot.version,
    )


def _natural(key: str) -> list[Any]:
    return [natural_key(part) for part in key.split(":")]


def _text(value: str) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


class _Effective:
    """The configuration as it will be: the file over what is stored (merge) or the file."""

    def __init__(
        self,
        rows: Mapping[str, Mapping[str, Row]],
        stored: Mapping[str, Mapping[str, Mapping[str, str]]],
        replace: bool,
    ) -> None:
        self.rows = rows
        self.stored = {} if replace else stored

    def has(self, entity: str, key: str) -> bool:
        return key in self.rows[entity] or key in self.stored.get(entity, {})

    def term_device(self, term_id: str) -> str:
        row = self.rows["term"].get(term_id)
        if row is not None:
            return str(row.entity.device_id)  # type: ignore[attr-defined]
        return str(json.loads(self.stored["term"][term_id]["device_id"]))

    def point(self, point: tuple[str, str, str]) -> bool:
        device_id, term_id, item_id = point
        return self.has("term_item", f"{term_id}:{item_id}") and (
            self.term_device(term_id) == device_id
        )

    def check_references(self) -> None:
        for row in self.rows["term"].values():
            device_id = row.entity.device_id  # type: ignore[attr-defined]
            if not self.has("device", device_id):
                raise invalid(
                    row.sheet, row.row, f"device {device_id} is not configured", "device_id"
                )
        for row in self.rows["term_item"].values():
            point: Any = row.entity
            if not self.has("term", point.term_id):
                raise invalid(
                    row.sheet, row.row, f"term {point.term_id} is not configured", "term_id"
                )
            if not self.has("item", point.item_id):
                raise invalid(
                    row.sheet, row.row, f"item {point.item_id} is not configured", "item_id"
                )
            device_id = self.term_device(point.term_id)
            if point.device_id is not None and point.device_id != device_id:
                raise invalid(
                    row.sheet,
                    row.row,
                    f"device_id {point.device_id} is not the device of term {point.term_id} "
                    f"({device_id})",
                    "device_id",
                )
        for row in self.rows["formula"].values():
            formula: Any = row.entity
            if not self.point(formula.result):
                raise invalid(
                    row.sheet,
                    row.row,
                    f"the result point {':'.join(formula.result)} is not configured",
                    "item_id",
                )
            for name, point in formula.params.items():
                if not self.point(point):
                    raise invalid(
                        row.sheet,
                        row.row,
                        f"{name}: point {':'.join(point)} is not configured",
                        name,
                    )
