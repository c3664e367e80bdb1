"""The one Redis subscriber on a MemoryReactorClock: it connects, subscribes, hands
messages over, and retries (jittered, capped) or times out on the injected clock.
No redis-server: the test plays Redis's side of the protocol."""

from __future__ import annotations

import socket
from typing import Any

from twisted.internet.error import ConnectionDone, ConnectionRefusedError
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from pydatacoll.config import RedisAddress
from pydatacoll.retry import exponential
from pydatacoll.store import subscriber
from pydatacoll.store.redis import RECONNECT_MAX_DELAY
from pydatacoll.store.subscriber import Subscriber, default_retry_policy
from pydatacoll.store_interfaces import ISubscriber


def feed(protocol: Any, *words: str | int) -> None:
    """Redis sends an array of bulk strings (an int: an integer reply), one piece per
    call: txredisapi parses the bytes after a bulk string on the global reactor."""
    protocol.dataReceived(f"*{len(words)}\r\n".encode())
    for word in words:
        if isinstance(word, int):
            protocol.dataReceived(f":{word}\r\n".encode())
        else:
            protocol.dataReceived(f"${len(word.encode())}\r\n".encode())
            protocol.dataReceived(f"{word}\r\n".encode())


def confirm(protocol: Any) -> None:
    """Redis's replies to SUBSCRIBE C and PSUBSCRIBE P:*."""
    feed(protocol, "subscribe", "C", 1)
    feed(protocol, "psubscribe", "P:*", 2)


