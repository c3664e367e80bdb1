"""The twistd plugin ships in the wheel and is found from an installed copy."""

import os
import subprocess
import sys
import tempfile
import zipfile

from twisted.trial.unittest import SynchronousTestCase

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class WheelTests(SynchronousTestCase):
    def test_wheel_installs_the_plugin(self):
        if not os.path.exists(os.path.join(ROOT, "setup.cfg")):
            raise AssertionError("run from a checkout")
        out = tempfile.mkdtemp()
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "wheel",
                "-q",
                "--no-deps",
                "--no-build-isolation",
                "-w",
                out,
                ROOT,
            ],
            check=True,
        )
        (wheel,) = [f for f in os.listdir(out) if f.endswith(".whl")]
        names = zipfile.ZipFile(os.path.join(out, wheel)).namelist()
        self.assertIn("twisted/plugins/pydatacoll_plugin.py", names)
        self.assertIn("pydatacoll/store/config.lua", names)
        self.assertIn("pydatacoll/store/config_dump.lua", names)
        for name in ("index.html", "app.js", "app.css"):
            self.assertIn(f"pydatacoll/ui/static/{name}", names)
        # The MQTT plugin: its factory, the generated Sparkplug B module and its EPL-2.0 source
        self.assertIn("pydatacoll/plugins/mqtt.py", names)
        self.assertIn("pydatacoll/processing/mqtt/sparkplug_b_pb2.py", names)
        self.assertIn("pydatacoll/processing/mqtt/sparkplug_b.proto", names)
        self.assertNotIn("twisted/__init__.py", names)
        target = os.path.join(out, "site")
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "install",
                "-q",
                "--no-deps",
                "--target",
                target,
                os.path.join(out, wheel),
            ],
            check=True,
        )
        code = (
            "import sys; sys.path.insert(0, sys.argv[1]); import pydatacoll; "
            "assert pydatacoll.__file__.startswith(sys.argv[1]), pydatacoll.__file__; "
            "from twisted.scripts.twistd import run; sys.argv[1:] = ['--help']; run()"
        )
        result = subprocess.run(
            [sys.executable, "-c", code, target],
            cwd=out,
            capture_output=True,
            text=True,
            check=False,
        )
        self.assertIn("pydatacoll", result.stdout)
