"""Cluster mode end to end, with real processes: an API daemon and three collector
daemons (``twistd pydatacoll --role collector --collector-id ...``, ``[cluster] enabled``)
on one private redis-server, and a dozen Modbus devices, each on its own port of a peer
that answers Modbus TCP and counts its concurrent connections per port.

One collector is SIGKILLed: its devices must run on the others within 15 s (the takeover
time is printed), no port may ever see two connections at once, and
``GET /api/v1/collectors`` must show the right collectors before and after. Then a
fourth collector joins: the devices that move, move to it only, still one connection
per port.
"""

from __future__ import annotations

import os
import signal
import socket
import socketserver
import struct
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from pydatacoll.cluster.rendezvous import owner
from pydatacoll.testing.redis import PrivateRedis
from tests.integration.test_collector_e2e import CollectorDaemon, wait
from tests.integration.test_daemon import Daemon, request

DEVICES = [f"rtu{i:02d}" for i in range(24)]  # two dozen, as issue 14 asks
COLLECTORS = ["c1", "c2", "c3"]
TAKEOVER_LIMIT = 15.0
CLUSTER_INI = """\
[cluster]
enabled = true
lease_seconds = 10
heartbeat_seconds = 2
"""


class CountingPeer:
    """A Modbus TCP peer on its own port (one per device): it answers every register read
    with ``value`` (0 unless the test sets it), after ``delay`` seconds, and records its
    concurrent connections (the most ever, and when each began). With ``idle_timeout``
    it closes a connection that sends no request for that long, as many RTUs do."""

    def __init__(self) -> None:
        self.value = 0
        self.delay = 0.0
        self.idle_timeout: float | None = None
        self.lock = threading.Lock()
        self.open = 0
        self.most = 0
        self.accepted: list[float] = []
        peer = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                with peer.lock:
                    peer.open += 1
                    peer.most = max(peer.most, peer.open)
                    peer.accepted.append(time.monotonic())
                try:
                    self.request.settimeout(peer.idle_timeout)
                    serve_modbus(self.request, lambda: peer.value, peer.delay)
                finally:
                    with peer.lock:
                        peer.open -= 1

        socketserver.ThreadingTCPServer.allow_reuse_address = True
        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _read_exactly(sock: socket.socket, n: int) -> bytes | None:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            return None
        data += chunk
    return data


def serve_modbus(
    sock: socket.socket, value: Callable[[], int] = lambda: 0, delay: float = 0.0
) -> None:
    """Answer Modbus TCP requests until the client goes (or a timeout of the socket):
    bit reads with zeros, register reads with ``value()`` in each register, writes
    echoed; each answer ``delay`` seconds after its request."""
    try:
        while True:
            header = _read_exactly(sock, 7)
            if header is None:
                return
            transaction, protocol, length, unit = struct.unpack(">HHHB", header)
            pdu = _read_exactly(sock, length - 1)
            if pdu is None:
                return
            function = pdu[0]
            if function in (1, 2) and len(pdu) >= 5:
                count = (struct.unpack(">H", pdu[3:5])[0] + 7) // 8
                reply = bytes([function, count]) + bytes(count)
            elif function in (3, 4) and len(pdu) >= 5:
                count = struct.unpack(">H", pdu[3:5])[0]
                reply = bytes([function, 2 * count]) + struct.pack(">H", value()) * count
            elif function in (5, 6, 15, 16) and len(pdu) >= 5:
                reply = pdu[:5]
            else:
                reply = bytes([function | 0x80, 1])
            if delay:
                time.sleep(delay)
            sock.sendall(struct.pack(">HHHB", transaction, protocol, len(reply) + 1, unit) + reply)
    except OSError:
        return


def configure_devices(
    ok: Any, peers: dict[str, Any], device_ids: Any, *, scan_interval: float, timeout: float
) -> None:
    """Through the API (``ok(method, path, body)``): item "reg", and per device a Modbus
    device on its peer's port with one term ``t<device>`` reading holding register 0."""
    ok("POST", "/api/v1/items", {"id": "reg"})
    for device_id in device_ids:
        device = {
            "id": device_id,
            "protocol": "modbus",
            "ip": "127.0.0.1",
            "port": peers[device_id].port,
            "scan_interval": scan_interval,
            "timeout": timeout,
            "reconnect_initial": 0.2,
            "reconnect_max": 1,
        }
        ok("POST", "/api/v1/devices", device)
        term = f"t{device_id}"
        ok("POST", "/api/v1/terms", {"id": term, "device_id": device_id, "address": 1})
        ok(
            "POST",
            f"/api/v1/terms/{term}/items",
            {"item_id": "reg", "protocol_code": 0, "code_type": "holding"},
        )


class ClusterDaemonTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.workdir = tempfile.mkdtemp()
        self.redis = PrivateRedis()
        self.addCleanup(self.redis.stop)
        self.peers = {device_id: CountingPeer() for device_id in DEVICES}
        for peer in self.peers.values():
            self.addCleanup(peer.stop)
        self.ini = os.path.join(self.workdir, "cluster.ini")
        with open(self.ini, "w") as f:
            f.write(CLUSTER_INI)
        self.api = Daemon(self.workdir, "--role", "api", "--redis", self.redis.url)
        self.addCleanup(self.api.stop)
        self.collectors: dict[str, CollectorDaemon] = {}

    def ok(self, method: str, path: str, body: object = None) -> object:
        status, reply = request(method, self.api.base + path, body)
        self.assertIn(status, (200, 201, 204), f"{method} {path}: {status} {reply}")
        return reply

    def configure(self) -> None:
        configure_devices(self.ok, self.peers, DEVICES, scan_interval=0.5, timeout=0.5)

    def start_collector(self, collector_id: str) -> None:
        daemon = CollectorDaemon(
            self.workdir,
            "--redis",
            self.redis.url,
            "--config",
            self.ini,
            "--collector-id",
            collector_id,
        )
        self.addCleanup(daemon.stop)
        self.collectors[collector_id] = daemon

    def statuses(self) -> dict[str, dict]:
        found = {}
        for device_id in DEVICES:
            status, body = request("GET", f"{self.api.base}/api/v1/devices/{device_id}/status")
            found[device_id] = body if status == 200 else {}
        return found

    def listed(self) -> dict[str, int]:
        body = self.ok("GET", "/api/v1/collectors")
        assert isinstance(body, list)
        return {c["collector"]: c["devices"] for c in body}

    def settled(self, live: list[str]) -> dict[str, str] | None:
        """Device -> collector when each device runs online on its rendezvous owner among
        ``live``, each port holds one connection and the listed collectors are ``live``
        with those counts."""
        statuses = self.statuses()
        runs = {}
        for device_id, status in statuses.items():
            if status.get("state") != "online" or status.get("collector") != owner(device_id, live):
                return None
            if status.get("stale") or self.peers[device_id].open != 1:
                return None
            runs[device_id] = status["collector"]
        counts = {c: sum(1 for who in runs.values() if who == c) for c in live}
        if self.listed() != counts:
            return None
        return runs

    def test_sigkill_of_a_collector(self) -> None:
        self.configure()
        for collector_id in COLLECTORS:
            self.start_collector(collector_id)
        runs = wait(lambda: self.settled(COLLECTORS), 40, what="three collectors sharing")
        shares = {c: sorted(d for d, who in runs.items() if who == c) for c in COLLECTORS}
        self.assertTrue(all(shares.values()), shares)  # 24 devices: each one runs some
        victim = max(COLLECTORS, key=lambda c: len(shares[c]))
        survivors = [c for c in COLLECTORS if c != victim]
        moved = shares[victim]

        killed_at = time.monotonic()
        process = self.collectors[victim].process
        os.kill(process.pid, signal.SIGKILL)
        process.wait(10)

        def taken_over() -> float | None:
            # Each moved device's port has accepted a connection since the kill.
            times = []
            for device_id in moved:
                later = [t for t in self.peers[device_id].accepted if t > killed_at]
                if not later or self.peers[device_id].open != 1:
                    return None
                times.append(later[0] - killed_at)
            return max(times)

        takeover = wait(taken_over, TAKEOVER_LIMIT + 10, what="the takeover")
        after = wait(lambda: self.settled(survivors), 20, what="the survivors settled")
        print(
            f"\ncluster daemons: {len(moved)} devices of SIGKILLed collector {victim} "
            f"reconnected elsewhere in {takeover:.2f} s (lease 10 s, heartbeat 2 s)"
        )
        self.assertLessEqual(takeover, TAKEOVER_LIMIT)
        for device_id in moved:
            self.assertIn(after[device_id], survivors)
        for device_id in DEVICES:
            if device_id not in moved:  # the survivors' devices did not move
                self.assertEqual(after[device_id], runs[device_id])
        self.assertEqual(sorted(self.listed()), survivors)
        self.assertEqual({d: p.most for d, p in self.peers.items()}, dict.fromkeys(DEVICES, 1))

        # A fourth collector joins: only the devices it now scores highest for move, to it.
        joined_at = time.monotonic()
        self.start_collector("c4")
        members = [*survivors, "c4"]
        final = wait(lambda: self.settled(members), 30, what="the newcomer's share")
        joined = time.monotonic() - joined_at
        moved_in = sorted(d for d in DEVICES if final[d] != after[d])
        print(f"cluster daemons: a fourth collector took {len(moved_in)} devices in {joined:.2f} s")
        self.assertTrue(moved_in)
        self.assertTrue(all(final[d] == "c4" for d in moved_in), final)
        self.assertEqual({d: p.most for d, p in self.peers.items()}, dict.fromkeys(DEVICES, 1))