class SubscriberHarness(SynchronousTestCase):
    """A `Subscriber` on a MemoryReactorClock (no tests of its own)."""

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.messages: list[tuple[str, str]] = []
        self.subscriptions = 0
        self.losses = 0
        self.subscriber = Subscriber(
            self.reactor,
            lambda: RedisAddress(path="/nowhere/redis.sock"),
            lambda channel, message: self.messages.append((channel, message)),
            channels=["C"],
            patterns=["P:*"],
            on_subscribed=self.subscribed,
            on_lost=self.lost,
            connect_timeout=5.0,
            retry_policy=exponential(0.5, 2.0),
        )
        self.subscriber.startService()
        self.addCleanup(self.subscriber.stopService)

    def subscribed(self) -> None:
        self.subscriptions += 1

    def lost(self) -> None:
        self.losses += 1

    def attempts(self) -> int:
        return len(self.reactor.unixClients)

    def connect(self) -> tuple[Any, StringTransport]:
        """Accept the latest connection attempt: the protocol and its transport."""
        factory = self.reactor.unixClients[-1][1]
        protocol = factory.buildProtocol(None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        return protocol, transport


class SubscriberTests(SubscriberHarness):
    def test_interface(self) -> None:
        verifyObject(ISubscriber, self.subscriber)

    def test_subscribes_then_hands_over_messages(self) -> None:
        protocol, transport = self.connect()
        self.assertIn(b"SUBSCRIBE", transport.value())
        self.assertFalse(self.subscriber.subscribed)  # not before Redis confirmed it
        feed(protocol, "subscribe", "C", 1)
        self.assertIn(b"PSUBSCRIBE", transport.value())
        feed(protocol, "psubscribe", "P:*", 2)
        self.assertEqual((self.subscriber.subscribed, self.subscriptions), (True, 1))
        feed(protocol, "message", "C", "007")
        feed(protocol, "pmessage", "P:*", "P:1", "x")
        self.assertEqual(self.messages, [("C", "007"), ("P:1", "x")])  # text stays text

    def test_a_refused_connection_is_retried_with_capped_backoff(self) -> None:
        delays = []
        for _ in range(5):
            attempts = self.attempts()
            connector = self.reactor.unixClients[-1][1]
            connector.clientConnectionFailed(None, Failure(ConnectionRefusedError()))
            waited = 0.0
            while self.attempts() == attempts:
                self.reactor.advance(0.25)
                waited += 0.25
            delays.append(waited)
        self.assertEqual(delays, [0.5, 1.0, 2.0, 2.0, 2.0])

    def test_an_unconfirmed_subscription_times_out_and_is_tried_again(self) -> None:
        protocol, transport = self.connect()
        self.reactor.advance(4.9)
        self.assertFalse(transport.disconnecting)
        self.reactor.advance(0.2)  # no answer to SUBSCRIBE within the connect timeout
        self.assertTrue(transport.disconnecting)
        protocol.connectionLost(Failure(ConnectionDone()))
        self.reactor.advance(0.5)
        self.assertEqual(self.attempts(), 2)
        self.assertEqual(self.subscriptions, 0)

    def test_a_lost_subscription_resubscribes_and_says_so(self) -> None:
        protocol, transport = self.connect()
        confirm(protocol)
        protocol.connectionLost(Failure(ConnectionDone()))
        self.assertEqual((self.subscriber.subscribed, self.losses), (False, 1))
        self.reactor.advance(0.5)
        protocol, transport = self.connect()
        confirm(protocol)
        self.assertEqual((self.subscriber.subscribed, self.subscriptions), (True, 2))

    def test_the_default_policy_never_waits_past_the_cap(self) -> None:
        policy = default_retry_policy()
        delays = [policy(attempt) for attempt in range(1, 50)]
        self.assertLessEqual(max(delays), RECONNECT_MAX_DELAY)
        self.assertGreater(min(delays), 0)


class ChannelsChangedMidwayTests(SubscriberHarness):
    """`update_channels` while a SUBSCRIBE is in flight (a reconnection's, or another
    update's): what is asked for is subscribed on the wire, and an update fires only
    once its channels are confirmed (the formulas processor reads the stored values
    then, and would miss what is published in between)."""

    caught_up: list[str] | None = None

    def subscribed(self) -> None:
        self.subscriptions += 1
        if self.caught_up is not None:  # an owner catching up (formulas' _follow)
            self.subscriber.update_channels(self.caught_up)

    def test_a_channel_added_during_the_subscribe_round_trip_is_subscribed(self) -> None:
        self.caught_up = ["C", "D"]
        protocol, transport = self.connect()
        self.assertIn(b"SUBSCRIBE", transport.value())  # SUBSCRIBE C in flight
        self.subscriber.update_channels(["C", "D"])  # a lease taken meanwhile
        transport.clear()
        feed(protocol, "subscribe", "C", 1)
        feed(protocol, "psubscribe", "P:*", 2)
        self.assertIn(b"$9\r\nSUBSCRIBE\r\n$1\r\nD\r\n", transport.value())
        self.assertEqual(self.subscriptions, 0)  # on_subscribed once D is confirmed too
        feed(protocol, "subscribe", "D", 3)
        self.assertEqual((self.subscriber.subscribed, self.subscriptions), (True, 1))
        self.assertEqual(self.subscriber.channels, ["C", "D"])

    def test_an_update_waits_for_its_channels_asked_for_by_an_earlier_one(self) -> None:
        """Two lease gains sharing the input device E, one round trip apart."""
        protocol, transport = self.connect()
        confirm(protocol)
        transport.clear()
        first = self.subscriber.update_channels(["C", "E"])
        self.assertIn(b"E", transport.value())
        transport.clear()
        second = self.subscriber.update_channels(["C", "E"])
        self.assertEqual(transport.value(), b"")  # not asked twice
        self.assertNoResult(second)  # E is not confirmed yet
        feed(protocol, "subscribe", "E", 3)
        self.successResultOf(first)
        self.successResultOf(second)

    def test_a_channel_dropped_during_the_round_trip_is_unsubscribed(self) -> None:
        protocol, transport = self.connect()
        self.subscriber.update_channels(["D"])  # C no longer wanted, D wanted
        transport.clear()
        confirm(protocol)
        self.assertIn(b"$9\r\nSUBSCRIBE\r\n$1\r\nD\r\n", transport.value())
        feed(protocol, "subscribe", "D", 3)
        self.assertIn(b"$11\r\nUNSUBSCRIBE\r\n$1\r\nC\r\n", transport.value())
        self.assertFalse(self.subscriber.subscribed)  # not before C is gone
        feed(protocol, "unsubscribe", "C", 2)
        self.assertEqual((self.subscriber.subscribed, self.subscriptions), (True, 1))


class KeepAliveTests(SynchronousTestCase):
    """`keep_alive` on the subscription's transport: TCP keepalive on a TCP connection;
    nothing, and no error, on a Unix socket (the embedded Redis: an error there ended
    every subscription of the default daemon in its connectionMade)."""

    def transport(self, sock):
        self.addCleanup(sock.close)
        return type("Transport", (), {"getHandle": lambda _: sock})()

    def test_tcp(self):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        subscriber.keep_alive(self.transport(sock))
        self.assertEqual(sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE), 1)
        if hasattr(socket, "TCP_KEEPIDLE"):
            idle = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE)
            self.assertEqual(idle, subscriber.KEEPALIVE_IDLE)

    def test_unix_socket_is_left_alone(self):
        left, right = socket.socketpair(socket.AF_UNIX)
        self.addCleanup(right.close)
        subscriber.keep_alive(self.transport(left))  # raised EOPNOTSUPP before
        self.assertEqual(left.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE), 0)

    def test_no_socket(self):
        subscriber.keep_alive(object())  # a test transport without a handle
