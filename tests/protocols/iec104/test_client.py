"""The master's station services and the supervised client, on a fake clock and transport."""

import datetime

from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from pydatacoll.protocols.iec104.apci import (
    IFrame,
    UFrame,
    UFunction,
    decode_apdus,
    encode_i,
    encode_u,
)
from pydatacoll.protocols.iec104.asdu import UTC, Asdu, Cause, decode_asdu, encode_asdu
from pydatacoll.protocols.iec104.client import (
    Iec104Client,
    Iec104Master,
    Outcome,
    StationParams,
)
from pydatacoll.protocols.iec104.link import LinkParams, LinkState


class Station:
    """The far end, scripted by the test: reads what the master sent, answers in order."""

    def __init__(self, station=None, link=None):
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.data = []
        self.events = []
        self.master = Iec104Master(
            self.clock,
            link,
            station or StationParams(clock_sync_on_start=False, interrogate_on_start=False),
            on_data=self.data.append,
            on_event=lambda kind, data: self.events.append(kind),
        )
        self.transport = StringTransport()
        self.master.makeConnection(self.transport)
        self.ns = 0
        self.nr = 0

    def received(self):
        """The ASDUs (decoded) the master sent since the last call; U-frames are answered."""
        frames, _ = decode_apdus(self.transport.value())
        self.transport.clear()
        asdus = []
        for frame in frames:
            if isinstance(frame, IFrame):
                self.nr += 1
                asdus.append(decode_asdu(frame.asdu))
            elif isinstance(frame, UFrame) and frame.function is UFunction.STARTDT_ACT:
                self.master.dataReceived(encode_u(UFunction.STARTDT_CON))
            elif isinstance(frame, UFrame) and frame.function is UFunction.TESTFR_ACT:
                self.master.dataReceived(encode_u(UFunction.TESTFR_CON))
        return asdus

    def send(self, *asdus):
        for asdu in asdus:
            self.master.dataReceived(encode_i(self.ns, self.nr, encode_asdu(asdu)))
            self.ns += 1

    def start(self):
        self.received()
        assert self.master.state is LinkState.STARTED
        return self.received()

    def reply(self, request, cause, negative=False, **changes):
        return Asdu(
            request.type_id,
            cause,
            request.common_address,
            list(request.ioas),
            list(request.values),
            list(request.qualities),
            list(request.times) if request.times is not None else None,
            negative=negative,
            **changes,
        )


def results(d):
    out = []
    d.addCallback(out.append)
    return out


class StartTests(SynchronousTestCase):
    def test_startdt_then_clock_sync_and_interrogation_per_station(self):
        s = Station(StationParams(common_addresses=(1, 7)))
        self.assertEqual(s.transport.value(), encode_u(UFunction.STARTDT_ACT))
        asdus = s.start()
        self.assertEqual(
            [(a.type_name, a.common_address) for a in asdus],
            [("C_CS_NA_1", 1), ("C_IC_NA_1", 1), ("C_CS_NA_1", 7), ("C_IC_NA_1", 7)],
        )
        self.assertEqual(asdus[0].times[0], datetime.datetime.fromtimestamp(1_700_000_000, UTC))
        self.assertEqual(asdus[1].values, [20])
        self.assertEqual(s.events, ["started"])

    def test_group_interrogations_run_in_turn(self):
        s = Station(StationParams(clock_sync_on_start=False, interrogation_groups=(0, 3)))
        (gi,) = s.start()
        s.send(s.reply(gi, Cause.ACTIVATION_CON), s.reply(gi, Cause.ACTIVATION_TERM))
        (group,) = s.received()
        self.assertEqual(group.values, [23])

    def test_periodic_interrogation(self):
        s = Station(
            StationParams(
                interrogate_on_start=False, clock_sync_on_start=False, interrogation_interval=60
            )
        )
        s.start()
        s.clock.advance(60)
        (gi,) = s.received()
        s.send(s.reply(gi, Cause.ACTIVATION_CON), s.reply(gi, Cause.ACTIVATION_TERM))
        s.clock.advance(60)
        self.assertEqual([a.type_name for a in s.received()], ["C_IC_NA_1"])
        self.assertFalse(s.transport.disconnecting)

    def test_end_of_initialisation_interrogates_again(self):
        s = Station(StationParams(clock_sync_on_start=False))
        (gi,) = s.start()
        s.send(s.reply(gi, Cause.ACTIVATION_CON), s.reply(gi, Cause.ACTIVATION_TERM))
        s.send(Asdu(70, Cause.INITIALIZED, 1, [0], [0], [0], extras=[False]))
        self.assertEqual([a.type_name for a in s.received()], ["C_IC_NA_1"])
        self.assertFalse(s.transport.disconnecting)
        self.assertIn("initialised", s.events)


