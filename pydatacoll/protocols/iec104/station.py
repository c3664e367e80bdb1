"""The controlled station's end of an IEC 104 connection (the gateway's protocol).

`Iec104Outstation` is the station end of `Iec104Link`. It answers a master from a
`IStationDatabase` (the points, their current image and what to do with a command):

- station and group interrogation (C_IC_NA_1, QOI 20..36): ACT_CON, the points of the
  group grouped by type in as few ASDUs as fit (SQ=0, each point's configured type,
  COT 20..36), ACT_TERM; integrated totals answer counter interrogation only
  (IEC 60870-5-101 7.4.6);
- counter interrogation (C_CI_NA_1, RQT 1..5): the current totals (COT 37..41); FRZ is
  confirmed but freezes nothing (the totals are the collector's latest values);
- read (C_RD_NA_1): the point with COT 5, or COT 47 negative for an unknown IOA;
- clock synchronisation (C_CS_NA_1): confirmed or refused, as the database says;
- test command (C_TS_TA_1): mirrored;
- process commands 45..51 and 58..64: select (S/E=1) is confirmed when the database
  would run the command; an execute is handed to the database and its ACT_CON waits for
  the database's answer (positive, then ACT_TERM; or negative). Unknown type: COT 44,
  unknown cause: 45, unknown common address: 46, unknown IOA or a point without
  commands: 47, all negative;
- spontaneous data: `post_events` queues changes (bounded, see `EventQueue`); they go out
  with CP56Time2a (COT 3; a point of an untimed type goes as its CP56 twin, 1 -> 30,
  13 -> 36...) as the k window allows.

Interrogation replies and events wait for the k window; nothing is handed to the link
past it, so the link's own send queue never overflows.
"""

from __future__ import annotations

import collections
import datetime
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import attrs
from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from pydatacoll.interfaces import IStationDatabase
from pydatacoll.protocols.iec104 import apci
from pydatacoll.protocols.iec104.asdu import (
    IEC104,
    SELECTABLE_TYPES,
    TYPES,
    Asdu,
    AsduParams,
    Cause,
    TypeId,
)
from pydatacoll.protocols.iec104.link import Iec104Link, LinkParams, LinkState, SendQueueFull
from pydatacoll.protocols.iec104.station_values import (  # noqa: F401 (re-exported)
    COUNTER_TYPES,
    GLOBAL_ADDRESS,
    MAX_COMMANDS,
    MAX_JOBS,
    NOT_TOPICAL,
    TIMED_TWIN,
    CommandAnswer,
    CommandRequest,
    Event,
    EventQueue,
    PointValue,
    StationPoint,
    command_value,
    events_asdu,
    grouped_asdus,
    monitor_value,
    objects_per_asdu,
    quality_bits,
)


@attrs.define
class _Selection:
    type_id: int
    at: float


