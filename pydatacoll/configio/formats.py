"""The configuration as a file: JSON, a zip of CSV files, or an XLSX workbook.

Pure functions (no I/O, no reactor): `encode` turns the stored entities into a file,
`decode` turns a file into validated entities, each with the sheet (or file) and row it
came from, so that an invalid row is refused with its place.

Cells hold values so that a round trip is lossless (see docs/operations.rst):

* declared fields are written as their spreadsheet users expect: ids, names and hosts
  as text, numbers as numbers;
* text that a spreadsheet would misread (empty, starting with ``"``, ``=``, ``+``,
  ``-``, ``@`` or a tab, or holding a carriage return or control characters) is written
  as a JSON string (``"=A1"`` is the text ``=A1``);
* free attributes are written as JSON (``true``, ``[1,2]``, ``"12"``), except text
  that is not JSON anyway, which is written bare (``1:10:1000``).
"""

from __future__ import annotations

import csv
import datetime
import io
import json
import re
import zipfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import attrs

from pydatacoll import errors
from pydatacoll.model import ENTITIES, Entity
from pydatacoll.store.config import natural_key

#: Entity -> its collection name (JSON key, CSV file stem, XLSX sheet), in the order
#: the entities depend on each other.
COLLECTIONS = {
    "device": "devices",
    "term": "terms",
    "item": "items",
    "term_item": "term_items",
    "formula": "formulas",
}
XLSX_TYPE = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
#: Format -> (Content-Type, file suffix).
FORMATS = {
    "json": ("application/json", ".json"),
    "csv": ("application/zip", ".zip"),
    "xlsx": (XLSX_TYPE, ".xlsx"),
}
_RISKY_START = ('"', "=", "+", "-", "@", "\t", "\r")
#: Characters XML does not hold, and CR, which XML turns into LF.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f]")


class RowError(errors.ApiError):
    """An invalid row of an imported file: the error names its sheet (or file) and row.

    It keeps the status and code of the error found in the row (400 for a bad value,
    404/409 when the configuration refuses it).
    """

    def __init__(self, sheet: str, row: int | None, error: errors.ApiError) -> None:
        where = f"{sheet} row {row}" if row is not None else sheet
        super().__init__(f"{where}: {error.message}", field=error.field)
        self.status = error.status
        self.code = error.code
        self.sheet = sheet
        self.row = row

    def to_json(self) -> dict[str, object]:
        """The error body with ``sheet`` and ``row`` (the header is row 1)."""
        body = super().to_json()
        body["sheet"] = self.sheet
        body["row"] = self.row
        return body


def invalid(sheet: str, row: int | None, message: str, field: str | None = None) -> RowError:
    """A 400 `RowError`."""
    return RowError(sheet, row, errors.ValidationError(message, field=field))


@attrs.frozen
class Row:
    """One validated entity of an imported file and where it was."""

    entity: Entity
    sheet: str
    row: int


@attrs.frozen
class ImportedConfig:
    """The entities of an imported file, by entity type, and which collections it had."""

    rows: Mapping[str, Sequence[Row]]
    present: frozenset[str]


# -- export -------------------------------------------------------------------------


def export_bodies(
    stored: Mapping[str, Mapping[str, Mapping[str, str]]],
) -> dict[str, list[dict[str, Any]]]:
    """The stored hashes (entity -> key -> field -> JSON text) as JSON objects, sorted."""
    bodies: dict[str, list[dict[str, Any]]] = {}
    for entity in COLLECTIONS:
        hashes = stored.get(entity, {})
        ordered = sorted(hashes, key=lambda key: [natural_key(p) for p in key.split(":")])
        bodies[entity] = [_decoded(entity, hashes[key]) for key in ordered]
    return bodies


def _decoded(entity: str, fields: Mapping[str, str]) -> dict[str, Any]:
    """A hash as a JSON object, fields in a fixed order (declared, then sorted)."""
    body: dict[str, Any] = {}
    for name in columns(entity, [fields]):
        text = fields.get(name)
        if text is None:
            continue
        try:
            body[name] = json.loads(text)
        except ValueError:
            body[name] = text
    return body


