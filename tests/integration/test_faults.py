"""Faults, end to end: real twistd daemons, a private redis-server, pymodbus' server.

Redis absent when the daemon starts, twenty starts in a row against a running Redis,
Redis SIGKILLed under load and restarted on its append-only file.
"""

import json
import os
import signal
import subprocess
import tempfile
import time
from datetime import datetime

import redis as redis_py
from twisted.trial.unittest import SynchronousTestCase

from pydatacoll.store import keys
from pydatacoll.testing.redis import PrivateRedis, free_port
from tests.integration.test_collector_e2e import ModbusSim, wait
from tests.integration.test_daemon import TWISTD, Daemon, request

#: twistd's exit status after SIGTERM (it ends by its own signal once it has shut down).
STOPPED = (0, -signal.SIGTERM)
#: Redis's outage (s) in `test_redis_sigkilled_under_load`: long enough for every
#: reconnect backoff to reach its 2 s cap (``store.redis.RECONNECT_MAX_DELAY``).
OUTAGE = 6.0
#: Samples of the outage (0.5 s trimmed at each end) each point must have in its history:
#: scanned every 0.3 s, about 16; half of that allows for a loaded machine.
OUTAGE_SAMPLES = 8
#: Start-ups timed in `test_twenty_starts_in_a_row`.
STARTS = int(os.environ.get("PYDATACOLL_FAULT_STARTS", "20"))