class Iec104Outstation(Iec104Link):
    """The controlled station's end of one connection (see the module docstring)."""

    log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        database: IStationDatabase,
        *,
        params: LinkParams | None = None,
        asdu_params: AsduParams = IEC104,
        peer: str = "-",
        event_queue: int = 10000,
        select_timeout: float = 30.0,
        name: str = "iec104 station",
        on_lost: Callable[[Iec104Outstation], None] | None = None,
        events: EventQueue | None = None,
        on_transfer: Callable[[Iec104Outstation, bool], None] | None = None,
    ) -> None:
        super().__init__(clock, params, asdu_params, name=name)
        self.database = database
        self.peer = peer
        #: Spontaneous events waiting; shared by the connections of a redundancy group.
        self.events = events if events is not None else EventQueue(event_queue)
        #: Told of STARTDT (True) and STOPDT (False): the redundancy group's bookkeeping.
        self.on_transfer = on_transfer
        #: Events sent and not yet acknowledged: (N(S) of their I-frame, events).
        self._in_flight: collections.deque[tuple[int, list[Event]]] = collections.deque()
        self.select_timeout = select_timeout
        self.on_lost = on_lost
        self._jobs: collections.deque[Iterator[Asdu]] = collections.deque()
        self._selected: dict[int, _Selection] = {}
        self._commands: set[int] = set()  # IOAs whose command waits for the field device
        #: What this connection did, for the gateway status.
        self.commands_received = 0
        self.events_sent = 0
        self.clock_synced: datetime.datetime | None = None

    # --- link events -----------------------------------------------------------------

    def data_transfer_started(self) -> None:
        if self.on_transfer is not None:
            self.on_transfer(self, True)
        self._pump()

    def data_transfer_stopped(self) -> None:
        self._requeue_unacknowledged()
        if self.on_transfer is not None:
            self.on_transfer(self, False)

    def deactivate(self) -> None:
        """Stop sending I-frames here (another connection of the group was started).

        The link stays up (test frames go on); the master may send STARTDT again.
        """
        if self.state is LinkState.STARTED:
            self.state = LinkState.STOPPED
            self._requeue_unacknowledged()
            self.log.info("{name}: deactivated (another connection was started)", name=self.name)

    def pump(self) -> None:
        """Send what waits (events of a shared queue) as far as the window allows."""
        self._pump()

    def window_open(self) -> None:
        self._pump()

    def link_lost(self, reason: Failure) -> None:
        self._requeue_unacknowledged()
        self._jobs.clear()
        self._selected.clear()
        if self.on_lost is not None:
            self.on_lost(self)

    # --- spontaneous data ------------------------------------------------------------

    def post_events(self, events: Iterable[Event]) -> None:
        """Queue changes for spontaneous transmission (see `EventQueue` for overflow)."""
        dropped = self.events.extend(events)
        if dropped:
            self.log.warn(
                "{name}: event queue full ({size}): {dropped} oldest events dropped",
                name=self.name,
                size=self.events.size,
                dropped=dropped,
            )
        self._pump()

    def _pump(self) -> None:
        """Send interrogation replies, then events, while the k window has room."""
        if self.state is not LinkState.STARTED:
            return
        free = self.window_free()
        jobs = self._jobs
        while free > 0 and jobs:
            asdu = next(jobs[0], None)
            if asdu is None:
                jobs.popleft()
                continue
            self.send_asdu(asdu)
            free -= 1
        ca = self.database.common_address
        in_flight = self._in_flight
        self._forget_acknowledged()
        while free > 0 and not jobs and self.events:
            chunk = self.events.take_events(self.asdu_params)
            in_flight.append((self._send_seq, chunk))  # the N(S) this I-frame gets
            self.events_sent += len(chunk)
            self.send_asdu(events_asdu(chunk, ca, self.asdu_params))
            free -= 1

    def _forget_acknowledged(self) -> None:
        """Drop the in-flight events the master has acknowledged (bounded by k)."""
        in_flight = self._in_flight
        outstanding = apci.seq_distance(self._acked, self._send_seq)
        while in_flight and apci.seq_distance(self._acked, in_flight[0][0]) >= outstanding:
            in_flight.popleft()

    def _requeue_unacknowledged(self) -> None:
        """Events sent here but not acknowledged go back to the queue (for the group's
        next active connection, IEC 60870-5-104 clause 10)."""
        self._forget_acknowledged()
        if not self._in_flight:
            return
        events = [e for _, chunk in self._in_flight for e in chunk]
        self._in_flight.clear()
        dropped = self.events.requeue(events)
        self.log.info(
            "{name}: {n} unacknowledged events queued again ({dropped} dropped)",
            name=self.name,
            n=len(events),
            dropped=dropped,
        )

    # --- requests --------------------------------------------------------------------

    def asdu_received(self, asdu: Asdu) -> None:
        type_id = asdu.type_id
        ca = asdu.common_address
        if ca != self.database.common_address and not (
            ca == GLOBAL_ADDRESS and type_id in (TypeId.C_IC_NA_1, TypeId.C_CI_NA_1, 103)
        ):
            self._reply(asdu, Cause.UNKNOWN_COMMON_ADDRESS, negative=True)
            return
        if 45 <= type_id <= 64 and type_id in TYPES:
            self._command(asdu)
        elif type_id == TypeId.C_IC_NA_1:
            self._interrogation(asdu)
        elif type_id == TypeId.C_CI_NA_1:
            self._counter_interrogation(asdu)
        elif type_id == TypeId.C_RD_NA_1:
            self._read(asdu)
        elif type_id == TypeId.C_CS_NA_1:
            self._clock_sync(asdu)
        elif type_id == TypeId.C_TS_TA_1 and asdu.cause == Cause.ACTIVATION:
            self._reply(asdu, Cause.ACTIVATION_CON)
        else:
            self._reply(asdu, Cause.UNKNOWN_TYPE, negative=True)

    def _reply(self, asdu: Asdu, cause: int, negative: bool = False) -> None:
        try:
            self.send_asdu(attrs.evolve(asdu, cause=cause, negative=negative))
        except SendQueueFull:
            self.log.warn(
                "{name}: send queue full: the reply to {asdu} dropped",
                name=self.name,
                asdu=asdu.describe(),
            )

    def _answer(self, asdu: Asdu, cause: int, negative: bool = False) -> Asdu:
        return attrs.evolve(
            asdu, cause=cause, negative=negative, common_address=self.database.common_address
        )

    def _interrogation(self, asdu: Asdu) -> None:
        qoi = asdu.values[0] if asdu.values else 0
        if asdu.cause != Cause.ACTIVATION:
            self._reply(asdu, Cause.UNKNOWN_CAUSE, negative=True)
            return
        if not 20 <= qoi <= 36:
            self._reply(asdu, Cause.ACTIVATION_CON, negative=True)
            return
        group = qoi - 20
        members = [
            p
            for p in self.database.station_points().values()
            if p.type_id not in COUNTER_TYPES and (group == 0 or group in p.groups)
        ]
        self._job(asdu, members, qoi)

    def _counter_interrogation(self, asdu: Asdu) -> None:
        qcc = asdu.values[0] if asdu.values else 0
        rqt = qcc & 0x3F
        if asdu.cause != Cause.ACTIVATION:
            self._reply(asdu, Cause.UNKNOWN_CAUSE, negative=True)
            return
        if not 1 <= rqt <= 5:
            self._reply(asdu, Cause.ACTIVATION_CON, negative=True)
            return
        members = [
            p
            for p in self.database.station_points().values()
            if p.type_id in COUNTER_TYPES and (rqt == 5 or p.counter_group == rqt)
        ]
        self._job(asdu, members, 37 + rqt % 5)

    def _job(self, asdu: Asdu, members: list[StationPoint], cause: int) -> None:
        if len(self._jobs) >= MAX_JOBS:
            self._reply(asdu, Cause.ACTIVATION_CON, negative=True)
            return
        database = self.database
        params = self.asdu_params
        ca = database.common_address

        def job() -> Iterator[Asdu]:
            yield self._answer(asdu, Cause.ACTIVATION_CON)
            by_type: dict[int, list[StationPoint]] = {}
            for p in sorted(members, key=lambda p: (p.type_id, p.ioa)):
                by_type.setdefault(p.type_id, []).append(p)
            for type_id, points in by_type.items():
                # The values as they are when their ASDU is built, not when GI arrived.
                objects = [self._object(p.ioa, type_id) for p in points]
                yield from grouped_asdus(type_id, cause, ca, objects, params)
            yield self._answer(asdu, Cause.ACTIVATION_TERM)

        self._jobs.append(job())
        self._pump()

    def _object(
        self, ioa: int, type_id: int
    ) -> tuple[int, Any, int, datetime.datetime | None, Any]:
        """A point's current value as an information object of ``type_id``."""
        current = self.database.current(ioa)
        when = None
        if TYPES[type_id].time:
            seconds = current.time if current.time is not None else self.clock.seconds()
            when = datetime.datetime.fromtimestamp(seconds, self.asdu_params.tz)
        return (ioa, current.value, current.quality, when, None)

    def _read(self, asdu: Asdu) -> None:
        point = self.database.station_points().get(asdu.ioas[0]) if asdu.ioas else None
        if point is None or asdu.cause != Cause.REQUEST:
            cause = Cause.UNKNOWN_IOA if point is None else Cause.UNKNOWN_CAUSE
            self._reply(asdu, cause, negative=True)
            return
        objects = [self._object(point.ioa, point.type_id)]
        for reply in grouped_asdus(
            point.type_id, Cause.REQUEST, self.database.common_address, objects, self.asdu_params
        ):
            self._send_or_drop(reply)

    def _send_or_drop(self, asdu: Asdu) -> None:
        try:
            self.send_asdu(asdu)
        except SendQueueFull:
            self.log.warn("{name}: send queue full: {asdu} dropped", name=self.name, asdu=asdu)

    def _clock_sync(self, asdu: Asdu) -> None:
        if asdu.cause != Cause.ACTIVATION:
            self._reply(asdu, Cause.UNKNOWN_CAUSE, negative=True)
            return
        when = asdu.times[0] if asdu.times else None
        accepted = self.database.clock_sync(when, self.peer)
        if accepted:
            self.clock_synced = when
        self.log.info(
            "{name}: clock synchronisation from {peer} to {when}: {what}",
            name=self.name,
            peer=self.peer,
            when=when,
            what="accepted" if accepted else "refused",
        )
        self._reply(self._answer(asdu, asdu.cause), Cause.ACTIVATION_CON, negative=not accepted)

    # --- process commands ------------------------------------------------------------

    def _command(self, asdu: Asdu) -> None:
        self.commands_received += 1
        con = Cause.DEACTIVATION_CON if asdu.cause == Cause.DEACTIVATION else Cause.ACTIVATION_CON
        if asdu.cause not in (Cause.ACTIVATION, Cause.DEACTIVATION) or len(asdu.ioas) != 1:
            self._reply(asdu, Cause.UNKNOWN_CAUSE, negative=True)
            return
        ioa = asdu.ioas[0]
        point = self.database.station_points().get(ioa)
        if point is None or point.command_type is None:
            self._reply(asdu, Cause.UNKNOWN_IOA, negative=True)
            return
        base = asdu.type_id - 13 if asdu.type_id >= 58 else asdu.type_id
        if base != point.command_type:
            self._reply(asdu, Cause.UNKNOWN_TYPE, negative=True)
            return
        if asdu.cause == Cause.DEACTIVATION:
            selected = self._selected.pop(ioa, None) is not None
            self._reply(asdu, con, negative=not selected)
            return
        refusal = self.database.can_command(point)
        if refusal is None and ioa in self._commands:
            refusal = "a command for this IOA is still running"
        if refusal is None and len(self._commands) >= MAX_COMMANDS:
            refusal = "too many commands in progress"
        value = command_value(asdu.type_id, asdu.values[0])
        if refusal is None and value is None:
            refusal = f"value {asdu.values[0]!r} is not a valid command state"
        if refusal is not None:
            self.log.info(
                "{name}: command {type} IOA {ioa} from {peer} refused: {why}",
                name=self.name,
                type=asdu.type_name,
                ioa=ioa,
                peer=self.peer,
                why=refusal,
            )
            self._reply(asdu, con, negative=True)
            return
        now = self.clock.seconds()
        if asdu.select:
            self._selected[ioa] = _Selection(base, now)
            self._reply(asdu, con)
            return
        selection = self._selected.pop(ioa, None)
        selected = (
            selection is not None
            and selection.type_id == base
            and now - selection.at <= self.select_timeout
        )
        if base in SELECTABLE_TYPES and selection is not None and not selected:
            self._reply(asdu, con, negative=True)  # the selection expired
            return
        self._commands.add(ioa)
        request = CommandRequest(point, asdu.type_id, value, selected, self.peer)
        d = defer.maybeDeferred(self.database.execute, request)
        d.addErrback(lambda f: CommandAnswer(False, f.getErrorMessage()))
        d.addCallback(self._command_done, asdu)

    def _command_done(self, answer: CommandAnswer, asdu: Asdu) -> None:
        self._commands.discard(asdu.ioas[0])
        if self.state is LinkState.CLOSED:
            return
        self.log.info(
            "{name}: command {type} IOA {ioa} from {peer}: {outcome} {message}",
            name=self.name,
            type=asdu.type_name,
            ioa=asdu.ioas[0],
            peer=self.peer,
            outcome="confirmed" if answer.ok else "negative",
            message=answer.message,
        )
        self._reply(asdu, Cause.ACTIVATION_CON, negative=not answer.ok)
        if answer.ok:
            self._reply(asdu, Cause.ACTIVATION_TERM)
