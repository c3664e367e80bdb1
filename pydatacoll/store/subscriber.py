"""A Redis pub/sub subscription that survives Redis restarts.

`Subscriber` keeps one subscriber connection open (txredisapi's reconnecting factory,
with the pool's address, password and backoff). After every (re)connection it subscribes
again to its channels and patterns and then calls ``on_subscribed``, because messages
published while the connection was down are lost and the owner must catch up (the device
manager reconciles; the API fails fast meanwhile).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import txredisapi
from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.endpoints import HostnameEndpoint, UNIXClientEndpoint
from twisted.logger import Logger

from pydatacoll.config import RedisAddress
from pydatacoll.store.redis import RECONNECT_MAX_DELAY

Handler = Callable[[str, str], None]  # (channel, message)


class _Protocol(txredisapi.SubscriberProtocol):
    def messageReceived(self, pattern: Any, channel: Any, message: Any) -> None:  # noqa: N802
        self.factory.owner._message(channel, message)

    def connectionLost(self, why: Any) -> None:  # noqa: N802
        super().connectionLost(why)
        self.factory.owner._lost(self)


class _Factory(txredisapi.SubscriberFactory):
    protocol = _Protocol

    def __init__(self, owner: Subscriber, password: str | None) -> None:
        super().__init__()
        self.owner = owner
        self.password = password
        self.convertNumbers = False  # messages stay text: "007" must not become 7
        self.maxDelay = RECONNECT_MAX_DELAY

    def addConnection(self, conn: Any) -> None:  # noqa: N802 (txredisapi API)
        super().addConnection(conn)
        if conn.connected:
            self.owner._connected(conn)


class Subscriber(Service):
    """Subscribes ``channels`` and ``patterns``; every message goes to ``handler``."""

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
        ready: Callable[[], defer.Deferred[Any]] | None = None,
        name: str = "subscriber",
    ) -> None:
        self.reactor = reactor
        self._address = address
        self.handler = handler
        self.channels = list(channels)
        self.patterns = list(patterns)
        self.on_subscribed = on_subscribed
        self.label = name
        self.subscribed = False
        self._ready = ready
        self._factory: _Factory | None = None
        self._conn: Any = None

    def startService(self) -> None:
        super().startService()
        ready = self._ready() if self._ready is not None else defer.succeed(None)
        ready.addCallback(lambda _: self._connect())
        ready.addErrback(
            lambda f: self.log.failure("{name}: Redis never came up", f, name=self.label)
        )

    def _connect(self) -> None:
        if not self.running:
            return
        address = self._address()
        if address.path is not None:
            endpoint: Any = UNIXClientEndpoint(self.reactor, address.path)
        else:
            endpoint = HostnameEndpoint(
                self.reactor, address.host or "127.0.0.1", address.port or 6379
            )
        self._factory = _Factory(self, address.password)
        self._factory.startConnecting(endpoint)

    def stopService(self) -> defer.Deferred[None]:
        super().stopService()
        factory, self._factory = self._factory, None
        self.subscribed = False
        if factory is None:
            return defer.succeed(None)
        d: defer.Deferred[None] = factory.disconnect()
        return d.addErrback(lambda f: self.log.failure("closing {name}", f, name=self.label))

    @defer.inlineCallbacks
    def update_channels(self, channels: Sequence[str]) -> Any:
        """Subscribe exactly ``channels`` from now on (and after every reconnection).

        Fires once the live connection (if any) has (un)subscribed the difference.
        """
        old, new = set(self.channels), set(channels)
        self.channels = sorted(new)
        conn = self._conn
        if conn is None or old == new:
            return
        try:
            if new - old:
                yield conn.subscribe(sorted(new - old))
            if old - new:
                yield conn.unsubscribe(sorted(old - new))
        except txredisapi.ConnectionError as exc:
            # Lost meanwhile: the reconnection subscribes every channel of the new list.
            self.log.info("{name}: subscription not changed: {error}", name=self.label, error=exc)
        except Exception:
            self.log.failure("{name}: changing the subscription failed", name=self.label)
            if conn.transport is not None:
                conn.transport.loseConnection()  # the reconnection subscribes everything

    @defer.inlineCallbacks
    def _connected(self, conn: Any) -> Any:
        self._conn = conn
        try:
            if self.channels:
                yield conn.subscribe(self.channels)
            if self.patterns:
                yield conn.psubscribe(self.patterns)
        except Exception:
            self.log.failure("{name}: subscribing failed", name=self.label)
            if conn.transport is not None:  # reconnected (and subscribed) by the factory
                conn.transport.loseConnection()
            return
        if conn is not self._conn or not self.running:
            return
        self.subscribed = True
        self.log.info("{name}: subscribed", name=self.label)
        if self.on_subscribed is not None:
            try:
                self.on_subscribed()
            except Exception:
                self.log.failure("{name}: on_subscribed failed", name=self.label)

    def _lost(self, conn: Any) -> None:
        if conn is self._conn:
            self._conn = None
            if self.subscribed:
                self.log.warn("{name}: subscription lost; reconnecting", name=self.label)
            self.subscribed = False

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
