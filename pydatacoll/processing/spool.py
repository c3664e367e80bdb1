"""The on-disk spool shared by the history writer and the MQTT outbox.

`Spool` is a bounded on-disk FIFO of rows: append-only segment files of JSON lines.
Synchronous and single-threaded by design: its owner runs every call in one dedicated
worker thread (`SpoolWriter`), so calls are serialised in call order and the reactor never
waits for the disk. Directory: spool.id (names its batches), cursor.json (segment and byte
offset of the oldest unwritten row), segment-NNNNNNNNNNNN.jsonl (rows, oldest first).
"""

from __future__ import annotations

import json
import os
import re
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

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


class SpoolWriter:
    """A spool's one worker thread and the rows on their way to it.

    ``put`` rows into `pending`, then `flush`: at most one append is in flight, so rows
    reach the disk in the order they were put. ``appended`` (called on the reactor after
    each append, failed or not) lets the owner go on (wake its reader, flush again).
    ``counters["spooled"]`` and ``dropped["spool_full"]`` count what the spool took and
    refused; ``label`` and ``unit`` name the owner and its rows in the log.
    """

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        spool: Spool,
        *,
        label: str,
        unit: str,
        counters: dict[str, int],
        dropped: dict[str, int],
        appended: Callable[[], None],
    ) -> None:
        self.reactor = reactor
        self.spool = spool
        self.label = label
        self.unit = unit
        self.counters = counters
        self.dropped = dropped
        self.appended = appended
        self.pending: deque[tuple[Any, ...]] = deque()
        self.appending = False
        self.peak = 0
        self._append_done: Deferred[None] | None = None
        self._pool = ThreadPool(1, 1, name=f"{label}-spool")

    def start(self) -> Deferred[Any]:
        """Start the thread and open the spool in it."""
        self._pool.start()
        return self.call(self.spool.open)

    def stop(self) -> None:
        """Stop the thread (once the spool is closed)."""
        self._pool.stop()

    def call(self, function: Any, *args: Any) -> Deferred[Any]:
        """Run a spool call in the spool thread, after every call made before it."""
        # Spool calls are small appends/reads of a few MB at most, but a disk can stall
        # (fsync, a full journal): never on the reactor.
        return deferToThreadPool(self.reactor, self._pool, function, *args)

    def flush(self) -> None:
        """Hand the pending rows to the spool thread, one append in flight at a time."""
        if self.appending or not self.pending:
            return
        rows = list(self.pending)
        self.pending.clear()
        self.appending = True
        self._append_done = Deferred()
        d = self.call(self.spool.append, rows)

        def appended(result: tuple[int, int]) -> None:
            accepted, refused = result
            self.counters["spooled"] += accepted
            if refused:
                self.dropped["spool_full"] += refused
                self.log.warn(
                    "{label}: spool full, {count} {unit} dropped",
                    label=self.label,
                    count=refused,
                    unit=self.unit,
                )
            self.peak = max(self.peak, self.spool.unread_samples)

        def failed(failure: Failure) -> None:
            self.dropped["spool_full"] += len(rows)
            self.log.failure(
                "{label}: cannot write the spool; {unit} dropped",
                failure,
                label=self.label,
                unit=self.unit,
            )

        def finished(_: Any) -> None:
            self.appending = False
            done, self._append_done = self._append_done, None
            self.appended()
            if done is not None:
                done.callback(None)

        d.addCallbacks(appended, failed).addBoth(finished)

    def drain(self) -> Deferred[None]:
        """Flush until nothing is pending nor being appended (at stop)."""
        done: Deferred[None] = Deferred()

        def step(_: Any = None) -> None:
            if not (self.pending or self.appending):
                done.callback(None)
                return
            self.flush()
            if self._append_done is not None:
                self._append_done.addCallback(step)
            else:  # pragma: no cover - flush always starts an append when rows wait
                done.callback(None)

        step()
        return done

    def close(self) -> Deferred[None]:
        """Drain, close the spool (in its thread), then stop the thread."""
        d = self.drain()
        d.addCallback(lambda _: self.call(self.spool.close))
        d.addCallback(lambda _: self.stop())
        return d