class Twistd:
    """``twistd -n pydatacoll`` started without waiting for anything (Redis may be away)."""

    def __init__(self, workdir, redis_url, *args):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.path = os.path.join(workdir, f"twistd-{self.port}.log")
        self.log = open(self.path, "wb")
        self.started = time.time()
        self.process = subprocess.Popen(
            [
                *TWISTD,
                "-n",
                "--pidfile=",
                "pydatacoll",
                "--api",
                f"tcp:{self.port}:interface=127.0.0.1",
                *(["--redis", redis_url] if redis_url else []),
                *args,
            ],
            cwd=workdir,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    def text(self):
        with open(self.path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def stop(self):
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(30)
        self.log.close()
        return self.process.returncode


def answering(base):
    """Whether the daemon's REST API answers (with Redis up)."""
    try:
        return request("GET", base + "/api/v1/devices")[0] == 200
    except OSError:
        return False


def received(sample_text):
    """Epoch seconds of a stored sample's receive_time."""
    return datetime.fromisoformat(json.loads(sample_text)["receive_time"]).timestamp()


class FaultTests(SynchronousTestCase):
    def setUp(self):
        self.workdir = tempfile.mkdtemp()
        self.redis = PrivateRedis(persistent=True)  # appendonly yes, appendfsync always
        self.addCleanup(self.redis.stop)
        self.sync = redis_py.Redis(port=self.redis.port, decode_responses=True)
        self.addCleanup(self.sync.close)
        self.modbus = ModbusSim(free_port(), self.workdir)
        self.addCleanup(self.modbus.kill)

    def daemon(self, *args):
        daemon = Twistd(self.workdir, self.redis.url, *args)
        self.addCleanup(daemon.stop)
        return daemon

    def ok(self, base, method, path, body=None, unavailable_for=0.0):
        """The request succeeds; ``unavailable_for`` (s): a 503 (the API fails fast while
        its Redis connections are not all back) is retried that long, as the answer's
        Retry-After asks, and printed, so the log shows how long it lasted."""
        deadline = time.monotonic() + unavailable_for
        while True:
            status, reply = request(method, base + path, body)
            if status != 503 or time.monotonic() >= deadline:
                break
            print(f"\n{method} {path}: 503 {reply} (retried)")
            time.sleep(0.2)
        self.assertIn(status, (200, 201, 204), f"{method} {path}: {status} {reply}")
        return reply

    def add_device(self, base, device_id, unavailable_for=0.0):
        """A Modbus device with a counting input register and a holding register."""
        self.ok(
            base,
            "POST",
            "/api/v1/devices",
            {
                "id": device_id,
                "protocol": "modbus",
                "ip": "127.0.0.1",
                "port": self.modbus.port,
                "scan_interval": 0.3,
                "timeout": 0.5,
                "reconnect_initial": 0.2,
                "reconnect_max": 1,
            },
            unavailable_for=unavailable_for,
        )
        term = f"t{device_id}"
        self.ok(base, "POST", "/api/v1/terms", {"id": term, "device_id": device_id, "address": 1})
        for item, body in (
            ("count", {"protocol_code": 0, "code_type": "input"}),
            ("reg", {"protocol_code": 0, "code_type": "holding"}),
        ):
            if device_id == "m1":
                self.ok(base, "POST", "/api/v1/items", {"id": item})
            self.ok(base, "POST", f"/api/v1/terms/{term}/items", {"item_id": item, **body})

    def configure(self):
        """m1 and m2 configured over REST through a daemon that is then stopped."""
        api = Daemon(self.workdir, "--redis", self.redis.url)
        try:
            self.add_device(api.base, "m1")
            self.add_device(api.base, "m2")
            self.wait_fresh([("m1", "tm1:count"), ("m2", "tm2:count")], time.time(), 30)
        finally:
            api.stop()

    def fresh(self, points, since):
        for device_id, point in points:
            text = self.sync.hget(keys.DEVICE_VALUES % device_id, point)
            if text is None or received(text) <= since:
                return False
        return True

    def wait_fresh(self, points, since, timeout=30.0):
        """Seconds until every point has a value received after ``since``."""
        wait(lambda: self.fresh(points, since), timeout, what=f"fresh values of {points}")
        return time.time() - since

    def test_redis_absent_at_start(self):
        """Redis starts 5 s after the daemon: collection within 5 s, REST changes followed."""
        self.configure()
        self.redis.kill()
        daemon = self.daemon()
        time.sleep(5)  # the daemon runs without Redis (the fault itself)
        self.redis.start()
        back = time.time()
        elapsed = self.wait_fresh([("m1", "tm1:count"), ("m2", "tm2:count")], back)
        print(f"\ncollecting {elapsed:.2f} s after Redis was started")
        self.assertLess(elapsed, 5.0, f"collecting {elapsed:.1f} s after Redis was back")
        # Changes made over REST after that are followed: a new device, a new point.
        wait(lambda: answering(daemon.base), 10, what="api")
        changed = time.time()
        self.add_device(daemon.base, "m3")
        self.ok(daemon.base, "POST", "/api/v1/items", {"id": "extra"})
        self.ok(
            daemon.base,
            "POST",
            "/api/v1/terms/tm1/items",
            {"item_id": "extra", "protocol_code": 1, "code_type": "holding"},
        )
        elapsed = self.wait_fresh([("m3", "tm3:count"), ("m1", "tm1:extra")], changed)
        self.assertLess(elapsed, 5.0, f"REST changes followed after {elapsed:.1f} s")
        wait(
            lambda: self.ok(daemon.base, "GET", "/api/v1/devices/m3/status")["state"] == "online",
            5,
            what="m3 online",
        )
        self.assertIn(daemon.stop(), STOPPED, daemon.text()[-3000:])
        self.assertNotIn("Traceback", daemon.text())

    def first_connection(self, known, timeout=20.0):
        """time.time() when a Redis client whose id is not in ``known`` is first seen."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(client["id"] not in known for client in self.sync.client_list()):
                return time.time()
            time.sleep(0.01)  # waiting for another process
        raise AssertionError("the daemon never connected to Redis")

    def test_twenty_starts_in_a_row(self):
        """Each of STARTS daemon starts against a running Redis collects within 1.5 s of its
        first Redis connection. (Python's own start-up before it, which the machine's
        load stretches, is timed apart and only reported.)"""
        self.configure()
        points = [("m1", "tm1:count"), ("m2", "tm2:count")]
        times, start_ups = [], []
        for _ in range(STARTS):
            known = {client["id"] for client in self.sync.client_list()}
            daemon = Twistd(self.workdir, self.redis.url, "--role", "collector")
            try:
                connected = self.first_connection(known)
                elapsed = self.wait_fresh(points, connected, 20)
            finally:
                self.assertIn(daemon.stop(), STOPPED, daemon.text()[-3000:])
            self.assertNotIn("not reachable", daemon.text())
            times.append(round(elapsed, 2))
            start_ups.append(round(connected - daemon.started, 2))
        print(
            f"\n{STARTS} starts, seconds from the first Redis connection to collecting:"
            f" {sorted(times)}; from spawn to that connection: {sorted(start_ups)}"
        )
        self.assertLess(max(times), 1.5, times)

    def test_embedded_start_waits_for_redis(self):
        """With the embedded Redis, nothing needing Redis starts before it is reachable."""
        config = os.path.join(self.workdir, "pydatacoll.ini")
        with open(config, "w") as f:
            f.write("[plugins]\nenabled = formulas, limits\n")
        daemon = Twistd(self.workdir, None, "--config", config)
        self.addCleanup(daemon.stop)
        wait(lambda: answering(daemon.base), 30, what="api")
        wait(lambda: "formulas loaded" in daemon.text(), 10, what="formulas loaded")
        wait(lambda: "limit checks on" in daemon.text(), 10, what="limits loaded")
        self.assertIn(daemon.stop(), STOPPED)
        text = daemon.text()
        self.assertNotIn("not reachable", text)
        self.assertNotIn("not written", text)
        self.assertNotIn("retrying", text)
        # nothing failed on the way either (TCP keepalive on the embedded server's Unix
        # socket raised in every subscription's connectionMade: no subscription at all)
        self.assertNotIn("Traceback", text)
        self.assertNotIn("Unhandled", text)
        for subscription in (
            "device manager subscription",
            "gateway subscription",
            "reply listener",
            "configuration cache",
        ):
            self.assertIn(f"{subscription}: subscribed", text)

    def test_status_and_values_tell_the_truth(self):
        """Status within 1 s of each link change, published; values NT while offline;
        a dead collector's devices are stale."""
        self.configure()
        api = self.daemon("--role", "api")
        collector = self.daemon("--role", "collector")
        wait(lambda: answering(api.base), 30, what="api")
        pubsub = self.sync.pubsub()
        self.addCleanup(pubsub.close)
        pubsub.subscribe(keys.DEVICE_STATUS_CHANNEL % "m1")
        pubsub.get_message(timeout=5)

        def status():
            return self.ok(api.base, "GET", "/api/v1/devices/m1/status")

        def values():
            return self.ok(api.base, "GET", "/api/v1/devices/m1/values")

        def drain():
            while pubsub.get_message(timeout=0.05) is not None:
                pass

        def heard(state, since):
            """Seconds from ``since`` to the first status published with ``state``."""
            deadline = time.time() + 10
            while time.time() < deadline:
                message = pubsub.get_message(timeout=0.1)
                if message and message["type"] == "message":
                    body = json.loads(message["data"])
                    if body["state"] == state:
                        return time.time() - since, body
            raise AssertionError(f"no status {state} published")

        # Online within 1 s of the first value (not "unknown" for 2 s).
        self.wait_fresh([("m1", "tm1:count")], collector.started)
        first = received(self.sync.hget(keys.DEVICE_VALUES % "m1", "tm1:count"))
        wait(lambda: status()["state"] == "online", 5, what="online")
        updated = datetime.fromisoformat(status()["updated"]).timestamp()
        self.assertFalse(status()["stale"])
        since = datetime.fromisoformat(status()["since"]).timestamp()
        self.assertLess(since - first, 1.0)
        self.assertLess(abs(updated - time.time()), 5.0)  # refreshed every 2 s
        # The peer dies: offline published within 1 s, the values flagged NT.
        drain()
        killed = time.time()
        self.modbus.kill()
        elapsed, body = heard("offline", killed)
        self.assertLess(elapsed, 1.0, body)
        wait(
            lambda: all("NT" in v["flags"] for v in values().values()),
            1,
            what=f"values flagged NT ({time.time() - killed:.2f} s)",
        )
        # the last value (questionable) or the driver's not_connected placeholder (invalid)
        self.assertNotEqual(values()["tm1:count"]["quality"], "good")
        # It returns: online published within 1 s of its first good value, NT gone.
        drain()
        self.modbus.start()
        back = time.time()
        elapsed, body = heard("online", back)
        good = wait(
            lambda: [v for v in values().values() if v["quality"] == "good"],
            10,
            what="good values",
        )
        first_good = min(datetime.fromisoformat(v["receive_time"]).timestamp() for v in good)
        self.assertLess(datetime.fromisoformat(body["updated"]).timestamp() - first_good, 1.0)
        wait(
            lambda: [v["flags"] for v in values().values()] == [[], []],
            2,
            what="both points fresh",
        )
        # The collector dies (SIGKILL: nothing written): within 3 intervals it is stale.
        collector.process.kill()
        collector.process.wait(10)
        dead = time.time()
        wait(lambda: status()["stale"], 10, what="stale")
        self.assertLess(time.time() - dead, 3 * 2.0 + 1.5)

    def test_redis_sigkilled_under_load(self):
        """Redis SIGKILLed for OUTAGE s and restarted on its AOF: the outage's samples are kept."""
        self.configure()
        daemon = self.daemon()
        wait(lambda: answering(daemon.base), 30, what="api")
        points = [("m1", "tm1", "count"), ("m1", "tm1", "reg"), ("m2", "tm2", "count")]
        self.wait_fresh([(d, f"{t}:{i}") for d, t, i in points], time.time())
        before = time.time()
        self.redis.kill(hard=True)
        time.sleep(OUTAGE)  # the outage itself
        after = time.time()
        self.redis.start()
        # Collection resumes by itself.
        elapsed = self.wait_fresh([(d, f"{t}:{i}") for d, t, i in points], after)
        print(f"\ncollection resumed {elapsed:.2f} s after the restart on the AOF")
        self.assertLess(elapsed, 5.0)

        def outage_history(point):
            device_id, term_id, item_id = point
            entries = self.sync.xrange(keys.POINT_DATA % point)
            inside = [
                json.loads(fields["sample"])
                for _, fields in entries
                if before + 0.5 < received(fields["sample"]) < after - 0.5
            ]
            return inside if len(inside) >= OUTAGE_SAMPLES else None

        for point in points:
            history = wait(lambda p=point: outage_history(p), 30, what=f"outage samples {point}")
            times = [
                datetime.fromisoformat(sample["receive_time"]).timestamp() for sample in history
            ]
            self.assertEqual(times, sorted(times), f"{point} out of order")
            print(f"{point}: {len(history)} samples of the outage in the history")
            if point[2] == "count":
                counts = [sample["value"] for sample in history]
                self.assertEqual(counts, sorted(counts), point)
        status = self.ok(daemon.base, "GET", "/api/v1/devices/m1/status", unavailable_for=5)
        self.assertEqual(status["ingest"]["dropped"], 0, status)
        # Configuration changes are followed again after the restart.
        changed = time.time()
        self.add_device(daemon.base, "m3", unavailable_for=5)
        elapsed = self.wait_fresh([("m3", "tm3:count")], changed)
        self.assertLess(elapsed, 5.0, f"a new device collects after {elapsed:.1f} s")
        self.assertIn(daemon.stop(), STOPPED, daemon.text()[-3000:])
