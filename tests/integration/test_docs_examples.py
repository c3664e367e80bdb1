"""Every curl example of README.rst and docs/*.rst, run against a real daemon.

The convention (docs/examples.rst): an example is a ``$ curl ...`` line (``\\`` continues
it) followed by ``=> STATUS`` and, optionally, the JSON the answer must contain. The
examples of one file run in order against one fresh daemon (embedded Redis in a temporary
directory). The daemon's port stands for 8080, a Modbus simulator started for the file
for 5020. A curl line that is not such an example fails the test: no example escapes it.
"""

import json
import os
import re
import shlex
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

from twisted.trial.unittest import SynchronousTestCase

from pydatacoll.testing.redis import free_port
from tests.integration import test_daemon

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
API_PORT, MODBUS_PORT = "8080", "5020"
#: How long an answer 503 (a device still connecting) is retried.
CONNECTING = 20.0
_CURL = re.compile(r"\bcurl\s+(-|'?https?:)")


def documents():
    """README.rst and every docs/*.rst, as (name, text)."""
    names = ["README.rst"] + sorted(
        os.path.join("docs", n)
        for n in os.listdir(os.path.join(ROOT, "docs"))
        if n.endswith(".rst")
    )
    for name in names:
        with open(os.path.join(ROOT, name), encoding="utf-8") as f:
            yield name, f.read()


def examples(text):
    """(line number, curl command, expected status, expected JSON or None) of a document.

    Raises ValueError for a curl line that does not follow the convention.
    """
    lines = text.splitlines()
    found, index = [], 0
    while index < len(lines):
        line = lines[index].strip()
        number = index + 1
        index += 1
        if not _CURL.search(line):  # (prose may say "curl"; a command has options or a URL)
            continue
        if not line.startswith("$ curl "):
            raise ValueError(f"line {number}: a curl example must start with '$ curl '")
        command = line[2:]
        while command.endswith("\\"):
            command = command[:-1] + " " + lines[index].strip()
            index += 1
        expected = lines[index].strip() if index < len(lines) else ""
        match = re.match(r"^=> (\d{3})(?: (.+))?$", expected)
        if match is None:
            raise ValueError(f"line {number}: '=> STATUS [JSON]' must follow the command")
        index += 1
        try:
            body = None if match[2] is None else json.loads(match[2])
        except ValueError as e:
            raise ValueError(f"line {index}: the expected answer is not JSON ({e})") from None
        found.append((number, command, int(match[1]), body))
    return found


def request(command, api_port, modbus_port):
    """Run one curl command (its -X, -H, -d and URL) with urllib: (status, parsed body)."""
    words = shlex.split(command)
    method, headers, data, url = None, {}, None, None
    words.pop(0)  # curl
    while words:
        word = words.pop(0)
        if word in ("-X", "--request"):
            method = words.pop(0)
        elif word in ("-H", "--header"):
            name, _, value = words.pop(0).partition(":")
            headers[name.strip()] = value.strip()
        elif word in ("-d", "--data", "--data-raw"):
            data = words.pop(0).replace(f'"port": {MODBUS_PORT}', f'"port": {modbus_port}')
        elif word.startswith("http"):
            url = word.replace(f"127.0.0.1:{API_PORT}", f"127.0.0.1:{api_port}")
        elif word not in ("-s", "--silent", "-S", "-f"):
            raise ValueError(f"the checker does not know curl's {word}")
    req = urllib.request.Request(
        url,
        data=None if data is None else data.encode(),
        method=method or ("POST" if data is not None else "GET"),
        headers=headers,
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as response:
            status, text = response.status, response.read()
    except urllib.error.HTTPError as e:
        status, text = e.code, e.read()
    try:
        return status, json.loads(text) if text else None
    except ValueError:
        return status, text.decode("utf-8", "replace")


def contains(actual, expected):
    """Whether ``actual`` has everything ``expected`` has (objects: these keys, recursively)."""
    if isinstance(expected, dict):
        return isinstance(actual, dict) and all(
            k in actual and contains(actual[k], v) for k, v in expected.items()
        )
    return actual == expected


class Simulator:
    """``python -m pydatacoll.testing.modbus_sim`` on a free port."""

    def __init__(self):
        self.port = free_port()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "pydatacoll.testing.modbus_sim", "--port", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    self.stop()
                    raise RuntimeError("the Modbus simulator did not start") from None
                time.sleep(0.05)  # waiting for a subprocess, not test logic

    def stop(self):
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(30)


class DocsExamplesTests(SynchronousTestCase):
    def test_every_curl_example_follows_the_convention(self):
        counted = 0
        for name, text in documents():
            try:
                counted += len(examples(text))
            except ValueError as e:
                self.fail(f"{name}: {e}")
        self.assertGreater(counted, 10)

    def test_examples_run(self):
        """Each file's examples, in order, answer what the file says."""
        ran = 0
        for name, text in documents():
            found = examples(text)
            if not found:
                continue
            simulator = Simulator() if MODBUS_PORT in text else None
            daemon = test_daemon.Daemon(tempfile.mkdtemp())
            try:
                for number, command, status, expected in found:
                    deadline = time.monotonic() + CONNECTING
                    while True:
                        sim_port = simulator.port if simulator else MODBUS_PORT
                        got, body = request(command, daemon.port, sim_port)
                        if got != 503 or status == 503 or time.monotonic() > deadline:
                            break
                        time.sleep(0.5)  # the device is still connecting
                    where = f"{name}:{number}: {command}"
                    self.assertEqual(got, status, f"{where}\n{body}")
                    if expected is not None:
                        self.assertTrue(contains(body, expected), f"{where}\n{body}")
                    ran += 1
            finally:
                daemon.stop()
                if simulator is not None:
                    simulator.stop()
        print(f"\ndocs examples: {ran} run")
