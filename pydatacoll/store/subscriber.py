"""THE Redis pub/sub subscription of PyDataColl, kept up across Redis restarts.

`Subscriber` holds one subscriber connection, kept by a `ClientService` (injected clock,
connect timeout, jittered exponential backoff from `pydatacoll.retry`). Each new
connection SUBSCRIBEs its channels and PSUBSCRIBEs its patterns before it counts as
subscribed; then ``on_subscribed`` is called, because messages published while the
connection was down are lost and the owner must catch up (the device manager
reconciles; the reply listener lets requests be sent again). A subscription that is not
confirmed within the connect timeout closes the connection, and the next one tries again.
``update_channels`` changes the channels at any time: each connection keeps the set it
asked for, and every change (or a change made while a (re)connection's SUBSCRIBE is in
flight, before ``on_subscribed``) sends the difference to that set; an update fires once
all its channels are confirmed, including those an earlier update asked for.

Its users (device manager, reply listener, gateway, event stream, history, MQTT) hold it
as a child service; tests use the in-memory `pydatacoll.testing.memory_subscriber`.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Sequence
from typing import Any

import txredisapi
from twisted.application.internet import ClientService
from twisted.application.service import Service
from twisted.internet import defer, protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from pydatacoll.config import RedisAddress
from pydatacoll.retry import exponential
from pydatacoll.store.redis import RECONNECT_MAX_DELAY
from pydatacoll.store.sentinel import MasterResolver, client_endpoint
from pydatacoll.store_interfaces import ISubscriber

Handler = Callable[[str, str], None]  # (channel, message)

#: TCP keepalive of a subscriber connection (it sends nothing once subscribed): a Redis
#: host gone without a FIN/RST (power loss, partition, a paused VM) is noticed after
#: about IDLE + COUNT * INTERVAL seconds (25 s), and the connection counts as lost.
KEEPALIVE_IDLE, KEEPALIVE_INTERVAL, KEEPALIVE_COUNT = 10, 5, 3


def keep_alive(transport: Any) -> None:
    """TCP keepalive on ``transport`` where it is a TCP connection and the platform
    allows; nothing on a Unix socket (the embedded Redis: no host to lose silently),
    and never an error (a refusal leaves the connection as it was)."""
    handle = getattr(transport, "getHandle", None)
    sock = handle() if handle is not None else None
    if not isinstance(sock, socket.socket) or sock.family not in (
        socket.AF_INET,
        socket.AF_INET6,
    ):
        return
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        for name, value in (
            ("TCP_KEEPIDLE", KEEPALIVE_IDLE),
            ("TCP_KEEPINTVL", KEEPALIVE_INTERVAL),
            ("TCP_KEEPCNT", KEEPALIVE_COUNT),
        ):
            option = getattr(socket, name, None)
            if option is not None:
                sock.setsockopt(socket.IPPROTO_TCP, option, value)
    except OSError:
        return


#: First delay (s) before connecting again; it doubles up to RECONNECT_MAX_DELAY.
RECONNECT_INITIAL_DELAY = 0.5
#: Seconds to connect and confirm the subscription before the attempt counts as failed.
CONNECT_TIMEOUT = 5.0


def default_retry_policy() -> Callable[[int], float]:
    """0.5 s doubling to ``RECONNECT_MAX_DELAY``, less up to half of it at random: a fleet
    of subscribers cut off together spreads out, and none waits longer than the cap."""
    return exponential(RECONNECT_INITIAL_DELAY, RECONNECT_MAX_DELAY, jitter=0.5)


class _Protocol(txredisapi.SubscriberProtocol):
    """A txredisapi subscriber connection that hands everything to its `Subscriber`."""

    subscriber: Subscriber
    #: The channels asked for on this connection (SUBSCRIBE sent, confirmed or not), as
    #: opposed to `Subscriber.channels`, the channels wanted: every change is the
    #: difference between the two, so nothing asked for midway is left out.
    wire: set[str]
    #: The channels whose SUBSCRIBE is in flight, each with the updates waiting for it.
    inflight: dict[str, list[defer.Deferred[None]]]

    def messageReceived(self, pattern: Any, channel: Any, message: Any) -> None:  # noqa: N802
        self.subscriber._message(channel, message)

    def connectionMade(self) -> Any:  # noqa: N802 (Twisted API)
        keep_alive(self.transport)  # a silent dead master must end the subscription
        made = super().connectionMade()  # AUTH (when there is a password) runs now
        self.subscriber._connected(self)
        return made

    def connectionLost(self, why: Failure) -> None:  # noqa: N802 (Twisted API)
        super().connectionLost(why)
        self.subscriber._lost(self)


class _Factory(protocol.Factory):
    """Builds `_Protocol`s; what txredisapi's protocol expects of its factory."""

    noisy = False
    #: txredisapi's protocol logs its own auth errors when this is set.
    isLazy = True  # noqa: N815 (txredisapi API)

    def __init__(self, subscriber: Subscriber, password: str | None) -> None:
        self.subscriber = subscriber
        self.password = password

    def buildProtocol(self, addr: Any) -> _Protocol:  # noqa: N802 (Twisted API)
        p = _Protocol(
            charset="utf-8", password=self.password, convertNumbers=False, replyTimeout=None
        )
        p.factory = self
        p.subscriber = self.subscriber
        return p

    def stopTrying(self) -> None:  # noqa: N802 (txredisapi API)
        """Called by txredisapi when AUTH fails: we keep retrying with backoff."""

    def connectionError(self, why: str) -> None:  # noqa: N802 (txredisapi API)
        """Called by txredisapi when AUTH fails."""
        self.subscriber.log.error("{name}: {why}", name=self.subscriber.label, why=why)


