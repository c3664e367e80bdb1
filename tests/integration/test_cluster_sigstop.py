"""A collector paused past its leases, end to end with real processes: an API daemon and
two collector daemons (``[cluster] enabled``, lease 10 s) on one private redis-server,
eight Modbus devices each on its own port of a peer that counts concurrent connections,
answers after 0.1 s (so that answers are in flight when the collector stops) and closes
a client silent for 3 s, as many RTUs do.

One collector is SIGSTOPped; the RTUs' values change while it is stopped; its devices
must run on the other one with the new values. Then it gets SIGCONT: it must find its
leases lost and stop its devices, and nothing it had read before the pause may be
stored after the new owner's values (its late samples are refused by the fencing
token: the count is printed); it then rejoins and takes its share back by a handover.
No port ever sees two connections at once.
"""

from __future__ import annotations

import os
import re
import signal
import tempfile
import time

from twisted.trial.unittest import SynchronousTestCase

from pydatacoll.cluster.rendezvous import owner
from pydatacoll.testing.redis import PrivateRedis
from tests.integration import test_cluster_daemons as daemons
from tests.integration.test_collector_e2e import CollectorDaemon, wait
from tests.integration.test_daemon import Daemon, request

DEVICES = [f"rtu{i}" for i in range(8)]
COLLECTORS = ["c1", "c2"]
#: A peer closes a connection that sent no request for this long (under the lease).
IDLE_TIMEOUT = 3.0


class ClusterSigstopTests(SynchronousTestCase):
    ok = daemons.ClusterDaemonTests.ok
    start_collector = daemons.ClusterDaemonTests.start_collector

    def setUp(self) -> None:
        self.workdir = tempfile.mkdtemp()
        self.redis = PrivateRedis()
        self.addCleanup(self.redis.stop)
        self.peers = {device_id: daemons.CountingPeer() for device_id in DEVICES}
        for peer in self.peers.values():
            peer.value, peer.delay, peer.idle_timeout = 1, 0.1, IDLE_TIMEOUT
            self.addCleanup(peer.stop)
        self.ini = os.path.join(self.workdir, "cluster.ini")
        with open(self.ini, "w") as f:
            f.write(daemons.CLUSTER_INI)
        self.api = Daemon(self.workdir, "--role", "api", "--redis", self.redis.url)
        self.addCleanup(self.api.stop)
        self.collectors: dict[str, CollectorDaemon] = {}

    def configure(self) -> None:
        daemons.configure_devices(self.ok, self.peers, DEVICES, scan_interval=0.25, timeout=1)

    def status(self, device_id: str) -> dict:
        status, body = request("GET", f"{self.api.base}/api/v1/devices/{device_id}/status")
        return body if status == 200 else {}

    def value(self, device_id: str) -> object:
        status, body = request("GET", f"{self.api.base}/api/v1/devices/{device_id}/values")
        return (body.get(f"t{device_id}:reg") or {}).get("value") if status == 200 else None

    def history(self, device_id: str) -> list[object]:
        """The device's stored values, oldest first."""
        path = f"/api/v1/devices/{device_id}/terms/t{device_id}/items/reg/datas?limit=5000"
        status, body = request("GET", self.api.base + path)
        self.assertEqual(status, 200)
        return [sample["value"] for sample in reversed(body)]

    def runs_on(self, device_id: str, collector_id: str, value: int) -> bool:
        status = self.status(device_id)
        return (
            status.get("state") == "online"
            and status.get("collector") == collector_id
            and not status.get("stale")
            and self.value(device_id) == value
            and self.peers[device_id].open == 1
        )

    def settled(self, live: list[str], value: int) -> dict[str, str] | None:
        runs = {}
        for device_id in DEVICES:
            expected = owner(device_id, live)
            if not self.runs_on(device_id, expected, value):
                return None
            runs[device_id] = expected
        return runs

    def test_a_collector_paused_past_its_leases_writes_nothing_and_stops(self) -> None:
        self.configure()
        for collector_id in COLLECTORS:
            self.start_collector(collector_id)
        runs = wait(lambda: self.settled(COLLECTORS, 1), 40, what="two collectors sharing")
        victim = max(COLLECTORS, key=lambda c: sum(1 for who in runs.values() if who == c))
        survivor = next(c for c in COLLECTORS if c != victim)
        moved = sorted(d for d, who in runs.items() if who == victim)
        self.assertTrue(moved)

        process = self.collectors[victim].process
        os.kill(process.pid, signal.SIGSTOP)
        self.addCleanup(lambda: process.poll() is None and os.kill(process.pid, signal.SIGCONT))
        stopped_at = time.monotonic()
        time.sleep(0.5)  # answers it asked for are still in flight, with the old value
        for peer in self.peers.values():
            peer.value = 2
        wait(
            lambda: all(self.runs_on(d, survivor, 2) for d in moved),
            30,
            what="the paused collector's devices running elsewhere",
        )
        takeover = time.monotonic() - stopped_at
        time.sleep(1.0)
        os.kill(process.pid, signal.SIGCONT)
        resumed_at = time.monotonic()
        final = wait(lambda: self.settled(COLLECTORS, 2), 40, what="the share back by handover")
        back = time.monotonic() - resumed_at
        with open(self.collectors[victim].path, encoding="utf-8", errors="replace") as f:
            log = f.read()
        refused = sum(int(n) for n in re.findall(r"(\d+) samples refused: their device", log))
        print(
            f"\ncluster SIGSTOP: {len(moved)} devices of {victim} ran on {survivor} "
            f"{takeover:.2f} s after the SIGSTOP; after SIGCONT {refused} late samples of "
            f"{victim} refused (fenced), its share back by handover in {back:.2f} s"
        )
        self.assertEqual(final, runs)
        for device_id in moved:
            # It found each lease lost and stopped the device...
            self.assertRegex(log, rf"device {device_id}: lease epoch \d+ lost: .*; stopping it")
            # ...and nothing it read before the pause was stored after the new values.
            values = self.history(device_id)
            self.assertIn(2, values)
            self.assertNotIn(1, values[values.index(2) :], f"{device_id}: {values}")
        self.assertEqual({d: p.most for d, p in self.peers.items()}, dict.fromkeys(DEVICES, 1))
