"""Alarm events of the limits plugin (``CHANNEL:ALARM``) into the history's alarms table.

Alarms are not spooled: while the database is away they are counted as failed; the limits
plugin keeps every event in its Redis stream (``XS:ALARM_LOG``) meanwhile.
"""

from __future__ import annotations

import datetime
import json
import math
from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from pydatacoll.processing.history.change_filter import is_number
from pydatacoll.processing.history.database import HistoryDatabase
from pydatacoll.processing.history.rows import milliseconds


def alarm_row(
    device_id: str,
    term_id: str,
    item_id: str,
    kind: str,
    event: str,
    value: Any,
    limit: float | None,
    time: float,
    message: str = "",
) -> tuple[Any, ...]:
    """The alarms-table row of one event (``value`` as a number when it is a finite one,
    as JSON text unless it is a float)."""
    number = float(value) if is_number(value) and math.isfinite(value) else None
    text = None if type(value) is float and number is not None else json.dumps(value)
    return (
        str(device_id),
        str(term_id),
        str(item_id),
        str(kind)[:32],
        str(event)[:8],
        number,
        text,
        None if limit is None else float(limit),
        milliseconds(time),
        str(message),
    )


class AlarmWriter:
    """Inserts alarm events, counting ``alarms_written`` / ``alarms_failed`` in
    ``counters`` (the processor's)."""

    log = Logger()

    def __init__(self, database: HistoryDatabase, counters: dict[str, int]) -> None:
        self.database = database
        self.counters = counters

    def store(
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
        """Insert one alarm event (``event`` "raise" or "clear"); the Deferred fails
        while the database is away (the caller keeps its own log)."""
        row = alarm_row(device_id, term_id, item_id, kind, event, value, limit, time, message)
        d = self.database.insert_alarm(row)

        def done(result: Any) -> Any:
            if isinstance(result, Failure):
                self.counters["alarms_failed"] += 1
            else:
                self.counters["alarms_written"] += 1
            return result

        return d.addBoth(done)

    def event_received(self, channel: str, text: str) -> None:
        """An event published on ``CHANNEL:ALARM`` (JSON text) into the alarms table."""
        try:
            event = json.loads(text)
            when = datetime.datetime.fromisoformat(event["time"]).timestamp()
            d = self.store(
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
