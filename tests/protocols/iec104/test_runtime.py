"""The IEC 104 device runtime: how device_ctrl values and point types become commands."""

from twisted.application.service import IService
from twisted.internet.defer import succeed
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.plugin import IPlugin
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from pydatacoll.interfaces import IDeviceRuntime, IProtocolDriver
from pydatacoll.model import Device, Term, TermItem
from pydatacoll.protocols.iec104.asdu import COMMAND_FOR_MONITOR, TypeId, command_type_for
from pydatacoll.protocols.iec104.client import CommandResult, Outcome, _MasterFactory
from pydatacoll.protocols.iec104.link import LinkState
from pydatacoll.protocols.iec104.runtime import Iec104Runtime, driver


class RecordingClient:
    """Takes the runtime's commands and confirms them."""

    def __init__(self):
        self.commands = []

    def command(self, ca, ioa, type_id, value, select=False):
        self.commands.append((ca, ioa, type_id, value, select))
        return succeed(CommandResult(Outcome.CONFIRMED, "confirmed"))


def runtime(points):
    device = Device.from_json({"id": "1", "protocol": "iec104", "ip": "127.0.0.1"})
    term = Term.from_json({"id": "10", "device_id": "1", "address": 1})
    term_items = [
        TermItem.from_json({"term_id": "10", "item_id": item, **body})
        for item, body in points.items()
    ]
    result = Iec104Runtime(device, [term], term_items, sink=None, reactor=Clock())
    result.client = RecordingClient()
    return result


class CommandTypeTests(SynchronousTestCase):
    def test_the_table(self):
        """Monitor types map to their commands (docs/iec104.rst); commands stay."""
        expected = {
            TypeId.M_SP_NA_1: TypeId.C_SC_NA_1,
            TypeId.M_DP_NA_1: TypeId.C_DC_NA_1,
            TypeId.M_ST_NA_1: TypeId.C_RC_NA_1,
            TypeId.M_ME_NA_1: TypeId.C_SE_NA_1,
            TypeId.M_ME_NB_1: TypeId.C_SE_NB_1,
            TypeId.M_ME_NC_1: TypeId.C_SE_NC_1,
            TypeId.M_BO_NA_1: TypeId.C_BO_NA_1,
            TypeId.M_SP_TB_1: TypeId.C_SC_TA_1,
            TypeId.M_DP_TB_1: TypeId.C_DC_TA_1,
            TypeId.M_ST_TB_1: TypeId.C_RC_TA_1,
            TypeId.M_BO_TB_1: TypeId.C_BO_TA_1,
            TypeId.M_ME_TD_1: TypeId.C_SE_TA_1,
            TypeId.M_ME_TE_1: TypeId.C_SE_TB_1,
            TypeId.M_ME_TF_1: TypeId.C_SE_TC_1,
        }
        for monitor, command in expected.items():
            self.assertEqual(command_type_for(monitor), command, monitor.name)
        for command in range(45, 65):
            if command in TypeId._value2member_map_:
                self.assertEqual(command_type_for(command), command)
        self.assertTrue(all(58 <= c <= 64 for m, c in COMMAND_FOR_MONITOR.items() if m >= 30))
        self.assertIsNone(command_type_for(TypeId.M_IT_NA_1))  # counters take no command

    def test_a_monitor_code_type_is_commanded_with_its_command(self):
        """A point configured with its monitor type 36 (float, time tag) takes a
        set-point 63 in engineering units; an explicit command type stays as it is."""
        device = runtime(
            {
                "1000": {"protocol_code": 100, "code_type": 36, "coefficient": 0.1},
                "1001": {"protocol_code": 101, "code_type": 50},
                "1002": {"protocol_code": 102, "code_type": 15},
            }
        )
        outcome = self.successResultOf(device.control_point("10", "1000", 240.1, None))
        self.assertEqual(outcome.outcome, "confirmed")
        self.assertEqual(device.client.commands[-1][2], 63)
        self.assertAlmostEqual(device.client.commands[-1][3], 2401.0)
        self.successResultOf(device.control_point("10", "1001", 5.5, None))
        self.assertEqual(device.client.commands[-1][2:4], (50, 5.5))
        refused = self.successResultOf(device.control_point("10", "1002", 1, None))
        self.assertEqual(refused.outcome, "refused")
        self.assertIn("code_type 15", refused.message)

    def test_json_booleans(self):
        """true/false: a single command's on/off, a double command's 2/1 (docs/iec104.rst),
        1/0 for the others."""
        device = runtime(
            {
                "sc": {"protocol_code": 1, "code_type": 45},
                "dc": {"protocol_code": 2, "code_type": 46},
                "sp": {"protocol_code": 3, "code_type": 1},
                "bo": {"protocol_code": 4, "code_type": 51},
            }
        )
        for item, value, raw in (
            ("sc", False, False),
            ("sc", True, True),
            ("dc", True, 2),
            ("dc", False, 1),
            ("sp", True, True),
            ("bo", True, 1),
        ):
            self.successResultOf(device.control_point("10", item, value, None))
            self.assertEqual(device.client.commands[-1][3], raw, (item, value))
            self.assertIs(type(device.client.commands[-1][3]), type(raw), (item, value))


class InterfaceTests(SynchronousTestCase):
    def test_driver_and_runtime_provide_their_interfaces(self):
        self.assertTrue(verifyObject(IProtocolDriver, driver))
        self.assertTrue(verifyObject(IPlugin, driver))
        device = Device.from_json({"id": "1", "protocol": "iec104", "ip": "127.0.0.1"})
        term = Term.from_json({"id": "10", "device_id": "1", "address": 1})
        frames = []

        def observer(direction, frame):
            frames.append((direction, frame))

        built = driver.build(device, [term], [], None, Clock(), None, observer)
        self.assertIsInstance(built, Iec104Runtime)
        self.assertTrue(verifyObject(IDeviceRuntime, built))
        self.assertTrue(verifyObject(IService, built))
        self.assertIs(built.client.frame_observer, observer)

    def test_pause_and_resume_input_pause_the_transport(self):
        device = Device.from_json({"id": "1", "protocol": "iec104", "ip": "127.0.0.1"})
        term = Term.from_json({"id": "10", "device_id": "1", "address": 1})
        built = Iec104Runtime(device, [term], [], sink=None, reactor=Clock())
        built.pause_input()  # no connection yet: nothing to pause
        master = _MasterFactory(built.client).buildProtocol(None)
        self.assertIs(built.client.protocol, master)
        transport = StringTransport()
        master.makeConnection(transport)
        built.pause_input()
        self.assertEqual(transport.producerState, "paused")
        built.resume_input()
        self.assertEqual(transport.producerState, "producing")

    def test_link_state_is_the_state_of_the_status(self):
        device = Device.from_json({"id": "1", "protocol": "iec104", "ip": "127.0.0.1"})
        term = Term.from_json({"id": "10", "device_id": "1", "address": 1})
        built = Iec104Runtime(device, [term], [], sink=None, reactor=Clock())
        seen = []
        for state in LinkState:
            built.client.state = state
            self.assertEqual(built.link_state(), built.status()["state"])
            seen.append(built.link_state())
        self.assertEqual(seen, [s.value for s in LinkState])
