"""The Modbus TCP client: one supervised connection; `ClientService` reconnects with capped
backoff and jitter.

`ModbusClient` keeps one `link.ModbusLink` connected while it runs and sends
requests through it; with no connection a request fails at once (`ModbusNotConnected`)
rather than waiting, so a dead device never builds a backlog. Its `LinkCounters` survive
reconnects and are what the device manager shows.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime, IStreamClientEndpoint
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from pydatacoll.errors import ModbusNotConnected
from pydatacoll.logs import RateLimitedLog, quiet_client_service
from pydatacoll.protocols.faults import HEALTHY_AFTER, LinkBackoff
from pydatacoll.protocols.modbus import pdu as pdus
from pydatacoll.protocols.modbus.config import ModbusSettings
from pydatacoll.protocols.modbus.link import LinkCounters, ModbusLink
from pydatacoll.retry import exponential

#: Reconnect delays lose up to this fraction at random, so that devices cut off together
#: do not all come back in the same instant.
RETRY_JITTER = 0.25


@implementer(IStreamClientEndpoint)
class _ObservedEndpoint:
    """Wraps an endpoint to count and remember failed connection attempts."""

    def __init__(self, endpoint: IStreamClientEndpoint, link: ModbusClient) -> None:
        self._endpoint = endpoint
        self._link = link

    def connect(self, factory: Any) -> Deferred[Any]:
        self._link.stats.state = "connecting"
        d = self._endpoint.connect(factory)
        d.addErrback(self._link._connect_failed)
        return d


class _LinkFactory(Factory):
    noisy = False  # no "Starting factory <...>" per attempt; the link logs its states

    def __init__(self, link: ModbusClient) -> None:
        self.link = link

    def buildProtocol(self, addr: Any) -> ModbusLink:
        return self.link._build_protocol()


class ModbusClient(Service):
    """One device connection, kept up by a `ClientService`; requests go through it."""

    log = Logger()

    def __init__(
        self,
        endpoint: IStreamClientEndpoint,
        clock: IReactorTime,
        settings: ModbusSettings,
        *,
        name: str = "modbus",
        rng: Any = random,
        healthy_after: float = HEALTHY_AFTER,
        frame_observer: Callable[[str, bytes], None] | None = None,
    ) -> None:
        self.clock = clock
        #: Called with ``("tx" | "rx", frame)`` for every ADU (the device's frame log).
        self.frame_observer = frame_observer
        self.settings = settings
        self.name = name  # type: ignore[assignment]  # Service declares it None
        self.stats = LinkCounters()
        self.protocol: ModbusLink | None = None
        self._building: ModbusLink | None = None
        #: Retry delays grow until the link has been healthy (a valid response, then
        #: ``healthy_after`` seconds up): a peer that accepts and then answers garbage
        #: is retried ever more slowly, not every second.
        self.backoff = LinkBackoff(
            exponential(
                settings.reconnect_initial,
                settings.reconnect_max,
                settings.reconnect_factor,
                jitter=RETRY_JITTER,
                rng=rng,
            ),
            clock,
            healthy_after,
        )
        #: Per-frame complaints of all this link's connections, rate-limited.
        self.limiter = RateLimitedLog(self.log, clock)
        self._service = quiet_client_service(
            _ObservedEndpoint(endpoint, self),
            _LinkFactory(self),
            retryPolicy=self.backoff,
            clock=clock,
            prepareConnection=self._connected,
        )

    def startService(self) -> None:
        """Start connecting (and reconnecting)."""
        super().startService()
        self.stats.state = "connecting"
        self._service.startService()

    def stopService(self) -> Deferred[None]:
        """Stop reconnecting and close the link; fires when it is closed."""
        super().stopService()
        d: Deferred[None] = self._service.stopService()
        self.backoff.link_lost()

        def stopped(result: Any) -> Any:
            self.stats.state = "stopped"
            self.limiter.flush()
            return result

        return d.addBoth(stopped)

    def request(self, unit_id: int, request: pdus.Request) -> Deferred[pdus.Response]:
        """Send ``request`` on the current connection (see `ModbusLink.request`)."""
        protocol = self.protocol
        if protocol is None or not protocol.connected:
            self.stats.not_connected += 1
            d: Deferred[pdus.Response] = Deferred()
            d.errback(Failure(ModbusNotConnected(f"{self.name}: not connected")))
            return d
        return protocol.request(unit_id, request)

    def _build_protocol(self) -> ModbusLink:
        s = self.settings
        protocol = ModbusLink(
            self.clock,
            timeout=s.timeout,
            max_in_flight=s.max_in_flight,
            max_queue=s.max_queue,
            request_pause=s.request_pause,
            connect_pause=s.connect_pause,
            silent_timeouts=s.silent_timeouts,
            stats=self.stats,
            name=str(self.name),
            limiter=self.limiter,
        )
        protocol.on_answer = self.backoff.good_exchange
        if self.frame_observer is not None:
            protocol.frame_observer = self._observe_frame
        self._building = protocol
        return protocol

    def _observe_frame(self, direction: str, frame: bytes) -> None:
        assert self.frame_observer is not None
        try:
            self.frame_observer(direction, frame)
        except Exception:
            self.log.failure("{name}: frame observer failed", name=self.name)

    def _connected(self, proxy: Any) -> None:
        protocol = self._building
        self._building = None
        if protocol is None:
            return
        protocol.on_connection_lost = lambda reason, p=protocol: self._lost(p, reason)
        self.protocol = protocol
        self.stats.connected()
        self.stats.connects += 1
        if self.stats.connects > 1:
            self.stats.reconnects += 1
        self.stats.state = "connected"
        self.log.info("{name}: connected", name=self.name)

    def _lost(self, protocol: ModbusLink, reason: Failure) -> None:
        self.backoff.link_lost()
        if self.protocol is protocol:
            self.protocol = None
            if self.running:
                self.stats.state = "disconnected"
                self.log.info(
                    "{name}: link lost: {reason}", name=self.name, reason=reason.getErrorMessage()
                )

    def _connect_failed(self, failure: Failure) -> Failure:
        self.stats.state = "disconnected"
        self.stats.record_error(
            f"connect failed: {failure.getErrorMessage()}", self.clock.seconds()
        )
        return failure
