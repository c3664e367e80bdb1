"""The status page in a real browser: Debian's chromium, headless, driven by playwright.

A real ``twistd pydatacoll`` daemon collects from pymodbus' server (the simulator counts
an input register up); the page must show the device online and the value changing
live, with no JavaScript error. Chromium must be installed (``.ci/run`` installs it);
playwright's own browsers are never downloaded.
"""

import json
import os
import shutil
import subprocess
import tempfile
import urllib.error
import urllib.request

from playwright.sync_api import sync_playwright
from twisted.trial.unittest import SynchronousTestCase

from pydatacoll.testing.redis import PrivateRedis, free_port
from tests.integration.test_collector_e2e import ModbusSim, wait
from tests.integration.test_daemon import TWISTD, Daemon

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
#: Where the screenshot for the documentation is written when this is set.
SCREENSHOT = os.environ.get("PYDATACOLL_UI_SCREENSHOT")


class ProtectedDaemon(Daemon):
    """`Daemon` whose reads need the token: started once its API answers at all (401)."""

    def __init__(self, workdir, *args):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log = open(os.path.join(workdir, f"twistd-{self.port}.log"), "wb")
        api = f"tcp:{self.port}:interface=127.0.0.1"
        self.process = subprocess.Popen(
            [*TWISTD, "-n", "--pidfile=", "pydatacoll", "--api", api, *args],
            cwd=workdir,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

        def answers():
            if self.process.poll() is not None:
                raise RuntimeError("the daemon exited")
            try:
                return request("GET", self.base + "/api/v1/devices")[0] == 401
            except OSError:
                return False

        wait(answers, 30, "the daemon's API")


def request(method, url, body=None, token=None):
    """One REST call: (status, parsed JSON)."""
    req = urllib.request.Request(
        url,
        data=None if body is None else json.dumps(body).encode(),
        method=method,
        headers={"Content-Type": "application/json"},
    )
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=30) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


class _PageCase(SynchronousTestCase):
    """A private Redis, the Modbus simulator and a daemon collecting from it."""

    token = None

    def setUp(self):
        self.workdir = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.workdir, True)
        self.redis = PrivateRedis()
        self.addCleanup(self.redis.stop)
        self.modbus = ModbusSim(free_port(), self.workdir)
        self.addCleanup(self.modbus.kill)
        config = os.path.join(self.workdir, "pydatacoll.ini")
        with open(config, "w") as f:
            f.write("[plugins]\nenabled = limits\n")
            if self.token:
                f.write(f"[api]\ntoken = {self.token}\nprotect_reads = true\n")
        args = ["--redis", f"redis://127.0.0.1:{self.redis.port}/0", "--config", config]
        self.daemon = (ProtectedDaemon if self.token else Daemon)(self.workdir, *args)
        self.addCleanup(self.daemon.stop)
        self.configure()

    def rest(self, method, path, body=None):
        return request(method, self.daemon.base + path, body, self.token)

    def configure(self):
        device = {
            "id": "m1",
            "name": "pump station",
            "protocol": "modbus",
            "ip": "127.0.0.1",
            "port": self.modbus.port,
            "scan_interval": 0.3,
            "timeout": 0.5,
            "reconnect_initial": 0.2,
            "reconnect_max": 1,
        }
        config = {
            "devices": [device],
            "terms": [{"id": "t1", "device_id": "m1", "address": 1}],
            "items": [
                {"id": "count", "name": "pulse counter", "unit": "pulses"},
                {"id": "reg", "name": "flow", "unit": "m3/h"},
            ],
            "term_items": [
                {"term_id": "t1", "item_id": "count", "protocol_code": 0, "code_type": "input",
                 "up_limit": 3},
                {"term_id": "t1", "item_id": "reg", "protocol_code": 0, "code_type": "holding",
                 "coefficient": 0.1},
            ],
            "formulas": [],
        }  # fmt: skip
        # A protected daemon is taken as started once it answers 401, which it does before
        # its Redis pool is connected: until then the PUT is refused whole (503).
        status, body = wait(
            lambda: (lambda reply: None if reply[0] == 503 else reply)(
                self.rest("PUT", "/api/v1/config", config)
            ),
            30,
            "the daemon's Redis pool",
        )
        self.assertEqual(status, 200, body)

        def collecting():
            status, values = self.rest("GET", "/api/v1/devices/m1/values")
            return status == 200 and "t1:count" in values

        wait(collecting, 60, "the daemon collecting from the simulator")
        command = {"device_id": "m1", "term_id": "t1", "item_id": "reg", "value": 42}
        status, answer = self.rest("POST", "/api/v1/device_ctrl", command)
        self.assertEqual((status, answer["outcome"]), (200, "confirmed"), answer)

    def browse(self, check):
        """Open /ui/ in chromium; ``check(page)``; no console or page error."""
        problems = []
        profile = tempfile.mkdtemp(prefix="pydatacoll-chromium-")
        self.addCleanup(shutil.rmtree, profile, True)
        with sync_playwright() as playwright:
            context = playwright.chromium.launch_persistent_context(
                profile,
                executable_path=CHROMIUM,
                headless=True,
                args=FLAGS,
                viewport={"width": 1600, "height": 1000},
            )
            try:
                page = context.new_page()
                page.on(
                    "console",
                    lambda message: (
                        message.type == "error" and problems.append(f"console: {message.text}")
                    ),
                )
                page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
                page.goto(self.daemon.base + "/ui/")
                check(page)
            finally:
                context.close()
        return problems

    def check_live(self, page):
        """The device is online and its counter's value changes on the page."""
        row = page.locator('#devices tr[data-device="m1"]')
        row.locator(".link .badge", has_text="online").wait_for(timeout=30_000)
        self.assertIn("pump station", row.inner_text())
        value = page.locator('#points tr[data-point="t1:count"] td.value')
        value.wait_for(timeout=30_000)
        page.wait_for_function(
            "() => document.querySelector('#points tr[data-point=\"t1:count\"] td.value')"
            ".textContent !== ''",
            timeout=30_000,
        )
        first = value.inner_text()
        page.wait_for_function(
            '(first) => document.querySelector(\'#points tr[data-point="t1:count"] '
            "td.value').textContent !== first",
            arg=first,
            timeout=30_000,
        )
        self.assertNotEqual(value.inner_text(), first)
        self.assertIn(
            "pulse counter", page.locator('#points tr[data-point="t1:count"]').inner_text()
        )
        self.assertEqual(
            page.locator('#points tr[data-point="t1:count"] .quality .badge').inner_text(),
            "good",
        )
        # the counter passed its up_limit: an active alarm, and its raise in the history
        page.locator("#alarms tbody tr", has_text="m1:t1:count").wait_for(timeout=30_000)
        page.locator("#alarm-history tbody tr", has_text="raise").first.wait_for(timeout=30_000)
        plugin = page.locator("#plugins tbody tr", has_text="limits")
        plugin.wait_for(timeout=30_000)
        self.assertIn("yes", plugin.inner_text())
        command = page.locator("#audit tbody tr", has_text="m1:t1:reg")
        command.wait_for(timeout=30_000)
        self.assertIn("confirmed", command.inner_text())
        self.assertIn("42", command.inner_text())
        # a laptop and a control-room screen: the page fits the width, tables scroll
        for width, height in ((1280, 800), (3840, 2160)):
            page.set_viewport_size({"width": width, "height": height})
            overflow = page.evaluate(
                "document.documentElement.scrollWidth - document.documentElement.clientWidth"
            )
            self.assertLessEqual(overflow, 0, f"{width}x{height}")
        page.set_viewport_size({"width": 1600, "height": 1000})
        # the daemon serves GET /api/v1/stream: the value changed through it, not polling
        self.assertEqual(page.locator("#live").get_attribute("data-mode"), "stream")
        if SCREENSHOT:
            page.wait_for_timeout(1500)
            page.screenshot(path=SCREENSHOT, full_page=True)


