"""The shared txredisapi connection pool, as a service that fails fast while Redis is away."""

from __future__ import annotations

from typing import Any

import txredisapi
from twisted.application.service import Service
from twisted.internet.defer import Deferred, fail, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from pydatacoll.config import RedisAddress
from pydatacoll.errors import StoreUnavailable
from pydatacoll.store.replies_parser import install as _fast_replies
from pydatacoll.store.sentinel import MasterResolver, sentinel_pool
from pydatacoll.store_interfaces import IRedisClient

_fast_replies()  # every Redis connection of the process: no reactor turn per bulk string

#: Longest wait (s, before jitter) between two attempts to reach Redis, for the pool and
#: every subscription: once Redis is reachable again, everything is back within it.
RECONNECT_MAX_DELAY = 2.0


@implementer(IRedisClient)
class RedisClient(Service):
    """A pool of Redis connections that reconnects by itself (txredisapi's backoff).

    `call` fails at once with `StoreUnavailable` while no connection is up, instead of
    queueing the command until Redis returns, so a request gets its 503 in time.
    ``ready`` (optional) is a callable returning a Deferred that fires when the Redis
    server can be reached (the embedded server's start).
    """

    log = Logger()

    def __init__(
        self,
        address: RedisAddress | None,
        *,
        timeout: float,
        pool_size: int,
        address_source: Any = None,
    ) -> None:
        self._address = address
        self._address_source = address_source
        self._timeout = timeout
        self._pool_size = pool_size
        self._handler: Any = None
        #: The Sentinel lookup of a ``sentinel://`` address (set when the pool opens).
        self.resolver: MasterResolver | None = None
        self._connected_waiters: list[Deferred[None]] = []

    def dedicated(self) -> RedisClient:
        """A client of one connection to the same Redis (not started).

        Commands on one connection run in the order they were sent, so several can be
        in flight without overtaking each other (the ingest path relies on it).
        """
        return RedisClient(
            self._address,
            timeout=self._timeout,
            pool_size=1,
            address_source=self._address_source,
        )

    @property
    def address(self) -> RedisAddress:
        """Where Redis is (known once the service has started)."""
        if self._address is None:
            self._address = self._address_source.address
        assert self._address is not None
        return self._address

    def startService(self) -> None:
        """Open the pool (after the embedded server, when there is one, is ready)."""
        super().startService()
        ready = self.when_ready()
        ready.addCallback(lambda _: self._connect())
        ready.addErrback(lambda f: self.log.failure("cannot connect to Redis", f))

    def when_ready(self) -> Deferred[Any]:
        """Fires when the Redis server can be reached (at once unless it is embedded)."""
        if self._address_source is not None:
            ready: Deferred[Any] = self._address_source.when_ready()
            return ready
        return succeed(None)

    def _connect(self) -> None:
        if not self.running:
            return
        address = self.address
        options = dict(
            dbid=address.db,
            poolsize=self._pool_size,
            reconnect=True,
            password=address.password,
            connectTimeout=self._timeout,
            replyTimeout=self._timeout,
            convertNumbers=False,
        )
        if address.sentinels:
            self.resolver = MasterResolver(address, timeout=self._timeout)
            self._handler = sentinel_pool(
                self.resolver,
                pool_size=self._pool_size,
                timeout=self._timeout,
                password=address.password,
            )
        elif address.path is not None:
            self._handler = txredisapi.lazyUnixConnectionPool(address.path, **options)
        else:
            self._handler = txredisapi.lazyConnectionPool(address.host, address.port, **options)
        factory = self._handler._factory
        # Before any connection is made (they are made from the reactor): every protocol
        # of the pool can send a command already in RESP form (`call_encoded`).
        factory.protocol = _encoded_capable(factory.protocol)
        if not address.sentinels:
            factory.maxDelay = RECONNECT_MAX_DELAY  # read by its retry policy at every attempt
        add_connection = factory.addConnection

        def added(conn: Any) -> None:
            add_connection(conn)
            if factory.size:
                self._pool_up()

        factory.addConnection = added  # the one hook txredisapi offers on a new connection
        keep_trying(factory, self.log)
        self.log.info("connecting to Redis at {redis}", redis=address.describe())

    def when_connected(self) -> Deferred[None]:
        """Fires when a connection of the pool is up (at once if one is).

        What needs Redis at start waits for this instead of failing and retrying later,
        so a normal start logs no "not reachable" and loads everything at once.
        """
        if self.connected:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._connected_waiters.append(d)
        return d

    def _pool_up(self) -> None:
        waiters, self._connected_waiters = self._connected_waiters, []
        for d in waiters:
            d.callback(None)

    def stopService(self) -> Deferred[None]:
        """Close every connection; fires when they are closed."""
        super().stopService()
        handler, self._handler = self._handler, None
        resolver, self.resolver = self.resolver, None
        if handler is None:
            return succeed(None)
        d: Deferred[None] = handler.disconnect()
        if resolver is not None:
            d.addBoth(lambda _: resolver.disconnect())
        d.addErrback(lambda f: self.log.failure("closing the Redis pool", f))
        return d

    @property
    def connected(self) -> bool:
        """Whether at least one connection to Redis is up."""
        return self._handler is not None and self._handler._factory.size > 0

    def call(self, command: str, *args: Any, **kwargs: Any) -> Deferred[Any]:
        """Run a txredisapi command; `StoreUnavailable` when Redis cannot be reached."""
        if not self.connected:
            return fail(StoreUnavailable("Redis is not reachable"))
        try:
            d: Deferred[Any] = getattr(self._handler, command)(*args, **kwargs)
        except txredisapi.ConnectionError:
            return fail(StoreUnavailable("Redis is not reachable"))
        return d.addErrback(_unavailable)

    def call_encoded(self, command: bytes) -> Deferred[Any]:
        """Send a whole command already in RESP form (`encode_command`, or built by a hot
        path such as the ingest's); its reply as `call` gives it."""
        if not self.connected:
            return fail(StoreUnavailable("Redis is not reachable"))
        try:
            d: Deferred[Any] = self._handler.execute_command(Encoded(command))
        except txredisapi.ConnectionError:
            return fail(StoreUnavailable("Redis is not reachable"))
        return d.addErrback(_unavailable)


