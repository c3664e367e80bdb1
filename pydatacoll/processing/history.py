"""The history processor: samples into MySQL/MariaDB (or SQLite), through an on-disk spool.

Pipeline (docs/history.rst has the full description)::

    samples_received --policy--> rows --+--> memory queue --+--> database (one batch
                                        |                   |    in flight, in order)
                                        +--> spool (disk) --+

In *direct* mode rows wait in a bounded memory queue and are written in batches. When a
write fails because the database cannot be reached, or the queue is full, the processor
switches to *spooling*: the queue and every new row go to the spool (append-only JSON
line segments in the plugin's data dir), and the writer empties the spool in order once
the database answers again, then returns to direct mode. All database work runs in the
adbapi thread pool; every spool call runs in one dedicated worker thread.
"""

from __future__ import annotations

import datetime
import itertools
import json
import math
import os
import random
import re
import sqlite3
import uuid
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from typing import Any
from urllib.parse import unquote, urlsplit

import attrs
from twisted.application.service import Service
from twisted.enterprise import adbapi
from twisted.internet.defer import (
    CancelledError,
    Deferred,
    DeferredList,
    inlineCallbacks,
)
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from pydatacoll.errors import ConfigError
from pydatacoll.interfaces import IProcessor
from pydatacoll.model import Sample, decode_fields, iso_time
from pydatacoll.processing.options import integer_option as _integer
from pydatacoll.processing.options import number_option as _number
from pydatacoll.store import keys
from pydatacoll.store.redis import when_connected

try:  # PyMySQL is an install requirement, but SQLite alone must still work without it
    import pymysql
except ImportError:  # pragma: no cover
    pymysql = None

NAME = "history"
POLICIES = ("every", "change", "none")
#: Longest id, quality, value text and flags text a row may carry (longer: refused).
MAX_ID = 128
MAX_QUALITY = 16
MAX_VALUE_TEXT = 65535
MAX_FLAGS_TEXT = 4096

# -- options ----------------------------------------------------------------------------


def _policy(text: str) -> str:
    if text.strip() not in POLICIES:
        raise ValueError(f"must be one of {', '.join(POLICIES)}")
    return text.strip()


def _fsync(text: str) -> str:
    if text.strip() not in ("append", "never"):
        raise ValueError("must be append or never")
    return text.strip()


def _url(text: str) -> str:
    text = text.strip()
    if text and urlsplit(text).scheme != "mysql":
        raise ValueError("must be mysql://user[:password]@host[:port]/database or empty")
    return text


#: [plugin:history] option -> (default text, parser). etc/pydatacoll.ini mirrors these.
OPTION_DEFAULTS: dict[str, tuple[str, Any]] = {
    "url": ("", _url),
    "sqlite_file": ("history.sqlite3", str),
    "connect_timeout": ("5", _number(0.1, 300)),
    "query_timeout": ("30", _number(0.1, 3600)),
    "history": ("every", _policy),
    "history_deadband": ("0", _number(0, 1e300)),
    "history_deadband_percent": ("0", _number(0, 1e6)),
    "batch_samples": ("1000", _integer(1, 100_000)),
    "batch_interval": ("0.5", _number(0.001, 60)),
    "queue_samples": ("100000", _integer(100, 10_000_000)),
    "spool_max_mb": ("256", _number(0.01, 1_000_000)),
    "spool_max_samples": ("5000000", _integer(1, 1_000_000_000)),
    "spool_segment_mb": ("8", _number(0.001, 1024)),
    "spool_fsync": ("append", _fsync),
    "retry_initial": ("0.5", _number(0.01, 600)),
    "retry_max": ("30", _number(0.01, 3600)),
}


@attrs.frozen
class HistoryOptions:
    """The checked ``[plugin:history]`` options (see `OPTION_DEFAULTS`)."""

    url: str = ""
    sqlite_file: str = "history.sqlite3"
    connect_timeout: float = 5.0
    query_timeout: float = 30.0
    history: str = "every"
    history_deadband: float = 0.0
    history_deadband_percent: float = 0.0
    batch_samples: int = 1000
    batch_interval: float = 0.5
    queue_samples: int = 100000
    spool_max_mb: float = 256.0
    spool_max_samples: int = 5000000
    spool_segment_mb: float = 8.0
    spool_fsync: str = "append"
    retry_initial: float = 0.5
    retry_max: float = 30.0

    @classmethod
    def parse(cls, options: Mapping[str, str]) -> HistoryOptions:
        """Check the INI text; `ConfigError` names the first bad or unknown key."""
        values = {}
        for name in options:
            if name not in OPTION_DEFAULTS:
                raise ConfigError(f"plugin:history.{name}", "unknown option")
        for name, (default, parse) in OPTION_DEFAULTS.items():
            text = options.get(name, default)
            try:
                values[name] = parse(text)
            except ValueError as e:
                raise ConfigError(f"plugin:history.{name}", str(e)) from None
        return cls(**values)

    @property
    def default_policy(self) -> Policy:
        """The policy of a point that does not name its own."""
        return Policy(self.history, self.history_deadband, self.history_deadband_percent)


# -- storage policy ---------------------------------------------------------------------


@attrs.frozen
class Policy:
    """How a point is stored: every sample, on change (with deadbands), or not at all."""

    mode: str = "every"
    deadband: float = 0.0
    deadband_percent: float = 0.0

    @classmethod
    def from_term_item(cls, fields: Mapping[str, Any], default: Policy) -> Policy:
        """The policy named by a term-item's free attributes (``history``,
        ``history_deadband``, ``history_deadband_percent``); missing ones take
        ``default``'s. Raises ValueError for a bad one."""
        mode = fields.get("history", default.mode)
        if mode not in POLICIES:
            raise ValueError(f"history must be one of {', '.join(POLICIES)}, not {mode!r}")
        bands = []
        for name, fallback in (
            ("history_deadband", default.deadband),
            ("history_deadband_percent", default.deadband_percent),
        ):
            value = fields.get(name, fallback)
            if isinstance(value, bool):
                raise ValueError(f"{name} must be a number")
            value = float(value)
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a non-negative number")
            bands.append(value)
        return cls(mode, bands[0], bands[1])


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def changed(old: Any, new: Any, policy: Policy) -> bool:
    """Whether ``new`` differs enough from the last stored ``old`` to be stored.

    Numbers: ``|new - old| > max(deadband, |old| * deadband_percent / 100)``, or any
    difference when both bands are 0. Anything else: inequality (type included).
    """
    if _is_number(old) and _is_number(new):
        if not (math.isfinite(old) and math.isfinite(new)):
            return not (old == new or (math.isnan(old) and math.isnan(new)))
        band = max(policy.deadband, abs(old) * policy.deadband_percent / 100.0)
        if band == 0:
            return bool(new != old)
        return abs(new - old) > band
    return type(old) is not type(new) or old != new