class StatusPageTests(_PageCase):
    def test_device_online_and_value_changing_live(self):
        self.assertEqual(self.browse(self.check_live), [])

    def test_stream_events_are_shown(self):
        """The stream parser: events served by the browser in place of the daemon's stream
        (a comment, retry, id, a sample of the selected device, a status change) update
        the page."""
        events = (
            "retry: 60000\n\n"
            ": heartbeat\n\n"
            "id: 7\nevent: sample\ndata: "
            + json.dumps({"device_id": "m1", "term_id": "t1", "item_id": "reg", "value": 4242.5,
                          "quality": "questionable", "time": "2026-01-01T00:00:00+00:00"})
            + "\n\n"
            "event: status\ndata: "
            + json.dumps({"device_id": "m1", "state": "degraded", "counters": {"timeouts": 3}})
            + "\n\n"
        )  # fmt: skip

        def fake_openapi(route):
            response = route.fetch()
            spec = response.json()
            spec["paths"].setdefault("/api/v1/stream", {"get": {}})
            route.fulfill(response=response, json=spec)

        def check(page):
            page.route("**/api/v1/openapi.json", fake_openapi)
            page.route(
                "**/api/v1/stream*",
                lambda route: route.fulfill(
                    status=200, headers={"Content-Type": "text/event-stream"}, body=events
                ),
            )
            page.reload()
            page.locator('#points tr[data-point="t1:reg"] td.value', has_text="4242.5").wait_for(
                timeout=30_000
            )
            self.assertEqual(
                page.locator('#points tr[data-point="t1:reg"] .quality .badge').inner_text(),
                "questionable",
            )
            page.locator(
                '#devices tr[data-device="m1"] .link .badge', has_text="degraded"
            ).wait_for(timeout=30_000)

        self.assertEqual(self.browse(check), [])


class TokenPageTests(_PageCase):
    """Reads protected: the page asks for the token, keeps it for the session."""

    token = "control-room-7"

    def test_token_asked_then_live(self):
        def with_token(page):
            page.locator("#token-form").wait_for(state="visible", timeout=30_000)
            page.fill("#token-input", "wrong")
            page.click("#token-form button")
            page.locator("#token-message", has_text="refused").wait_for(timeout=30_000)
            page.fill("#token-input", self.token)
            page.click("#token-form button")
            self.assertEqual(
                page.evaluate("sessionStorage.getItem('pydatacoll.token')"), self.token
            )
            self.check_live(page)

        problems = self.browse(with_token)
        # the refused requests are the browser's own messages, not script errors
        self.assertEqual([p for p in problems if "status of 401" not in p], [])
        self.assertTrue(any("status of 401" in p for p in problems), problems)
