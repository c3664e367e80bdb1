"""The example third-party plugin, installed in a fresh venv next to PyDataColl, is found
and runs: no change to PyDataColl, no network (wheels built here, --no-index)."""

import json
import os
import site
import subprocess
import sys
import tempfile
import textwrap
import zipfile

from twisted.trial.unittest import SynchronousTestCase

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EXAMPLE = os.path.join(ROOT, "examples", "pydatacoll-example-plugin")

SCRIPT = textwrap.dedent(
    """
    import json, sys
    from twisted.internet.defer import succeed
    from twisted.internet.task import Clock
    import pydatacoll, pydatacoll_example
    from pydatacoll.config import Settings
    from pydatacoll.model import Sample
    from pydatacoll.processing.loader import Processors

    class Redis:
        def call(self, *args):
            return succeed(None)

    settings = Settings(
        plugins_enabled=("example_counter", "limits"),
        plugin_options={"example_counter": {"greeting": "hello"}},
        data_dir=sys.argv[1],
    )
    processors = Processors(settings, Clock(), Redis(), lambda samples: None)
    processors.startService()
    processors.samples_received([Sample("1", "10", "1000", 1.0), Sample("2", "20", "1", 2)])
    processors.samples_received([Sample("1", "10", "1001", 3.0)])
    processors.config_changed({"entity": "device", "op": "add", "id": "3"})
    print(json.dumps({
        "pydatacoll": pydatacoll.__file__,
        "example": pydatacoll_example.__file__,
        "status": processors.status(),
    }, default=str))
    processors.stopService()
    """
)


def run(*args, **kwargs):
    """Run a command without the runner's PYTHONPATH: trial -j hands its workers its
    sys.path (the checkout included), and the venv's own PyDataColl must be the one pip
    installs and the script imports."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run(args, check=True, capture_output=True, text=True, env=env, **kwargs)


class ExamplePluginPackageTests(SynchronousTestCase):
    def test_installed_example_is_discovered_and_runs(self):
        work = tempfile.mkdtemp(prefix="pydatacoll-plugin-")
        wheels = os.path.join(work, "wheels")
        for source in (ROOT, EXAMPLE):
            run(
                sys.executable,
                "-m",
                "pip",
                "wheel",
                "-q",
                "--no-deps",
                "--no-index",
                "--no-build-isolation",
                "-w",
                wheels,
                source,
            )
        (example_wheel,) = [w for w in os.listdir(wheels) if w.startswith("pydatacoll_example")]
        names = zipfile.ZipFile(os.path.join(wheels, example_wheel)).namelist()
        self.assertIn("pydatacoll/plugins/example_counter.py", names)
        self.assertNotIn("pydatacoll/plugins/__init__.py", names)
        self.assertNotIn("pydatacoll/__init__.py", names)

        venv = os.path.join(work, "venv")
        run(sys.executable, "-m", "venv", "--without-pip", venv)
        python = os.path.join(venv, "bin", "python")
        purelib = run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])")
        purelib = purelib.stdout.strip()
        run(
            sys.executable,
            "-m",
            "pip",
            "--python",
            python,
            "install",
            "-q",
            "--no-deps",
            "--no-index",
            *[os.path.join(wheels, w) for w in sorted(os.listdir(wheels))],
        )
        # PyDataColl's dependencies come from this environment (appended after the venv's
        # own packages); PyDataColl itself and the example are installed in the venv.
        # Written after the install: pip would otherwise see this environment's
        # PyDataColl as installed already and skip the wheel.
        with open(os.path.join(purelib, "deps.pth"), "w") as f:
            f.write("\n".join(site.getsitepackages()) + "\n")
        result = run(python, "-c", SCRIPT, os.path.join(work, "data"), cwd=work)
        report = json.loads(result.stdout.strip().splitlines()[-1])
        self.assertTrue(report["pydatacoll"].startswith(purelib), report["pydatacoll"])
        self.assertTrue(report["example"].startswith(purelib), report["example"])
        counter = report["status"]["example_counter"]
        self.assertEqual(counter["state"], "running", counter)
        self.assertEqual(counter["description"], "example: counts the samples of each device")
        self.assertEqual(
            counter["detail"],
            {"samples": 3, "per_device": {"1": 2, "2": 1}, "changes": 1, "greeting": "hello"},
        )
        self.assertEqual(report["status"]["limits"]["state"], "running")
        self.assertEqual(report["status"]["formulas"]["state"], "disabled")
