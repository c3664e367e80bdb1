"""The simulators explain themselves: points, defaults and the map format in --help."""

import contextlib
import io

from twisted.trial.unittest import SynchronousTestCase

from pydatacoll.testing import iec104_sim_cli, modbus_sim


class HelpTests(SynchronousTestCase):
    def help_of(self, parse, argv):
        out = io.StringIO()
        with contextlib.redirect_stdout(out), self.assertRaises(SystemExit):
            parse(argv)
        return out.getvalue()

    def test_iec104_help_lists_its_points(self):
        text = iec104_sim_cli.parser().format_help()
        for expected in (
            "IOA 20001  C_SC_NA_1 (45",
            "IOA 20002  C_DC_NA_1 (46",
            "IOA 20003  C_SE_NC_1 (50",
            "IOA 10001 M_SP_NA_1",
            "IOA 10002 M_DP_NA_1",
            "IOA 10003 M_ME_NC_1",
            "IOA 1..N (--points)  M_ME_NC_1",
            "(default: 2404)",
        ):
            self.assertIn(expected, text)
        # every demo command point is in the help
        for cmd_ioa, _type, mon_ioa, _mon in iec104_sim_cli.DEMO_COMMANDS:
            self.assertIn(f"IOA {cmd_ioa}", text)
            self.assertIn(f"IOA {mon_ioa}", text)

    def test_modbus_help_shows_defaults_and_the_map_format(self):
        text = self.help_of(modbus_sim.parse_args, ["--help"])
        for expected in (
            "(default: 5020)",
            "(default: 4096)",
            "(default: 127.0.0.1)",
            '{"1": {"holding": {"0": [100, 200, 16712, 0]}',
            "get UNIT TABLE ADDRESS COUNT",
        ):
            self.assertIn(expected, text)
