"""Our IEC 104 master against lib60870 (the c104 test dependency) over real TCP."""

import datetime
import struct

from twisted.internet import defer, reactor
from twisted.trial.unittest import TestCase

from pydatacoll.protocols.iec104.asdu import UTC, Cause, Quality
from pydatacoll.protocols.iec104.client import Iec104Client, Outcome, StationParams
from pydatacoll.protocols.iec104.link import LinkState
from tests.integration.iec104_peer import (
    COMMAND_FEEDBACK,
    DIRECT,
    NOT_IN_INTERROGATION,
    SELECT_AND_EXECUTE,
    C104Station,
    command_io_address,
    feedback_io_address,
    monitor_io_address,
    poll_until,
)

TYPE_IDS = {
    "M_SP_NA_1": 1,
    "M_DP_NA_1": 3,
    "M_ST_NA_1": 5,
    "M_BO_NA_1": 7,
    "M_ME_NA_1": 9,
    "M_ME_NB_1": 11,
    "M_ME_NC_1": 13,
    "M_IT_NA_1": 15,
    "M_PS_NA_1": 20,
    "M_ME_ND_1": 21,
    "M_SP_TB_1": 30,
    "M_DP_TB_1": 31,
    "M_ST_TB_1": 32,
    "M_BO_TB_1": 33,
    "M_ME_TD_1": 34,
    "M_ME_TE_1": 35,
    "M_ME_TF_1": 36,
    "M_IT_TB_1": 37,
    "M_EP_TD_1": 38,
    "M_EP_TE_1": 39,
    "M_EP_TF_1": 40,
}
COMMAND_IDS = {
    "C_SC_NA_1": 45,
    "C_DC_NA_1": 46,
    "C_RC_NA_1": 47,
    "C_SE_NA_1": 48,
    "C_SE_NB_1": 49,
    "C_SE_NC_1": 50,
    "C_BO_NA_1": 51,
    "C_SC_TA_1": 58,
    "C_DC_TA_1": 59,
    "C_RC_TA_1": 60,
    "C_SE_TA_1": 61,
    "C_SE_TB_1": 62,
    "C_SE_TC_1": 63,
    "C_BO_TA_1": 64,
}
#: A value to command per command kind (the base type id).
COMMAND_VALUES = {45: True, 46: 2, 47: 2, 48: 0.25, 49: 1234, 50: 42.5, 51: 0x12345678}


def f32(value):
    return struct.unpack("<f", struct.pack("<f", value))[0]


def expected_row(point):
    """A c104 MonitorPoint as our decoder must give it: (type, value, quality, time, extra)."""
    type_id = TYPE_IDS[point.type_name]
    value = point.value
    quality = point.quality
    extra = None
    if type_id in (13, 36):
        value = f32(value)
    if type_id in (15, 37):
        quality = (quality & 0x80) | (Quality.CA if quality & 0x40 else 0)
        quality |= Quality.CY if point.quality & 0x20 else 0
        extra = point.sequence
    if type_id in (5, 32) and point.transient:
        quality |= Quality.TRANSIENT
    if type_id in (38, 39, 40):
        extra = point.elapsed_ms
    if type_id == 20:
        extra = point.changed
    return type_id, value, int(quality), point.recorded_at, extra


