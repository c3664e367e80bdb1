"""The pure request builders of the IEC 104 master."""

import datetime

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from pydatacoll.protocols.iec104.asdu import SELECT, Cause, TypeId, decode_asdu, encode_asdu
from pydatacoll.protocols.iec104.commands import (
    Outcome,
    command_asdu,
    refusal,
    selected,
    system_asdu,
)

NOW = datetime.datetime(2026, 12, 3, 10, 0, tzinfo=datetime.UTC)


def now():
    return NOW


class CommandAsduTests(SynchronousTestCase):
    def test_values_are_checked_per_type(self):
        for type_id, value, message in (
            (45, 2, "true or false"),
            (46, 3, "1 (off/lower) or 2"),
            (48, 1.5, "normalised"),
            (49, 40000, "scaled"),
            (50, "x", "float"),
            (51, -1, "bitstring"),
            (100, 1, "not a process command"),
        ):
            with self.assertRaises(ValueError) as caught:
                command_asdu(1, 5, type_id, value, 0, None, now)
            self.assertIn(message, str(caught.exception), type_id)

    def test_time_tag_twin_and_originator(self):
        asdu = command_asdu(1, 5, 46, True, 0, True, now, originator=7)
        self.assertEqual(asdu.type_id, TypeId.C_DC_TA_1)
        self.assertEqual((asdu.values, asdu.times, asdu.originator), ([2], [NOW], 7))
        self.assertEqual(command_asdu(1, 5, 59, 1, 0, False, now).type_id, TypeId.C_DC_NA_1)

    @given(st.integers(-32768, 32767), st.integers(0, 127))
    def test_scaled_set_point_round_trips(self, value, ql):
        asdu = command_asdu(3, 1000, 49, value, ql, None, now)
        decoded = decode_asdu(encode_asdu(asdu))
        self.assertEqual((decoded.values, decoded.qualities), ([value], [ql]))
        self.assertEqual(decoded.cause, Cause.ACTIVATION)

    def test_select_and_refusal(self):
        request = command_asdu(1, 5, 45, True, 0, None, now)
        self.assertEqual(selected(request).qualities, [SELECT])
        bitstring = command_asdu(1, 5, 51, 1, 0, None, now)
        self.assertEqual(selected(bitstring).outcome, Outcome.REFUSED)
        reply = system_asdu(100, 1, 20)
        result = refusal("interrogation", reply)
        self.assertEqual(result.outcome, Outcome.NEGATIVE)
        self.assertIn("interrogation refused", result.message)