def encode(bodies: Mapping[str, Sequence[Mapping[str, Any]]], fmt: str) -> bytes:
    """The configuration as a file of format ``fmt`` (json, csv, xlsx)."""
    if fmt == "json":
        document = {COLLECTIONS[e]: list(bodies.get(e, ())) for e in COLLECTIONS}
        return json.dumps(document, ensure_ascii=False, indent=1).encode("utf-8")
    if fmt == "csv":
        return _encode_csv(bodies)
    if fmt == "xlsx":
        return _encode_xlsx(bodies)
    raise ValueError(f"unknown format {fmt}")


def columns(entity: str, bodies: Iterable[Mapping[str, Any]]) -> list[str]:
    """The header of a sheet: the declared fields, then the free attributes (sorted)."""
    declared = [f.name for f in ENTITIES[entity].FIELDS]
    extra = {name for body in bodies for name in body if name not in declared}
    return declared + sorted(extra, key=natural_key)


def _kind(entity: str, name: str) -> str | None:
    field = ENTITIES[entity].field(name)
    return None if field is None else field.kind


def cell_text(kind: str | None, value: Any) -> str:
    """A value as the text of a CSV cell ("" for none)."""
    if value is None:
        return ""
    if isinstance(value, str):
        if kind in ("id", "host"):
            return value  # cannot start with a quote, a formula sign or hold controls
        if kind is None:
            return value if not _needs_json(value) and not _is_json(value) else _json(value)
        return _json(value) if _needs_json(value) else value
    if kind == "scalar" and isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return _json(value)


def _needs_json(text: str) -> bool:
    return text == "" or text.startswith(_RISKY_START) or bool(_CONTROL.search(text))


def _is_json(text: str) -> bool:
    try:
        _loads(text)
    except ValueError:
        return False
    return True


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _loads(text: str) -> Any:
    return json.loads(text, parse_constant=_reject_constant)


#: The time stamp of every member of a CSV export (zip's earliest).
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)


