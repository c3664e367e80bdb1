"""The IEC 104 master: station services on the link, and a supervised connection.

`Iec104Master` is the protocol: it starts data transfer, interrogates, synchronises
clocks, reads and commands, matching each reply to its request by common address, IOA
and type, and reports every outcome as a `CommandResult` (never an errback).
`Iec104Client` is the service that keeps one master connected: redundant endpoints tried
in turn, reconnects with capped exponential backoff and jitter, and a status snapshot.
"""

from __future__ import annotations

import collections
import datetime
import enum
from collections.abc import Callable, Sequence
from typing import Any

import attrs
from twisted.application import service
from twisted.application.internet import ClientService
from twisted.internet import defer
from twisted.internet.interfaces import (
    IDelayedCall,
    IReactorTCP,
    IReactorTime,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import Factory
from twisted.logger import LogLevel
from twisted.python.failure import Failure
from zope.interface import implementer

from pydatacoll.errors import Iec104Error
from pydatacoll.logs import RateLimitedLog, logger, quiet_client_service
from pydatacoll.protocols.faults import HEALTHY_AFTER, LinkBackoff
from pydatacoll.protocols.iec104.asdu import (
    COMMAND_TYPES,
    IEC104,
    MONITOR_TYPES,
    SELECT,
    SELECTABLE_TYPES,
    Asdu,
    AsduParams,
    Cause,
    TypeId,
    cause_name,
)
from pydatacoll.protocols.iec104.link import Iec104Link, LinkCounters, LinkParams, LinkState
from pydatacoll.protocols.iec104.tls import TlsSettings, client_endpoint
from pydatacoll.retry import exponential

#: Reconnect delays: the first retry after 1 s, doubling to 60 s, less up to 25 %.
RETRY_INITIAL = 1.0
RETRY_MAX = 60.0
RETRY_JITTER = 0.25


class Outcome(enum.Enum):
    """How a request ended."""

    CONFIRMED = "confirmed"  #: positive ACT_CON (or the reply to a read)
    TERMINATED = "terminated"  #: ACT_TERM after a positive ACT_CON
    NEGATIVE = "negative"  #: negative confirmation, or a COT 44..47 reply
    TIMEOUT = "timeout"  #: no (complete) answer in time
    LINK_DOWN = "link_down"  #: no started link, or it went down while waiting
    BUSY = "busy"  #: a request for the same point (or service) is in flight
    REFUSED = "refused"  #: the request cannot be sent (bad value, queue full)


@attrs.frozen
class CommandResult:
    """The outcome of a request; ``cause`` is the cause of the reply that decided it."""

    outcome: Outcome
    message: str = ""
    cause: int | None = None
    reply: Asdu | None = None
    #: Objects received in answer to an interrogation.
    objects: int = 0

    @property
    def ok(self) -> bool:
        """Whether the station confirmed (or terminated) the request."""
        return self.outcome in (Outcome.CONFIRMED, Outcome.TERMINATED)

    def to_json(self) -> dict[str, Any]:
        """The result as a JSON object."""
        body: dict[str, Any] = {"outcome": self.outcome.value, "message": self.message}
        if self.cause is not None:
            body["cause"] = cause_name(self.cause)
        return body


@attrs.frozen
class StationParams:
    """What the master does with the stations behind the link (times in seconds)."""

    #: Common addresses of the stations (the terms of the device).
    common_addresses: tuple[int, ...] = (1,)
    #: Interrogate each station when data transfer starts (and after M_EI_NA_1).
    interrogate_on_start: bool = True
    #: 0 = station interrogation; 1..16 = groups; each is asked in turn.
    interrogation_groups: tuple[int, ...] = (0,)
    #: Periodic interrogation (0 = never).
    interrogation_interval: float = 0.0
    interrogation_timeout: float = 60.0
    #: Periodic counter interrogation (0 = never), with its QCC (RQT 5 = general, FRZ 0).
    counter_interval: float = 0.0
    counter_qcc: int = 5
    #: Clock synchronisation when data transfer starts, and periodically (0 = never).
    clock_sync_on_start: bool = True
    clock_sync_interval: float = 0.0
    command_timeout: float = 10.0
    #: Wait for ACT_TERM after a command's positive ACT_CON.
    wait_termination: bool = False
    originator: int = 0

    def __attrs_post_init__(self) -> None:
        for group in self.interrogation_groups:
            if not 0 <= group <= 16:
                raise ValueError(f"interrogation group {group} is not in 0..16")
        if not 0 <= self.counter_qcc <= 255:
            raise ValueError("counter_qcc must be one octet")


#: Command value conventions: double and regulating-step commands take 1/2 (or bools).
_DOUBLE = {False: 1, True: 2}
_TIMED = {45: 58, 46: 59, 47: 60, 48: 61, 49: 62, 50: 63, 51: 64}


@attrs.define
class _Pending:
    kind: str
    deferred: defer.Deferred[CommandResult]
    request: Asdu
    call: IDelayedCall | None = None
    confirmed: bool = False
    execute: Asdu | None = None  # select-before-operate: sent after the select's ACT_CON
    objects: int = 0


def _refusal(pending: _Pending, asdu: Asdu) -> CommandResult:
    """The result of a negative confirmation or a COT 44..47 reply to ``pending``."""
    negative = " (negative)" if asdu.negative else ""
    return CommandResult(
        Outcome.NEGATIVE,
        f"{pending.kind} refused: {cause_name(asdu.cause)}{negative}",
        asdu.cause,
        asdu,
    )


#: Commands confirmed at ACT_CON whose ACT_TERM is still matched when it comes.
MAX_AWAITED_TERMINATIONS = 1024


class Iec104Master(Iec104Link):
    """The controlling station's end of the link."""

    log = logger()  # drops debug: "interrogation sent", "clock sync sent"

    def __init__(
        self,
        clock: IReactorTime,
        params: LinkParams | None = None,
        station: StationParams | None = None,
        asdu_params: AsduParams = IEC104,
        name: str = "iec104",
        counters: LinkCounters | None = None,
        on_data: Callable[[Asdu], None] | None = None,
        on_event: Callable[[str, dict[str, Any]], None] | None = None,
        limiter: RateLimitedLog | None = None,
    ) -> None:
        super().__init__(clock, params, asdu_params, name, counters, limiter)
        self.station = station or StationParams()
        self.on_data = on_data
        self.on_event = on_event
        self._pending: dict[tuple[Any, ...], _Pending] = {}
        #: Commands confirmed at ACT_CON whose ACT_TERM may still come: key -> type id
        #: (bounded: the oldest are forgotten past MAX_AWAITED_TERMINATIONS).
        self._terminations: collections.OrderedDict[tuple[Any, ...], int] = (
            collections.OrderedDict()
        )
        self._periodic: list[IDelayedCall] = []
        #: Per common address: when the last interrogation completed, and its outcome.
        self.interrogations: dict[int, dict[str, Any]] = {}

    # --- link events -----------------------------------------------------------------

    def connectionMade(self) -> None:
        super().connectionMade()
        self.start_data_transfer()

    def data_transfer_started(self) -> None:
        self._event("started")
        station = self.station
        for ca in station.common_addresses:
            if station.clock_sync_on_start:
                self.clock_sync(ca)
            if station.interrogate_on_start:
                self._interrogate_all(ca)
        for interval, run in (
            (station.interrogation_interval, self._interrogate_all),
            (station.counter_interval, self._counter_all),
            (station.clock_sync_interval, self.clock_sync),
        ):
            if interval > 0:
                self._every(interval, run)

    def link_lost(self, reason: Failure) -> None:
        for call in self._periodic:
            if call.active():
                call.cancel()
        self._periodic.clear()
        pending, self._pending = self._pending, {}
        self._terminations.clear()
        for p in pending.values():
            self._finish(p, CommandResult(Outcome.LINK_DOWN, "the link went down"))
        self._event("lost", reason=reason.getErrorMessage())

    def _every(self, interval: float, run: Callable[[int], Any]) -> None:
        def tick() -> None:
            try:
                for ca in self.station.common_addresses:
                    run(ca)
            except Exception:
                self.log.failure("{name}: periodic service failed", name=self.name)
            if self.state is LinkState.STARTED:
                self._periodic.append(self.clock.callLater(interval, tick))
            self._periodic[:] = [c for c in self._periodic if c.active()]

        self._periodic.append(self.clock.callLater(interval, tick))

    def _event(self, kind: str, **data: Any) -> None:
        if self.on_event is not None:
            try:
                self.on_event(kind, data)
            except Exception:
                self.log.failure("{name}: event consumer failed", name=self.name)

    # --- services --------------------------------------------------------------------

    def interrogate(self, common_address: int, group: int = 0) -> defer.Deferred[CommandResult]:
        """Interrogate the station (group 0) or a group 1..16; done at ACT_TERM."""
        if not 0 <= group <= 16:
            return defer.succeed(CommandResult(Outcome.REFUSED, f"group {group} is not 0..16"))
        asdu = self._system(TypeId.C_IC_NA_1, common_address, 20 + group)
        d = self._request(
            ("gi", common_address), "interrogation", asdu, self.station.interrogation_timeout
        )

        def done(result: CommandResult) -> CommandResult:
            self.interrogations[common_address] = {
                "group": group,
                "outcome": result.outcome.value,
                "objects": result.objects,
                "time": self.clock.seconds(),
            }
            return result

        return d.addCallback(done)

    def counter_interrogate(
        self, common_address: int, request: int = 5, freeze: int = 0
    ) -> defer.Deferred[CommandResult]:
        """Counter interrogation: RQT 1..4 (group) or 5 (general), FRZ 0..3 (read, freeze...)."""
        if not 0 <= request <= 63 or not 0 <= freeze <= 3:
            return defer.succeed(CommandResult(Outcome.REFUSED, "RQT is 0..63 and FRZ 0..3"))
        asdu = self._system(TypeId.C_CI_NA_1, common_address, request | freeze << 6)
        return self._request(
            ("ci", common_address),
            "counter interrogation",
            asdu,
            self.station.interrogation_timeout,
        )

    def clock_sync(
        self, common_address: int, when: datetime.datetime | None = None
    ) -> defer.Deferred[CommandResult]:
        """Clock synchronisation with ``when`` (default: now on the link's clock)."""
        asdu = Asdu(
            TypeId.C_CS_NA_1,
            Cause.ACTIVATION,
            common_address,
            [0],
            [None],
            [0],
            [when or self._now()],
            originator=self.station.originator,
        )
        return self._request(
            ("cs", common_address), "clock synchronisation", asdu, self.station.command_timeout
        )

    def read(self, common_address: int, ioa: int) -> defer.Deferred[CommandResult]:
        """Read command: fires with the station's reply (COT request) as ``reply``."""
        asdu = Asdu(
            TypeId.C_RD_NA_1,
            Cause.REQUEST,
            common_address,
            [ioa],
            [None],
            [0],
            originator=self.station.originator,
        )
        return self._request(
            ("rd", common_address, ioa), "read", asdu, self.station.command_timeout
        )

    def test_command(self, common_address: int) -> defer.Deferred[CommandResult]:
        """C_TS_TA_1 test command with a time tag (C_TS_NA_1 is not used by 104)."""
        asdu = Asdu(
            TypeId.C_TS_TA_1,
            Cause.ACTIVATION,
            common_address,
            [0],
            [int(self.clock.seconds()) & 0xFFFF],
            [0],
            [self._now()],
            originator=self.station.originator,
        )
        return self._request(
            ("ts", common_address), "test command", asdu, self.station.command_timeout
        )

    def reset_process(self, common_address: int, qrp: int = 1) -> defer.Deferred[CommandResult]:
        """C_RP_NA_1 reset process (QRP 1 = general reset, 2 = reset pending events)."""
        asdu = self._system(TypeId.C_RP_NA_1, common_address, qrp)
        return self._request(
            ("rp", common_address), "reset process", asdu, self.station.command_timeout
        )

    def delay_acquisition(self, common_address: int, ms: int) -> defer.Deferred[CommandResult]:
        """C_CD_NA_1 delay acquisition with the delay in ms."""
        asdu = self._system(TypeId.C_CD_NA_1, common_address, ms)
        return self._request(
            ("cd", common_address), "delay acquisition", asdu, self.station.command_timeout
        )

    def command(
        self,
        common_address: int,
        ioa: int,
        type_id: int,
        value: Any,
        *,
        select: bool = False,
        qualifier: int = 0,
        timestamp: bool | None = None,
    ) -> defer.Deferred[CommandResult]:
        """A process command (types 45..64), direct or select-before-operate.

        ``value``: bool for single commands; 1 (off/lower) or 2 (on/higher), or a bool, for
        double and regulating-step commands; a fraction, an int or a float for the
        set-points; an int for bitstrings. ``qualifier`` is QU (0..31) or QL (0..127).
        ``timestamp`` picks the time-tagged type (default: as ``type_id`` says).
        """
        execute = self._prepare(common_address, ioa, type_id, value, qualifier, timestamp)
        if isinstance(execute, CommandResult):
            return defer.succeed(execute)
        if not select:
            return self._request(
                ("cmd", common_address, ioa), "command", execute, self.station.command_timeout
            )
        request = self._selected(execute)
        if isinstance(request, CommandResult):
            return defer.succeed(request)
        return self._request(
            ("cmd", common_address, ioa),
            "command",
            request,
            self.station.command_timeout,
            execute=execute,
        )

    def select(
        self, common_address: int, ioa: int, type_id: int, value: Any, qualifier: int = 0
    ) -> defer.Deferred[CommandResult]:
        """Only the select of a select-before-operate command (see `deactivate`)."""
        request = self._prepare(common_address, ioa, type_id, value, qualifier, None)
        if not isinstance(request, CommandResult):
            request = self._selected(request)
        if isinstance(request, CommandResult):
            return defer.succeed(request)
        return self._request(
            ("cmd", common_address, ioa), "select", request, self.station.command_timeout
        )

    def _prepare(
        self,
        common_address: int,
        ioa: int,
        type_id: int,
        value: Any,
        qualifier: int,
        timestamp: bool | None,
    ) -> Asdu | CommandResult:
        try:
            return self._command_asdu(common_address, ioa, type_id, value, qualifier, timestamp)
        except (ValueError, TypeError) as exc:
            return CommandResult(Outcome.REFUSED, str(exc))

    @staticmethod
    def _selected(request: Asdu) -> Asdu | CommandResult:
        if request.type_id not in SELECTABLE_TYPES:
            return CommandResult(Outcome.REFUSED, f"{request.type_name} has no select")
        return attrs.evolve(request, qualities=[request.qualities[0] | SELECT])

    def deactivate(
        self, common_address: int, ioa: int, type_id: int, value: Any, qualifier: int = 0
    ) -> defer.Deferred[CommandResult]:
        """Deactivate (cancel) a selected command: COT 8, done at DEACT_CON."""
        prepared = self._prepare(common_address, ioa, type_id, value, qualifier, None)
        if isinstance(prepared, CommandResult):
            return defer.succeed(prepared)
        request = attrs.evolve(prepared, cause=Cause.DEACTIVATION)
        key = ("cmd", common_address, ioa)
        waiting = self._pending.pop(key, None)
        if waiting is not None:
            self._finish(waiting, CommandResult(Outcome.REFUSED, "deactivated"))
        return self._request(key, "deactivation", request, self.station.command_timeout)

    # --- building requests -----------------------------------------------------------

    def _system(self, type_id: int, common_address: int, value: int) -> Asdu:
        return Asdu(
            type_id,
            Cause.ACTIVATION,
            common_address,
            [0],
            [value],
            [0],
            originator=self.station.originator,
        )

    def _command_asdu(
        self,
        common_address: int,
        ioa: int,
        type_id: int,
        value: Any,
        qualifier: int,
        timestamp: bool | None,
    ) -> Asdu:
        base = type_id - 13 if type_id >= 58 else type_id
        if base not in _TIMED or type_id not in COMMAND_TYPES:
            raise ValueError(f"type {type_id} is not a process command (45..51, 58..64)")
        if timestamp is not None:
            type_id = _TIMED[base] if timestamp else base
        if base == 45:
            if not isinstance(value, (bool, int)) or value not in (0, 1):
                raise ValueError("a single command takes true or false")
            value = bool(value)
        elif base in (46, 47):
            value = _DOUBLE.get(value, value) if isinstance(value, bool) else value
            if not isinstance(value, int) or value not in (1, 2):
                raise ValueError("double and step commands take 1 (off/lower) or 2 (on/higher)")
        elif base == 48:
            if not isinstance(value, (int, float)) or not -1.0 <= value <= 32767 / 32768:
                raise ValueError("a normalised set-point is in -1 .. 1-2**-15")
        elif base == 49:
            if not isinstance(value, int) or not -32768 <= value <= 32767:
                raise ValueError("a scaled set-point is an integer in -32768..32767")
        elif base == 50:
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                raise ValueError("a float set-point takes a number")
            value = float(value)
        elif base == 51:
            if not isinstance(value, int) or not 0 <= value <= 0xFFFFFFFF:
                raise ValueError("a bitstring command takes an integer in 0..2**32-1")
        if base in (45, 46, 47):
            if not 0 <= qualifier <= 31:
                raise ValueError("QU is 0..31")
            q = qualifier << 2
        elif base == 51:
            q = 0
        else:
            if not 0 <= qualifier <= 127:
                raise ValueError("QL is 0..127")
            q = qualifier
        times = [self._now()] if type_id >= 58 else None
        return Asdu(
            type_id,
            Cause.ACTIVATION,
            common_address,
            [ioa],
            [value],
            [q],
            times,
            originator=self.station.originator,
        )

    def _request(
        self,
        key: tuple[Any, ...],
        kind: str,
        asdu: Asdu,
        timeout: float,
        execute: Asdu | None = None,
    ) -> defer.Deferred[CommandResult]:
        if self.state is not LinkState.STARTED or self._closing:
            return defer.succeed(CommandResult(Outcome.LINK_DOWN, "data transfer is not started"))
        if key in self._pending:
            return defer.succeed(CommandResult(Outcome.BUSY, f"a {kind} is already in flight"))
        try:
            self.send_asdu(asdu)
        except (Iec104Error, ValueError) as exc:
            return defer.succeed(CommandResult(Outcome.REFUSED, str(exc)))
        d: defer.Deferred[CommandResult] = defer.Deferred()
        pending = _Pending(kind, d, asdu, execute=execute)
        pending.call = self.clock.callLater(timeout, self._expire, key, pending)
        self._pending[key] = pending
        self.log.debug(
            "{name}: {kind} sent: {asdu}", name=self.name, kind=kind, asdu=asdu.describe()
        )
        return d

    def _expire(self, key: tuple[Any, ...], pending: _Pending) -> None:
        if self._pending.get(key) is pending:
            del self._pending[key]
            stage = "termination" if pending.confirmed else "confirmation"
            self._finish(
                pending,
                CommandResult(
                    Outcome.TIMEOUT, f"no {stage} of the {pending.kind}", objects=pending.objects
                ),
            )

    def _finish(self, pending: _Pending, result: CommandResult) -> None:
        if pending.call is not None and pending.call.active():
            pending.call.cancel()
        if not pending.deferred.called:
            # Successes are routine (debug, not written); failures say why (info).
            ok = result.outcome in (Outcome.CONFIRMED, Outcome.TERMINATED)
            self.log.emit(
                LogLevel.debug if ok else LogLevel.info,
                "{name}: {kind} {outcome}: {message}",
                name=self.name,
                kind=pending.kind,
                outcome=result.outcome.value,
                message=result.message,
            )
            pending.deferred.callback(result)

    def _resolve(self, key: tuple[Any, ...], result: CommandResult) -> None:
        pending = self._pending.pop(key, None)
        if pending is not None:
            self._finish(pending, attrs.evolve(result, objects=pending.objects))

    def _interrogate_all(self, ca: int) -> None:
        groups = self.station.interrogation_groups

        def next_group(_: object, index: int) -> None:
            if index < len(groups) and self.state is LinkState.STARTED:
                self.interrogate(ca, groups[index]).addCallback(next_group, index + 1)

        next_group(None, 0)

    def _counter_all(self, ca: int) -> None:
        qcc = self.station.counter_qcc
        self.counter_interrogate(ca, qcc & 0x3F, qcc >> 6)

    # --- receiving -------------------------------------------------------------------

    def asdu_received(self, asdu: Asdu) -> None:
        type_id = asdu.type_id
        if type_id in MONITOR_TYPES:
            cause = asdu.cause
            if cause == Cause.REQUEST and self._pending:
                for ioa in asdu.ioas:
                    self._resolve(
                        ("rd", asdu.common_address, ioa),
                        CommandResult(Outcome.CONFIRMED, "read", cause, asdu),
                    )
            elif 20 <= cause <= 41 and self._pending:
                key = ("gi" if cause <= 36 else "ci", asdu.common_address)
                pending = self._pending.get(key)
                if pending is not None:
                    pending.objects += len(asdu.ioas)
            if self.on_data is not None:
                self.on_data(asdu)
        elif type_id in COMMAND_TYPES:
            self._command_reply(asdu)
        elif type_id == TypeId.M_EI_NA_1:
            self._end_of_initialisation(asdu)
        else:
            self._system_reply(asdu)

    def _end_of_initialisation(self, asdu: Asdu) -> None:
        ca = asdu.common_address
        self.log.info(
            "{name}: station {ca} initialised (cause of initialisation {coi})",
            name=self.name,
            ca=ca,
            coi=asdu.values[0] if asdu.values else None,
        )
        self._event("initialised", common_address=ca)
        # The station restarted: its image is stale until interrogated (IEC 101 7.4.1).
        if self.station.interrogate_on_start and ("gi", ca) not in self._pending:
            if self.station.clock_sync_on_start:
                self.clock_sync(ca)
            self._interrogate_all(ca)

    def _command_reply(self, asdu: Asdu) -> None:
        ca = asdu.common_address
        cause = asdu.cause
        for ioa in asdu.ioas:
            key = ("cmd", ca, ioa)
            pending = self._pending.get(key)
            if (
                pending is None
                and cause == Cause.ACTIVATION_TERM
                and self._terminations.get(key) == asdu.type_id
            ):
                # The ACT_TERM of a command that succeeded at its ACT_CON: expected.
                del self._terminations[key]
                self.log.debug("{name}: {asdu}", name=self.name, asdu=asdu.describe())
                continue
            if pending is None or pending.request.type_id != asdu.type_id:
                self.limiter.emit(
                    LogLevel.info,
                    "unmatched_command",
                    "{name}: unmatched command reply {asdu}",
                    name=self.name,
                    asdu=asdu.describe(),
                )
                continue
            if asdu.negative or cause >= Cause.UNKNOWN_TYPE:
                self._resolve(key, _refusal(pending, asdu))
            elif cause == Cause.ACTIVATION_CON and pending.execute is not None:
                # Select confirmed: now the execute (same pending request, same timeout).
                execute, pending.execute = pending.execute, None
                if execute.times is not None:  # the execute carries its own send time
                    execute = attrs.evolve(execute, times=[self._now()])
                pending.request = execute
                try:
                    self.send_asdu(execute)
                except (Iec104Error, ValueError) as exc:
                    self._resolve(key, CommandResult(Outcome.REFUSED, str(exc)))
            elif cause == Cause.ACTIVATION_CON and pending.kind == "deactivation":
                # Only DEACT_CON confirms a cancel; lib60870 answers ACT_CON and executes.
                self._resolve(
                    key,
                    CommandResult(
                        Outcome.NEGATIVE,
                        "the station answered the deactivation with ACT_CON, "
                        "not DEACT_CON: the command may have been executed",
                        cause,
                        asdu,
                    ),
                )
            elif cause == Cause.ACTIVATION_CON:
                if self.station.wait_termination and pending.kind == "command":
                    pending.confirmed = True
                else:
                    self._resolve(key, CommandResult(Outcome.CONFIRMED, "confirmed", cause, asdu))
                    if pending.kind == "command":
                        self._await_termination(key, asdu.type_id)
            elif cause == Cause.ACTIVATION_TERM:
                self._resolve(key, CommandResult(Outcome.TERMINATED, "terminated", cause, asdu))
            elif cause == Cause.DEACTIVATION_CON:
                self._resolve(key, CommandResult(Outcome.CONFIRMED, "deactivated", cause, asdu))
            else:
                self.log.info(
                    "{name}: command reply with cause {cause} ignored",
                    name=self.name,
                    cause=cause_name(cause),
                )

    def _await_termination(self, key: tuple[Any, ...], type_id: int) -> None:
        self._terminations.pop(key, None)
        self._terminations[key] = type_id
        while len(self._terminations) > MAX_AWAITED_TERMINATIONS:
            self._terminations.popitem(last=False)

    _SYSTEM_KEYS = {100: "gi", 101: "ci", 103: "cs", 105: "rp", 106: "cd", 107: "ts"}

    def _system_reply(self, asdu: Asdu) -> None:
        ca = asdu.common_address
        cause = asdu.cause
        if asdu.type_id == TypeId.C_RD_NA_1:
            key: tuple[Any, ...] = ("rd", ca, asdu.ioas[0] if asdu.ioas else 0)
        elif asdu.type_id in self._SYSTEM_KEYS:
            key = (self._SYSTEM_KEYS[asdu.type_id], ca)
        else:
            self.limiter.emit(
                LogLevel.info,
                "ignored",
                "{name}: {asdu} ignored",
                name=self.name,
                asdu=asdu.describe(),
            )
            return
        pending = self._pending.get(key)
        if pending is None:
            self.limiter.emit(
                LogLevel.info,
                "unmatched",
                "{name}: unmatched reply {asdu}",
                name=self.name,
                asdu=asdu.describe(),
            )
            return
        if asdu.negative or cause >= Cause.UNKNOWN_TYPE:
            self._resolve(key, _refusal(pending, asdu))
        elif cause == Cause.ACTIVATION_CON and key[0] in ("gi", "ci", "rd"):
            # Interrogations end at ACT_TERM; a read ends with its data (COT 5), even when
            # the station first confirms it (lib60870 does, the standard does not).
            pending.confirmed = True
        elif cause in (Cause.ACTIVATION_CON, Cause.ACTIVATION_TERM):
            outcome = Outcome.TERMINATED if cause == Cause.ACTIVATION_TERM else Outcome.CONFIRMED
            self._resolve(key, CommandResult(outcome, outcome.value, cause, asdu))


@implementer(IStreamClientEndpoint)
class RotatingEndpoint:
    """Redundant endpoints: each connection attempt after a failure tries the next one."""

    def __init__(self, endpoints: Sequence[Any]) -> None:
        if not endpoints:
            raise ValueError("at least one endpoint is needed")
        self.endpoints = list(endpoints)
        self.index = 0

    def connect(self, factory: Any) -> defer.Deferred[Any]:
        endpoint = self.endpoints[self.index]
        d = endpoint.connect(factory)

        def failed(reason: Failure) -> Failure:
            self.index = (self.index + 1) % len(self.endpoints)
            return reason

        return d.addErrback(failed)


class _MasterFactory(Factory):
    noisy = False  # no "Starting factory <...>" per attempt; the client logs its states

    def __init__(self, client: Iec104Client) -> None:
        self.client = client

    def buildProtocol(self, addr: Any) -> Iec104Master:
        return self.client._build(addr)


class Iec104Client(service.Service):
    """Keeps one `Iec104Master` connected and reports its state (see the module docstring)."""

    log = logger()  # drops debug: "interrogation sent", "clock sync sent"

    def __init__(
        self,
        reactor: IReactorTCP,
        endpoints: Sequence[tuple[str, int]],
        *,
        link: LinkParams | None = None,
        station: StationParams | None = None,
        asdu_params: AsduParams = IEC104,
        on_data: Callable[[Asdu], None] | None = None,
        on_state: Callable[[Iec104Client], None] | None = None,
        retry: Callable[[int], float] | None = None,
        name: str = "iec104",
        frame_observer: Callable[[str, bytes], None] | None = None,
        log_frames: bool = False,
        healthy_after: float = HEALTHY_AFTER,
        tls: TlsSettings | None = None,
    ) -> None:
        self.reactor = reactor
        self.clock: IReactorTime = reactor  # type: ignore[assignment]
        self.link = link or LinkParams()
        self.station = station or StationParams()
        self.asdu_params = asdu_params
        self.on_data = on_data
        self.on_state = on_state
        self.name = name  # type: ignore[assignment]  # Service declares it None
        self.counters = LinkCounters()
        # IEC 62351-3: with ``tls``, each endpoint is TCP + mutual TLS; its refusals and
        # failed handshakes become the link's last_error.
        self.endpoint = RotatingEndpoint(
            [
                client_endpoint(reactor, host, port, self.link.t0, tls, self._tls_error)
                for host, port in endpoints
            ]
        )
        self.addresses = [f"{host}:{port}" for host, port in endpoints]
        #: Retry delays grow until the link has been healthy (STARTDT con, then
        #: ``healthy_after`` seconds up): a peer that accepts and then misbehaves is
        #: retried ever more slowly, not every second.
        self.retry = LinkBackoff(
            retry or exponential(RETRY_INITIAL, RETRY_MAX, jitter=RETRY_JITTER),
            self.clock,
            healthy_after,
        )
        self.limiter = RateLimitedLog(self.log, self.clock)
        self.counters = LinkCounters()
        self.connects = 0
        self.state = LinkState.CONNECTING
        self.since = self.clock.seconds()
        self.protocol: Iec104Master | None = None
        self._service: ClientService | None = None
        #: Sees every frame ("rx"/"tx", octets): for a bounded frame log in Redis.
        self.frame_observer = frame_observer
        self.log_frames = log_frames

    def startService(self) -> None:
        super().startService()
        self._set_state(LinkState.CONNECTING)
        self._service = quiet_client_service(
            self.endpoint, _MasterFactory(self), retryPolicy=self.retry, clock=self.clock
        )
        self._service.startService()

    def stopService(self) -> defer.Deferred[None]:
        super().stopService()
        svc, self._service = self._service, None
        d = svc.stopService() if svc is not None else defer.succeed(None)
        self.retry.link_lost()
        self.limiter.flush()
        return d.addCallback(lambda _: self._set_state(LinkState.CLOSED))

    def _build(self, addr: Any) -> Iec104Master:
        self.connects += 1
        master = Iec104Master(
            self.clock,
            self.link,
            self.station,
            self.asdu_params,
            name=f"{self.name} {self.addresses[self.endpoint.index]}",
            counters=self.counters,
            on_data=self.on_data,
            on_event=self._link_event,
            limiter=self.limiter,
        )
        if self.frame_observer is not None or self.log_frames:
            master.frame_observer = self._observe_frame
        self.protocol = master
        self._set_state(LinkState.STOPPED)
        return master

    def _tls_error(self, message: str) -> None:
        self.counters.last_error = message

    def _observe_frame(self, direction: str, frame: bytes) -> None:
        if self.log_frames:
            self.log.debug(
                "{name} {direction} {hex}", name=self.name, direction=direction, hex=frame.hex(" ")
            )
        if self.frame_observer is not None:
            try:
                self.frame_observer(direction, frame)
            except Exception:
                self.log.failure("{name}: frame observer failed", name=self.name)

    def _link_event(self, kind: str, data: dict[str, Any]) -> None:
        if kind == "started":
            self.retry.good_exchange()
            self._set_state(LinkState.STARTED)
        elif kind == "lost":
            self.retry.link_lost()
            self.protocol = None
            self._set_state(LinkState.CONNECTING)

    def _set_state(self, state: LinkState) -> None:
        if state is not self.state:
            self.state = state
            self.since = self.clock.seconds()
            if self.on_state is not None:
                try:
                    self.on_state(self)
                except Exception:
                    self.log.failure("{name}: state consumer failed", name=self.name)

    def status(self) -> dict[str, Any]:
        """Link state, since when, where, and the counters."""
        return {
            "state": self.state.value,
            "since": self.since,
            "endpoint": self.addresses[self.endpoint.index],
            "reconnects": max(0, self.connects - 1),
            "retries_since_healthy": self.retry.failures,
            **self.counters.snapshot(),
            "interrogations": dict(self.protocol.interrogations) if self.protocol else {},
        }

    def _call(self, method: str, *args: Any, **kwargs: Any) -> defer.Deferred[CommandResult]:
        master = self.protocol
        if master is None or master.state is not LinkState.STARTED:
            return defer.succeed(CommandResult(Outcome.LINK_DOWN, "the device is offline"))
        result: defer.Deferred[CommandResult] = getattr(master, method)(*args, **kwargs)
        return result

    def command(self, *args: Any, **kwargs: Any) -> defer.Deferred[CommandResult]:
        """`Iec104Master.command` on the current link."""
        return self._call("command", *args, **kwargs)

    def read(self, common_address: int, ioa: int) -> defer.Deferred[CommandResult]:
        """`Iec104Master.read` on the current link."""
        return self._call("read", common_address, ioa)

    def interrogate(self, common_address: int, group: int = 0) -> defer.Deferred[CommandResult]:
        """`Iec104Master.interrogate` on the current link."""
        return self._call("interrogate", common_address, group)

    def counter_interrogate(self, *args: Any, **kwargs: Any) -> defer.Deferred[CommandResult]:
        """`Iec104Master.counter_interrogate` on the current link."""
        return self._call("counter_interrogate", *args, **kwargs)

    def clock_sync(self, common_address: int) -> defer.Deferred[CommandResult]:
        """`Iec104Master.clock_sync` on the current link."""
        return self._call("clock_sync", common_address)