class InterrogationTests(SynchronousTestCase):
    def test_completed_at_act_term_with_objects_counted(self):
        s = Station()
        s.start()
        done = results(s.master.interrogate(1))
        (gi,) = s.received()
        s.send(s.reply(gi, Cause.ACTIVATION_CON))
        points = Asdu(13, 20, 1, range(1, 11), [1.0] * 10, [0] * 10, sequence=True)
        s.send(points, s.reply(gi, Cause.ACTIVATION_TERM))
        self.assertEqual(done[0].outcome, Outcome.TERMINATED)
        self.assertEqual(done[0].objects, 10)
        self.assertEqual(s.data[0].values, [1.0] * 10)
        self.assertEqual(s.master.interrogations[1]["outcome"], "terminated")

    def test_negative_confirmation(self):
        s = Station()
        s.start()
        done = results(s.master.interrogate(1, group=2))
        (gi,) = s.received()
        s.send(s.reply(gi, Cause.ACTIVATION_CON, negative=True))
        self.assertEqual(done[0].outcome, Outcome.NEGATIVE)
        self.assertEqual(done[0].cause, Cause.ACTIVATION_CON)

    def test_no_act_term_times_out(self):
        s = Station(
            StationParams(
                interrogate_on_start=False, clock_sync_on_start=False, interrogation_timeout=30
            )
        )
        s.start()
        done = results(s.master.interrogate(1))
        (gi,) = s.received()
        s.send(s.reply(gi, Cause.ACTIVATION_CON))
        s.clock.advance(30)
        self.assertEqual(done[0].outcome, Outcome.TIMEOUT)
        self.assertIn("termination", done[0].message)

    def test_one_interrogation_per_station_at_a_time(self):
        s = Station()
        s.start()
        s.master.interrogate(1)
        self.assertEqual(results(s.master.interrogate(1, 5))[0].outcome, Outcome.BUSY)
        self.assertEqual(results(s.master.interrogate(1, 17))[0].outcome, Outcome.REFUSED)

    def test_counter_interrogation_with_freeze(self):
        s = Station()
        s.start()
        done = results(s.master.counter_interrogate(1, request=5, freeze=1))
        (ci,) = s.received()
        self.assertEqual((ci.type_name, ci.values), ("C_CI_NA_1", [0x45]))
        counters = Asdu(15, 37, 1, [100], [12345], [0], extras=[3])
        s.send(s.reply(ci, Cause.ACTIVATION_CON), counters, s.reply(ci, Cause.ACTIVATION_TERM))
        self.assertEqual((done[0].outcome, done[0].objects), (Outcome.TERMINATED, 1))
        self.assertEqual(s.data[0].extras, [3])


