"""A real ``twistd -n pydatacoll`` process: embedded Redis, restart, hostile JSON."""

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

import redis as redis_py
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from pydatacoll.testing.fixtures import CREATE_ALL
from pydatacoll.testing.redis import digest, free_port, shared_redis

TWISTD = [
    sys.executable,
    "-c",
    "import sys; from twisted.scripts.twistd import run; sys.exit(run())",
]
#: Random bodies in `HostileJsonTests` (about 55 per route; more for a deeper run).
EXAMPLES = int(os.environ.get("PYDATACOLL_HOSTILE_EXAMPLES", "1000"))


class Daemon:
    """``twistd -n pydatacoll`` in a temp dir (so the installed plugin is what is found)."""

    def __init__(self, workdir, *args):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log = open(os.path.join(workdir, f"twistd-{self.port}.log"), "wb")
        self.process = subprocess.Popen(
            [
                *TWISTD,
                "-n",
                "--pidfile=",
                "pydatacoll",
                "--api",
                f"tcp:{self.port}:interface=127.0.0.1",
                *args,
            ],
            cwd=workdir,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                if request("GET", self.base + "/api/v1/devices")[0] == 200:
                    return
            except OSError:
                pass
            if time.monotonic() > deadline or self.process.poll() is not None:
                self.stop()
                raise RuntimeError("the daemon did not start")
            time.sleep(0.05)  # waiting for a subprocess, not test logic

    def stop(self):
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(30)
        self.log.close()
        return self.process.returncode


def request(method, url, body=None, raw=None, content_type="application/json"):
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    req = urllib.request.Request(
        url, data=data, method=method, headers={"Content-Type": content_type}
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as response:
            text = response.read()
            return response.status, json.loads(text) if text.startswith((b"{", b"[")) else text
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


WALK = CREATE_ALL


class EmbeddedDaemonTests(SynchronousTestCase):
    def test_configuration_survives_restart(self):
        """No Redis configured: the embedded one keeps the configuration across a restart."""
        workdir = tempfile.mkdtemp()
        daemon = Daemon(workdir)
        try:
            for method, path, body in WALK:
                self.assertEqual(request(method, daemon.base + path, body)[0], 201)
        finally:
            daemon.stop()
        self.assertFalse(os.path.exists(os.path.join(workdir, "pydatacoll-data", "redis.sock")))
        daemon = Daemon(workdir)
        try:
            self.assertEqual(
                request("GET", daemon.base + "/api/v1/terms/10/items/1000")[1]["protocol_code"], 100
            )
            self.assertEqual(request("GET", daemon.base + "/api/v1/devices/1/terms")[1], ["10"])
            status, text = request("GET", daemon.base + "/")
            self.assertIn(b"available API", text)
        finally:
            daemon.stop()
        leftover = subprocess.run(
            ["pgrep", "-f", os.path.join(workdir, "pydatacoll-data")], capture_output=True
        ).stdout
        self.assertEqual(leftover, b"")


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=10,
)
FIELDS = st.sampled_from(
    [
        "id",
        "name",
        "protocol",
        "ip",
        "port",
        "device_id",
        "term_id",
        "item_id",
        "address",
        "protocol_code",
        "code_type",
        "coefficient",
        "base_val",
        "up_limit",
        "down_limit",
        "value",
        "select",
    ]
)
bodies = st.one_of(
    json_values,
    st.dictionaries(FIELDS | st.text(max_size=6), json_values, max_size=8),
    st.lists(st.dictionaries(FIELDS, json_values, max_size=6), max_size=3),
)
ROUTES = [
    "POST /api/v1/devices",
    "POST /api/v1/terms",
    "POST /api/v1/items",
    "POST /api/v1/terms/10/items",
    "POST /api/v2/devices",
    "POST /api/v2/terms",
    "POST /api/v2/items",
    "POST /api/v2/term_items",
    "POST /api/v2/devices/del",
    "POST /api/v2/terms/del",
    "POST /api/v2/items/del",
    "POST /api/v2/term_items/del",
    "PUT /api/v1/devices/1",
    "PUT /api/v1/terms/10",
    "PUT /api/v1/items/1000",
    "PUT /api/v1/terms/10/items/1000",
    "POST /api/v1/device_call",
    "POST /api/v1/device_ctrl",
]


class HostileJsonTests(SynchronousTestCase):
    def setUp(self):
        server = shared_redis()
        self.redis = redis_py.Redis(port=server.port, decode_responses=True)
        self.redis.flushall()
        # The API alone: a collector would write device status meanwhile, and the test
        # checks that a rejected request leaves the keyspace as it was.
        self.daemon = Daemon(tempfile.mkdtemp(), "--redis", server.url, "--role", "api")
        for method, path, body in WALK:
            request(method, self.daemon.base + path, body)
        self.tried = 0

    def tearDown(self):
        self.daemon.stop()
        self.redis.close()

    def test_random_bodies(self):
        """Random JSON on every POST/PUT route: never a 500, nothing written when rejected."""

        @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
        @given(route=st.sampled_from(ROUTES), body=bodies)
        def check(route, body):
            method, path = route.split(" ")
            before = digest(self.redis)
            status, reply = request(method, self.daemon.base + path, body)
            self.tried += 1
            assert status < 500, (route, body, status, reply)
            if status >= 400:
                assert set(reply) >= {"error", "message", "field"}, reply
                assert digest(self.redis) == before, (route, body, reply)

        check()
        print(f"\nhostile JSON: {self.tried} random bodies tried")
