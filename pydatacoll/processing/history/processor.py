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

import itertools
import os
import uuid
from collections import deque
from collections.abc import Iterable, Mapping
from typing import Any

import attrs
from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred, inlineCallbacks
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from pydatacoll.interfaces import IProcessor
from pydatacoll.model import Sample, iso_time
from pydatacoll.processing.history.alarms import AlarmWriter
from pydatacoll.processing.history.change_filter import ChangeFilter, Policy
from pydatacoll.processing.history.database import HistoryDatabase, is_transient
from pydatacoll.processing.history.options import NAME, HistoryOptions
from pydatacoll.processing.history.rows import Row, sample_row
from pydatacoll.processing.loading import RetryingLoad
from pydatacoll.processing.spool import Spool, SpoolWriter, parse_position
from pydatacoll.retry import Backoff
from pydatacoll.store import keys
from pydatacoll.store.processing import PointConfigStore


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
    docs/history.rst. The REST API reads the same database through `history_reader`."""

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
        self.store = None if redis is None else PointConfigStore(redis)
        self.filter = ChangeFilter(options.default_policy)
        self._run_id = uuid.uuid4().hex
        self._batch_numbers = itertools.count(1)
        # Bounded buffers (overflow: the newest rows are refused and counted):
        #   _queue: rows for the database (direct mode), at most queue_samples;
        #   _pending: rows for the spool (spooling mode), at most queue_samples.
        self._queue: deque[Row] = deque()
        self._spooling = True  # until the spool is known to be empty
        self._batch: _Batch | None = None
        #: The writer's idle wait (woken by new work) and its backoff sleep (not woken).
        self._idle: Deferred[Any] | None = None
        self._sleep: Deferred[Any] | None = None
        self._loop: Deferred[Any] | None = None
        self._spool_ready: Deferred[Any] | None = None
        self._config_loaded = False
        self._config_load: RetryingLoad | None = None
        self._backoff = Backoff(options.retry_initial, options.retry_max, jitter=0.2)
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
        self.spool_writer = SpoolWriter(
            reactor,
            spool,
            label="history",
            unit="samples",
            counters=self.counters,
            dropped=self.dropped,
            appended=self._appended,
        )
        #: Rows for the spool (spooling mode), at most queue_samples.
        self._pending = self.spool_writer.pending
        self._alarms: Any = None  # the CHANNEL:ALARM subscription (a real Redis only)
        self.alarm_writer = AlarmWriter(database, self.counters)

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

    @property
    def idle(self) -> bool:
        """Every row received so far is in the database (nothing queued, in flight, on
        its way to the spool or in it)."""
        return not (
            self._queue
            or self._pending
            or self.spool_writer.appending
            or self._batch
            or self._spooling
        )

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
            "spool_peak": self.spool_writer.peak,
            **self.counters,
            "dropped": dict(self.dropped, spool_corrupt=self.spool.corrupt_lines),
            "dropped_total": sum(self.dropped.values()) + self.spool.corrupt_lines,
            "last_error": self.last_error,
            "last_write": iso_time(self.last_write),
        }

    # -- alarms -------------------------------------------------------------------

    def store_alarm(self, *event: Any, **fields: Any) -> Deferred[None]:
        """Insert one alarm event (see `AlarmWriter.store`)."""
        return self.alarm_writer.store(*event, **fields)

    # -- service --------------------------------------------------------------------

    def startService(self) -> None:
        """Open the spool (its thread), start the writer and load the point policies."""
        super().startService()
        self._spool_ready = self.spool_writer.start()
        self._loop = self._run()
        if self.store is not None:
            self._config_load = RetryingLoad(
                self.reactor,
                self.store.when_connected,
                self._load_config,
                Backoff(self.options.retry_initial, self.options.retry_max),
                "history: the point configuration",
            )
            self._config_load.start()
        else:
            self._config_loaded = True
        if hasattr(self.redis, "when_ready"):  # a real pool: alarm events can be followed
            from pydatacoll.store.subscriber import Subscriber

            self._alarms = Subscriber(
                self.reactor,
                lambda: self.redis.address,
                self.alarm_writer.event_received,
                channels=[keys.ALARM],
                ready=self.redis.when_ready,
                name="history alarm subscription",
            )
            self._alarms.startService()

    @inlineCallbacks
    def stopService(self) -> Any:
        """Stop the writer after its current database call; unwritten rows go to the
        spool (the batch owed first), then the threads stop."""
        super().stopService()
        alarms, self._alarms = self._alarms, None
        if alarms is not None:
            yield alarms.stopService()
        if self._config_load is not None:
            self._config_load.stop()
        for wait in (self._idle, self._sleep):
            if wait is not None and not wait.called:
                wait.cancel()
        if self._loop is not None:
            yield self._loop
        batch, self._batch = self._batch, None
        if batch is not None and batch.end is None:
            prepended = yield self.spool_writer.call(self.spool.prepend, batch.rows)
            if not prepended:  # only if the spool was partly read: keep the rows anyway
                self._pending.extendleft(reversed(batch.rows))
        self._pending.extendleft(reversed(self._queue))
        self._queue.clear()
        yield self.spool_writer.close()
        self.database.close()
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
        """Read every term-item's policy (until this has worked, the plugin-wide default
        policy applies to every point)."""
        assert self.store is not None  # only loaded with a store
        term_items = yield self.store.term_items()
        for (term_id, item_id), fields in term_items.items():
            self._set_policy(term_id, item_id, fields)
        self._config_loaded = True
        terms = len({term_id for term_id, _ in term_items})
        self.log.info("history: point policies loaded for {terms} terms", terms=terms)

    # -- internals: spool -----------------------------------------------------------

    def _start_spooling(self, reason: str) -> None:
        if self._spooling:
            return
        self._spooling = True
        self.log.warn("history: spooling to disk: {reason}", reason=reason)
        self._pending.extendleft(reversed(self._queue))
        self._queue.clear()
        self._flush_pending()

    def _flush_pending(self) -> None:
        if self.running:
            self.spool_writer.flush()

    def _appended(self) -> None:
        """An append is done: the writer may read the spool, the next rows may go."""
        self._wake()
        self._flush_pending()

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
                    self._backoff.reset()
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
        first = self._backoff.attempts == 0
        self.last_error = failure.getErrorMessage()[:500] or failure.type.__name__
        if self.connected or first:
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
        return self._backoff.next_delay()

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
        self._backoff.reset()
        if batch.end is not None:
            end = batch.end
            if found:  # written before a restart: trust the position stored with it
                end = parse_position(found)
            yield self.spool_writer.call(self.spool.commit, end, len(batch.rows))
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
        read = yield self.spool_writer.call(self.spool.read, size)
        if read is None:
            if not self._pending and not self.spool_writer.appending and self.running:
                self._spooling = False
                self.log.info("history: spool empty, writing directly again")
            return None
        # After a restart the first spool batch may already be in the database.
        return _Batch(read.batch_id, read.rows, read.end, uncertain=True)
