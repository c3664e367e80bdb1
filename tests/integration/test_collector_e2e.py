"""End to end: real twistd daemons, real Redis, lib60870 (c104) and pymodbus' server.

Everything is configured over REST only. The same scenario runs with one daemon
(``--role all``) and with an API daemon and a collector daemon sharing one Redis.
"""

import json
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import datetime

from twisted.trial.unittest import SynchronousTestCase

from pydatacoll.testing.redis import PrivateRedis, free_port
from tests.integration.iec104_peer import (
    DIRECT,
    C104Station,
    command_io_address,
    feedback_io_address,
    monitor_io_address,
)
from tests.integration.test_daemon import TWISTD, Daemon, request

#: Redis's outage (s) in the walk-through: long enough for every reconnect backoff to
#: reach its 2 s cap (``store.redis.RECONNECT_MAX_DELAY``, the manager's ``RETRY_MAX``).
OUTAGE = 6.0
#: Samples of the outage (0.5 s trimmed at each end) that must be in the history: the
#: point is scanned every 0.3 s, so about 16; half of that allows for a loaded machine.
OUTAGE_SAMPLES = 8


def wait(predicate, timeout=30.0, what="condition"):
    """Poll ``predicate`` until it is truthy (subprocesses and c104 threads move on)."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.1)  # waiting on other processes, not test logic


class CollectorDaemon(Daemon):
    """``twistd -n pydatacoll --role collector``: no API; ready once it has subscribed."""

    def __init__(self, workdir, *args):
        self.port = None
        self.path = os.path.join(workdir, f"twistd-collector-{free_port()}.log")
        self.log = open(self.path, "wb")
        self.process = subprocess.Popen(
            [*TWISTD, "-n", "--pidfile=", "pydatacoll", "--role", "collector", *args],
            cwd=workdir,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

        def subscribed():
            if self.process.poll() is not None:
                raise RuntimeError("the collector daemon exited")
            with open(self.path, "rb") as f:
                return b"device manager subscription: subscribed" in f.read()

        wait(subscribed, 30, what="the collector daemon")


class ModbusSim:
    """pymodbus' own server (our simulator wrapper) in a child process, with its control."""

    def __init__(self, port, workdir):
        self.port = port
        self.map = os.path.join(workdir, "map.json")
        with open(self.map, "w") as f:
            json.dump({"1": {"holding": {"0": [100, 200, 0x4148, 0]}, "coil": {"3": [False]}}}, f)
        self.start()

    def start(self):
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "pydatacoll.testing.modbus_sim",
                "--port",
                str(self.port),
                "--map",
                self.map,
                "--tick",
                "0.1",
                "--changing",
                "1",
                "--control",
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        line = self.process.stdout.readline()
        if not line.startswith("listening"):
            raise RuntimeError(f"the Modbus simulator did not start: {line!r}")

    def command(self, line):
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()
        return json.loads(self.process.stdout.readline())

    def kill(self):
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