class ChangeFilter:
    """Per-point storage decisions: the policy of each term-item and its last stored value.

    The memory it keeps is one entry per configured policy and one per point stored
    "on change" (bounded by the configuration).
    """

    def __init__(self, default: Policy) -> None:
        self.default = default
        self._policies: dict[tuple[str, str], Policy] = {}
        self._last: dict[tuple[str, str, str], tuple[Any, str, tuple[str, ...]]] = {}

    def set_policy(self, term_id: str, item_id: str, policy: Policy | None) -> None:
        """Set (None: forget) a point's policy; its next sample is stored."""
        key = (term_id, item_id)
        if policy is None or policy == self.default:
            self._policies.pop(key, None)
        else:
            self._policies[key] = policy
        for point in [p for p in self._last if p[1:] == key]:
            del self._last[point]

    def clear(self) -> None:
        """Forget every policy and last value."""
        self._policies.clear()
        self._last.clear()

    def policy(self, term_id: str, item_id: str) -> Policy:
        """The policy that applies to a point."""
        return self._policies.get((term_id, item_id), self.default)

    def accept(self, sample: Sample) -> bool:
        """Whether to store ``sample``; a changed quality (or flags) is always stored."""
        policy = self._policies.get((sample.term_id, sample.item_id), self.default)
        if policy.mode == "every":
            return True
        if policy.mode == "none":
            return False
        point = sample.point
        last = self._last.get(point)
        if (
            last is None
            or last[1] != sample.quality
            or last[2] != sample.flags
            or changed(last[0], sample.value, policy)
        ):
            self._last[point] = (sample.value, sample.quality, sample.flags)
            return True
        return False


# -- rows -------------------------------------------------------------------------------

#: A row: (device_id, term_id, item_id, source_time ms | None, receive_time ms,
#: value (DOUBLE) | None, value_text (JSON text) | None, quality, flags (JSON array text)).
Row = tuple[Any, ...]


def _milliseconds(seconds: float | None) -> int | None:
    return None if seconds is None else int(round(seconds * 1000))


def sample_row(sample: Sample) -> Row | None:
    """The database row of a sample, or None when it cannot be stored (see MAX_*).

    ``value`` holds every finite number (booleans as 1/0); ``value_text`` holds the
    value's JSON text unless it is a finite float, so that `read` gives back exactly
    the value stored (integers stay integers, strings stay strings).
    """
    # The hot path of the plugin (one call per stored sample): kept lean on purpose.
    value = sample.value
    number: float | None
    text: str | None
    if type(value) is float and value - value == 0.0:  # finite float
        number, text = value, None
    else:
        if isinstance(value, bool) or (isinstance(value, int) and abs(value) < 2**1000):
            number = float(value)
        else:
            number = None  # NaN, infinities, strings, ...: as JSON text only
        text = json.dumps(value, ensure_ascii=False, default=str)
        if len(text) > MAX_VALUE_TEXT:
            return None
    device_id, term_id, item_id = sample.device_id, sample.term_id, sample.item_id
    if type(device_id) is not str or type(term_id) is not str or type(item_id) is not str:
        device_id, term_id, item_id = str(device_id), str(term_id), str(item_id)
    quality = sample.quality
    if (
        len(device_id) > MAX_ID
        or len(term_id) > MAX_ID
        or len(item_id) > MAX_ID
        or len(quality) > MAX_QUALITY
    ):
        return None
    if sample.flags:
        flags = json.dumps(list(sample.flags), ensure_ascii=False, default=str)
        if len(flags) > MAX_FLAGS_TEXT:
            return None
    else:
        flags = "[]"
    source = sample.source_time
    return (
        device_id,
        term_id,
        item_id,
        None if source is None else int(round(source * 1000)),
        int(round(sample.receive_time * 1000)),
        number,
        text,
        quality,
        flags,
    )


def row_sample(row: Sequence[Any]) -> Sample:
    """The sample a stored row holds (the inverse of `sample_row`)."""
    device_id, term_id, item_id, source_ms, receive_ms, number, text, quality, flags = row
    value = json.loads(text) if text is not None else number
    return Sample(
        device_id,
        term_id,
        item_id,
        value,
        quality,
        tuple(json.loads(flags)) if flags else (),
        None if source_ms is None else source_ms / 1000.0,
        receive_ms / 1000.0,
    )


# -- spool ------------------------------------------------------------------------------
# A bounded on-disk FIFO of rows: append-only segment files of JSON lines. Synchronous
# and single-threaded by design: the processor runs every call in one dedicated worker
# thread, so calls are serialised in call order and the reactor never waits for the disk.
# Directory: spool.id (names its batches in the database), cursor.json (segment and
# byte offset of the oldest unwritten row), segment-NNNNNNNNNNNN.jsonl (rows, oldest first).

_SEGMENT_RE = re.compile(r"^segment-(\d{12})\.jsonl$")
#: Sequence number of the first segment; leaves room below for `Spool.prepend`.
FIRST_SEGMENT = 1_000_000_000


@attrs.frozen
class SpoolBatch:
    """Rows read from the spool, from ``start`` up to ``end`` (segment, byte offset)."""

    rows: list[tuple[Any, ...]]
    start: tuple[int, int]
    end: tuple[int, int]
    spool_id: str

    @property
    def batch_id(self) -> str:
        """The batch's name in the database: the same rows always get the same name."""
        return f"{self.spool_id}:{self.start[0]}:{self.start[1]}"

    @property
    def end_text(self) -> str:
        """``end`` as text, as stored with the batch's marker row."""
        return f"{self.end[0]}:{self.end[1]}"


def parse_position(text: str) -> tuple[int, int]:
    """The inverse of `SpoolBatch.end_text`."""
    segment, offset = text.split(":")
    return int(segment), int(offset)