class CommandTests(SynchronousTestCase):
    def test_direct_single_command_confirmed(self):
        s = Station()
        s.start()
        done = results(s.master.command(1, 3001, 45, True))
        (cmd,) = s.received()
        self.assertEqual(
            (cmd.type_name, cmd.ioas, cmd.values, cmd.select), ("C_SC_NA_1", [3001], [True], False)
        )
        s.send(s.reply(cmd, Cause.ACTIVATION_CON))
        self.assertTrue(done[0].ok)
        self.assertEqual(done[0].outcome, Outcome.CONFIRMED)

    def test_act_term_after_act_con_is_matched(self):
        """A station that confirms, then terminates (lib60870, our simulator): the command
        succeeds at ACT_CON and its ACT_TERM is expected, not an "unmatched reply"."""
        captured = []
        globalLogPublisher.addObserver(captured.append)
        self.addCleanup(globalLogPublisher.removeObserver, captured.append)
        s = Station()
        s.start()
        done = results(s.master.command(1, 20003, 50, 240.1))
        (cmd,) = s.received()
        s.send(s.reply(cmd, Cause.ACTIVATION_CON), s.reply(cmd, Cause.ACTIVATION_TERM))
        self.assertEqual(done[0].outcome, Outcome.CONFIRMED)
        written = [formatEvent(e) for e in captured if e.get("log_level") != LogLevel.debug]
        self.assertEqual([line for line in written if "unmatched" in line], [])
        # a second ACT_TERM (or one for another type) is still reported
        s.send(s.reply(cmd, Cause.ACTIVATION_TERM))
        written = [formatEvent(e) for e in captured if e.get("log_level") != LogLevel.debug]
        self.assertEqual(len([line for line in written if "unmatched" in line]), 1)

    def test_select_before_operate(self):
        s = Station()
        s.start()
        done = results(s.master.command(1, 300, 63, 123.5, select=True, qualifier=3))
        (select,) = s.received()
        self.assertEqual(
            (select.type_name, select.select, select.values), ("C_SE_TC_1", True, [123.5])
        )
        self.assertEqual(select.qualities, [0x83])
        s.send(s.reply(select, Cause.ACTIVATION_CON))
        self.assertEqual(done, [])
        (execute,) = s.received()
        self.assertEqual((execute.select, execute.values, execute.qualities), (False, [123.5], [3]))
        s.send(s.reply(execute, Cause.ACTIVATION_CON))
        self.assertEqual(done[0].outcome, Outcome.CONFIRMED)

    def test_negative_select_never_executes(self):
        s = Station()
        s.start()
        done = results(s.master.command(1, 300, 46, 2, select=True))
        (select,) = s.received()
        s.send(s.reply(select, Cause.ACTIVATION_CON, negative=True))
        self.assertEqual(done[0].outcome, Outcome.NEGATIVE)
        self.assertFalse(done[0].ok)
        self.assertEqual(s.received(), [])

    def test_unknown_ioa_is_negative(self):
        s = Station()
        s.start()
        done = results(s.master.command(1, 9999, 45, False))
        (cmd,) = s.received()
        s.send(s.reply(cmd, Cause.UNKNOWN_IOA))
        self.assertEqual((done[0].outcome, done[0].cause), (Outcome.NEGATIVE, Cause.UNKNOWN_IOA))
        self.assertEqual(done[0].to_json()["cause"], "UNKNOWN_IOA")

    def test_late_confirmation_is_a_timeout(self):
        s = Station()
        s.start()
        done = results(s.master.command(1, 1, 45, True))
        (cmd,) = s.received()
        s.clock.advance(10)
        self.assertEqual(done[0].outcome, Outcome.TIMEOUT)
        s.send(s.reply(cmd, Cause.ACTIVATION_CON))  # too late: ignored, link stays up
        self.assertEqual(len(done), 1)
        self.assertFalse(s.transport.disconnecting)

    def test_one_command_per_point(self):
        s = Station()
        s.start()
        s.master.command(1, 1, 45, True)
        self.assertEqual(results(s.master.command(1, 1, 45, False))[0].outcome, Outcome.BUSY)
        self.assertEqual(len(results(s.master.command(1, 2, 45, False))), 0)

    def test_an_earlier_commands_termination_never_answers_the_next(self):
        """A command confirmed at ACT_CON, a second one for the same point sent before
        the first's ACT_TERM came in: that ACT_TERM is the first's, and the second is
        answered by its own replies (here a refusal), never reported terminated."""
        s = Station()
        s.start()
        first = results(s.master.command(1, 1, 45, True))
        (cmd1,) = s.received()
        s.send(s.reply(cmd1, Cause.ACTIVATION_CON))
        self.assertEqual(first[0].outcome, Outcome.CONFIRMED)
        second = results(s.master.command(1, 1, 45, False))
        (cmd2,) = s.received()
        s.send(s.reply(cmd1, Cause.ACTIVATION_TERM))  # the first command's
        self.assertEqual(second, [])
        s.send(s.reply(cmd2, Cause.ACTIVATION_CON, negative=True))
        self.assertEqual(second[0].outcome, Outcome.NEGATIVE)
        # Two confirmed back to back, both terminations after: both expected, none stray.
        third = results(s.master.command(1, 1, 45, True))
        (cmd3,) = s.received()
        s.send(s.reply(cmd3, Cause.ACTIVATION_CON))
        fourth = results(s.master.command(1, 1, 45, False))
        (cmd4,) = s.received()
        s.send(s.reply(cmd4, Cause.ACTIVATION_CON))
        self.assertEqual((third[0].outcome, fourth[0].outcome), (Outcome.CONFIRMED,) * 2)
        s.send(s.reply(cmd3, Cause.ACTIVATION_TERM), s.reply(cmd4, Cause.ACTIVATION_TERM))
        self.assertEqual(s.master._terminations, {})

    def test_wait_for_termination(self):
        s = Station(
            StationParams(
                interrogate_on_start=False, clock_sync_on_start=False, wait_termination=True
            )
        )
        s.start()
        done = results(s.master.command(1, 5, 47, 2))
        (cmd,) = s.received()
        s.send(s.reply(cmd, Cause.ACTIVATION_CON))
        self.assertEqual(done, [])
        s.send(s.reply(cmd, Cause.ACTIVATION_TERM))
        self.assertEqual(done[0].outcome, Outcome.TERMINATED)

    def test_deactivation_of_a_selection(self):
        s = Station()
        s.start()
        selected = results(s.master.select(1, 8, 45, True))
        (select,) = s.received()
        s.send(s.reply(select, Cause.ACTIVATION_CON))
        self.assertEqual(selected[0].outcome, Outcome.CONFIRMED)
        cancelled = results(s.master.deactivate(1, 8, 45, True))
        (deact,) = s.received()
        self.assertEqual(deact.cause, Cause.DEACTIVATION)
        s.send(s.reply(deact, Cause.DEACTIVATION_CON))
        self.assertEqual(
            (cancelled[0].outcome, cancelled[0].message), (Outcome.CONFIRMED, "deactivated")
        )

    def test_deactivation_answered_with_act_con_is_not_a_success(self):
        s = Station()
        s.start()
        cancelled = results(s.master.deactivate(1, 8, 45, True))
        (deact,) = s.received()
        s.send(s.reply(deact, Cause.ACTIVATION_CON))
        self.assertEqual(cancelled[0].outcome, Outcome.NEGATIVE)

    def test_values_are_checked_per_type(self):
        s = Station()
        s.start()
        for args in [
            (45, 2),
            (46, 3),
            (47, 0),
            (48, 1.5),
            (49, 40000),
            (49, 1.5),
            (50, "x"),
            (51, -1),
            (13, 1.0),
            (45, True, {"qualifier": 40}),
            (51, 1, {"select": True}),
        ]:
            kwargs = args[2] if len(args) > 2 else {}
            result = results(s.master.command(1, 1, args[0], args[1], **kwargs))[0]
            self.assertEqual(result.outcome, Outcome.REFUSED, args)
        self.assertEqual(s.received(), [])

    def test_time_tagged_variant(self):
        s = Station()
        s.start()
        s.master.command(1, 1, 45, True, timestamp=True)
        (cmd,) = s.received()
        self.assertEqual(cmd.type_name, "C_SC_TA_1")
        self.assertEqual(cmd.times[0], datetime.datetime.fromtimestamp(1_700_000_000, UTC))

    def test_time_tagged_execute_carries_its_own_time(self):
        s = Station()
        s.start()
        s.master.command(1, 1, 58, True, select=True)
        (select,) = s.received()
        s.clock.advance(2)
        s.send(s.reply(select, Cause.ACTIVATION_CON))
        (execute,) = s.received()
        self.assertEqual((execute.times[0] - select.times[0]).total_seconds(), 2)

    def test_link_loss_fails_every_pending_request(self):
        s = Station()
        s.start()
        cmd = results(s.master.command(1, 1, 45, True))
        gi = results(s.master.interrogate(1))
        s.master.connectionLost(Failure(ConnectionError("gone")))
        self.assertEqual([cmd[0].outcome, gi[0].outcome], [Outcome.LINK_DOWN] * 2)
        self.assertEqual(s.clock.getDelayedCalls(), [])

    def test_requests_before_startdt_are_refused(self):
        s = Station()
        self.assertEqual(results(s.master.command(1, 1, 45, True))[0].outcome, Outcome.LINK_DOWN)


