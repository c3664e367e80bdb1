"""Redis Sentinel end to end: the pool follows a failover after the master is SIGKILLed.

A real setup (master, replica, three Sentinels with ``--sentinel``, quorum 2,
down-after-milliseconds 400) started from the ``redis-server`` binary. A writer appends
a sequence number every 20 ms through `RedisClient` on a ``sentinel://`` address; the
master is killed mid-stream. Measured: the time from the kill to the first write the new
master acknowledges (issue 14's target: within 5 s), and which acknowledged writes the
asynchronous replication lost.
"""

from __future__ import annotations

import json
from typing import Any

import txredisapi
from twisted.internet import reactor, task, threads
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.logger import Logger
from twisted.trial.unittest import TestCase

from pydatacoll.config import parse_redis_url
from pydatacoll.errors import StoreUnavailable
from pydatacoll.store.redis import RedisClient
from pydatacoll.store.sentinel import MasterResolver, client_endpoint
from pydatacoll.testing.sentinel import SentinelSetup

TARGET_SECONDS = 5.0


def _settle() -> Deferred[None]:
    # txredisapi delivers a reply that raced the close on the next turn: let it land.
    return task.deferLater(reactor, 0.1, lambda: None)


class SentinelFailoverTests(TestCase):
    timeout = 90
    log = Logger()

    @inlineCallbacks
    def setUp(self) -> Any:
        self.setup = SentinelSetup()
        self.addCleanup(self.setup.stop)
        yield threads.deferToThread(self.setup.start)
        self.address = parse_redis_url(self.setup.url)

    @inlineCallbacks
    def test_writes_resume_after_the_master_is_killed(self) -> Any:
        client = RedisClient(self.address, timeout=1.0, pool_size=2)
        client.startService()
        self.addCleanup(_settle)
        self.addCleanup(client.stopService)
        yield client.when_connected()
        self.assertEqual((yield client.resolver.master()), ("127.0.0.1", self.setup.master_port))

        acked: list[tuple[int, float]] = []  # (sequence, reactor time of the reply)
        failures = []
        sequence = iter(range(1, 10**9))

        def write() -> None:
            n = next(sequence)
            d = client.call("rpush", "seq", str(n))
            d.addCallback(lambda _: acked.append((n, reactor.seconds())))
            d.addErrback(lambda f: failures.append(f.trap(StoreUnavailable, Exception)))

        writer = task.LoopingCall(write)
        writer.clock = reactor
        writer.start(0.02)
        self.addCleanup(lambda: writer.running and writer.stop())
        yield task.deferLater(reactor, 1.0, lambda: None)
        self.assertTrue(acked)

        killed_at = reactor.seconds()
        last_before = acked[-1][0]
        self.setup.kill_master()
        deadline = killed_at + 20
        while not [n for n, at in acked if at > killed_at + 0.05 and n > last_before]:
            self.assertLess(reactor.seconds(), deadline, "no write came back within 20 s")
            yield task.deferLater(reactor, 0.01, lambda: None)
        back = next(at for n, at in acked if at > killed_at + 0.05 and n > last_before)
        outage = back - killed_at
        self.log.info("sentinel failover: writes back {outage:.2f} s after SIGKILL", outage=outage)
        self.outage = outage
        writer.stop()

        # One lookup may find no healthy master while the Sentinels still settle the
        # failover (a MasterNotFoundError after SENTINEL_DELAY): ask again, a few times.
        for attempt in range(5):
            try:
                promoted = yield client.resolver.master()
                break
            except txredisapi.MasterNotFoundError:
                if attempt == 4:
                    raise
        self.assertEqual(promoted, ("127.0.0.1", self.setup.replica_port))
        self.assertLess(outage, TARGET_SECONDS)
        self.assertTrue(failures, "the pool must fail fast during the outage, not queue")

        # What the asynchronous replication lost: acknowledged by the old master, never
        # replicated before it died. What survived is in order, without gaps after the
        # promotion.
        stored = [int(n) for n in (yield client.call("lrange", "seq", 0, -1))]
        self.assertEqual(stored, sorted(stored))
        acked_numbers = [n for n, _ in acked]
        lost = sorted(set(acked_numbers) - set(stored))
        self.log.info(
            "sentinel failover: {acked} writes acknowledged, {lost} lost ({numbers})",
            acked=len(acked_numbers),
            lost=len(lost),
            numbers=lost,
        )
        self.assertTrue(all(n <= last_before for n in lost), lost)  # only pre-kill writes

    @inlineCallbacks
    def test_resolver_and_endpoint_follow_the_master(self) -> Any:
        resolver = MasterResolver(self.address, timeout=1.0)
        self.addCleanup(_settle)
        self.addCleanup(resolver.disconnect)
        first = yield resolver.master_address()
        self.assertEqual(
            (first.host, first.port, first.db), ("127.0.0.1", self.setup.master_port, 0)
        )
        endpoint = client_endpoint(reactor, self.address, 1.0, resolver)
        from twisted.internet.protocol import Factory, Protocol

        class Hello(Protocol):
            def connectionMade(self) -> None:  # noqa: N802
                self.transport.write(b"ROLE\r\n")

            def dataReceived(self, data: bytes) -> None:  # noqa: N802
                self.factory.done.callback(data)
                self.transport.loseConnection()

        factory = Factory.forProtocol(Hello)
        factory.done = Deferred()  # type: ignore[attr-defined]
        yield endpoint.connect(factory)
        self.assertIn(b"master", (yield factory.done))

        self.setup.kill_master()
        deadline = reactor.seconds() + 20
        while True:
            try:
                now = yield resolver.master()
            except Exception:
                now = None
            if now == ("127.0.0.1", self.setup.replica_port):
                break
            self.assertLess(reactor.seconds(), deadline)
            yield task.deferLater(reactor, 0.1, lambda: None)

    @inlineCallbacks
    def test_ingest_buffers_through_a_failover_and_writes_in_order(self) -> Any:
        from pydatacoll.model import Sample
        from pydatacoll.store import keys
        from pydatacoll.store.ingest import RedisIngest

        client = RedisClient(self.address, timeout=1.0, pool_size=2)
        client.startService()
        self.addCleanup(_settle)
        self.addCleanup(client.stopService)
        yield client.when_connected()
        yield client.call("set", keys.CONFIG_VERSION, "1")
        dedicated = client.dedicated()
        dedicated.startService()
        self.addCleanup(dedicated.stopService)
        yield dedicated.when_connected()
        ingest = RedisIngest(dedicated, reactor, 100000, 100000)
        ingest.settled_version = "1"  # the point counts as configured
        ingest.startService()
        self.addCleanup(ingest.stopService)

        produced = iter(range(1, 10**9))
        last = [0]

        def produce() -> None:
            n = last[0] = next(produced)
            ingest.samples_received([Sample("d", "t", "a", float(n), receive_time=n / 1000)])

        producer = task.LoopingCall(produce)
        producer.clock = reactor
        producer.start(0.02)
        yield task.deferLater(reactor, 1.0, lambda: None)
        killed_at = reactor.seconds()
        self.setup.kill_master()
        yield task.deferLater(reactor, 4.0, lambda: None)
        producer.stop()
        deadline = reactor.seconds() + 20
        while ingest.status()["buffered"] or dedicated.resolver is None:
            self.assertLess(reactor.seconds(), deadline, ingest.status())
            yield task.deferLater(reactor, 0.05, lambda: None)
        yield task.deferLater(reactor, 0.3, lambda: None)  # the last batch's reply
        entries = yield client.call(
            "execute_command", "XRANGE", keys.POINT_DATA % ("d", "t", "a"), "-", "+"
        )
        values = [int(json.loads(fields[1])["value"]) for _, fields in entries]
        first_seen = list(dict.fromkeys(values))  # a batch re-sent after a lost reply
        missing = sorted(set(range(1, last[0] + 1)) - set(values))
        self.log.info(
            "sentinel failover under ingest: {n} samples produced in {t:.1f} s around the "
            "kill, {w} stored, {m} missing ({missing}), {d} written twice, {f} write failures",
            n=last[0],
            t=reactor.seconds() - killed_at,
            w=len(first_seen),
            m=len(missing),
            missing=missing,
            d=len(values) - len(first_seen),
            f=ingest.status()["write_failures"],
        )
        self.assertEqual(first_seen, sorted(first_seen))  # in order
        self.assertGreater(ingest.status()["write_failures"], 0)  # the outage was real
        self.assertEqual(ingest.status()["dropped"], 0)
        # only what the old master acknowledged just before dying can be missing
        self.assertLessEqual(len(missing), 50, missing)

    @inlineCallbacks
    def test_subscriber_follows_the_master(self) -> Any:
        """Pub/sub on a ``sentinel://`` address: subscribed on the master, and again on
        the promoted replica after the master is SIGKILLed (no message sent after the
        resubscription is missed)."""
        from pydatacoll.store.subscriber import Subscriber

        client = RedisClient(self.address, timeout=1.0, pool_size=1)
        client.startService()
        self.addCleanup(_settle)
        self.addCleanup(client.stopService)
        yield client.when_connected()
        received: list[str] = []
        subscriptions: list[float] = []
        subscriber = Subscriber(
            reactor,
            lambda: self.address,
            lambda channel, message: received.append(message),
            channels=["CHANNEL:TEST"],
            on_subscribed=lambda: subscriptions.append(reactor.seconds()),
            name="sentinel test",
        )
        subscriber.startService()
        self.addCleanup(subscriber.stopService)
        deadline = reactor.seconds() + 10
        while not subscriptions:
            self.assertLess(reactor.seconds(), deadline, "never subscribed through Sentinel")
            yield task.deferLater(reactor, 0.05, lambda: None)
        yield client.call("publish", "CHANNEL:TEST", "before")
        # Pub/sub is at most once: a message still in flight when the master dies can be
        # lost with the connection (its RST). The kill comes once "before" has arrived.
        while "before" not in received:
            self.assertLess(reactor.seconds(), deadline, "the first message never arrived")
            yield task.deferLater(reactor, 0.05, lambda: None)
        killed_at = reactor.seconds()
        self.setup.kill_master()
        deadline = killed_at + 20
        while len(subscriptions) < 2:
            self.assertLess(reactor.seconds(), deadline, "not resubscribed after the failover")
            yield task.deferLater(reactor, 0.05, lambda: None)
        self.log.info(
            "sentinel failover: subscription back {s:.2f} s after SIGKILL",
            s=subscriptions[-1] - killed_at,
        )
        # The pool follows too; a message published on the new master arrives.
        while True:
            try:
                receivers = yield client.call("publish", "CHANNEL:TEST", "after")
            except StoreUnavailable:
                receivers = 0
            if receivers:
                break
            self.assertLess(reactor.seconds(), deadline, "publish never reached the subscriber")
            yield task.deferLater(reactor, 0.05, lambda: None)
        while "after" not in received:
            self.assertLess(reactor.seconds(), deadline)
            yield task.deferLater(reactor, 0.05, lambda: None)
        self.assertEqual(received[0], "before")
