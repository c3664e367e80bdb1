"""Redis through Sentinel: the master's address, asked of the Sentinels before every connection.

txredisapi's ``Sentinel(...).master_for(...)`` does the asking for the command pool; with
its defaults, writes came back 13-14 s after the master died (a 10 s master lookup and a
10 s reconnection backoff cap). `sentinel_pool` lowers both to `SENTINEL_DELAY`, which
brings writes back within about two seconds of the promotion. `MasterResolver` offers the
same lookup to whatever opens its own connections (the pub/sub `Subscriber`, the reply
listener): `client_endpoint` gives them an endpoint that follows the master.
"""

from __future__ import annotations

from typing import Any

import txredisapi
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.endpoints import HostnameEndpoint, UNIXClientEndpoint
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.logger import Logger
from zope.interface import implementer

from pydatacoll.config import RedisAddress

#: Seconds a master lookup waits for a Sentinel's answer, and the longest wait between
#: two attempts to reach the master (or a Sentinel). Small: after a failover the next
#: attempt asks again and finds the new master.
SENTINEL_DELAY = 1.0


class MasterResolver:
    """Asks the Sentinels of ``address`` where its master is now.

    Holds one lazy, reconnecting connection per Sentinel (opened at construction);
    `disconnect` closes them.
    """

    log = Logger()

    def __init__(self, address: RedisAddress, *, timeout: float, clock: Any = None) -> None:
        if not address.sentinels or address.master_name is None:
            raise ValueError(f"{address.describe()} is not a Sentinel address")
        self.address = address
        #: The lookups' timers run on ``clock`` (default: the reactor txredisapi uses).
        self.clock = clock if clock is not None else txredisapi.reactor
        self.sentinel = txredisapi.Sentinel(
            list(address.sentinels), connectTimeout=timeout, replyTimeout=SENTINEL_DELAY
        )
        self.sentinel.discovery_timeout = SENTINEL_DELAY
        for connection in self.sentinel.sentinels:
            connection._factory.maxDelay = SENTINEL_DELAY
        #: One Deferred per lookup in flight, fired when it has settled (its timer gone):
        #: `disconnect` waits for them.
        self._looking: set[Deferred[None]] = set()
        self._closed = False
        # The pool's connections look the master up through the same object: every
        # lookup is this one, whose timer never outlives it.
        self.sentinel.discover_master = self._discover  # type: ignore[method-assign]

    def master(self) -> Deferred[tuple[str, int]]:
        """The master's (host, port); fails with ``txredisapi.MasterNotFoundError`` when no
        Sentinel names a healthy master within `SENTINEL_DELAY`."""
        return self._discover(self.address.master_name or "")

    def _discover(self, service_name: str) -> Deferred[tuple[str, int]]:
        """txredisapi's ``discover_master`` with its timer kept here: txredisapi's was
        left running when a Sentinel answered at once (its ``cancel`` ran before the
        timer existed), and `disconnect` could not wait for it (a dirty reactor)."""
        result: Deferred[tuple[str, int]] = Deferred()
        if self._closed:
            result.errback(txredisapi.MasterNotFoundError("the resolver is closed"))
            return result
        settled: Deferred[None] = Deferred()
        self._looking.add(settled)

        def finish() -> None:
            if timer.active():
                timer.cancel()
            self._looking.discard(settled)
            if not settled.called:
                settled.callback(None)

        def answered(response: Any) -> None:
            if result.called:
                return
            state = response.get(service_name) if isinstance(response, dict) else None
            if state and self.sentinel.check_master_state(state):
                result.callback((state["ip"], int(state["port"])))
                finish()

        def timed_out() -> None:
            if not result.called:
                result.errback(
                    txredisapi.MasterNotFoundError(f"No master found for {service_name}")
                )
            finish()

        timer = self.clock.callLater(SENTINEL_DELAY, timed_out)
        for connection in self.sentinel.sentinels:
            connection.sentinel_masters().addCallbacks(answered, lambda _: None)
        return result

    def master_address(self) -> Deferred[RedisAddress]:
        """The master as a plain ``redis://`` `RedisAddress` (same db and password)."""
        d = self.master()
        return d.addCallback(
            lambda hp: RedisAddress(
                host=hp[0], port=hp[1], db=self.address.db, password=self.address.password
            )
        )

    def disconnect(self) -> Deferred[Any]:
        """Close the connections to the Sentinels; fires once every lookup in flight has
        settled too (its timer gone: nothing of the resolver is left in the reactor)."""
        self._closed = True
        looking = list(self._looking)
        d: Deferred[Any] = self.sentinel.disconnect()
        d.addBoth(lambda result: DeferredList(looking).addCallback(lambda _: result))
        return d


@implementer(IStreamClientEndpoint)
class MasterEndpoint:
    """A client endpoint that connects to wherever the Sentinels say the master is now."""

    def __init__(self, reactor: Any, resolver: MasterResolver, timeout: float) -> None:
        self._reactor = reactor
        self._resolver = resolver
        self._timeout = timeout

    def connect(self, protocol_factory: Any) -> Deferred[Any]:
        """Look the master up, then connect to it."""
        d = self._resolver.master()
        return d.addCallback(
            lambda hp: HostnameEndpoint(self._reactor, hp[0], hp[1], timeout=self._timeout).connect(
                protocol_factory
            )
        )


def client_endpoint(
    reactor: Any,
    address: RedisAddress,
    timeout: float,
    resolver: MasterResolver | None = None,
) -> IStreamClientEndpoint:
    """The endpoint a connection of its own (pub/sub, replies) should use for ``address``.

    A Sentinel address needs ``resolver`` (one per process is enough; the pool's is
    `pydatacoll.store.redis.RedisClient.resolver`).
    """
    if address.path is not None:
        return UNIXClientEndpoint(reactor, address.path, timeout)
    if address.sentinels:
        if resolver is None:
            raise ValueError("a Sentinel address needs a MasterResolver")
        return MasterEndpoint(reactor, resolver, timeout)
    return HostnameEndpoint(
        reactor, address.host or "127.0.0.1", address.port or 6379, timeout=timeout
    )


def sentinel_pool(
    resolver: MasterResolver, *, pool_size: int, timeout: float, password: str | None
) -> Any:
    """A txredisapi connection handler on the master of ``resolver``'s address.

    Every (re)connection asks the Sentinels first and checks ``ROLE`` is master; a
    connection to a demoted master is dropped and made again.
    """
    handler = resolver.sentinel.master_for(
        resolver.address.master_name,
        dbid=resolver.address.db,
        poolsize=pool_size,
        password=password,
        replyTimeout=timeout,
        convertNumbers=False,
    )
    handler._factory.maxDelay = SENTINEL_DELAY  # read by its retry policy at every attempt
    return handler
