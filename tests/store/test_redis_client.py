"""The pool keeps reconnecting when a connection's handshake (AUTH/SELECT) is cut.

txredisapi stops a pool's reconnection for good when one new connection's SELECT or
AUTH fails, even if it failed only because the server went away mid-handshake (a Redis
restart or failover): the collector would stay deaf until restarted. Here a loopback
server takes each connection and closes it as soon as the client speaks (its SELECT):
the pool must keep trying, without an unhandled error.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from pydatacoll.config import parse_redis_url
from pydatacoll.store.redis import RedisClient


class _CutHandshake(Protocol):
    def connectionMade(self) -> None:  # noqa: N802 (Twisted API)
        self.factory.accepted += 1  # type: ignore[attr-defined]

    def dataReceived(self, data: bytes) -> None:  # noqa: N802 (Twisted API)
        self.transport.loseConnection()  # the SELECT never gets an answer


class _RefuseSelect(Protocol):
    def connectionMade(self) -> None:  # noqa: N802 (Twisted API)
        self.factory.accepted += 1  # type: ignore[attr-defined]

    def dataReceived(self, data: bytes) -> None:  # noqa: N802 (Twisted API)
        self.transport.write(b"-ERR DB index is out of range\r\n")


class HandshakeCutTests(TestCase):
    timeout = 30

    @inlineCallbacks
    def test_pool_keeps_reconnecting_after_a_cut_select(self) -> Any:
        factory = Factory.forProtocol(_CutHandshake)
        factory.accepted = 0  # type: ignore[attr-defined]
        port = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(factory)
        self.addCleanup(port.stopListening)
        address = parse_redis_url(f"redis://127.0.0.1:{port.getHost().port}/1")
        client = RedisClient(address, timeout=1.0, pool_size=1)
        client.startService()
        self.addCleanup(client.stopService)
        deadline = reactor.seconds() + 15
        # The first cut used to stop the pool for good: 1 connection, never another.
        while factory.accepted < 3:  # type: ignore[attr-defined]
            self.assertLess(reactor.seconds(), deadline, "the pool stopped reconnecting")
            yield deferLater(reactor, 0.05, lambda: None)
        self.assertFalse(client.connected)
        self.assertFalse(client._handler._factory.stopped)

    @inlineCallbacks
    def test_a_refused_select_retries_on_the_backoff_not_in_a_storm(self) -> Any:
        """A persistent refusal (bad db index, wrong password) keeps every slot retrying
        on its own backoff: a few attempts per second, not one per round trip."""
        factory = Factory.forProtocol(_RefuseSelect)
        factory.accepted = 0  # type: ignore[attr-defined]
        port = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(factory)
        self.addCleanup(port.stopListening)
        address = parse_redis_url(f"redis://127.0.0.1:{port.getHost().port}/1")
        client = RedisClient(address, timeout=1.0, pool_size=4)
        client.startService()
        self.addCleanup(client.stopService)
        yield deferLater(reactor, 3.0, lambda: None)
        accepted = factory.accepted  # type: ignore[attr-defined]
        self.assertGreaterEqual(accepted, 5)  # still trying after the first refusals
        self.assertLess(accepted, 40)  # 4 slots on a 1-2 s backoff (a storm made >800)
        self.assertFalse(client.connected)

    def test_stop_still_stops(self) -> Deferred[Any]:
        """Turning reconnection back on does not keep a stopped client alive."""
        address = parse_redis_url("redis://127.0.0.1:1/1")
        client = RedisClient(address, timeout=0.5, pool_size=1)
        client.startService()
        d: Deferred[Any] = client.stopService()
        return d
