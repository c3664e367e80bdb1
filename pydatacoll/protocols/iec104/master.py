"""The IEC 104 master: the controlling station's end of the link.

`Iec104Master` is the protocol: it starts data transfer, interrogates, synchronises
clocks, reads and commands, matching each reply to its request by common address, IOA
and type, and reports every outcome as a `commands.CommandResult` (never an errback).
`client.Iec104Client` keeps one connected.
"""

from __future__ import annotations

import collections
import datetime
from collections.abc import Callable
from typing import Any

import attrs
from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import LogLevel
from twisted.python.failure import Failure

from pydatacoll.errors import Iec104Error
from pydatacoll.logs import RateLimitedLog, logger
from pydatacoll.protocols.iec104.asdu import (
    COMMAND_TYPES,
    IEC104,
    MONITOR_TYPES,
    Asdu,
    AsduParams,
    Cause,
    TypeId,
    cause_name,
)
from pydatacoll.protocols.iec104.commands import (
    CommandResult,
    Outcome,
    StationParams,
    clock_sync_asdu,
    command_asdu,
    read_asdu,
    refusal,
    selected,
    system_asdu,
    ts_command_asdu,
)
from pydatacoll.protocols.iec104.link import Iec104Link, LinkCounters, LinkParams, LinkState


@attrs.define
class _Pending:
    kind: str
    deferred: defer.Deferred[CommandResult]
    request: Asdu
    call: IDelayedCall | None = None
    confirmed: bool = False
    execute: Asdu | None = None  # select-before-operate: sent after the select's ACT_CON
    objects: int = 0


#: Commands confirmed at ACT_CON whose ACT_TERM is still matched when it comes.
MAX_AWAITED_TERMINATIONS = 1024


class Iec104Master(Iec104Link):
    """The controlling station's end of the link."""

    eager = True  # commands and acknowledgements go out at once (`Iec104Link.eager`)

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
        #: Commands confirmed at ACT_CON whose ACT_TERM may still come: key -> (type id,
        #: how many) (bounded: the oldest are forgotten past MAX_AWAITED_TERMINATIONS).
        self._terminations: collections.OrderedDict[tuple[Any, ...], tuple[int, int]] = (
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
        asdu = clock_sync_asdu(common_address, when or self._now(), self.station.originator)
        return self._request(
            ("cs", common_address), "clock synchronisation", asdu, self.station.command_timeout
        )

    def read(self, common_address: int, ioa: int) -> defer.Deferred[CommandResult]:
        """Read command: fires with the station's reply (COT request) as ``reply``."""
        asdu = read_asdu(common_address, ioa, self.station.originator)
        return self._request(
            ("rd", common_address, ioa), "read", asdu, self.station.command_timeout
        )

    def test_command(self, common_address: int) -> defer.Deferred[CommandResult]:
        """C_TS_TA_1 test command with a time tag (C_TS_NA_1 is not used by 104)."""
        counter = int(self.clock.seconds()) & 0xFFFF
        asdu = ts_command_asdu(common_address, counter, self._now(), self.station.originator)
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
        request = selected(execute)
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
            request = selected(request)
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
            return command_asdu(
                common_address, ioa, type_id, value, qualifier, timestamp, self._now,
                self.station.originator,
            )  # fmt: skip
        except (ValueError, TypeError) as exc:
            return CommandResult(Outcome.REFUSED, str(exc))

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

    # --- matching replies to requests ------------------------------------------------

    def _system(self, type_id: int, common_address: int, value: int) -> Asdu:
        return system_asdu(type_id, common_address, value, self.station.originator)

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
            awaited = self._terminations.get(key) if cause == Cause.ACTIVATION_TERM else None
            if (
                awaited is not None
                and awaited[0] == asdu.type_id
                and (pending is None or not pending.confirmed)
            ):
                # The ACT_TERM of an earlier command that succeeded at its ACT_CON: expected.
                # A command sent since for this point is not answered by it (the station
                # answers in order: its ACT_CON comes after); taken for the new one, a
                # command the station then refused was reported a success.
                if awaited[1] > 1:
                    self._terminations[key] = (awaited[0], awaited[1] - 1)
                else:
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
                self._resolve(key, refusal(pending.kind, asdu))
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
        awaited = self._terminations.pop(key, None)
        count = awaited[1] + 1 if awaited is not None and awaited[0] == type_id else 1
        self._terminations[key] = (type_id, count)
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
            self._resolve(key, refusal(pending.kind, asdu))
        elif cause == Cause.ACTIVATION_CON and key[0] in ("gi", "ci", "rd"):
            # Interrogations end at ACT_TERM; a read ends with its data (COT 5), even when
            # the station first confirms it (lib60870 does, the standard does not).
            pending.confirmed = True
        elif cause in (Cause.ACTIVATION_CON, Cause.ACTIVATION_TERM):
            outcome = Outcome.TERMINATED if cause == Cause.ACTIVATION_TERM else Outcome.CONFIRMED
            self._resolve(key, CommandResult(outcome, outcome.value, cause, asdu))