class InteropTests(TestCase):
    timeout = 60

    @defer.inlineCallbacks
    def setUp(self):
        self.station = C104Station(common_addresses=(1, 2))
        self.station.start()
        self.addCleanup(self.station.stop)
        self.asdus = []
        self.client = Iec104Client(
            reactor,
            [(self.station.host, self.station.port)],
            station=StationParams(common_addresses=(1, 2), command_timeout=5),
            on_data=self.asdus.append,
            retry=lambda attempt: 0.2,
        )
        self.client.startService()
        self.addCleanup(self.client.stopService)
        yield poll_until(reactor, lambda: len(self.client.status()["interrogations"]) == 2, 10)

    def latest(self, cause=None):
        """(ca, ioa) -> the newest decoded object (type, value, quality, time, extra)."""
        rows = {}
        for asdu in self.asdus:
            if cause is not None and asdu.cause not in cause:
                continue
            for obj in asdu.objects():
                rows[(asdu.common_address, obj.ioa)] = (
                    asdu.type_id,
                    obj.value,
                    obj.quality,
                    obj.time,
                    obj.extra,
                )
        return rows

    def test_interrogation_reads_every_point_exactly(self):
        status = self.client.status()
        self.assertEqual(status["state"], "started")
        self.assertEqual(
            {ca: gi["outcome"] for ca, gi in status["interrogations"].items()},
            {1: "terminated", 2: "terminated"},
        )
        got = self.latest(cause={Cause.INTERROGATED_BY_STATION})
        checked = 0
        for ca in (1, 2):
            for point in self.station.expected_points(ca):
                if point.type_name in NOT_IN_INTERROGATION:
                    continue
                self.assertEqual(
                    got.get((ca, point.io_address)),
                    expected_row(point),
                    f"{point.type_name} CA {ca} IOA {point.io_address}",
                )
                checked += 1
        self.assertEqual(len(got), checked)
        self.assertGreater(checked, 60)

    @defer.inlineCallbacks
    def test_spontaneous_changes_arrive(self):
        when = datetime.datetime(2026, 6, 1, 12, 0, 0, 250000, tzinfo=UTC)
        ioa_float = monitor_io_address("M_ME_NC_1", 2)
        ioa_sp = monitor_io_address("M_SP_TB_1")
        self.station.update_point(2, ioa_float, 99.5, quality=0)
        self.station.update_point(1, ioa_sp, True, quality=0x40, recorded_at=when)
        yield poll_until(reactor, lambda: len(self.latest({Cause.SPONTANEOUS})) == 2, 5)
        got = self.latest({Cause.SPONTANEOUS})
        self.assertEqual(got[(2, ioa_float)], (13, 99.5, 0, None, None))
        self.assertEqual(got[(1, ioa_sp)], (30, True, 0x40, when, None))

    @defer.inlineCallbacks
    def test_counter_interrogation(self):
        result = yield self.client.counter_interrogate(1, request=5, freeze=1)
        self.assertEqual(result.outcome, Outcome.TERMINATED)
        self.assertEqual(result.objects, 2)
        (request,) = yield poll_until(reactor, self.station.counter_interrogations, 5)
        self.assertEqual((request.rqt, request.frz), (5, 1))
        got = self.latest({Cause.REQUESTED_BY_GENERAL_COUNTER})
        for name in ("M_IT_NA_1", "M_IT_TB_1"):
            point = self.station.expected(1, monitor_io_address(name))
            self.assertEqual(got[(1, point.io_address)], expected_row(point), name)

    @defer.inlineCallbacks
    def test_clock_synchronisation(self):
        before = datetime.datetime.now(UTC)
        result = yield self.client.clock_sync(2)
        self.assertEqual(result.outcome, Outcome.CONFIRMED)

        def both():
            # c104 reports received frames from its own thread: wait for both (start, now).
            syncs = [r for r in self.station.clock_syncs() if r.common_address == 2]
            return syncs if len(syncs) >= 2 else None

        syncs = yield poll_until(reactor, both, 5)
        self.assertEqual(len(syncs), 2)
        self.assertLess(abs((syncs[-1].time - before).total_seconds()), 2)

    @defer.inlineCallbacks
    def test_read_returns_the_current_value(self):
        ioa = monitor_io_address("M_ME_NC_1", 1)
        self.station.update_point(1, ioa, 7.25, transmit=None)
        result = yield self.client.read(1, ioa)
        self.assertEqual(result.outcome, Outcome.CONFIRMED)
        self.assertEqual((result.reply.cause, result.reply.values), (Cause.REQUEST, [7.25]))
        unknown = yield self.client.read(1, 9999)
        self.assertEqual(unknown.outcome, Outcome.NEGATIVE)

    @defer.inlineCallbacks
    def test_every_command_direct_and_select_before_operate(self):
        done = 0
        for name in COMMAND_FEEDBACK:
            type_id = COMMAND_IDS[name]
            base = type_id - 13 if type_id >= 58 else type_id
            value = COMMAND_VALUES[base]
            for mode in (DIRECT, SELECT_AND_EXECUTE):
                if base == 51 and mode is SELECT_AND_EXECUTE:
                    continue
                ioa = command_io_address(name, mode)
                result = yield self.client.command(
                    1, ioa, type_id, value, select=mode is SELECT_AND_EXECUTE
                )
                self.assertEqual(result.outcome, Outcome.CONFIRMED, f"{name} {mode}")
                expected_selects = [True, False] if mode is SELECT_AND_EXECUTE else [False]

                def recorded(ioa=ioa, n=len(expected_selects)):
                    # c104 reports received frames from its own thread: wait for them.
                    rows = [r for r in self.station.commands() if r.io_address == ioa]
                    return rows if len(rows) >= n else None

                executed = yield poll_until(reactor, recorded, 5)
                if base != 51:
                    self.assertEqual([r.select for r in executed], expected_selects, name)
                sent = executed[-1].value
                if base == 46:
                    self.assertEqual(sent, 2)
                elif base in (48, 50):
                    self.assertAlmostEqual(sent, value, places=4)
                else:
                    self.assertEqual(sent, value if base != 47 else 2)
                feedback = feedback_io_address(ioa)
                yield poll_until(
                    reactor, lambda f=feedback: (1, f) in self.latest({Cause.RETURN_REMOTE}), 5
                )
                want = expected_row(self.station.expected(1, feedback))
                self.assertEqual(
                    self.latest({Cause.RETURN_REMOTE})[(1, feedback)][:2], want[:2], name
                )
                done += 1
        self.assertEqual(done, 26)

    @defer.inlineCallbacks
    def test_a_rejected_command_is_negative(self):
        for mode in (DIRECT, SELECT_AND_EXECUTE):
            ioa = command_io_address("C_SC_NA_1", mode)
            self.station.fail_commands(1, ioa)
            result = yield self.client.command(1, ioa, 45, True, select=mode is SELECT_AND_EXECUTE)
            self.assertEqual(result.outcome, Outcome.NEGATIVE, mode)
            self.assertFalse(result.ok)
            self.assertEqual(result.cause, Cause.ACTIVATION_CON)
        result = yield self.client.command(1, 9999, 46, 1)
        self.assertEqual(result.outcome, Outcome.NEGATIVE)
        result = yield self.client.command(1, command_io_address("C_SC_NA_1", DIRECT), 46, 1)
        self.assertEqual(result.outcome, Outcome.NEGATIVE)  # wrong type for the point

    @defer.inlineCallbacks
    def test_station_restart_reconnects_and_interrogates(self):
        before = len(self.station.interrogations())
        self.station.stop()
        yield poll_until(reactor, lambda: self.client.state is not LinkState.STARTED, 5)
        result = yield self.client.read(1, monitor_io_address("M_SP_NA_1"))
        self.assertEqual(result.outcome, Outcome.LINK_DOWN)
        self.station.start()
        yield poll_until(reactor, lambda: self.client.state is LinkState.STARTED, 10)
        self.assertGreaterEqual(self.client.status()["reconnects"], 1)
        # The new link interrogates both stations again by itself.
        yield poll_until(reactor, lambda: len(self.station.interrogations()) >= before + 2, 5)