class Scenario:
    """The walk through; ``api`` is the daemon serving REST."""

    holds_in_api = False

    def setUp(self):
        self.workdir = tempfile.mkdtemp()
        self.redis = PrivateRedis(persistent=True)
        self.addCleanup(self.redis.stop)
        self.station = C104Station(common_addresses=(1,))
        self.station.start()
        self.addCleanup(self.station.stop)
        self.modbus = ModbusSim(free_port(), self.workdir)
        self.addCleanup(self.modbus.kill)
        self.start_daemons()

    def daemon(self, *args, kind=Daemon):
        daemon = kind(self.workdir, "--redis", f"redis://127.0.0.1:{self.redis.port}/0", *args)
        self.addCleanup(daemon.stop)
        return daemon

    def rest(self, method, path, body=None):
        return request(method, self.api.base + path, body)

    def ok(self, method, path, body=None):
        status, reply = self.rest(method, path, body)
        self.assertIn(status, (200, 201, 204), f"{method} {path}: {status} {reply}")
        return reply

    def values(self, device_id):
        status, body = self.rest("GET", f"/api/v1/devices/{device_id}/values")
        return body if status == 200 else {}

    def value(self, device_id, point):
        sample = self.values(device_id).get(point)
        return None if sample is None else sample["value"]

    def device_status(self, device_id):
        status, body = self.rest("GET", f"/api/v1/devices/{device_id}/status")
        return body if status == 200 else {}

    def configure(self):
        self.ok(
            "POST",
            "/api/v1/devices",
            {
                "id": "m1",
                "protocol": "modbus",
                "ip": "127.0.0.1",
                "port": self.modbus.port,
                "scan_interval": 0.3,
                "timeout": 0.5,
                "reconnect_initial": 0.2,
                "reconnect_max": 1,
                "degrade_after": 0,
            },
        )
        self.ok(
            "POST",
            "/api/v1/devices",
            {"id": "c1", "protocol": "iec104", "ip": "127.0.0.1", "port": self.station.port},
        )
        self.ok("POST", "/api/v1/terms", {"id": "mt1", "device_id": "m1", "address": 1})
        self.ok("POST", "/api/v1/terms", {"id": "ct1", "device_id": "c1", "address": 1})
        for item in ("reg", "float", "coil", "count", "meas", "sp", "cmd", "bad"):
            self.ok("POST", "/api/v1/items", {"id": item})
        self.sc = command_io_address("C_SC_NA_1", DIRECT)
        self.dc = command_io_address("C_DC_NA_1", DIRECT)
        points = [
            (
                "mt1",
                {"item_id": "reg", "protocol_code": 0, "code_type": "holding", "coefficient": 0.1},
            ),
            (
                "mt1",
                {
                    "item_id": "float",
                    "protocol_code": 2,
                    "code_type": "holding",
                    "data_type": "float32",
                    "byte_order": "ABCD",
                },
            ),
            ("mt1", {"item_id": "coil", "protocol_code": 3, "code_type": "coil"}),
            ("mt1", {"item_id": "count", "protocol_code": 0, "code_type": "input"}),
            ("ct1", {"item_id": "meas", "protocol_code": monitor_io_address("M_ME_NC_1", 1)}),
            ("ct1", {"item_id": "sp", "protocol_code": feedback_io_address(self.sc)}),
            ("ct1", {"item_id": "cmd", "protocol_code": self.sc, "code_type": 45}),
            ("ct1", {"item_id": "bad", "protocol_code": self.dc, "code_type": 46}),
        ]
        for term, body in points:
            self.ok("POST", f"/api/v1/terms/{term}/items", body)

    def test_walk_through(self):
        self.configure()
        # Values within one scan / the first interrogation; history and latest agree.
        wait(lambda: self.value("m1", "mt1:reg") == 10.0, what="modbus value")
        # each point came in its own change message: the last may be read a scan later
        wait(lambda: self.value("m1", "mt1:float") == 12.5, 5, what="modbus float")
        wait(lambda: self.value("m1", "mt1:coil") is False, 5, what="modbus coil")
        wait(lambda: self.value("c1", "ct1:meas") == 13.5, what="iec104 value")
        datas = self.ok("GET", "/api/v1/devices/m1/terms/mt1/items/reg/datas?limit=5")
        self.assertTrue(datas and datas[0]["value"] == 10.0 and datas[0]["quality"] == "good")
        wait(lambda: self.device_status("m1").get("state") == "online", what="m1 online")
        wait(lambda: self.device_status("c1").get("state") == "online", what="c1 online")
        # one time format: the link counters' times are ISO 8601 too
        # (the status is written the moment the link is up, maybe before the first answer)
        link = wait(
            lambda: (lambda c: c if c.get("last_response_time") else None)(
                self.device_status("m1")["counters"]["link"]
            ),
            5,
            what="a response time",
        )
        datetime.fromisoformat(link["last_response_time"])

        # A new address is read without the link dropping.
        connects = self.device_status("m1")["counters"]["link"]["connects"]
        self.ok("PUT", "/api/v1/terms/mt1/items/reg", {"protocol_code": 1})
        wait(lambda: self.value("m1", "mt1:reg") == 20.0, what="new address")
        self.assertEqual(self.device_status("m1")["counters"]["link"]["connects"], connects)

        # device_call answers the device's current value.
        self.station.update_point(1, monitor_io_address("M_ME_NC_1", 1), 99.5, transmit=None)
        status, reply = self.rest(
            "POST", "/api/v1/device_call", {"device_id": "c1", "term_id": "ct1", "item_id": "meas"}
        )
        self.assertEqual((status, reply["sample"]["value"]), (200, 99.5), reply)
        self.modbus.command("set 1 holding 1 [321]")
        status, reply = self.rest(
            "POST", "/api/v1/device_call", {"device_id": "m1", "term_id": "mt1", "item_id": "reg"}
        )
        self.assertEqual((status, reply["sample"]["value"]), (200, 32.1), reply)

        # device_ctrl changes the device; a refused command is a 409, never a 200.
        status, reply = self.rest(
            "POST",
            "/api/v1/device_ctrl",
            {"device_id": "m1", "term_id": "mt1", "item_id": "coil", "value": 1},
        )
        self.assertEqual(status, 200, reply)
        self.assertEqual(self.modbus.command("get 1 coil 3 1")["values"], [True])
        status, reply = self.rest(
            "POST",
            "/api/v1/device_ctrl",
            {"device_id": "c1", "term_id": "ct1", "item_id": "cmd", "value": 1},
        )
        self.assertEqual(status, 200, reply)
        wait(
            lambda: self.station.expected(1, feedback_io_address(self.sc)).value is True,
            what="c104 command",
        )
        wait(lambda: self.value("c1", "ct1:sp") is True, what="feedback point")
        self.station.fail_commands(1, self.dc)
        status, reply = self.rest(
            "POST",
            "/api/v1/device_ctrl",
            {"device_id": "c1", "term_id": "ct1", "item_id": "bad", "value": 2},
        )
        self.assertEqual((status, reply["outcome"]), (409, "negative"), reply)
        log = self.ok("GET", "/api/v1/device_ctrl/log")
        self.assertEqual(
            [entry["outcome"] for entry in log][:3], ["negative", "confirmed", "confirmed"]
        )
        if self.holds_in_api:
            # Commands ahead of data: the requests held this process's data meanwhile.
            # A request that comes within 2 ms of the last answer joins its hold (the
            # test's client is that fast), so 5 commands make 2 to 5 holds.
            text = urllib.request.urlopen(self.api.base + "/metrics", timeout=10).read()
            found = dict(re.findall(rb"^pydatacoll_command_(\w+)_total (\S+)$", text, re.M))
            self.assertGreaterEqual(float(found.get(b"holds", 0)), 2.0, text[-3000:])
            self.assertGreater(float(found[b"held_seconds"]), 0.0)
            self.assertEqual(float(found[b"unheld"]), 0.0)

        # The Modbus server dies: offline, device_call 503; it returns: values flow.
        self.modbus.kill()
        wait(lambda: self.device_status("m1").get("state") == "offline", 10, what="offline")
        status, reply = self.rest(
            "POST", "/api/v1/device_call", {"device_id": "m1", "term_id": "mt1", "item_id": "reg"}
        )
        self.assertEqual(status, 503, reply)
        self.modbus.start()
        wait(lambda: self.device_status("m1").get("state") == "online", 15, what="back online")
        wait(lambda: self.value("m1", "mt1:reg") == 20.0, what="values again")

        # Redis stops for OUTAGE s while values flow: the samples of the outage are kept.
        before = time.time()
        self.redis.kill()
        time.sleep(OUTAGE)  # the outage itself
        after = time.time()
        self.redis.restart()
        history = wait(
            lambda: self.history_between("count", before, after),
            30,
            what="outage samples in the history",
        )
        self.assertGreaterEqual(len(history), OUTAGE_SAMPLES)
        counts = [sample["value"] for sample in reversed(history)]
        self.assertEqual(counts, sorted(counts))

    def history_between(self, item, start, end):
        status, datas = self.rest(
            "GET", f"/api/v1/devices/m1/terms/mt1/items/{item}/datas?limit=1000"
        )
        if status != 200:
            return None
        from datetime import datetime

        inside = [
            s
            for s in datas
            if start + 0.5 < datetime.fromisoformat(s["receive_time"]).timestamp() < end - 0.5
        ]
        return inside if len(inside) >= OUTAGE_SAMPLES else None


class OneDaemonTests(Scenario, SynchronousTestCase):
    holds_in_api = True  # the API and the collector share one process and its holds

    def start_daemons(self):
        self.api = self.daemon()


class SplitRolesTests(Scenario, SynchronousTestCase):
    def start_daemons(self):
        self.api = self.daemon("--role", "api")
        self.collector = self.daemon(kind=CollectorDaemon)
