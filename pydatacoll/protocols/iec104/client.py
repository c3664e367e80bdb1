"""The IEC 104 client: one supervised connection of our master to a controlled station.

`Iec104Client` is the service that keeps one `master.Iec104Master` connected: redundant
endpoints tried in turn, reconnects with capped exponential backoff and jitter
(`pydatacoll.retry`), a status snapshot, and the master's requests passed through
(`commands.CommandResult` with LINK_DOWN while no link is started).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from twisted.application import service
from twisted.application.internet import ClientService
from twisted.internet import defer
from twisted.internet.interfaces import (
    IReactorTCP,
    IReactorTime,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import Factory
from twisted.python.failure import Failure
from zope.interface import implementer

from pydatacoll.logs import RateLimitedLog, logger, quiet_client_service
from pydatacoll.protocols.faults import HEALTHY_AFTER, LinkBackoff
from pydatacoll.protocols.iec104.asdu import (
    IEC104,
    Asdu,
    AsduParams,
)
from pydatacoll.protocols.iec104.commands import CommandResult, Outcome, StationParams
from pydatacoll.protocols.iec104.link import LinkCounters, LinkParams, LinkState
from pydatacoll.protocols.iec104.master import MAX_AWAITED_TERMINATIONS, Iec104Master
from pydatacoll.protocols.iec104.tls import TlsSettings, client_endpoint
from pydatacoll.retry import exponential

#: Reconnect delays: the first retry after 1 s, doubling to 60 s, less up to 25 %.
RETRY_INITIAL = 1.0
RETRY_MAX = 60.0
RETRY_JITTER = 0.25

#: Names other modules import from here (defined in `commands` and `master`).
__all__ = [
    "MAX_AWAITED_TERMINATIONS",
    "CommandResult",
    "Iec104Client",
    "Iec104Master",
    "Outcome",
    "RotatingEndpoint",
    "StationParams",
]


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
