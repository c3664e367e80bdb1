"""A real ``twistd pydatacoll`` polling a healthy Modbus simulator while twelve hostile
peers (`pydatacoll.testing.hostile`, in a process of their own) misbehave at it.

The healthy device keeps collecting at its rate; each hostile link is closed and reopened
ever more slowly (or, for ASDUs it can skip, kept with its complaints rate-limited); no
hostile Modbus device is shown online; the daemon stays well under 0.2 core.
"""

import math
import os
import subprocess
import sys
import tempfile
import threading
import time

from twisted.trial.unittest import SynchronousTestCase

from pydatacoll.testing.hostile import IEC104_BEHAVIOURS, MODBUS_BEHAVIOURS
from pydatacoll.testing.redis import free_port
from tests.integration.test_daemon import Daemon, request

#: Seconds the hostile peers are watched. Backoff (1, 2, 4, 8, ... s) allows about
#: log2(WINDOW) reconnects in it where a link without backoff would make one a second.
WINDOW = float(os.environ.get("PYDATACOLL_HOSTILE_WINDOW", "15"))
MAX_RECONNECTS = int(math.log2(WINDOW)) + 3
#: Link faults: closed and reopened with backoff. The others keep the link.
SKIPPABLE = ("iec104:unknown_type", "iec104:truncated")


class Lines:
    """A child's stdout lines, read on a thread (the test waits on them)."""

    def __init__(self, process):
        self.lines = []
        self._thread = threading.Thread(target=self._read, args=(process.stdout,), daemon=True)
        self._thread.start()

    def _read(self, stream):
        for line in iter(stream.readline, b""):
            self.lines.append(line.decode().strip())

    def wait_for(self, prefix, count, timeout=30):
        deadline = time.monotonic() + timeout
        while True:
            found = [line for line in self.lines if line.startswith(prefix)]
            if len(found) >= count:
                return found
            if time.monotonic() > deadline:
                raise AssertionError(f"no {prefix!r} lines: {self.lines[-5:]}")
            time.sleep(0.05)  # waiting for another process


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class HostilePeerTests(SynchronousTestCase):
    def spawn(self, *argv):
        process = subprocess.Popen(
            [sys.executable, "-m", *argv], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
        )

        def stop():
            process.kill()
            process.wait(30)

        self.addCleanup(stop)
        return process, Lines(process)

    def configure(self, base, device, unit_or_ca, address):
        device_id = device["id"]
        term = {"id": f"t{device_id}", "device_id": device_id, "address": unit_or_ca}
        point = {"item_id": f"i{device_id}", "protocol_code": address}
        for path, body in (
            ("/api/v1/devices", device),
            ("/api/v1/terms", term),
            ("/api/v1/items", {"id": f"i{device_id}"}),
            (f"/api/v1/terms/t{device_id}/items", point),
        ):
            status, body = request("POST", base + path, body)
            self.assertEqual(status, 201, body)

    def test_hostile_peers_do_not_disturb_the_collector(self):
        specs = [f"modbus:{b}" for b in MODBUS_BEHAVIOURS]
        specs += [f"iec104:{b}" for b in IEC104_BEHAVIOURS]
        _, peers = self.spawn("pydatacoll.testing.hostile", *specs)
        ports = {
            line.split()[1]: int(line.split()[3])
            for line in peers.wait_for("listening", len(specs))
        }
        sim_port = free_port()
        _, sim = self.spawn(
            "pydatacoll.testing.modbus_sim", "--port", str(sim_port), "--tick", "0.2"
        )
        sim.wait_for("listening", 1)
        workdir = tempfile.mkdtemp(prefix="pydatacoll-hostile-")
        daemon = Daemon(workdir)
        self.addCleanup(daemon.stop)
        modbus = {"protocol": "modbus", "ip": "127.0.0.1", "timeout": 1, "scan_interval": 1}
        # the healthy device: an input register that counts, read every 0.5 s
        self.configure(
            daemon.base,
            {**modbus, "id": "good", "port": sim_port, "scan_interval": 0.5},
            1,
            0,
        )
        self.fixup_code_type(daemon.base)
        names = {}
        for number, spec in enumerate(specs):
            device_id = f"h{number}"
            names[device_id] = spec
            if spec.startswith("modbus"):
                self.configure(daemon.base, {**modbus, "id": device_id, "port": ports[spec]}, 1, 0)
            else:
                iec104 = {"id": device_id, "protocol": "iec104", "ip": "127.0.0.1"}
                self.configure(daemon.base, {**iec104, "port": ports[spec]}, 1, 1001)
        log_start = os.path.getsize(daemon.log.name)
        time.sleep(3)  # every device started, the first hostile reconnects done
        cpu_start, started = cpu_seconds(daemon.process.pid), time.monotonic()
        connections_start = len(peers.lines)
        time.sleep(WINDOW)  # the hostile peers run; we only watch
        elapsed = time.monotonic() - started
        cpu = (cpu_seconds(daemon.process.pid) - cpu_start) / elapsed
        log_bytes = os.path.getsize(daemon.log.name) - log_start
        connection_lines = peers.lines[connections_start:]

        # the healthy device kept collecting at its rate (2 samples a second)
        samples = request(
            "GET", daemon.base + "/api/v1/devices/good/terms/tgood/items/igood/datas?limit=1000"
        )[1]
        self.assertGreater(len(samples), 0.8 * 2 * (WINDOW + 3), len(samples))
        self.assertEqual({s["quality"] for s in samples}, {"good"})
        self.assertEqual(self.status(daemon.base, "good")["state"], "online")
        report = {"cpu": round(cpu, 3), "log_bytes": log_bytes, "samples": len(samples)}
        for device_id, spec in names.items():
            status = self.status(daemon.base, device_id)
            count = sum(1 for line in connection_lines if line.split()[1] == spec)
            report[spec] = (count, status["state"], status.get("reason"))
            if spec in SKIPPABLE:
                # kept up: the station speaks IEC 104, only its ASDUs are skipped
                self.assertEqual(count, 0, report)
                self.assertGreater(status["counters"]["asdus_skipped"], 40 * WINDOW)
            else:
                # 1, 2, 4, 8, 16, 32 s of backoff: a handful of reconnects, not one a second
                self.assertLessEqual(count, MAX_RECONNECTS, report)
            if spec.startswith("modbus"):
                self.assertNotEqual(status["state"], "online", report)
                self.assertTrue(status.get("reason") or status.get("last_error"), report)
        print(f"\nhostile peers over {elapsed:.0f} s: {report}")
        # one line per fault and window, not one per bad frame (50 a second each)
        self.assertLess(log_bytes, 200_000, report)
        self.assertLess(cpu, 0.2, report)

    def fixup_code_type(self, base):
        """The simulator's counting registers are input registers."""
        status, body = request(
            "PUT", base + "/api/v1/terms/tgood/items/igood", {"code_type": "input"}
        )
        self.assertEqual(status, 200, body)

    def status(self, base, device_id):
        return request("GET", f"{base}/api/v1/devices/{device_id}/status")[1]
