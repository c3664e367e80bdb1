"""The protocol registry: a lazy table the model uses without importing a stack."""

import subprocess
import sys

from twisted.trial.unittest import SynchronousTestCase

from pydatacoll.errors import ValidationError
from pydatacoll.model import TermItem
from pydatacoll.protocols.registry import (
    DeviceProtocol,
    device_protocols,
    get_protocol,
    register_protocol,
    registered_protocols,
)


class RegistryTests(SynchronousTestCase):
    def test_built_in_protocols(self):
        self.assertEqual(sorted(device_protocols()), ["formula", "iec104", "modbus"])
        self.assertEqual(get_protocol("iec104").default_port, 2404)
        self.assertFalse(get_protocol("formula").has_link)
        self.assertEqual([p.name for p in registered_protocols()], ["formula", "iec104", "modbus"])

    def test_a_different_protocol_under_a_taken_name_is_refused(self):
        register_protocol(get_protocol("modbus"))  # the same entry again: accepted
        with self.assertRaises(ValueError):
            register_protocol(DeviceProtocol("modbus", "another Modbus"))

    def test_model_imports_no_protocol_stack(self):
        """Importing the model (and validating with it) loads the registry alone; the
        stacks are imported only when a checker runs."""
        code = (
            "import sys\n"
            "from pydatacoll.model import Device, TermItem\n"
            "Device.from_json({'id': 'd', 'protocol': 'iec104', 'ip': 'h'})\n"
            "TermItem.from_json({'term_id': 't', 'item_id': 'i', 'protocol_code': 1})\n"
            "print(sorted(m for m in sys.modules if m.startswith('pydatacoll.protocols')))\n"
        )
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        ).stdout
        self.assertEqual(out.strip(), "['pydatacoll.protocols', 'pydatacoll.protocols.registry']")


class ItemFieldTests(SynchronousTestCase):
    def test_modbus_fields_are_checked_through_the_registry(self):
        with self.assertRaises(ValidationError) as caught:
            TermItem.from_json(
                {"term_id": "t", "item_id": "i", "protocol_code": 3, "data_type": "bool"}
            )
        self.assertEqual(caught.exception.field, "bit")
        item = TermItem.from_json(
            {"term_id": "t", "item_id": "i", "protocol_code": 3, "data_type": "bool", "bit": 2}
        )
        self.assertEqual(item.bit, 2)

    def test_a_point_without_modbus_fields_is_not_judged_by_them(self):
        item = TermItem.from_json(
            {"term_id": "t", "item_id": "i", "protocol_code": 7, "code_type": 45}
        )
        self.assertEqual(item.code_type, 45)