def _encode_csv(bodies: Mapping[str, Sequence[Mapping[str, Any]]]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for entity, name in COLLECTIONS.items():
            rows = bodies.get(entity, ())
            header = columns(entity, rows)
            kinds = [_kind(entity, column) for column in header]
            text = io.StringIO(newline="")
            writer = csv.writer(text, lineterminator="\r\n")
            writer.writerow(header)
            for body in rows:
                writer.writerow(
                    [cell_text(k, body.get(c)) for c, k in zip(header, kinds, strict=True)]
                )
            # A fixed time stamp: the same configuration exports to the same bytes.
            member = zipfile.ZipInfo(f"{name}.csv", date_time=_ZIP_TIME)
            member.compress_type = zipfile.ZIP_DEFLATED
            member.external_attr = 0o644 << 16
            archive.writestr(member, text.getvalue().encode("utf-8"))
    return buffer.getvalue()


def _native_number(value: Any) -> bool:
    """Whether an XLSX numeric cell gives ``value`` back exactly, type included.

    openpyxl writes numbers as ``%.16g`` and reads text without ``.``/``e`` as int.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    text = f"{value:.16g}"
    back: int | float = float(text) if any(c in text for c in ".eE") else int(text)
    return type(back) is type(value) and back == value and str(back) == str(value)


def xlsx_cell(kind: str | None, value: Any) -> Any:
    """A value as an XLSX cell: numbers (and booleans of free attributes) stay native."""
    if value is None:
        return None
    if _native_number(value):
        return value
    if isinstance(value, bool) and kind is None:
        return value
    return cell_text(kind, value)


def _encode_xlsx(bodies: Mapping[str, Sequence[Mapping[str, Any]]]) -> bytes:
    from openpyxl import Workbook

    workbook = Workbook(write_only=True)
    for entity, name in COLLECTIONS.items():
        sheet = workbook.create_sheet(name)
        rows = bodies.get(entity, ())
        header = columns(entity, rows)
        kinds = [_kind(entity, column) for column in header]
        sheet.append(header)
        for body in rows:
            sheet.append([xlsx_cell(k, body.get(c)) for c, k in zip(header, kinds, strict=True)])
    buffer = io.BytesIO()
    workbook.save(buffer)
    return buffer.getvalue()


# -- import -------------------------------------------------------------------------


def decode(raw: bytes, fmt: str, *, max_uncompressed: int) -> ImportedConfig:
    """Validated entities of a file; `RowError` names the sheet, row and field of the
    first invalid value, `errors.ValidationError` a file that cannot be read at all.

    ``max_uncompressed`` bounds what a zip (CSV or XLSX) may expand to.
    """
    if fmt == "json":
        tables = _json_tables(raw)
    elif fmt == "csv":
        tables = _csv_tables(_archive(raw, max_uncompressed))
    elif fmt == "xlsx":
        _archive(raw, max_uncompressed)  # refuses a zip bomb before openpyxl opens it
        tables = _xlsx_tables(raw)
    else:
        raise ValueError(f"unknown format {fmt}")
    rows: dict[str, list[Row]] = {entity: [] for entity in COLLECTIONS}
    present = set()
    for entity, sheet, records in tables:
        present.add(entity)
        entity_type = ENTITIES[entity]
        for row, body in records:
            try:
                rows[entity].append(Row(entity_type.from_json(body), sheet, row))
            except errors.ApiError as e:
                raise RowError(sheet, row, e) from None
    return ImportedConfig(rows, frozenset(present))


_Table = tuple[str, str, Iterable[tuple[int, dict[str, Any]]]]


def _entity_of(name: str, sheet: str, what: str) -> str:
    for entity, collection in COLLECTIONS.items():
        if collection == name:
            return entity
    raise invalid(sheet, None, f"unknown {what}; expected " + ", ".join(COLLECTIONS.values()))


def _json_tables(raw: bytes) -> list[_Table]:
    try:
        document = _loads(raw.decode("utf-8-sig"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise errors.ValidationError(f"the body is not valid UTF-8 JSON ({e})"[:300]) from None
    if not isinstance(document, dict):
        raise errors.ValidationError(
            "the configuration must be a JSON object of " + ", ".join(COLLECTIONS.values())
        )
    tables: list[_Table] = []
    for name, elements in document.items():
        entity = _entity_of(str(name), str(name), "key")
        if not isinstance(elements, list):
            raise errors.ValidationError(f"{name} must be a list", field=str(name))
        records = []
        for index, element in enumerate(elements):
            if not isinstance(element, dict):
                raise invalid(name, index + 1, f"a {entity} must be a JSON object")
            records.append((index + 1, element))
        tables.append((entity, name, records))
    return _in_order(tables)


def _in_order(tables: list[_Table]) -> list[_Table]:
    order = list(COLLECTIONS)
    return sorted(tables, key=lambda table: order.index(table[0]))


def _archive(raw: bytes, max_uncompressed: int) -> zipfile.ZipFile:
    try:
        archive = zipfile.ZipFile(io.BytesIO(raw))
    except zipfile.BadZipFile:
        raise errors.ValidationError("the body is not a zip file") from None
    if sum(info.file_size for info in archive.infolist()) > max_uncompressed:
        raise errors.PayloadTooLarge(f"the file expands to more than {max_uncompressed} bytes")
    return archive


def _csv_tables(archive: zipfile.ZipFile) -> list[_Table]:
    tables: list[_Table] = []
    for info in archive.infolist():
        path = info.filename
        if info.is_dir() or path.startswith("__MACOSX/") or path.rsplit("/", 1)[-1] == ".DS_Store":
            continue
        filename = path.rsplit("/", 1)[-1]
        stem, dot, suffix = filename.rpartition(".")
        if not dot or suffix.lower() != "csv":
            raise invalid(filename, None, "only .csv files belong in the zip")
        entity = _entity_of(stem, filename, "file (name)")
        if any(table[0] == entity for table in tables):
            raise invalid(filename, None, f"{filename} is in the zip twice")
        try:
            text = archive.read(info).decode("utf-8-sig")
        except UnicodeDecodeError:
            raise invalid(filename, None, "the file is not UTF-8 text") from None
        except (zipfile.BadZipFile, OSError) as e:
            raise invalid(filename, None, f"cannot be read from the zip ({e})") from None
        try:
            lines = list(csv.reader(io.StringIO(text, newline=""), strict=True))
        except csv.Error as e:
            raise invalid(filename, None, f"is not valid CSV ({e})") from None
        tables.append((entity, filename, _records(entity, filename, lines, _csv_value)))
    return _in_order(tables)


def _xlsx_tables(raw: bytes) -> list[_Table]:
    from openpyxl import load_workbook

    try:
        workbook = load_workbook(io.BytesIO(raw), read_only=True, data_only=True)
    except Exception as e:  # openpyxl raises many kinds for a file it cannot read
        raise errors.ValidationError(f"the body is not an XLSX workbook ({e})"[:300]) from None
    tables: list[_Table] = []
    try:
        for sheet in workbook.worksheets:
            entity = _entity_of(sheet.title, sheet.title, "sheet")
            lines = [list(values) for values in sheet.iter_rows(values_only=True)]
            tables.append((entity, sheet.title, _records(entity, sheet.title, lines, _xlsx_value)))
    finally:
        workbook.close()
    return _in_order(tables)


def _records(
    entity: str, sheet: str, lines: list[list[Any]], value: Any
) -> list[tuple[int, dict[str, Any]]]:
    """The rows of a sheet as JSON objects, numbered as a spreadsheet shows them."""
    if not lines:
        raise invalid(sheet, 1, "the header row naming the fields is missing")
    header = []
    for cell in lines[0]:
        header.append("" if cell is None else str(cell).strip())
    while header and header[-1] == "":
        header.pop()
    for position, name in enumerate(header):
        if name == "":
            raise invalid(sheet, 1, f"column {position + 1} has no name in the header")
        if name in header[:position]:
            raise invalid(sheet, 1, f"column {name} is in the header twice", name)
    kinds = [_kind(entity, name) for name in header]
    records = []
    for number, line in enumerate(lines[1:], start=2):
        cells = list(_padded(line, len(header)))
        if all(cell is None or cell == "" for cell in cells):
            continue  # spreadsheets keep empty rows
        if len(line) > len(header) and any(c not in (None, "") for c in line[len(header) :]):
            raise invalid(sheet, number, "a value stands in a column without a header")
        body = {}
        for name, kind, cell in zip(header, kinds, cells, strict=True):
            converted = value(kind, cell)
            if converted is not None:
                body[name] = converted
        records.append((number, body))
    return records


def _padded(line: Sequence[Any], width: int) -> Iterator[Any]:
    for position in range(width):
        yield line[position] if position < len(line) else None


def _csv_value(kind: str | None, text: Any) -> Any:
    """A CSV cell's value (None for an empty cell); the model converts numeric text."""
    if text is None or text == "":
        return None
    if kind is None:
        try:
            return _loads(text)
        except ValueError:
            return text
    if text.startswith('"'):
        try:
            decoded = _loads(text)
        except ValueError:
            return text
        return decoded if isinstance(decoded, str) else text
    if kind in ("integer", "number"):
        # A number cell as a spreadsheet or the export writes it ("9e+18" included): the
        # model takes only plain decimals as text, so a JSON number is passed as a number.
        try:
            number = _loads(text.strip())
        except ValueError:
            return text
        if isinstance(number, (int, float)) and not isinstance(number, bool):
            return number
    return text


def _xlsx_value(kind: str | None, cell: Any) -> Any:
    """An XLSX cell's value: text as in CSV, numbers native (as text where text is due)."""
    if cell is None:
        return None
    if isinstance(cell, str):
        return _csv_value(kind, cell)
    if isinstance(cell, bool):
        return cell
    if isinstance(cell, (int, float)):
        if kind in ("id", "string", "host"):
            if isinstance(cell, float) and cell.is_integer():
                return str(int(cell))
            return str(cell)
        return cell
    if isinstance(cell, (datetime.datetime, datetime.date, datetime.time)):
        return cell.isoformat()
    return str(cell)
