"""etc/pydatacoll.service: it verifies, it is hardened, and its command line starts the daemon.

``systemd-analyze`` comes with Debian's ``systemd`` package (.ci/run installs it). It runs
here without systemd as PID 1: ``verify`` against a scratch root holding the system's
units and a stand-in for the venv's twistd, ``security --offline=true`` on the file.
"""

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request

from twisted.trial.unittest import SynchronousTestCase

from pydatacoll.testing.redis import free_port

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
UNIT = os.path.join(ROOT, "etc", "pydatacoll.service")
#: Highest ``systemd-analyze security`` exposure the unit may have (0 best, 10 worst).
MAX_EXPOSURE = 3.0


def _analyze():
    path = shutil.which("systemd-analyze")
    if path is None:
        raise AssertionError("systemd-analyze is needed: apt-get install systemd")
    return path


def _settings():
    """The unit's ``[Service]``/``[Unit]`` settings: name -> list of values."""
    settings = {}
    with open(UNIT) as f:
        for line in f:
            line = line.strip()
            if line and not line.startswith(("#", "[")):
                name, _, value = line.partition("=")
                settings.setdefault(name, []).append(value)
    return settings


class UnitTests(SynchronousTestCase):
    def test_verify(self):
        """``systemd-analyze verify`` passes on the unit as shipped (and fails without twistd)."""
        root = tempfile.mkdtemp()
        shutil.copytree("/usr/lib/systemd/system", os.path.join(root, "usr/lib/systemd/system"))
        os.makedirs(os.path.join(root, "etc/systemd/system"))
        shutil.copy(UNIT, os.path.join(root, "etc/systemd/system/pydatacoll.service"))
        command = [_analyze(), "verify", f"--root={root}", "/etc/systemd/system/pydatacoll.service"]
        missing = subprocess.run(command, capture_output=True, text=True)
        self.assertNotEqual(missing.returncode, 0)
        self.assertIn("/opt/pydatacoll/venv/bin/twistd is not executable", missing.stderr)
        twistd = os.path.join(root, "opt/pydatacoll/venv/bin/twistd")
        os.makedirs(os.path.dirname(twistd))
        with open(twistd, "w") as f:
            f.write("#!/bin/sh\n")
        os.chmod(twistd, 0o755)
        result = subprocess.run(command, capture_output=True, text=True)
        # (the host's own units may draw warnings; none may be about ours)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertNotIn("pydatacoll", result.stderr)

    def test_security_exposure(self):
        result = subprocess.run(
            [_analyze(), "security", "--offline=true", UNIT], capture_output=True, text=True
        )
        match = re.search(
            r"Overall exposure level for pydatacoll.service: ([0-9.]+)", result.stdout
        )
        self.assertIsNotNone(match, result.stdout[-2000:] + result.stderr)
        exposure = float(match[1])
        self.assertLessEqual(exposure, MAX_EXPOSURE)
        print(f"\nsystemd-analyze security: exposure {exposure}")

    def test_settings(self):
        """A dedicated user, state in StateDirectory, bounded restarts, no Redis ordering."""
        settings = _settings()
        self.assertEqual(settings["DynamicUser"], ["yes"])
        self.assertEqual(settings["StateDirectory"], ["pydatacoll"])
        self.assertEqual(settings["Restart"], ["on-failure"])
        self.assertTrue(float(settings["RestartSec"][0]) > 0)
        self.assertTrue(int(settings["StartLimitBurst"][0]) > 0)
        self.assertTrue(int(settings["StartLimitIntervalSec"][0]) > 0)
        self.assertNotIn("redis", " ".join(settings.get("After", []) + settings.get("Wants", [])))
        # One socket per device link: room for thousands (the daemon raises its soft limit).
        self.assertGreaterEqual(int(settings["LimitNOFILE"][0]), 16384)
        exec_start = settings["ExecStart"][0]
        self.assertIn("--data-dir ${STATE_DIRECTORY}", exec_start)
        with open(os.path.join(ROOT, "README.rst")) as f:
            readme = f.read()
        # The venv and configuration paths are the ones the README installs.
        self.assertIn(exec_start.split()[0], readme)
        self.assertIn(settings["LoadCredential"][0].partition(":")[2], readme)

    def test_exec_start_starts_the_daemon(self):
        """ExecStart, with what systemd substitutes, runs the daemon on the shipped ini."""
        settings = _settings()
        credentials, state = tempfile.mkdtemp(), tempfile.mkdtemp()
        port = free_port()
        with open(os.path.join(ROOT, "etc", "pydatacoll.ini")) as f:
            ini = f.read().replace(
                "endpoint = tcp:8080:interface=127.0.0.1",
                f"endpoint = tcp:{port}:interface=127.0.0.1",
            )
        name = settings["LoadCredential"][0].partition(":")[0]
        with open(os.path.join(credentials, name), "w") as f:
            f.write(ini)
        argv = settings["ExecStart"][0].split()
        self.assertEqual(argv[0], "/opt/pydatacoll/venv/bin/twistd")
        argv = [
            sys.executable,
            "-c",
            "import sys; from twisted.scripts.twistd import run; sys.exit(run())",
            *(
                a.replace("${CREDENTIALS_DIRECTORY}", credentials).replace(
                    "${STATE_DIRECTORY}", state
                )
                for a in argv[1:]
            ),
        ]
        workdir = tempfile.mkdtemp()
        with open(os.path.join(workdir, "twistd.log"), "wb") as log:
            process = subprocess.Popen(argv, cwd=workdir, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    url = f"http://127.0.0.1:{port}/api/v1/devices"
                    with urllib.request.urlopen(url, timeout=5) as response:
                        self.assertEqual(response.read(), b"[]")
                        break
                except OSError as e:
                    if time.monotonic() > deadline or process.poll() is not None:
                        with open(os.path.join(workdir, "twistd.log")) as f:
                            log = f.read()[-3000:]
                        raise AssertionError(f"the daemon did not start ({e}):\n{log}") from e
                    time.sleep(0.1)  # waiting for a subprocess, not test logic
            self.assertTrue(any(n.startswith(("appendonly", "redis")) for n in os.listdir(state)))
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(30)
