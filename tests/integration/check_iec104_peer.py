"""Checks of the c104 harness itself, driven by c104's own client (run by hand, not in CI).

c104's client calls block and report from its own threads, so these checks race with it
on a loaded machine; `test_iec104_interop` exercises the harness in CI. Run with
``python -m twisted.trial tests.integration.check_iec104_peer``.
"""

import datetime
import math
import os

import c104
from twisted.internet import defer, reactor
from twisted.trial.unittest import TestCase

from tests.integration.iec104_peer import (
    COMMAND_FEEDBACK,
    DIRECT,
    MONITOR_TYPES,
    NOT_IN_INTERROGATION,
    NT,
    SELECT_AND_EXECUTE,
    UTC,
    C104Station,
    Reply,
    command_io_address,
    connect_c104_client,
    feedback_io_address,
    from_c104_time,
    monitor_io_address,
    poll_until,
    to_c104_time,
)

_TYPE_IDS = {t.value: name for name, t in c104.Type.__members__.items()}
COMMAND_TIME = datetime.datetime(2026, 5, 6, 7, 8, 9, 100000, tzinfo=UTC)


def native_threads() -> set[str]:
    """The ids of this process's OS threads (c104's are invisible to `threading`)."""
    return set(os.listdir("/proc/self/task"))


def observed(point: c104.Point) -> dict:
    """What c104's client decoded for a monitor point, in the harness's terms."""
    info = point.info
    value = info.value
    name = point.type.name
    if isinstance(value, bool):
        pass
    elif name.startswith(("M_DP", "M_EP_TD")):
        value = value.value
    elif name.startswith("M_BO"):
        value = int.from_bytes(bytes(value), "little")
    elif name.startswith(("M_EP_TE", "M_EP_TF", "M_PS")):
        value = value.value
    elif name.startswith(("M_ME_NA", "M_ME_ND", "M_ME_TD", "M_ME_NC", "M_ME_TF")):
        value = float(value)
    else:
        value = int(value)
    # c104's client puts the raw BCR bits into BinaryCounterQuality, whose names are swapped
    # (wire CY 0x20 reads as "Adjusted", CA 0x40 as "Carry"): use the bits, not the names.
    quality = 0 if info.quality is None else info.quality.value
    seen = dict(value=value, quality=quality, recorded_at=from_c104_time(info.recorded_at))
    if name.startswith("M_ST"):
        seen["transient"] = info.transient
    if name.startswith("M_IT"):
        seen["sequence"] = int(info.sequence)
    if name == "M_EP_TD_1":
        seen["elapsed_ms"] = int(info.elapsed_ms)
    if name == "M_EP_TE_1":
        seen["elapsed_ms"] = int(info.relay_duration_ms)
    if name == "M_EP_TF_1":
        seen["elapsed_ms"] = int(info.relay_operating_ms)
    if name == "M_PS_NA_1":
        seen["changed"] = info.changed.value
    return seen


def expected_view(point) -> dict:
    """The harness's MonitorPoint in the shape of `observed`."""
    seen = dict(value=point.value, quality=point.quality, recorded_at=point.recorded_at)
    for extra in ("transient", "sequence", "elapsed_ms", "changed"):
        if getattr(point, extra) is not None:
            seen[extra] = getattr(point, extra)
    return seen


def command_info(type_name: str, moment: datetime.datetime | None) -> tuple:
    """A c104 command Information for `type_name`, and the value the harness must record."""
    at = None if moment is None else to_c104_time(moment)
    family = type_name[:4]
    if family == "C_SC":
        return c104.SingleCmd(on=True, qualifier=c104.Qoc.SHORT_PULSE, recorded_at=at), True
    if family == "C_DC":
        return c104.DoubleCmd(state=c104.Double.ON, recorded_at=at), 2
    if family == "C_RC":
        return c104.StepCmd(direction=c104.Step.HIGHER, recorded_at=at), 2
    if family == "C_BO":
        bits = 0x12345678
        return c104.BinaryCmd(blob=c104.Byte32(bits.to_bytes(4, "little")), recorded_at=at), bits
    if type_name in ("C_SE_NA_1", "C_SE_TA_1"):
        return c104.NormalizedCmd(target=c104.NormalizedFloat(0.25), recorded_at=at), 0.25
    if type_name in ("C_SE_NB_1", "C_SE_TB_1"):
        return c104.ScaledCmd(target=c104.Int16(-300), recorded_at=at), -300
    return c104.ShortCmd(target=42.5, recorded_at=at), 42.5


def feedback_for(type_name: str, recorded: object) -> object:
    """The feedback point's value after the command of `command_info`."""
    if type_name.startswith("C_RC"):
        return 1  # one step up from 0
    return recorded


