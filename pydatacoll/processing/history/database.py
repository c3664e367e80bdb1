"""The history database: the samples/alarms schema over an adbapi pool (MySQL or SQLite)."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Sequence
from typing import Any
from urllib.parse import unquote, urlsplit

from twisted.enterprise import adbapi
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from pydatacoll.errors import ConfigError
from pydatacoll.interfaces import IHistoryReader
from pydatacoll.processing.history.options import HistoryOptions
from pydatacoll.processing.history.rows import Row, row_sample

try:  # PyMySQL is an install requirement, but SQLite alone must still work without it
    import pymysql
except ImportError:  # pragma: no cover
    pymysql = None


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


@implementer(IHistoryReader)
class HistoryDatabase:
    """The samples/alarms schema over one adbapi `ConnectionPool` (PyMySQL or sqlite3);
    its `read_samples` is the REST API's view of the history (`IHistoryReader`)."""

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

    def read_samples(
        self,
        point: tuple[str, str, str],
        since_ms: int | None,
        until_ms: int | None,
        limit: int,
    ) -> Deferred[list[dict[str, Any]]]:
        """`IHistoryReader`: the point's samples in API JSON shape, newest first."""
        d = self.read(point, since_ms, until_ms, limit)
        return d.addCallback(lambda rows: [row_sample(row).to_json() for row in rows])

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