@implementer(ISubscriber)
class Subscriber(Service):
    """Subscribes ``channels`` and ``patterns``; every message goes to ``handler``.

    ``address`` gives the `RedisAddress` when connecting (the pool's, known once
    ``ready()`` has fired for the embedded server). ``on_subscribed`` runs after every
    (re)subscription, ``on_lost`` when a confirmed subscription is lost.
    """

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        address: Callable[[], RedisAddress],
        handler: Handler,
        *,
        channels: Sequence[str] = (),
        patterns: Sequence[str] = (),
        on_subscribed: Callable[[], None] | None = None,
        on_lost: Callable[[], None] | None = None,
        ready: Callable[[], defer.Deferred[Any]] | None = None,
        name: str = "subscriber",
        connect_timeout: float = CONNECT_TIMEOUT,
        retry_policy: Callable[[int], float] | None = None,
    ) -> None:
        self.reactor = reactor
        self._address = address
        self.handler = handler
        self.channels = list(channels)
        self.patterns = list(patterns)
        self.on_subscribed = on_subscribed
        self.on_lost = on_lost
        self.label = name
        self.subscribed = False
        self._ready = ready
        self._connect_timeout = connect_timeout
        self._retry_policy = retry_policy or default_retry_policy()
        self._service: ClientService | None = None
        #: The subscribed connection (None while there is none).
        self._conn: _Protocol | None = None
        #: The subscription being made on a new connection.
        self._subscribing: defer.Deferred[Any] | None = None
        #: For a ``sentinel://`` address: asks the Sentinels where the master is before
        #: every (re)connection, so the subscription follows a failover.
        self._resolver: MasterResolver | None = None

    # -- service ------------------------------------------------------------------------
    def startService(self) -> None:  # noqa: N802 (Twisted API)
        """Connect (once ``ready()`` has fired, when given)."""
        super().startService()
        ready = self._ready() if self._ready is not None else defer.succeed(None)
        ready.addCallback(lambda _: self._connect())
        ready.addErrback(
            lambda f: self.log.failure("{name}: Redis never came up", f, name=self.label)
        )

    def _connect(self) -> None:
        if not self.running or self._service is not None:
            return
        address = self._address()
        if address.sentinels and self._resolver is None:
            self._resolver = MasterResolver(
                address, timeout=self._connect_timeout, clock=self.reactor
            )
        endpoint = client_endpoint(self.reactor, address, self._connect_timeout, self._resolver)
        factory = _Factory(self, address.password)
        self._service = ClientService(
            endpoint,
            factory,
            retryPolicy=self._retry_policy,
            clock=self.reactor,
        )
        self._service.startService()

    def stopService(self) -> defer.Deferred[None]:  # noqa: N802 (Twisted API)
        """Close the connection; fires when it is closed."""
        super().stopService()
        service, self._service = self._service, None
        subscribing, self._subscribing = self._subscribing, None
        if subscribing is not None:
            subscribing.cancel()
        self._conn = None
        self.subscribed = False
        resolver, self._resolver = self._resolver, None
        d: defer.Deferred[Any] = defer.succeed(None) if service is None else service.stopService()
        d.addErrback(lambda f: self.log.failure("closing {name}", f, name=self.label))
        if resolver is not None:
            d.addBoth(lambda _: resolver.disconnect())
        return d

    # -- public -------------------------------------------------------------------------
    @defer.inlineCallbacks
    def update_channels(self, channels: Sequence[str]) -> Any:
        """Subscribe exactly ``channels`` from now on (and after every reconnection).

        Fires once the live connection (if any) has (un)subscribed the difference and
        every channel of ``channels`` is confirmed (including those another update asked
        for just before). With no subscribed connection it fires at once: the one being
        made subscribes the difference before ``on_subscribed``.
        """
        self.channels = sorted(set(channels))
        conn = self._conn
        if conn is None:
            return
        try:
            yield self._sync(conn)
        except txredisapi.ConnectionError as exc:
            # Lost meanwhile: the reconnection subscribes every channel of the new list.
            self.log.info("{name}: subscription not changed: {error}", name=self.label, error=exc)
        except Exception:
            self.log.failure("{name}: changing the subscription failed", name=self.label)
            self.resubscribe()

    def resubscribe(self) -> None:
        """Drop the connection: the next one subscribes everything and calls
        ``on_subscribed`` again (an owner that could not catch up tries once more)."""
        conn = self._conn
        if conn is not None and conn.transport is not None:
            conn.transport.loseConnection()

    # -- connection ---------------------------------------------------------------------
    def _connected(self, conn: _Protocol) -> None:
        """A new connection: subscribe on it, within the connect timeout.

        The subscription is made here rather than in ClientService's prepareConnection:
        a connection lost while that runs has no transition in ClientService's state
        machine. A failure or timeout closes the connection; ClientService then
        connects again after its retry delay.
        """
        d: defer.Deferred[Any] = conn.whenConnected()  # after AUTH
        d.addCallback(self._subscribe)
        d.addTimeout(self._connect_timeout, self.reactor)
        self._subscribing = d
        d.addCallbacks(self._subscribed, self._not_subscribed, errbackArgs=(conn,))
        d.addErrback(lambda f: self.log.failure("{name}: subscribing", f, name=self.label))

    @defer.inlineCallbacks
    def _subscribe(self, conn: _Protocol) -> Any:
        conn.wire, conn.inflight = set(self.channels), {}
        if self.channels:
            yield conn.subscribe(sorted(conn.wire))
        if self.patterns:
            yield conn.psubscribe(self.patterns)
        while conn.wire != set(self.channels):  # changed during the round trips
            yield self._sync(conn)
        return conn

    @defer.inlineCallbacks
    def _sync(self, conn: _Protocol) -> Any:
        """(Un)subscribe on ``conn`` the difference between the channels wanted and
        those asked for on it; fire once every wanted channel is confirmed."""
        wanted = set(self.channels)
        add, remove = sorted(wanted - conn.wire), sorted(conn.wire - wanted)
        conn.wire = wanted
        waits = []
        for channel in wanted.intersection(conn.inflight).difference(add):
            wait: defer.Deferred[None] = defer.Deferred()
            conn.inflight[channel].append(wait)
            waits.append(wait)
        waiting: dict[str, list[defer.Deferred[None]]] = {channel: [] for channel in add}
        conn.inflight.update(waiting)
        try:
            if add:
                yield conn.subscribe(add)
        finally:
            for channel, waiters in waiting.items():
                if conn.inflight.get(channel) is waiters:
                    del conn.inflight[channel]
                for wait in waiters:
                    wait.callback(None)
        if remove:
            yield conn.unsubscribe(remove)
        if waits:
            yield defer.gatherResults(waits)

    def _not_subscribed(self, failure: Failure, conn: _Protocol) -> None:
        self._subscribing = None
        if failure.check(defer.CancelledError):
            return  # lost or stopped meanwhile
        self.log.info(
            "{name}: subscribing failed ({error}); reconnecting",
            name=self.label,
            error=failure.getErrorMessage() or failure.type.__name__,
        )
        if conn.transport is not None:
            conn.transport.abortConnection()

    def _subscribed(self, conn: _Protocol) -> None:
        self._subscribing = None
        if not self.running or conn.transport is None or not conn.connected:
            return
        self._conn = conn
        self.subscribed = True
        self.log.info("{name}: subscribed", name=self.label)
        if self.on_subscribed is not None:
            try:
                self.on_subscribed()
            except Exception:
                self.log.failure("{name}: on_subscribed failed", name=self.label)

    def _lost(self, conn: _Protocol) -> None:
        subscribing, self._subscribing = self._subscribing, None
        if subscribing is not None:
            subscribing.cancel()
        if conn is not self._conn:
            return
        self._conn = None
        self.subscribed = False
        if self.running:
            self.log.warn("{name}: subscription lost; reconnecting", name=self.label)
            if self.on_lost is not None:
                try:
                    self.on_lost()
                except Exception:
                    self.log.failure("{name}: on_lost failed", name=self.label)

    def _message(self, channel: Any, message: Any) -> None:
        if isinstance(channel, bytes):
            channel = channel.decode("utf-8", "replace")
        if isinstance(message, bytes):
            message = message.decode("utf-8", "replace")
        try:
            self.handler(channel, message)
        except Exception:
            self.log.failure(
                "{name}: handling a message on {channel}", name=self.label, channel=channel
            )