class ReadAndSystemTests(SynchronousTestCase):
    def test_read_returns_the_reply(self):
        s = Station()
        s.start()
        done = results(s.master.read(1, 1001))
        (rd,) = s.received()
        self.assertEqual((rd.type_name, rd.cause, rd.ioas), ("C_RD_NA_1", Cause.REQUEST, [1001]))
        s.send(Asdu(13, Cause.REQUEST, 1, [1001], [4.5], [0]))
        self.assertEqual(done[0].outcome, Outcome.CONFIRMED)
        self.assertEqual(done[0].reply.values, [4.5])
        self.assertEqual(s.data[0].values, [4.5])

    def test_read_confirmed_first_still_waits_for_the_data(self):
        s = Station()
        s.start()
        done = results(s.master.read(1, 7))
        (rd,) = s.received()
        s.send(s.reply(rd, Cause.ACTIVATION_CON))
        self.assertEqual(done, [])
        s.send(Asdu(1, Cause.REQUEST, 1, [7], [True], [0]))
        self.assertEqual(done[0].reply.values, [True])

    def test_read_of_an_unknown_ioa(self):
        s = Station()
        s.start()
        done = results(s.master.read(1, 5))
        (rd,) = s.received()
        s.send(s.reply(rd, Cause.UNKNOWN_IOA, negative=True))
        self.assertEqual(done[0].outcome, Outcome.NEGATIVE)

    def test_clock_sync_test_reset_delay(self):
        s = Station()
        s.start()
        for call, type_name in [
            (lambda: s.master.clock_sync(1), "C_CS_NA_1"),
            (lambda: s.master.test_command(1), "C_TS_TA_1"),
            (lambda: s.master.reset_process(1), "C_RP_NA_1"),
            (lambda: s.master.delay_acquisition(1, 250), "C_CD_NA_1"),
        ]:
            done = results(call())
            (req,) = s.received()
            self.assertEqual(req.type_name, type_name)
            s.send(s.reply(req, Cause.ACTIVATION_CON))
            self.assertEqual(done[0].outcome, Outcome.CONFIRMED, type_name)

    def test_unmatched_and_unexpected_replies_are_harmless(self):
        s = Station()
        s.start()
        s.send(
            Asdu(45, Cause.ACTIVATION_CON, 1, [1], [True], [0]),
            Asdu(100, Cause.ACTIVATION_TERM, 3, [0], [20], [0]),
            Asdu(104, Cause.ACTIVATION_CON, 1, [0], [0x55AA], [0]),
        )
        self.assertFalse(s.transport.disconnecting)


