"""Collectors sharing devices on a real redis-server, with real TCP links to counting peers.

Three `ClusterMember`s (default lease 10 s, heartbeat 2 s) share 24 devices; running a
device means holding a TCP connection to that device's own port, where a peer counts the
concurrent connections. One collector is "SIGKILLed" (its links aborted at once, its
timers frozen: nothing is released); then a fourth joins. Checked: each device runs on
its rendezvous owner, a port never sees two connections, the takeover time is within
15 s. Each member runs on its own Clock pumped from the reactor, so a dead one's time
stops while the others' and Redis' go on.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from twisted.internet import reactor, task
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.trial.unittest import TestCase

from pydatacoll.cluster.member import ClusterMember, no_restriction
from pydatacoll.cluster.rendezvous import owner
from pydatacoll.config import parse_redis_url
from pydatacoll.store.cluster import ClusterStore, Lease
from pydatacoll.store.redis import RedisClient
from pydatacoll.testing.redis import shared_redis

DEVICES = [f"rtu{i:02d}" for i in range(24)]
TAKEOVER_LIMIT = 15.0


class _Peer(Protocol):
    def connectionMade(self) -> None:  # noqa: N802
        self.factory.open += 1
        self.factory.most = max(self.factory.most, self.factory.open)

    def connectionLost(self, reason: Any) -> None:  # noqa: N802
        self.factory.open -= 1


class PeerFactory(Factory):
    """An RTU stand-in: counts its concurrent connections."""

    protocol = _Peer

    def __init__(self) -> None:
        self.open = 0
        self.most = 0


class _Link(Protocol):
    def connectionMade(self) -> None:  # noqa: N802
        self.closed: Deferred[None] = Deferred()

    def connectionLost(self, reason: Any) -> None:  # noqa: N802
        self.closed.callback(None)


class Node:
    """A collector: a member on its own clock; a device runs as a link to its port."""

    def __init__(self, test: ClusterTakeoverTests, collector_id: str) -> None:
        self.test = test
        self.clock = task.Clock()
        self.clock.advance(reactor.seconds())
        self.alive = True
        self.links: dict[str, Any] = {}
        self.member = ClusterMember(
            test.store,
            self.clock,
            collector_id,
            lease_seconds=10.0,
            heartbeat_seconds=2.0,
            devices=lambda: no_restriction(DEVICES),
            start_device=self.start,
            stop_device=self.stop,
        )

    def start(self, device_id: str, lease: Lease) -> None:
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", self.test.ports[device_id])
        d = endpoint.connect(Factory.forProtocol(_Link))
        self.links[device_id] = d

        def connected(link: _Link) -> _Link:
            if self.links.get(device_id) is d and self.alive:
                self.links[device_id] = link
            else:
                link.transport.loseConnection()
            return link

        d.addCallback(connected)

    def stop(self, device_id: str) -> Deferred[Any] | None:
        link = self.links.pop(device_id, None)
        if isinstance(link, _Link):
            link.transport.loseConnection()
            return link.closed
        return None

    def kill(self) -> None:
        """SIGKILL: the kernel resets every link; nothing is released in Redis."""
        self.alive = False
        for link in self.links.values():
            if isinstance(link, _Link):
                link.transport.abortConnection()
        self.links.clear()

    def running(self) -> set[str]:
        return {d for d, link in self.links.items() if isinstance(link, _Link)}


class ClusterTakeoverTests(TestCase):
    timeout = 120
    log = Logger()

    @inlineCallbacks
    def setUp(self) -> Any:
        server = shared_redis()
        self.client = RedisClient(parse_redis_url(server.url), timeout=2.0, pool_size=4)
        self.client.startService()
        self.addCleanup(self.client.stopService)
        yield self.client.when_connected()
        yield self.client.call("flushdb")
        self.store = ClusterStore(self.client)
        self.peers: dict[str, PeerFactory] = {}
        self.ports: dict[str, int] = {}
        for device_id in DEVICES:
            peer = self.peers[device_id] = PeerFactory()
            port = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(peer)
            self.addCleanup(port.stopListening)
            self.ports[device_id] = port.getHost().port
        self.nodes: dict[str, Node] = {}
        self.last = reactor.seconds()
        self.pump = task.LoopingCall(self._pump)
        self.pump.start(0.02)
        self.addCleanup(self._stop_all)

    def _pump(self) -> None:
        now = reactor.seconds()
        for node in self.nodes.values():
            if node.alive:
                node.clock.advance(now - self.last)
        self.last = now

    @inlineCallbacks
    def _stop_all(self) -> Any:
        for node in self.nodes.values():
            if node.alive:
                yield node.member.stopService()
        self.pump.stop()
        yield task.deferLater(reactor, 0.1, lambda: None)

    def add(self, collector_id: str) -> Node:
        node = self.nodes[collector_id] = Node(self, collector_id)
        node.member.startService()
        return node

    def live(self) -> list[str]:
        return sorted(c for c, n in self.nodes.items() if n.alive)

    def settled(self) -> bool:
        live = self.live()
        runs = Counter(d for c in live for d in self.nodes[c].running())
        return all(
            runs[d] == 1 and d in self.nodes[owner(d, live) or ""].running() for d in DEVICES
        ) and all(p.open == 1 for p in self.peers.values())

    @inlineCallbacks
    def wait_settled(self, limit: float) -> Any:
        start = reactor.seconds()
        while not self.settled():
            self.assertLess(reactor.seconds() - start, limit, "not settled in time")
            yield task.deferLater(reactor, 0.05, lambda: None)
        return reactor.seconds() - start

    @inlineCallbacks
    def test_kill_and_join(self) -> Any:
        for c in ("a:1", "b:2", "c:3"):
            self.add(c)
        yield self.wait_settled(10)
        killed = set(self.nodes["b:2"].running())
        self.assertTrue(killed)
        self.nodes["b:2"].kill()
        takeover = yield self.wait_settled(TAKEOVER_LIMIT + 5)
        self.log.info(
            "cluster: {n} devices of a killed collector taken over in {t:.2f} s",
            n=len(killed),
            t=takeover,
        )
        self.assertLessEqual(takeover, TAKEOVER_LIMIT)

        before = {d: c for c in self.live() for d in self.nodes[c].running()}
        self.add("d:4")
        joined = yield self.wait_settled(15)
        after = {d: c for c in self.live() for d in self.nodes[c].running()}
        moved = {d for d in DEVICES if before[d] != after[d]}
        self.log.info("cluster: a join moved {n} devices in {t:.2f} s", n=len(moved), t=joined)
        self.assertTrue(moved)
        self.assertTrue(all(after[d] == "d:4" for d in moved))
        # no RTU ever saw two connections at once
        self.assertEqual({d: p.most for d, p in self.peers.items() if p.most != 1}, {})
        yield task.deferLater(reactor, 2.5, lambda: None)  # one more heartbeat of each
        listed = yield self.store.collectors()
        self.assertEqual([c.collector_id for c in listed], ["a:1", "c:3", "d:4"])
        self.assertEqual(sum(c.devices for c in listed), len(DEVICES))
