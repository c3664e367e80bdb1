"""A formula across collectors, end to end with real processes: an API daemon and four
collector daemons (``[cluster] enabled``) on one private redis-server. The formula's two
inputs are on Modbus devices pinned to ``c1`` and ``c2`` (the ``collectors`` attribute),
its result on a device pinned to ``c3`` or ``c4``: the holder of the result device's
lease computes it from the inputs' sample channels. That holder is SIGKILLed and the
inputs change at once: the other one computes the new value within the lease bound (the
time is printed). No port ever sees two connections.
"""

from __future__ import annotations

import os
import signal
import tempfile
import time

from twisted.trial.unittest import SynchronousTestCase

from pydatacoll.cluster.rendezvous import owner
from pydatacoll.testing.redis import PrivateRedis
from tests.integration import test_cluster_daemons as daemons
from tests.integration.test_collector_e2e import CollectorDaemon, wait
from tests.integration.test_daemon import Daemon, request

PINS = {"rtua": ["c1"], "rtub": ["c2"], "calc": ["c3", "c4"]}
FORMULA = {
    "id": "sum",
    "formula": "p1 + p2",
    "device_id": "calc",
    "term_id": "tcalc",
    "item_id": "sum",
    "p1": "rtua:trtua:reg",
    "p2": "rtub:trtub:reg",
}
#: Seconds within which the formula is computed again after its holder is SIGKILLed:
#: the lease (10 s) plus a heartbeat (2 s), and one scan.
TAKEOVER_LIMIT = 15.0


class ClusterFormulaDaemonTests(SynchronousTestCase):
    ok = daemons.ClusterDaemonTests.ok
    start_collector = daemons.ClusterDaemonTests.start_collector

    def setUp(self) -> None:
        self.workdir = tempfile.mkdtemp()
        self.redis = PrivateRedis()
        self.addCleanup(self.redis.stop)
        self.peers = {device_id: daemons.CountingPeer() for device_id in PINS}
        for peer in self.peers.values():
            self.addCleanup(peer.stop)
        self.ini = os.path.join(self.workdir, "cluster.ini")
        with open(self.ini, "w") as f:
            f.write(daemons.CLUSTER_INI)
        self.api = Daemon(self.workdir, "--role", "api", "--redis", self.redis.url)
        self.addCleanup(self.api.stop)
        self.collectors: dict[str, CollectorDaemon] = {}

    def configure(self) -> None:
        self.ok("POST", "/api/v1/items", {"id": "reg"})
        self.ok("POST", "/api/v1/items", {"id": "sum"})
        for device_id, pins in PINS.items():
            self.ok(
                "POST",
                "/api/v1/devices",
                {
                    "id": device_id,
                    "protocol": "modbus",
                    "ip": "127.0.0.1",
                    "port": self.peers[device_id].port,
                    "scan_interval": 0.5,
                    "timeout": 0.5,
                    "reconnect_initial": 0.2,
                    "reconnect_max": 1,
                    "collectors": pins,
                },
            )
            term = f"t{device_id}"
            # the result's term is read once an hour: its value is the formula's
            interval = 3600 if device_id == "calc" else 0.5
            self.ok(
                "POST",
                "/api/v1/terms",
                {"id": term, "device_id": device_id, "address": 1, "scan_interval": interval},
            )
            item = "sum" if device_id == "calc" else "reg"
            self.ok(
                "POST",
                f"/api/v1/terms/{term}/items",
                {"item_id": item, "protocol_code": 0, "code_type": "holding"},
            )
        self.ok("POST", "/api/v1/formulas", FORMULA)

    def formula(self) -> dict:
        status, body = request("GET", f"{self.api.base}/api/v1/formulas/sum/status")
        return body if status == 200 and isinstance(body, dict) else {}

    def stored_sum(self) -> dict:
        status, body = request("GET", f"{self.api.base}/api/v1/devices/calc/values")
        return body.get("tcalc:sum") or {} if status == 200 and isinstance(body, dict) else {}

    def computed(self, expected: float, by: str) -> bool:
        status = self.formula()
        stored = self.stored_sum()
        return (
            status.get("state") == "ok"
            and status.get("value") == expected
            and status.get("collector") == by
            and stored.get("value") == expected
            and "calculated" in stored.get("flags", ())
        )

    def test_a_formula_over_two_collectors_survives_its_holders_sigkill(self) -> None:
        self.peers["rtua"].value, self.peers["rtub"].value = 7, 5
        self.configure()
        for collector_id in ("c1", "c2", "c3", "c4"):
            self.start_collector(collector_id)
        holder = owner("calc", ["c3", "c4"])
        other = "c4" if holder == "c3" else "c3"
        wait(lambda: self.computed(12, holder), 40, what="the formula computed by its holder")

        process = self.collectors[holder].process
        killed_at = time.monotonic()
        os.kill(process.pid, signal.SIGKILL)
        self.peers["rtua"].value = 9  # the inputs change as the holder dies
        process.wait(10)
        wait(lambda: self.computed(14, other), TAKEOVER_LIMIT + 15, what="the takeover")
        takeover = time.monotonic() - killed_at
        print(
            f"\ncluster formula: computed again by {other} {takeover:.2f} s after its "
            f"holder {holder} was SIGKILLed (lease 10 s, heartbeat 2 s)"
        )
        self.assertLessEqual(takeover, TAKEOVER_LIMIT)
        self.peers["rtub"].value = 6  # and it goes on computing every change
        wait(lambda: self.computed(15, other), 10, what="the next change")
        self.assertEqual({d: p.most for d, p in self.peers.items()}, dict.fromkeys(PINS, 1))