class ClientTests(SynchronousTestCase):
    def test_backoff_is_capped_with_jitter(self):
        client = Iec104Client(MemoryReactorClock(), [("127.0.0.1", 2404)])
        policy = client.retry.delay
        delays = [policy(n) for n in range(1, 13)]
        self.assertTrue(0.75 <= delays[0] <= 1.0)
        self.assertTrue(all(d <= 60 for d in delays))
        self.assertTrue(45 <= delays[-1] <= 60)

    def test_reconnects_through_redundant_endpoints(self):
        reactor = MemoryReactorClock()
        states = []
        client = Iec104Client(
            reactor,
            [("127.0.0.1", 2404), ("127.0.0.2", 2405)],
            retry=lambda n: 2.0,
            on_state=lambda c: states.append(c.state),
        )
        client.startService()
        self.assertEqual(reactor.tcpClients[0][:2], ("127.0.0.1", 2404))
        self.assertEqual(reactor.tcpClients[0][3], 30.0)  # t0
        reactor.tcpClients[0][2].clientConnectionFailed(None, Failure(ConnectionRefusedError()))
        reactor.advance(2.0)
        self.assertEqual(reactor.tcpClients[1][:2], ("127.0.0.2", 2405))
        # The second endpoint answers: STARTDT goes out, the state follows.
        protocol = reactor.tcpClients[1][2].buildProtocol(None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        self.assertEqual(transport.value(), encode_u(UFunction.STARTDT_ACT))
        protocol.dataReceived(encode_u(UFunction.STARTDT_CON))
        self.assertEqual(client.state, LinkState.STARTED)
        status = client.status()
        self.assertEqual((status["state"], status["endpoint"]), ("started", "127.0.0.2:2405"))
        self.assertEqual(states[-1], LinkState.STARTED)
        self.assertEqual(results(client.command(1, 1, 45, True)), [])
        client.stopService()

    def test_frames_reach_the_observer(self):
        reactor = MemoryReactorClock()
        frames = []
        client = Iec104Client(
            reactor,
            [("127.0.0.1", 2404)],
            log_frames=True,
            frame_observer=lambda d, f: frames.append((d, f)),
        )
        client.startService()
        protocol = reactor.tcpClients[0][2].buildProtocol(None)
        protocol.makeConnection(StringTransport())
        protocol.dataReceived(encode_u(UFunction.STARTDT_CON) + encode_u(UFunction.TESTFR_ACT))
        self.assertEqual(
            frames[:3],
            [
                ("tx", encode_u(UFunction.STARTDT_ACT)),
                ("rx", encode_u(UFunction.STARTDT_CON)),
                ("rx", encode_u(UFunction.TESTFR_ACT)),
            ],
        )
        self.assertIn(("tx", encode_u(UFunction.TESTFR_CON)), frames[3:])
        self.assertEqual({d for d, f in frames[3:]}, {"tx"})  # clock sync, GI, TESTFR con
        client.stopService()

    def test_offline_device_answers_link_down(self):
        client = Iec104Client(MemoryReactorClock(), [("127.0.0.1", 2404)])
        self.assertEqual(results(client.read(1, 1))[0].outcome, Outcome.LINK_DOWN)

    def test_link_parameters_reach_the_master(self):
        reactor = MemoryReactorClock()
        client = Iec104Client(reactor, [("127.0.0.1", 2404)], link=LinkParams(k=4, w=2))
        client.startService()
        master = reactor.tcpClients[0][2].buildProtocol(None)._wrappedProtocol
        self.assertEqual((master.params.k, master.params.w), (4, 2))
        client.stopService()
