"""Schemathesis against a real ``twistd pydatacoll``: the OpenAPI document is the contract.

The daemon runs with its embedded Redis in a temporary directory (a private instance) and
its collector, so device_call/device_ctrl reach a real collector; every device the run
creates is pointed at a closed port on 127.0.0.1 (``contract_hooks.before_call``), so
nothing real is contacted. Schemathesis's default checks all run, except that
``positive_data_acceptance`` is the stricter-about-reasons variant in `contract_hooks`
(a 400 to a schema-valid request must name a field of a rule the document lists in
``x-cross-field-rules``). Unresolvable references and regular expressions schemathesis
cannot use fail the run. The coverage phase (every operation's boundary and negative
cases, about 8,000 requests) always runs whole; the fuzzing phase is bounded by
``PYDATACOLL_CONTRACT_EXAMPLES`` examples per operation (default 5; 15 or more for a
deeper run).
"""

import os
import re
import subprocess
import sys
import tempfile

from twisted.trial.unittest import SynchronousTestCase

from pydatacoll.api.app import ApiApp, route_table
from pydatacoll.testing.redis import free_port
from tests.integration import test_daemon

EXAMPLES = int(os.environ.get("PYDATACOLL_CONTRACT_EXAMPLES", "5"))
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

CONFIG = """\
[generation]
max-examples = {examples}

# Replaced by contract_hooks.positive_data_acceptance_or_rule (same statuses, plus a 400
# naming a field of a documented cross-field rule).
[checks.positive_data_acceptance]
enabled = false

# A body over [api] max_body is refused with 413: a rejection like any other.
[checks.negative_data_rejection]
expected-statuses = ["400", "401", "403", "404", "405", "406", "409", "413", "415", "422",
                     "428", "429", "5xx"]

# validation_mismatch is schemathesis's guess from the share of 4xx answers (409s for
# existing ids count too): shown, not failed on; positive_data_acceptance_or_rule judges
# every refused schema-valid request by itself.
[warnings]
fail-on = ["unresolvable_reference", "unsupported_regex"]

# The event stream never ends by itself: a request/response tool cannot judge it
# (tests/integration and tests/api test it with SSE clients).
[[operations]]
include-path = "/api/v1/stream"
enabled = false

# The device's own outcomes: failed (502), offline/no collector (503), timeout (504).
[[operations]]
include-path-regex = "^/api/v1/device_(call|ctrl)$"
checks.not_a_server_error.expected-statuses = ["2xx", "3xx", "4xx", "502", "503", "504"]
"""


class ApiContractTests(SynchronousTestCase):
    def test_schemathesis_finds_nothing(self):
        """Default checks, every operation: 0 failures, 0 unresolvable refs, 0 mismatches."""
        workdir = tempfile.mkdtemp()
        config = os.path.join(workdir, "schemathesis.toml")
        with open(config, "w") as f:
            f.write(CONFIG.format(examples=EXAMPLES))
        calls = os.path.join(workdir, "calls.log")
        daemon = test_daemon.Daemon(workdir, "--config", _ini(workdir))
        env = dict(
            os.environ,
            PYTHONPATH=os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p),
            SCHEMATHESIS_HOOKS="tests.integration.contract_hooks",
            PYDATACOLL_CLOSED_PORT=str(free_port()),
            PYDATACOLL_OPENAPI_URL=daemon.base + "/api/v1/openapi.json",
            PYDATACOLL_CONTRACT_LOG=calls,
            NO_COLOR="1",
        )
        try:
            run = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "schemathesis.cli",
                    "--config-file",
                    config,
                    "run",
                    daemon.base + "/api/v1/openapi.json",
                    "--workers",
                    "2",
                    "--seed",
                    os.environ.get("PYDATACOLL_CONTRACT_SEED", "20261203"),
                    "--no-color",
                ],
                cwd=workdir,
                env=env,
                capture_output=True,
                text=True,
                timeout=600,
            )
        finally:
            daemon.stop()
        output = run.stdout + run.stderr
        # Schemathesis leaves out the route that serves the document itself; the stream is
        # left out above.
        routes = set(route_table(ApiApp.app)) - {
            ("GET", "/api/v1/openapi.json"),
            ("GET", "/api/v1/stream"),
        }
        operations = len(routes)
        summary = output[output.rfind("SUMMARY") :]
        with open(os.path.join(workdir, "schemathesis.txt"), "w") as f:
            f.write(output)
        failures = output[output.find("FAILURES") : output.rfind("WARNINGS")]
        warnings = output[output.rfind("WARNINGS") :]
        self.assertEqual(
            run.returncode,
            0,
            f"{failures[:6000]}\n{warnings[-4000:]}\n(all of it: {workdir}/schemathesis.txt)",
        )
        self.assertRegex(
            summary, rf"Selected: {operations}/{operations + 1}\s+Tested: {operations}"
        )
        self.assertNotIn("Unresolvable", output)
        self.assertRegex(summary, r"(\d+) generated, \1 passed")
        answered = {}
        with open(calls) as f:
            for line in f:
                method, path, status = line.split(" ")[:3]
                answered.setdefault((method, path), set()).add(status)
        self.assertEqual(routes - set(answered), set())
        self.assertFalse([route for route, codes in answered.items() if "500" in codes])
        # Methods a path does not serve (TRACE, PATCH, ...): 405 (with Allow, checked above).
        others = {route: codes for route, codes in answered.items() if route not in routes}
        self.assertTrue(others)
        self.assertEqual({code for codes in others.values() for code in codes}, {"405"})
        generated = re.search(r"(\d+) generated", summary)[1]
        print(f"\nschemathesis: {generated} cases on {operations} operations, all passed")


def _ini(workdir):
    """A configuration with a short device timeout (offline devices answer fast)."""
    path = os.path.join(workdir, "pydatacoll.ini")
    with open(path, "w") as f:
        f.write("[api]\ndevice_timeout = 2\n")
    return path