class C104StationTests(TestCase):
    """A c104.Client against the harness: GI, spontaneous data, commands, system commands."""

    @defer.inlineCallbacks
    def setUp(self):
        before = native_threads()
        self.addCleanup(self.assert_threads_ended, before)
        self.station = C104Station(common_addresses=(1, 2))
        self.station.start()
        self.addCleanup(self.station.stop)
        self.client, self.connection = yield connect_c104_client(
            reactor, self.station.host, self.station.port
        )
        self.addCleanup(self.client.stop)

    @defer.inlineCallbacks
    def assert_threads_ended(self, before):
        yield poll_until(reactor, lambda: native_threads() <= before, timeout=2)

    def client_point(self, ca: int, ioa: int, type_name: str, mode=DIRECT) -> c104.Point:
        station = self.connection.get_station(ca) or self.connection.add_station(ca)
        point = station.get_point(ioa)
        if point is None:
            point = station.add_point(
                io_address=ioa, type=getattr(c104.Type, type_name), command_mode=mode
            )
        return point

    def received(self, ca: int, ioa: int) -> c104.Point | None:
        station = self.connection.get_station(ca)
        return None if station is None else station.get_point(ioa)

    @defer.inlineCallbacks
    def test_interrogation_returns_every_point_exactly(self):
        """GI (and CI for counters) of both stations: every value, quality and UTC time."""
        for ca in (1, 2):
            self.assertTrue(self.connection.interrogation(common_address=ca))
        yield poll_until(
            reactor, lambda: sum(r.terminated for r in self.station.interrogations()) == 2
        )
        # Integrated totals are not part of a GI (they answer counter interrogation only).
        self.assertFalse([d for d in self.station.sent_asdus() if d[6] in (15, 37)])
        for ca in (1, 2):
            self.assertTrue(self.connection.counter_interrogation(common_address=ca))
        yield poll_until(
            reactor, lambda: sum(r.terminated for r in self.station.counter_interrogations()) == 2
        )
        gi_types = {_TYPE_IDS[d[6]] for d in self.station.sent_asdus() if d[8] == 20}
        self.assertEqual(gi_types, set(MONITOR_TYPES) - NOT_IN_INTERROGATION)
        # The types c104 leaves out of a GI go spontaneously, unchanged.
        left_out = [
            p for p in self.station.expected_points() if p.type_name in NOT_IN_INTERROGATION
        ]
        for point in left_out:
            if not point.type_name.startswith("M_IT"):
                self.assertTrue(self.station.transmit(point.common_address, point.io_address))
        yield poll_until(
            reactor, lambda: all(self.received(p.common_address, p.io_address) for p in left_out)
        )
        expected = self.station.expected_points()
        self.assertEqual(len(expected), 2 * 49)
        for point in expected:
            got = self.received(point.common_address, point.io_address)
            self.assertIsNotNone(got, point)
            self.assertEqual(got.type.name, point.type_name)
            seen, want = observed(got), expected_view(point)
            if isinstance(want["value"], float):
                self.assertTrue(math.isclose(seen.pop("value"), want.pop("value")), point)
            self.assertEqual(seen, want, point)
        # 1301-1303 and the feedback points 15001/15002 are not one run: SQ=0, 5 objects.
        floats = [d for d in self.station.sent_asdus() if d[6] == 13 and d[10] == 1]
        self.assertEqual([(d[7], d[8]) for d in floats], [(0x05, 20)])

    @defer.inlineCallbacks
    def test_interrogation_sequence(self):
        """Without command points every GI type is one run of IOAs: all SQ=1 (one is 0x83)."""
        station = C104Station(common_addresses=(7,), with_commands=False)
        station.start()
        self.addCleanup(station.stop)
        client, connection = yield connect_c104_client(reactor, station.host, station.port)
        self.addCleanup(client.stop)
        self.assertTrue(connection.interrogation(common_address=7))
        yield poll_until(reactor, lambda: any(r.terminated for r in station.interrogations()))
        replies = [d for d in station.sent_asdus() if d[8] == 20]
        self.assertEqual({d[7] for d in replies}, {0x81, 0x83})
        self.assertEqual([d[7] for d in replies if d[6] == 13], [0x83])

    @defer.inlineCallbacks
    def test_spontaneous_change_arrives(self):
        """A new value, quality and time sent with COT 3 reach the master."""
        at = datetime.datetime(2026, 7, 1, 23, 59, 59, 999000, tzinfo=UTC)
        ioa_float, ioa_timed = monitor_io_address("M_ME_NC_1", 2), monitor_io_address("M_SP_TB_1")
        self.station.update_point(1, ioa_float, 99.5, quality=NT)
        self.station.update_point(1, ioa_timed, True, quality=0, recorded_at=at)

        def arrived():
            a, b = self.received(1, ioa_float), self.received(1, ioa_timed)
            return a is not None and b is not None and b.value is True

        yield poll_until(reactor, arrived)
        self.assertEqual(observed(self.received(1, ioa_float))["value"], 99.5)
        self.assertEqual(observed(self.received(1, ioa_float))["quality"], NT)
        self.assertEqual(observed(self.received(1, ioa_timed))["recorded_at"], at)
        spontaneous = {d[6] for d in self.station.sent_asdus() if d[8] == 3}
        self.assertEqual(spontaneous, {13, 30})

    def run_command(self, type_name: str, mode, ca: int = 1, expect: bool = True) -> tuple:
        """Send one command with c104's client; return (IOA, value, time tag sent)."""
        ioa = command_io_address(type_name, mode)
        moment = COMMAND_TIME if type_name[5] == "T" else None
        info, value = command_info(type_name, moment)
        point = self.client_point(ca, ioa, type_name, mode)
        point.info = info
        if moment is not None:
            moment = from_c104_time(point.info.recorded_at)
            moment = moment.replace(microsecond=moment.microsecond // 1000 * 1000)
        # Blocks until ACT_CON (a few ms on loopback) or command_timeout_ms.
        self.assertEqual(point.transmit(cause=c104.Cot.ACTIVATION), expect, type_name)
        return ioa, value, moment

    @defer.inlineCallbacks
    def test_direct_commands(self):
        """Every command type, DIRECT: recorded as sent, ACT_CON, feedback point updated."""
        for type_name in COMMAND_FEEDBACK:
            ioa, value, moment = self.run_command(type_name, DIRECT)
            feedback = feedback_io_address(ioa)
            want = feedback_for(type_name, value)
            yield poll_until(reactor, lambda f=feedback, w=want: self.feedback_seen(1, f, w))
            (record,) = [r for r in self.station.commands() if r.io_address == ioa]
            self.assertEqual(record.type_name, type_name)
            self.assertEqual((record.cot, record.common_address), (6, 1))
            self.assertEqual(record.value, value)
            self.assertEqual(record.time, moment, type_name)
            self.assertIn(record.select, (False, None))  # None: C_BO has no S/E bit
            if type_name.startswith("C_SC"):
                self.assertEqual(record.qualifier, 1)  # QU: short pulse
            self.assertEqual(record.replies, (Reply(7, False),), type_name)  # no ACT_TERM
            self.assertEqual(self.station.expected(1, feedback).value, want)

    def feedback_seen(self, ca: int, ioa: int, want) -> bool:
        point = self.received(ca, ioa)
        if point is None:
            return False
        value = observed(point)["value"]
        return math.isclose(value, want) if isinstance(want, float) else value == want

    @defer.inlineCallbacks
    def test_select_and_execute_commands(self):
        """SELECT_AND_EXECUTE: a select then an execute, each ACT_CON, then one ACT_TERM."""
        for type_name in COMMAND_FEEDBACK:
            if type_name.startswith("C_BO"):
                continue  # no S/E bit: c104 can only run bitstring commands DIRECT
            ioa, value, _ = self.run_command(type_name, SELECT_AND_EXECUTE, ca=2)
            feedback = feedback_io_address(ioa)
            want = feedback_for(type_name, value)
            yield poll_until(reactor, lambda f=feedback, w=want: self.feedback_seen(2, f, w))
            select, execute = [r for r in self.station.commands() if r.io_address == ioa]
            self.assertEqual((select.select, execute.select), (True, False), type_name)
            self.assertEqual((select.value, execute.value), (value, value))
            self.assertEqual(select.replies, (Reply(7, False),))
            self.assertEqual(execute.replies, (Reply(7, False), Reply(10, False)))
            # c104 echoes the select (S/E=1) in the ACT_TERM.
            term = [
                d for d in self.station.sent_asdus() if d[8] == 10 and d[12:15] == select.raw[12:15]
            ]
            self.assertEqual([t[15:] for t in term], [select.raw[15:]])

    @defer.inlineCallbacks
    def test_negative_command(self):
        """A failing command point answers a negative ACT_CON; c104's client says False."""
        direct = command_io_address("C_SE_NC_1", DIRECT)
        sbo = command_io_address("C_DC_NA_1", SELECT_AND_EXECUTE)
        self.station.fail_commands(1, direct)
        self.station.fail_commands(1, sbo)
        self.run_command("C_SE_NC_1", DIRECT, expect=False)
        self.run_command("C_DC_NA_1", SELECT_AND_EXECUTE, expect=False)
        yield poll_until(reactor, lambda: len(self.station.commands()) == 3)
        first, select, execute = self.station.commands()
        self.assertEqual(first.replies, (Reply(7, True),))
        self.assertEqual(select.replies, (Reply(7, False),))
        yield poll_until(reactor, lambda: self.station.commands()[2].terminated)
        execute = self.station.commands()[2]
        self.assertEqual(execute.replies, (Reply(7, True), Reply(10, False)))
        self.assertEqual(self.station.expected(1, feedback_io_address(direct)).value, 0.0)
        self.station.fail_commands(1, direct, failing=False)
        self.run_command("C_SE_NC_1", DIRECT)

    @defer.inlineCallbacks
    def test_unknown_io_address(self):
        """Unknown IOA: a negative ACT_CON, then the same ASDU with COT 47."""
        point = self.client_point(1, 9999, "C_SC_NA_1")
        point.value = True
        # c104's client returns True or False here, depending on which reply it sees first.
        point.transmit(cause=c104.Cot.ACTIVATION)
        yield poll_until(reactor, lambda: [len(c.replies) for c in self.station.commands()] == [2])
        self.assertEqual(self.station.commands()[0].replies, (Reply(7, True), Reply(47, False)))

    @defer.inlineCallbacks
    def test_clock_sync(self):
        """Clock sync is recorded with the master's time (UTC on the wire) and confirmed."""
        self.assertTrue(self.connection.clock_sync(common_address=1))
        self.station.clock_sync_response = c104.ResponseState.FAILURE
        self.assertFalse(self.connection.clock_sync(common_address=2))
        yield poll_until(
            reactor,
            lambda: (
                len(self.station.clock_syncs()) == 2
                and all(r.replies for r in self.station.clock_syncs())
            ),
        )
        ok, refused = self.station.clock_syncs()
        now = datetime.datetime.now(UTC)
        self.assertLess(abs((now - ok.time).total_seconds()), 5)
        self.assertEqual(ok.replies, (Reply(7, False),))
        self.assertEqual(refused.replies, (Reply(7, True),))
        self.assertEqual(self.station.clock_sync_callbacks(), [ok.time, refused.time])

    @defer.inlineCallbacks
    def test_counter_interrogation(self):
        """Every QCC is recorded; c104 answers each with the counters at COT 37."""
        asks = [
            (c104.Rqt.GENERAL, c104.Frz.READ),
            (c104.Rqt.GROUP_1, c104.Frz.FREEZE_WITHOUT_RESET),
            (c104.Rqt.GROUP_4, c104.Frz.FREEZE_WITH_RESET),
            (c104.Rqt.GENERAL, c104.Frz.COUNTER_RESET),
        ]
        for rqt, frz in asks:
            self.assertTrue(
                self.connection.counter_interrogation(common_address=1, qualifier=rqt, freeze=frz)
            )
        yield poll_until(
            reactor, lambda: sum(r.terminated for r in self.station.counter_interrogations()) == 4
        )
        records = self.station.counter_interrogations()
        self.assertEqual([(r.rqt, r.frz) for r in records], [(5, 0), (1, 1), (4, 2), (5, 3)])
        self.assertEqual({r.replies for r in records}, {(Reply(7, False), Reply(10, False))})
        counters = [d for d in self.station.sent_asdus() if d[6] in (15, 37)]
        self.assertEqual({(d[6], d[8]) for d in counters}, {(15, 37), (37, 37)})
        self.assertEqual(len(counters), 8)

    @defer.inlineCallbacks
    def test_read_command(self):
        """A read is recorded; c104 confirms it (COT 7) and sends the point with COT 5."""
        ioa = monitor_io_address("M_ME_NB_1")
        self.assertTrue(self.client_point(1, ioa, "M_ME_NB_1").read())
        yield poll_until(reactor, lambda: self.station.read_requests())
        (record,) = self.station.read_requests()
        self.assertEqual((record.io_address, record.cot), (ioa, 5))
        # c104 reports what it sent from its own thread: wait for the reply to be seen.
        yield poll_until(reactor, lambda: [d for d in self.station.sent_asdus() if d[8] == 5])
        replies = [d for d in self.station.sent_asdus() if d[8] == 5]
        self.assertEqual([(d[6], d[12] | d[13] << 8) for d in replies], [(11, ioa)])

    @defer.inlineCallbacks
    def test_deactivation_is_confirmed_as_activation(self):
        """c104 answers a deactivation (COT 8) with COT 7, not 9, and runs it as a command."""
        ioa = command_io_address("C_SC_NA_1", DIRECT)
        point = self.client_point(1, ioa, "C_SC_NA_1")
        point.value = True
        self.assertTrue(point.transmit(cause=c104.Cot.DEACTIVATION))
        yield poll_until(reactor, lambda: any(c.replies for c in self.station.commands()))
        (record,) = self.station.commands()
        self.assertEqual((record.cot, record.replies), (8, (Reply(7, False),)))
