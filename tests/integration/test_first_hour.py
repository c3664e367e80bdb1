"""A new user's first hour against a real ``twistd -n pydatacoll`` with the defaults."""

import os
import tempfile

from twisted.trial.unittest import SynchronousTestCase

from tests.integration.test_daemon import Daemon, request

ITEMS = [
    ("POST", "/api/v1/devices", {"id": "1", "protocol": "modbus", "ip": "127.0.0.1", "port": 1}),
    ("POST", "/api/v1/terms", {"id": "10", "device_id": "1", "protocol": "modbus"}),
    ("POST", "/api/v1/items", {"id": "1000"}),
    ("POST", "/api/v1/items", {"id": "1001"}),
    # a Modbus point needs its register (refused at the REST boundary otherwise)
    ("POST", "/api/v1/terms/10/items", {"term_id": "10", "item_id": "1000", "protocol_code": 0}),
    ("POST", "/api/v1/terms/10/items", {"term_id": "10", "item_id": "1001", "protocol_code": 1}),
]
FORMULA = {
    "id": "1",
    "formula": "p1 * 2",
    "device_id": "1",
    "term_id": "10",
    "item_id": "1001",
    "p1": "1:10:1000",
}


class DefaultPluginsTests(SynchronousTestCase):
    def test_plugins_are_this_process_states_and_formulas_run_by_default(self):
        """With no configuration, formulas and limits run and GET /api/v1/plugins lists
        every installed plugin from the first answer on; restarted with another
        ``enabled`` list, it shows the new process's states, and a formula then says why
        it is not computed."""
        workdir = tempfile.mkdtemp()
        daemon = Daemon(workdir)
        try:
            status, plugins = request("GET", daemon.base + "/api/v1/plugins")
            states = {p["name"]: p["state"] for p in plugins}
            self.assertEqual(
                states,
                {
                    "formulas": "running",
                    "limits": "running",
                    "history": "disabled",
                    "mqtt": "disabled",
                },
            )
            for method, path, body in ITEMS:
                self.assertEqual(request(method, daemon.base + path, body)[0], 201)
            status, created = request("POST", daemon.base + "/api/v1/formulas", FORMULA)
            self.assertEqual(status, 201)
            self.assertNotIn("warning", created)
            self.assertNotEqual(
                request("GET", daemon.base + "/api/v1/formulas/1/status")[1]["state"], "disabled"
            )
        finally:
            daemon.stop()
        config = os.path.join(workdir, "limits-only.ini")
        with open(config, "w") as f:
            f.write("[plugins]\nenabled = limits\n")
        daemon = Daemon(workdir, "--config", config)
        try:
            status, plugins = request("GET", daemon.base + "/api/v1/plugins")
            states = {p["name"]: p["state"] for p in plugins}
            self.assertEqual(
                states,
                {
                    "formulas": "disabled",
                    "limits": "running",
                    "history": "disabled",
                    "mqtt": "disabled",
                },
            )
            status, state = request("GET", daemon.base + "/api/v1/formulas/1/status")
            self.assertEqual((status, state["state"]), (200, "disabled"))
            self.assertIn("formulas plugin runs in no collector", state["error"])
            self.assertEqual(request("DELETE", daemon.base + "/api/v1/formulas/1")[0], 204)
            status, created = request("POST", daemon.base + "/api/v1/formulas", FORMULA)
            self.assertEqual(status, 201)
            self.assertIn("formulas plugin runs in no collector", created["warning"])
        finally:
            daemon.stop()