class Encoded(bytes):
    """A whole command in RESP form, sent as it is (`RedisClient.call_encoded`)."""


_ENCODED_CAPABLE: dict[type, type] = {}


def _encoded_capable(protocol: type) -> type:
    """``protocol`` (a txredisapi protocol class) able to send an `Encoded` command as it
    is: txredisapi encodes every argument in Python (about 1 us each), which a batch of
    thousands of arguments cannot afford."""
    capable = _ENCODED_CAPABLE.get(protocol)
    if capable is None:

        def _build_command(self: Any, *args: Any, **kwargs: Any) -> bytes:
            if len(args) == 1 and type(args[0]) is Encoded:
                return args[0]
            built: bytes = protocol._build_command(self, *args, **kwargs)  # type: ignore[attr-defined]
            return built

        capable = type(protocol.__name__, (protocol,), {"_build_command": _build_command})
        _ENCODED_CAPABLE[protocol] = capable
    return capable


def bulk(text: str) -> str:
    """``text`` as a RESP bulk string (length in bytes), still as text."""
    size = len(text) if text.isascii() else len(text.encode())
    return f"${size}\r\n{text}\r\n"


def encode_command(*args: Any) -> bytes:
    """A command in RESP form (texts, bytes as UTF-8; numbers as their text)."""
    parts = [f"*{len(args)}\r\n".encode()]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


def decode_command(data: bytes) -> list[str]:
    """The arguments of a command in RESP form (the inverse of `encode_command`)."""
    if data[:1] != b"*":
        raise ValueError("not a RESP command")
    end = data.index(b"\r\n")
    count = int(data[1:end])
    position = end + 2
    args = []
    for _ in range(count):
        end = data.index(b"\r\n", position)
        if data[position : position + 1] != b"$":
            raise ValueError("not a RESP bulk string")
        size = int(data[position + 1 : end])
        args.append(data[end + 2 : end + 2 + size].decode())
        if data[end + 2 + size : end + 4 + size] != b"\r\n":
            raise ValueError("RESP bulk string of the wrong length")
        position = end + 4 + size
    if position != len(data):
        raise ValueError("bytes after the command")
    return args


def keep_trying(factory: Any, log: Logger) -> None:
    """Keep a txredisapi pool reconnecting after a failed AUTH or SELECT.

    txredisapi stops the whole pool's reconnection (``factory.stopTrying()``) when the
    handshake of one new connection fails, even when it failed only because Redis went
    away in the middle of it (a restart, a failover): the pool would never come back and
    the collector would stay deaf until restarted. Here ``stopTrying`` does nothing (we
    close pools with ``disconnect()``, which does not use it), so the failing slot
    reconnects on its own backoff, like any lost connection; ``connectionError`` logs
    the reason and settles the factory's first-connection Deferred, which nobody waits
    on for a lazy pool (left unsettled, it was logged as an unhandled error).
    """

    def handshake_failed(why: str) -> None:
        log.warn("Redis refused or lost a new connection ({why}); retrying", why=why)
        pending, factory.deferred = getattr(factory, "deferred", None), None
        if pending is not None and not pending.called:
            pending.addErrback(lambda _: None)
            pending.errback(StoreUnavailable(why))

    factory.stopTrying = lambda: succeed(None)
    factory.connectionError = handshake_failed


def _unavailable(failure: Failure) -> Failure:
    if failure.check(txredisapi.ConnectionError):  # TimeoutError is a ConnectionError
        raise StoreUnavailable(f"Redis is not reachable ({failure.getErrorMessage()})")
    return failure


def when_connected(redis: Any) -> Deferred[None]:
    """Fires when ``redis`` (a `RedisClient` or a stand-in) has a connection up.

    A stand-in without ``when_connected`` counts as always connected.
    """
    if getattr(redis, "connected", True) or not hasattr(redis, "when_connected"):
        return succeed(None)
    d: Deferred[None] = redis.when_connected()
    return d