class Spool:
    """Rows waiting for the database, kept on disk, bounded by bytes and by rows.

    Overflow policy: a row that would take the spool past ``max_bytes`` or
    ``max_samples`` is refused (the newest rows are dropped, the oldest kept), and the
    caller counts it. ``fsync`` makes every `append` durable before it returns.
    """

    def __init__(
        self,
        directory: str,
        *,
        max_bytes: int,
        max_samples: int,
        segment_bytes: int,
        fsync: bool,
    ) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self.max_samples = max_samples
        self.segment_bytes = segment_bytes
        self.fsync = fsync
        self.spool_id = ""
        #: seq -> [size in bytes, rows]; rows counted from the cursor in the first one.
        self._segments: dict[int, list[int]] = {}
        self._cursor: tuple[int, int] = (FIRST_SEGMENT, 0)
        self._append_file: Any = None
        self._append_seq: int | None = None
        self.unread_samples = 0
        self.unread_bytes = 0
        self.corrupt_lines = 0

    # -- opening --------------------------------------------------------------------

    def open(self) -> None:
        """Create or scan the directory; a torn last line (a crash mid-write) is cut off."""
        os.makedirs(self.directory, exist_ok=True)
        id_path = os.path.join(self.directory, "spool.id")
        if os.path.exists(id_path):
            with open(id_path, encoding="ascii") as f:
                self.spool_id = f.read().strip()
        if not self.spool_id:
            self.spool_id = uuid.uuid4().hex
            self._write_atomically(id_path, self.spool_id)
        seqs = sorted(
            int(m.group(1)) for m in map(_SEGMENT_RE.match, os.listdir(self.directory)) if m
        )
        cursor = self._read_cursor()
        self._segments = {}
        for seq in seqs:
            path = self._path(seq)
            if cursor is not None and seq < cursor[0]:
                os.unlink(path)  # fully written before the last stop
                continue
            _cut_torn_line(path)
            start = cursor[1] if cursor is not None and seq == cursor[0] else 0
            size = os.path.getsize(path)
            with open(path, "rb") as f:
                f.seek(min(start, size))
                rows = sum(1 for _ in f)
            self._segments[seq] = [size, rows]
            self.unread_bytes += size - min(start, size)
            self.unread_samples += rows
        if self._segments:
            first = min(self._segments)
            if cursor is not None and cursor[0] == first:
                self._cursor = (first, min(cursor[1], self._segments[first][0]))
            else:
                self._cursor = (first, 0)
        elif cursor is not None:
            self._cursor = (cursor[0] + 1, 0)

    def close(self) -> None:
        """Close the open segment file."""
        if self._append_file is not None:
            self._append_file.close()
            self._append_file = None
            self._append_seq = None

    # -- writing --------------------------------------------------------------------

    def append(self, rows: Sequence[tuple[Any, ...]]) -> tuple[int, int]:
        """Append rows in order; ``(accepted, refused)`` (refused: the spool is full)."""
        lines: list[Any] = []
        added_bytes = 0
        for row in rows:
            line = json.dumps(row, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"
            if (
                self.unread_samples + len(lines) + 1 > self.max_samples
                or self.unread_bytes + added_bytes + len(line) > self.max_bytes
            ):
                break
            lines.append(line)
            added_bytes += len(line)
        refused = len(rows) - len(lines)
        start = 0
        while start < len(lines):
            seq = self._writable_segment()
            size = self._segments[seq][0]
            end = start
            chunk_bytes = 0
            while end < len(lines) and (end == start or size + chunk_bytes < self.segment_bytes):
                chunk_bytes += len(lines[end])
                end += 1
            self._append_file.write(b"".join(lines[start:end]))
            self._append_file.flush()
            if self.fsync:
                os.fsync(self._append_file.fileno())
            self._segments[seq][0] += chunk_bytes
            self._segments[seq][1] += end - start
            start = end
        self.unread_samples += len(lines)
        self.unread_bytes += added_bytes
        return len(lines), refused

    def prepend(self, rows: Sequence[tuple[Any, ...]]) -> bool:
        """Put rows in front of everything unread (a batch still owed at shutdown).

        Possible while nothing of the first segment has been consumed; returns False
        (and writes nothing) otherwise. Not bounded by the limits: at most one batch.
        """
        if not rows:
            return True
        if self._segments and self._cursor != (min(self._segments), 0):
            return False
        seq = (min(self._segments) if self._segments else self._cursor[0]) - 1
        data = b"".join(
            json.dumps(row, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"
            for row in rows
        )
        with open(self._path(seq), "wb") as f:
            f.write(data)
            f.flush()
            if self.fsync:
                os.fsync(f.fileno())
        self._segments[seq] = [len(data), len(rows)]
        self._cursor = (seq, 0)
        self._save_cursor()
        self.unread_samples += len(rows)
        self.unread_bytes += len(data)
        return True

    # -- reading --------------------------------------------------------------------

    def read(self, max_rows: int) -> SpoolBatch | None:
        """Up to ``max_rows`` of the oldest unread rows (never across segments), or None."""
        self._skip_finished_segments()
        if not self._segments:
            return None
        seq, offset = self._cursor
        size = self._segments[seq][0]
        if offset >= size:
            return None
        rows: list[tuple[Any, ...]] = []
        with open(self._path(seq), "rb") as f:
            f.seek(offset)
            position = offset
            while len(rows) < max_rows and position < size:
                line = f.readline()
                if not line:
                    break
                position += len(line)
                try:
                    rows.append(tuple(json.loads(line)))
                except ValueError:
                    self.corrupt_lines += 1
        return SpoolBatch(rows, (seq, offset), (seq, position), self.spool_id)

    def commit(self, end: tuple[int, int], rows: int) -> None:
        """Everything before ``end`` is in the database: move the cursor and forget it."""
        seq, offset = end
        self.unread_bytes -= offset - self._cursor[1] if seq == self._cursor[0] else 0
        self.unread_samples -= rows
        self.unread_bytes = max(self.unread_bytes, 0)
        self.unread_samples = max(self.unread_samples, 0)
        self._cursor = end
        if seq in self._segments:
            self._segments[seq][1] -= rows
        self._skip_finished_segments()
        self._save_cursor()

    # -- internals ------------------------------------------------------------------

    def _skip_finished_segments(self) -> None:
        """Delete segments that are completely written, the open one included."""
        while self._segments:
            seq, offset = self._cursor
            if seq not in self._segments:
                self._cursor = (min(self._segments), 0)
                continue
            if offset < self._segments[seq][0]:
                return
            if self._append_seq == seq:
                self.close()
            os.unlink(self._path(seq))
            del self._segments[seq]
            following = [s for s in self._segments if s > seq]
            self._cursor = (min(following), 0) if following else (seq + 1, 0)

    def _writable_segment(self) -> int:
        last = max(self._segments) if self._segments else None
        if last is not None and self._append_seq == last:
            if self._segments[last][0] < self.segment_bytes:
                return last
        self.close()
        if last is None or self._segments[last][0] >= self.segment_bytes:
            seq = self._cursor[0] if last is None else last + 1
            self._segments[seq] = [0, 0]
            self._append_file = open(self._path(seq), "ab")
            if self.fsync:
                _fsync_directory(self.directory)
        else:
            seq = last
            self._append_file = open(self._path(seq), "ab")
        self._append_seq = seq
        return seq

    def _path(self, seq: int) -> str:
        return os.path.join(self.directory, f"segment-{seq:012d}.jsonl")

    def _read_cursor(self) -> tuple[int, int] | None:
        try:
            with open(os.path.join(self.directory, "cursor.json"), encoding="utf-8") as f:
                body = json.load(f)
            return int(body["segment"]), int(body["offset"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def _save_cursor(self) -> None:
        text = json.dumps({"segment": self._cursor[0], "offset": self._cursor[1]})
        self._write_atomically(os.path.join(self.directory, "cursor.json"), text)

    def _write_atomically(self, path: str, text: str) -> None:
        temporary = path + ".tmp"
        with open(temporary, "w", encoding="utf-8") as f:
            f.write(text)
            if self.fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(temporary, path)


def _cut_torn_line(path: str) -> None:
    """Truncate a file after its last newline (a write cut short by a crash)."""
    size = os.path.getsize(path)
    if size == 0:
        return
    with open(path, "rb+") as f:
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return
        f.seek(0)
        data = f.read()
        f.truncate(data.rfind(b"\n") + 1)


def _fsync_directory(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# -- database ---------------------------------------------------------------------------

_MYSQL_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS samples (
    id BIGINT NOT NULL AUTO_INCREMENT,
    device_id VARCHAR(128) NOT NULL,
    term_id VARCHAR(128) NOT NULL,
    item_id VARCHAR(128) NOT NULL,
    source_time BIGINT NULL,
    receive_time BIGINT NOT NULL,
    value DOUBLE NULL,
    value_text MEDIUMTEXT NULL,
    quality VARCHAR(16) NOT NULL,
    flags TEXT NOT NULL,
    PRIMARY KEY (id),
    KEY samples_point_time (device_id, term_id, item_id, receive_time)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin""",
    """CREATE TABLE IF NOT EXISTS alarms (
    id BIGINT NOT NULL AUTO_INCREMENT,
    device_id VARCHAR(128) NOT NULL,
    term_id VARCHAR(128) NOT NULL,
    item_id VARCHAR(128) NOT NULL,
    kind VARCHAR(32) NOT NULL,
    event VARCHAR(8) NOT NULL,
    value DOUBLE NULL,
    value_text TEXT NULL,
    limit_value DOUBLE NULL,
    event_time BIGINT NOT NULL,
    message TEXT NOT NULL,
    PRIMARY KEY (id),
    KEY alarms_point_time (device_id, term_id, item_id, event_time),
    KEY alarms_time (event_time)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin""",
    """CREATE TABLE IF NOT EXISTS sample_batches (
    batch_id VARCHAR(80) NOT NULL,
    end_position VARCHAR(40) NULL,
    written_at BIGINT NOT NULL,
    PRIMARY KEY (batch_id),
    KEY sample_batches_written (written_at)
) ENGINE=InnoDB DEFAULT CHARSET=ascii COLLATE=ascii_bin""",
)

_SQLITE_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS samples (
    id INTEGER PRIMARY KEY,
    device_id TEXT NOT NULL,
    term_id TEXT NOT NULL,
    item_id TEXT NOT NULL,
    source_time INTEGER NULL,
    receive_time INTEGER NOT NULL,
    value REAL NULL,
    value_text TEXT NULL,
    quality TEXT NOT NULL,
    flags TEXT NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS samples_point_time "
    "ON samples (device_id, term_id, item_id, receive_time)",
    """CREATE TABLE IF NOT EXISTS alarms (
    id INTEGER PRIMARY KEY,
    device_id TEXT NOT NULL,
    term_id TEXT NOT NULL,
    item_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    event TEXT NOT NULL,
    value REAL NULL,
    value_text TEXT NULL,
    limit_value REAL NULL,
    event_time INTEGER NOT NULL,
    message TEXT NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS alarms_point_time "
    "ON alarms (device_id, term_id, item_id, event_time)",
    "CREATE INDEX IF NOT EXISTS alarms_time ON alarms (event_time)",
    """CREATE TABLE IF NOT EXISTS sample_batches (
    batch_id TEXT NOT NULL PRIMARY KEY,
    end_position TEXT NULL,
    written_at INTEGER NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS sample_batches_written ON sample_batches (written_at)",
)

# Every statement is a constant; values travel only as parameters (%s, turned into ? for
# sqlite3). The only text ever added to a statement is one of these constant fragments.
INSERT_SAMPLES = (
    "INSERT INTO samples (device_id, term_id, item_id, source_time, receive_time, value, "
    "value_text, quality, flags) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)"
)
INSERT_BATCH = "INSERT INTO sample_batches (batch_id, end_position, written_at) VALUES (%s, %s, %s)"
SELECT_BATCH = "SELECT end_position FROM sample_batches WHERE batch_id = %s"
DELETE_OLD_BATCHES = "DELETE FROM sample_batches WHERE written_at < %s"
INSERT_ALARM = (
    "INSERT INTO alarms (device_id, term_id, item_id, kind, event, value, value_text, "
    "limit_value, event_time, message) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
)
SELECT_SAMPLES = (
    "SELECT device_id, term_id, item_id, source_time, receive_time, value, value_text, "
    "quality, flags FROM samples WHERE device_id = %s AND term_id = %s AND item_id = %s"
)
SINCE = " AND receive_time >= %s"
UNTIL = " AND receive_time <= %s"
NEWEST_FIRST = " ORDER BY receive_time DESC, id DESC LIMIT %s"
#: Batch markers older than this are deleted (milliseconds).
MARKER_KEEP_MS = 7 * 24 * 3600 * 1000


def is_transient(failure: Failure) -> bool:
    """Whether a database failure means "cannot reach it now" (retry) rather than "this
    statement is wrong" (refuse the rows)."""
    transient: list[type[BaseException]] = [
        adbapi.ConnectionLost,
        sqlite3.OperationalError,
        OSError,
        TimeoutError,
    ]
    if pymysql is not None:
        transient += [pymysql.err.OperationalError, pymysql.err.InterfaceError]
    return failure.check(*transient) is not None


class HistoryDatabase:
    """The samples/alarms schema over one adbapi `ConnectionPool` (PyMySQL or sqlite3)."""

    log = Logger()

    def __init__(self, pool: adbapi.ConnectionPool, dialect: str, describe: str) -> None:
        self.pool = pool
        self.dialect = dialect
        self.describe = describe

    @classmethod
    def mysql(cls, url: str, options: HistoryOptions, reactor: Any) -> HistoryDatabase:
        """A pool of PyMySQL connections to ``mysql://user:password@host:port/database``."""
        parts = urlsplit(url)
        database = parts.path.lstrip("/")
        if not database:
            raise ConfigError("plugin:history.url", "the URL must name a database")
        pool = adbapi.ConnectionPool(
            "pymysql",
            host=parts.hostname or "127.0.0.1",
            port=parts.port or 3306,
            user=unquote(parts.username or "root"),
            password=unquote(parts.password or ""),
            database=database,
            charset="utf8mb4",
            autocommit=False,
            connect_timeout=options.connect_timeout,
            read_timeout=options.query_timeout,
            write_timeout=options.query_timeout,
            cp_reconnect=True,
            cp_noisy=False,
            cp_min=1,
            cp_max=2,  # the writer (one batch at a time) and reads
            cp_reactor=reactor,
        )
        where = f"mysql://{parts.hostname}:{parts.port or 3306}/{database}"
        return cls(pool, "mysql", where)

    @classmethod
    def sqlite(cls, path: str, options: HistoryOptions, reactor: Any) -> HistoryDatabase:
        """A one-connection sqlite3 pool on ``path`` (WAL journal)."""
        pool = adbapi.ConnectionPool(
            "sqlite3",
            path,
            timeout=options.query_timeout,
            check_same_thread=False,
            cp_reconnect=True,
            cp_noisy=False,
            cp_min=1,
            cp_max=1,
            cp_openfun=_sqlite_open,
            cp_reactor=reactor,
        )
        return cls(pool, "sqlite", f"sqlite:{path}")

    @classmethod
    def open(cls, options: HistoryOptions, data_dir: str, reactor: Any) -> HistoryDatabase:
        """The configured database: MySQL at ``url``, else SQLite in ``data_dir``."""
        if options.url:
            return cls.mysql(options.url, options, reactor)
        return cls.sqlite(os.path.join(data_dir, options.sqlite_file), options, reactor)

    def sql(self, statement: str) -> str:
        """``statement`` in the driver's paramstyle (constant text only)."""
        return statement.replace("%s", "?") if self.dialect == "sqlite" else statement

    def create_schema(self) -> Deferred[None]:
        """CREATE TABLE IF NOT EXISTS for samples, alarms and the batch markers."""
        statements = _SQLITE_SCHEMA if self.dialect == "sqlite" else _MYSQL_SCHEMA

        def create(cursor: Any) -> None:
            for statement in statements:
                cursor.execute(statement)

        return self.pool.runInteraction(create)

    def write_batch(
        self,
        batch_id: str,
        rows: Sequence[Row],
        end_position: str | None,
        now_ms: int,
        check: bool,
        expire: bool,
    ) -> Deferred[str | None]:
        """Insert ``rows`` and their batch marker in one transaction.

        With ``check``, first look the marker up: a batch whose commit was sent but not
        acknowledged is not inserted twice. Fires with None when written, or with the
        stored end position (text) when the batch was already there.
        """
        insert_samples = self.sql(INSERT_SAMPLES)
        insert_batch = self.sql(INSERT_BATCH)
        select_batch = self.sql(SELECT_BATCH)
        delete_old = self.sql(DELETE_OLD_BATCHES)

        def write(cursor: Any) -> str | None:
            if check:
                cursor.execute(select_batch, (batch_id,))
                found = cursor.fetchone()
                if found is not None:
                    return str(found[0] or "")
            if rows:
                cursor.executemany(insert_samples, rows)
            cursor.execute(insert_batch, (batch_id, end_position, now_ms))
            if expire:
                cursor.execute(delete_old, (now_ms - MARKER_KEEP_MS,))
            return None

        return self.pool.runInteraction(write)

    def write_rows_each(self, rows: Sequence[Row]) -> Deferred[list[int]]:
        """Insert rows one transaction each; the indexes of the rows refused."""
        insert = self.sql(INSERT_SAMPLES)

        def each(connection: Any) -> list[int]:
            refused = []
            for index, row in enumerate(rows):
                cursor = connection.cursor()
                try:
                    cursor.execute(insert, row)
                    connection.commit()
                except Exception as e:
                    if _transient_exception(e):
                        raise
                    connection.rollback()
                    refused.append(index)
                finally:
                    cursor.close()
            return refused

        return self.pool.runWithConnection(each)

    def insert_alarm(self, row: Sequence[Any]) -> Deferred[None]:
        """Insert one alarms row."""
        return self.pool.runOperation(self.sql(INSERT_ALARM), tuple(row))

    def read(
        self,
        point: tuple[str, str, str],
        since_ms: int | None,
        until_ms: int | None,
        limit: int,
    ) -> Deferred[list[Any]]:
        """A point's rows in a receive-time range, newest first."""
        statement = SELECT_SAMPLES
        args: list[Any] = list(point)
        if since_ms is not None:
            statement += SINCE
            args.append(since_ms)
        if until_ms is not None:
            statement += UNTIL
            args.append(until_ms)
        statement += NEWEST_FIRST
        args.append(limit)
        return self.pool.runQuery(self.sql(statement), tuple(args))

    def close(self) -> None:
        """Stop the pool's threads (call once nothing is running in them)."""
        self.pool.close()


def history_reader(settings: Any, reactor: Any) -> HistoryDatabase | None:
    """The history database for the REST API's reads, when the history plugin is enabled.

    It is the same database the plugin writes (for SQLite, the same file in the plugin's
    data dir), opened with the same ``[plugin:history]`` options.
    """
    if "history" not in settings.plugins_enabled:
        return None
    options = HistoryOptions.parse(settings.plugin_options.get("history", {}))
    data_dir = os.path.join(settings.data_dir, "plugins", "history")
    os.makedirs(data_dir, exist_ok=True)
    return HistoryDatabase.open(options, data_dir, reactor)


def _transient_exception(e: BaseException) -> bool:
    return is_transient(Failure(e))


def _sqlite_open(connection: Any) -> None:
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA synchronous=NORMAL")


# -- the processor ----------------------------------------------------------------------


@attrs.define
class _Batch:
    """The batch being written: memory rows (``end`` None) or a spool range."""

    batch_id: str
    rows: list[Row]
    end: tuple[int, int] | None = None
    uncertain: bool = False


@implementer(IProcessor)
class HistoryProcessor(Service):
    """Stores samples in the history database; see the module docstring and
    docs/history.rst. ``read`` serves the history route."""

    log = Logger()
    name = NAME  # type: ignore[assignment]  # Service declares it None

    def __init__(
        self,
        *,
        reactor: Any,
        options: HistoryOptions,
        database: HistoryDatabase,
        spool: Spool,
        redis: Any = None,
    ) -> None:
        self.reactor = reactor
        self.options = options
        self.database = database
        self.spool = spool
        self.redis = redis
        self.filter = ChangeFilter(options.default_policy)
        self._run_id = uuid.uuid4().hex
        self._batch_numbers = itertools.count(1)
        # Bounded buffers (overflow: the newest rows are refused and counted):
        #   _queue: rows for the database (direct mode), at most queue_samples;
        #   _pending: rows for the spool (spooling mode), at most queue_samples.
        self._queue: deque[Row] = deque()
        self._pending: deque[Row] = deque()
        self._spooling = True  # until the spool is known to be empty
        self._appending = False
        self._append_done: Deferred[None] | None = None
        self._batch: _Batch | None = None
        #: The writer's idle wait (woken by new work) and its backoff sleep (not woken).
        self._idle: Deferred[Any] | None = None
        self._sleep: Deferred[Any] | None = None
        self._config_sleep: Deferred[Any] | None = None
        self._loop: Deferred[Any] | None = None
        self._spool_pool = ThreadPool(1, 1, name="history-spool")
        self._spool_ready: Deferred[Any] | None = None
        self._config_loaded = False
        self._failures_in_row = 0
        self._batches_written = 0
        self.connected = False
        self.counters = {
            "received": 0,
            "skipped": 0,
            "queued": 0,
            "written": 0,
            "batches": 0,
            "duplicates_avoided": 0,
            "spooled": 0,
            "database_failures": 0,
            "alarms_written": 0,
            "alarms_failed": 0,
        }
        self.dropped = {"queue_full": 0, "spool_full": 0, "refused": 0, "spool_corrupt": 0}
        self.last_error: str | None = None
        self.last_write: float | None = None
        self.spool_peak = 0
        self._alarms: Any = None  # the CHANNEL:ALARM subscription (a real Redis only)

    @classmethod
    def from_context(cls, context: Any) -> HistoryProcessor:
        """Build it from a `pydatacoll.processing.ProcessorContext`."""
        options = HistoryOptions.parse(context.options)
        os.makedirs(context.data_dir, exist_ok=True)
        database = HistoryDatabase.open(options, context.data_dir, context.reactor)
        spool = Spool(
            os.path.join(context.data_dir, "spool"),
            max_bytes=int(options.spool_max_mb * 1024 * 1024),
            max_samples=options.spool_max_samples,
            segment_bytes=int(options.spool_segment_mb * 1024 * 1024),
            fsync=options.spool_fsync == "append",
        )
        return cls(
            reactor=context.reactor,
            options=options,
            database=database,
            spool=spool,
            redis=context.redis,
        )

    # -- IProcessor -----------------------------------------------------------------

    def samples_received(self, samples: Iterable[Sample]) -> None:
        """Filter by policy and queue; never blocks (bounded buffers, see __init__)."""
        rows = []
        accept = self.filter.accept
        received = 0
        for sample in samples:
            received += 1
            if not accept(sample):
                continue
            row = sample_row(sample)
            if row is None:
                self.dropped["refused"] += 1
                self.log.warn(
                    "history: sample of {point} refused (id, value or flags too long)",
                    point=":".join(map(str, sample.point))[:400],
                )
                continue
            rows.append(row)
        self.counters["received"] += received
        self.counters["skipped"] += received - len(rows)
        if not rows or not self.running:
            if rows:
                self.dropped["queue_full"] += len(rows)
            return
        self.counters["queued"] += len(rows)
        limit = self.options.queue_samples
        if not self._spooling:
            if len(self._queue) + len(rows) <= limit:
                self._queue.extend(rows)
                if len(self._queue) >= self.options.batch_samples:
                    self._wake()
                return
            self._start_spooling("the memory queue is full")
        room = limit - len(self._pending)
        if room < len(rows):
            self.dropped["queue_full"] += len(rows) - max(room, 0)
            rows = rows[: max(room, 0)]
        self._pending.extend(rows)
        self._flush_pending()

    def config_changed(self, change: Mapping[str, Any]) -> None:
        """Follow term-item changes (add, fresh, del, and the cascades of deletions)."""
        entity = change.get("entity")
        op = change.get("op")
        if entity == "term_item" and op in ("add", "fresh"):
            data = change.get("data") or {}
            self._set_policy(data.get("term_id"), data.get("item_id"), data)
        elif entity == "term_item" and op == "del":
            old = change.get("old") or {}
            for source in (old, *((change.get("cascade") or {}).get("term_items") or ())):
                self.filter.set_policy(str(source.get("term_id")), str(source.get("item_id")), None)
        elif op == "del":
            for point in (change.get("cascade") or {}).get("term_items") or ():
                self.filter.set_policy(str(point.get("term_id")), str(point.get("item_id")), None)

    def status(self) -> dict[str, Any]:
        """State, database, mode, counters and every kind of drop."""
        return {
            "name": NAME,
            "state": "running" if self.running else "stopped",
            "database": self.database.describe,
            "connected": self.connected,
            "mode": "spooling" if self._spooling else "direct",
            "config_loaded": self._config_loaded,
            "queue": len(self._queue) + len(self._pending),
            "in_flight": len(self._batch.rows) if self._batch else 0,
            "spool_samples": self.spool.unread_samples,
            "spool_bytes": self.spool.unread_bytes,
            "spool_peak": self.spool_peak,
            **self.counters,
            "dropped": dict(self.dropped, spool_corrupt=self.spool.corrupt_lines),
            "dropped_total": sum(self.dropped.values()) + self.spool.corrupt_lines,
            "last_error": self.last_error,
            "last_write": iso_time(self.last_write),
        }

    # -- public API -----------------------------------------------------------------

    def read(
        self,
        device_id: str,
        term_id: str,
        item_id: str,
        since: float | None = None,
        until: float | None = None,
        limit: int = 1000,
    ) -> Deferred[list[dict[str, Any]]]:
        """A point's stored samples with ``since <= receive_time <= until`` (epoch
        seconds, None: open), newest first, at most ``limit`` (1..100000), as
        `Sample.to_json` dicts. Samples still in the queue or the spool are not seen."""
        limit = max(1, min(int(limit), 100_000))
        d = self.database.read(
            (str(device_id), str(term_id), str(item_id)),
            _milliseconds(since),
            _milliseconds(until),
            limit,
        )
        return d.addCallback(lambda rows: [row_sample(r).to_json() for r in rows])

    def store_alarm(
        self,
        device_id: str,
        term_id: str,
        item_id: str,
        kind: str,
        event: str,
        value: Any,
        limit: float | None,
        time: float,
        message: str = "",
    ) -> Deferred[None]:
        """Insert one alarm event (``event`` "raise" or "clear"); not spooled: the
        Deferred fails while the database is away (the caller keeps its own log)."""
        number = float(value) if _is_number(value) and math.isfinite(value) else None
        text = None if type(value) is float and number is not None else json.dumps(value)
        row = (
            str(device_id),
            str(term_id),
            str(item_id),
            str(kind)[:32],
            str(event)[:8],
            number,
            text,
            None if limit is None else float(limit),
            _milliseconds(time),
            str(message),
        )
        d = self.database.insert_alarm(row)

        def done(result: Any) -> Any:
            if isinstance(result, Failure):
                self.counters["alarms_failed"] += 1
            else:
                self.counters["alarms_written"] += 1
            return result

        return d.addBoth(done)

    def drained(self, timeout: float = 60.0) -> Deferred[None]:
        """Fires once every row received so far is in the database (tests, benchmarks)."""

        @inlineCallbacks
        def poll() -> Any:
            deadline = self.reactor.seconds() + timeout
            while self._queue or self._pending or self._batch or self._spooling:
                if self.reactor.seconds() > deadline:
                    raise TimeoutError(f"history not drained: {self.status()}")
                yield deferLater(self.reactor, 0.005, lambda: None)

        return poll()

    # -- service --------------------------------------------------------------------

    def startService(self) -> None:
        """Open the spool (its thread), start the writer and load the point policies."""
        super().startService()
        self._spool_pool.start()
        self._spool_ready = self._in_spool_thread(self.spool.open)
        self._loop = self._run()
        if self.redis is not None:
            self._load_config()
        else:
            self._config_loaded = True
        if hasattr(self.redis, "when_ready"):  # a real pool: alarm events can be followed
            from pydatacoll.store.subscriber import Subscriber

            self._alarms = Subscriber(
                self.reactor,
                lambda: self.redis.address,
                self._alarm_event,
                channels=[keys.ALARM],
                ready=self.redis.when_ready,
                name="history alarm subscription",
            )
            self._alarms.startService()

    def _alarm_event(self, channel: str, text: str) -> None:
        """An event of the limits plugin (CHANNEL:ALARM) into the alarms table.

        Alarms are not spooled: while the database is away they are counted as failed;
        the limits plugin keeps every event in its Redis stream (XS:ALARM_LOG) meanwhile.
        """
        try:
            event = json.loads(text)
            when = datetime.datetime.fromisoformat(event["time"]).timestamp()
            d = self.store_alarm(
                event["device_id"],
                event["term_id"],
                event["item_id"],
                event["kind"],
                event["event"],
                event.get("value"),
                event.get("limit"),
                when,
                str(event.get("message", "")),
            )
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            self.log.warn("not an alarm event: {e}: {text}", e=e, text=text[:200])
            return
        d.addErrback(lambda f: self.log.warn("alarm not stored: {e}", e=f.getErrorMessage()))

    @inlineCallbacks
    def stopService(self) -> Any:
        """Stop the writer after its current database call; unwritten rows go to the
        spool (the batch owed first), then the threads stop."""
        super().stopService()
        alarms, self._alarms = self._alarms, None
        if alarms is not None:
            yield alarms.stopService()
        for wait in (self._idle, self._sleep, self._config_sleep):
            if wait is not None and not wait.called:
                wait.cancel()
        if self._loop is not None:
            yield self._loop
        batch, self._batch = self._batch, None
        if batch is not None and batch.end is None:
            prepended = yield self._in_spool_thread(self.spool.prepend, batch.rows)
            if not prepended:  # only if the spool was partly read: keep the rows anyway
                self._pending.extendleft(reversed(batch.rows))
        self._pending.extendleft(reversed(self._queue))
        self._queue.clear()
        while self._pending or self._appending:
            self._flush_pending(stopping=True)
            if self._append_done is not None:
                yield self._append_done
        yield self._in_spool_thread(self.spool.close)
        self.database.close()
        self._spool_pool.stop()
        self.connected = False

    # -- internals: configuration ---------------------------------------------------

    def _set_policy(self, term_id: Any, item_id: Any, fields: Mapping[str, Any]) -> None:
        if term_id is None or item_id is None:
            return
        try:
            policy = Policy.from_term_item(fields, self.filter.default)
        except (ValueError, TypeError) as e:
            self.log.warn(
                "history: term-item {term_id}:{item_id}: {error}; the default policy applies",
                term_id=term_id,
                item_id=item_id,
                error=e,
            )
            policy = None
        self.filter.set_policy(str(term_id), str(item_id), policy)

    @inlineCallbacks
    def _load_config(self) -> Any:
        """Read every term-item's policy from Redis; retried until it works.

        Until it has worked, the plugin-wide default policy applies to every point.
        """
        delay = self.options.retry_initial
        yield when_connected(self.redis)  # no failure logged while the pool connects
        while self.running:
            try:
                terms = yield self.redis.call("smembers", keys.TERMS)
                for term_id in terms:
                    items = yield self.redis.call("smembers", keys.TERM_ITEMS % term_id)
                    hashes = yield DeferredList(
                        [
                            self.redis.call("hgetall", keys.TERM_ITEM % (term_id, item_id))
                            for item_id in items
                        ],
                        fireOnOneErrback=True,
                        consumeErrors=True,
                    )
                    for item_id, (_ok, fields) in zip(items, hashes, strict=True):
                        self._set_policy(term_id, item_id, decode_fields(fields or {}))
                self._config_loaded = True
                self.log.info("history: point policies loaded for {terms} terms", terms=len(terms))
                return
            except Exception as e:
                error = e.subFailure.value if hasattr(e, "subFailure") else e
                self.log.warn(
                    "history: cannot read the point configuration ({error}); retrying",
                    error=error,
                )
            try:
                self._config_sleep = deferLater(self.reactor, delay, lambda: None)
                yield self._config_sleep
            except CancelledError:
                return
            delay = min(delay * 2, self.options.retry_max)

    # -- internals: spool -----------------------------------------------------------

    def _in_spool_thread(self, function: Any, *args: Any) -> Deferred[Any]:
        # Spool calls are small appends/reads of a few MB at most, but a disk can stall
        # (fsync, a full journal): they run in a one-thread pool, in call order, never
        # on the reactor. At most one append is in flight (see _flush_pending).
        return deferToThreadPool(self.reactor, self._spool_pool, function, *args)

    def _start_spooling(self, reason: str) -> None:
        if self._spooling:
            return
        self._spooling = True
        self.log.warn("history: spooling to disk: {reason}", reason=reason)
        self._pending.extendleft(reversed(self._queue))
        self._queue.clear()
        self._flush_pending()

    def _flush_pending(self, stopping: bool = False) -> None:
        """Hand the pending rows to the spool thread, one append in flight at a time."""
        if self._appending or not self._pending or (not self.running and not stopping):
            return
        rows = list(self._pending)
        self._pending.clear()
        self._appending = True
        self._append_done = Deferred()
        d = self._in_spool_thread(self.spool.append, rows)

        def appended(result: tuple[int, int]) -> None:
            accepted, refused = result
            self.counters["spooled"] += accepted
            if refused:
                self.dropped["spool_full"] += refused
                self.log.warn("history: spool full, {count} samples dropped", count=refused)
            self.spool_peak = max(self.spool_peak, self.spool.unread_samples)

        def failed(failure: Failure) -> None:
            self.dropped["spool_full"] += len(rows)
            self.log.failure("history: cannot write the spool; samples dropped", failure)

        def finished(_: Any) -> None:
            self._appending = False
            done, self._append_done = self._append_done, None
            self._wake()
            if self.running:
                self._flush_pending()
            if done is not None:
                done.callback(None)

        d.addCallbacks(appended, failed).addBoth(finished)

    # -- internals: writer ----------------------------------------------------------

    def _wake(self) -> None:
        idle, self._idle = self._idle, None
        if idle is not None and not idle.called:
            idle.cancel()  # ends the deferLater and its timer (see _pause)

    @inlineCallbacks
    def _run(self) -> Any:
        """The writer loop: it never dies (each failure is logged and it carries on)."""
        try:
            yield self._spool_ready
        except Exception:
            self.log.failure("history: cannot open the spool")
        schema = False
        while self.running:
            try:
                if not schema:
                    yield self.database.create_schema()
                    schema = True
                    self.connected = True
                    self._failures_in_row = 0
                    self.log.info("history: writing to {db}", db=self.database.describe)
                worked = yield self._step()
                if not worked and self.running:
                    yield self._pause("_idle", self.options.batch_interval)
            except Exception:
                failure = Failure()
                schema = False  # re-checked on return: the tables may have been dropped
                delay = self._database_failed(failure)
                if self.running:
                    yield self._pause("_sleep", delay)

    @inlineCallbacks
    def _pause(self, attribute: str, delay: float) -> Any:
        wait: Deferred[Any] = deferLater(self.reactor, delay, lambda: None)
        setattr(self, attribute, wait)
        try:
            yield wait
        except CancelledError:
            pass
        finally:
            if getattr(self, attribute) is wait:
                setattr(self, attribute, None)

    def _database_failed(self, failure: Failure) -> float:
        """Log, count and start spooling; the delay before the next try (backoff)."""
        self.counters["database_failures"] += 1
        self._failures_in_row += 1
        self.last_error = failure.getErrorMessage()[:500] or failure.type.__name__
        if self.connected or self._failures_in_row == 1:
            self.log.warn(
                "history: database {db} unavailable ({error}); samples go to the spool",
                db=self.database.describe,
                error=self.last_error,
            )
        self.connected = False
        if self._batch is not None:
            self._batch.uncertain = True
        if not is_transient(failure):
            self.log.failure("history: unexpected failure of the writer", failure)
        self._start_spooling("the database is unavailable")
        base = self.options.retry_initial * 2 ** min(self._failures_in_row - 1, 30)
        return min(base, self.options.retry_max) * random.uniform(0.8, 1.0)

    @inlineCallbacks
    def _step(self) -> Any:
        """Write one batch; False when there was nothing to write."""
        batch = self._batch
        if batch is None:
            batch = yield self._next_batch()
            if batch is None:
                return False
            self._batch = batch
        now_ms = int(self.reactor.seconds() * 1000)
        expire = self._batches_written % 1000 == 0
        try:
            found = yield self.database.write_batch(
                batch.batch_id,
                batch.rows,
                None if batch.end is None else f"{batch.end[0]}:{batch.end[1]}",
                now_ms,
                batch.uncertain,
                expire,
            )
        except Exception:
            failure = Failure()
            if is_transient(failure):
                raise
            found = yield self._write_each(batch, failure)
        self._batches_written += 1
        if found is not None:
            self.counters["duplicates_avoided"] += len(batch.rows)
        else:
            self.counters["written"] += len(batch.rows)
            self.counters["batches"] += 1
        self.last_write = self.reactor.seconds()
        if not self.connected:
            self.log.info("history: database {db} is back", db=self.database.describe)
        self.connected = True
        self._failures_in_row = 0
        if batch.end is not None:
            end = batch.end
            if found:  # written before a restart: trust the position stored with it
                end = parse_position(found)
            yield self._in_spool_thread(self.spool.commit, end, len(batch.rows))
        self._batch = None
        return True

    @inlineCallbacks
    def _write_each(self, batch: _Batch, failure: Failure) -> Any:
        """A batch the database refuses as a whole: insert row by row, count refusals."""
        self.log.warn(
            "history: batch refused ({error}); writing its rows one by one",
            error=failure.getErrorMessage(),
        )
        refused = yield self.database.write_rows_each(batch.rows)
        if refused:
            self.dropped["refused"] += len(refused)
            self.log.warn("history: {count} samples refused by the database", count=len(refused))
        keep = set(range(len(batch.rows))) - set(refused)
        written = [row for i, row in enumerate(batch.rows) if i in keep]
        self.counters["written"] += len(written)
        batch.rows = []
        end = None if batch.end is None else f"{batch.end[0]}:{batch.end[1]}"
        yield self.database.write_batch(
            batch.batch_id, [], end, int(self.reactor.seconds() * 1000), False, False
        )
        return None

    @inlineCallbacks
    def _next_batch(self) -> Any:
        size = self.options.batch_samples
        if not self._spooling:
            if not self._queue:
                return None
            rows = [self._queue.popleft() for _ in range(min(size, len(self._queue)))]
            return _Batch(f"{self._run_id}:{next(self._batch_numbers)}", rows)
        read = yield self._in_spool_thread(self.spool.read, size)
        if read is None:
            if not self._pending and not self._appending and self.running:
                self._spooling = False
                self.log.info("history: spool empty, writing directly again")
            return None
        # After a restart the first spool batch may already be in the database.
        return _Batch(read.batch_id, read.rows, read.end, uncertain=True)
