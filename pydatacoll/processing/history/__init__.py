"""The history processor: samples into MySQL/MariaDB (or SQLite), through an on-disk spool.

The package splits along the pipeline (docs/history.rst has the full description):
`options` (``[plugin:history]``), `change_filter` (which samples to keep), `rows` (the
database encoding), `database` (the schema over an adbapi pool, and the REST API's
`history_reader`), `processor` (the service); the spool is `pydatacoll.processing.spool`,
shared with the MQTT outbox. The names other modules use are importable from here.
"""

from pydatacoll.processing.history.change_filter import POLICIES, ChangeFilter, Policy, changed
from pydatacoll.processing.history.database import (
    INSERT_SAMPLES,
    HistoryDatabase,
    history_reader,
    is_transient,
)
from pydatacoll.processing.history.options import NAME, OPTION_DEFAULTS, HistoryOptions
from pydatacoll.processing.history.processor import HistoryProcessor
from pydatacoll.processing.history.rows import Row, row_sample, sample_row
from pydatacoll.processing.spool import FIRST_SEGMENT, Spool, SpoolBatch, parse_position

__all__ = [
    "FIRST_SEGMENT",
    "INSERT_SAMPLES",
    "NAME",
    "OPTION_DEFAULTS",
    "POLICIES",
    "ChangeFilter",
    "HistoryDatabase",
    "HistoryOptions",
    "HistoryProcessor",
    "Policy",
    "Row",
    "Spool",
    "SpoolBatch",
    "changed",
    "history_reader",
    "is_transient",
    "parse_position",
    "row_sample",
    "sample_row",
]
