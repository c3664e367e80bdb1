"""The controlled station: interrogation, read, clock sync, commands, events and overflow."""

import datetime

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from pydatacoll.interfaces import IStationDatabase
from pydatacoll.protocols.iec104.apci import (
    IFrame,
    UFunction,
    decode_apdus,
    encode_i,
    encode_s,
    encode_u,
)
from pydatacoll.protocols.iec104.asdu import IEC104, Asdu, Quality, decode_asdu, encode_asdu
from pydatacoll.protocols.iec104.link import LinkParams, LinkState
from pydatacoll.protocols.iec104.station import (
    NOT_TOPICAL,
    CommandAnswer,
    Event,
    EventQueue,
    Iec104Outstation,
    PointValue,
    StationPoint,
    command_value,
    monitor_value,
    objects_per_asdu,
    quality_bits,
)

UTC = datetime.UTC
T0 = 1_780_000_000.0


@implementer(IStationDatabase)
class Database:
    """An IStationDatabase of the tests: points, values, and commands answered on demand."""

    common_address = 5

    def __init__(self, points):
        self.points = {p.ioa: p for p in points}
        self.values = {}
        self.accept_clock = True
        self.refusal = None
        self.requests = []

    def station_points(self):
        return self.points

    def current(self, ioa):
        return self.values.get(ioa, PointValue(0, NOT_TOPICAL, None))

    def clock_sync(self, when, peer):
        return self.accept_clock

    def can_command(self, point):
        return self.refusal

    def execute(self, request):
        d = defer.Deferred()
        self.requests.append((request, d))
        return d


POINTS = [
    StationPoint(1, 13, groups=(1,)),
    StationPoint(2, 1, command_type=45),
    StationPoint(3, 36),
    StationPoint(4, 15, counter_group=1),
    StationPoint(5, 3, command_type=46),
]


def connect(database=None, params=None, event_queue=100):
    clock = Clock()
    clock.advance(T0)
    database = database or Database(POINTS)
    station = Iec104Outstation(
        clock,
        database,
        params=params or LinkParams(),
        peer="10.0.0.1:5000",
        event_queue=event_queue,
    )
    transport = StringTransport()
    station.makeConnection(transport)
    station.dataReceived(encode_u(UFunction.STARTDT_ACT))
    transport.clear()
    return clock, station, transport, database


class Master:
    """Sends ASDUs as a master would (sequence numbers) and reads the replies."""

    def __init__(self, station, transport):
        self.station, self.transport = station, transport
        self.send_seq = 0
        self.recv_seq = 0

    def send(self, asdu):
        self.station.dataReceived(encode_i(self.send_seq, self.recv_seq, encode_asdu(asdu)))
        self.send_seq += 1

    def replies(self):
        frames, _ = decode_apdus(self.transport.value())
        self.transport.clear()
        asdus = [decode_asdu(f.asdu) for f in frames if isinstance(f, IFrame)]
        self.recv_seq += len(asdus)
        # acknowledge everything: the window stays open
        self.station.dataReceived(encode_s(self.recv_seq))
        return asdus


class InterfaceTests(SynchronousTestCase):
    def test_databases_provide_the_interface(self):
        from pydatacoll.gateway.model import Gateway
        from pydatacoll.gateway.service import GatewayServer

        gateway = Gateway.from_json({"id": "g", "protocol": "iec104"})
        for database in (Database(POINTS), GatewayServer(gateway, [], Clock())):
            self.assertTrue(verifyObject(IStationDatabase, database))


class InterrogationTests(SynchronousTestCase):
    def test_station_interrogation(self):
        clock, station, transport, db = connect()
        db.values[1] = PointValue(12.5, 0, T0)
        db.values[3] = PointValue(7.0, int(Quality.NT), T0 - 60)
        master = Master(station, transport)
        master.send(Asdu(100, 6, 5, [0], [20], [0]))
        replies = master.replies()
        self.assertEqual([(a.type_id, a.cause) for a in replies][0], (100, 7))
        self.assertEqual([(a.type_id, a.cause) for a in replies][-1], (100, 10))
        data = {a.type_id: a for a in replies[1:-1]}
        self.assertEqual(sorted(data), [1, 3, 13, 36])  # no integrated total (CI only)
        self.assertEqual(list(data[13].values), [12.5])
        self.assertEqual(data[1].qualities[0], NOT_TOPICAL)  # no value known
        self.assertEqual(data[36].times[0], datetime.datetime.fromtimestamp(T0 - 60, UTC))
        self.assertTrue(all(a.cause == 20 and a.common_address == 5 for a in replies[1:-1]))

    def test_group_interrogation_and_bad_qualifier(self):
        clock, station, transport, db = connect()
        master = Master(station, transport)
        master.send(Asdu(100, 6, 5, [0], [21], [0]))
        replies = master.replies()
        self.assertEqual([(a.cause, list(a.ioas)) for a in replies[1:-1]], [(21, [1])])
        master.send(Asdu(100, 6, 5, [0], [19], [0]))
        (reply,) = master.replies()
        self.assertEqual((reply.cause, reply.negative), (7, True))

    def test_global_address_answers_with_own_address(self):
        clock, station, transport, db = connect()
        master = Master(station, transport)
        master.send(Asdu(100, 6, 0xFFFF, [0], [20], [0]))
        replies = master.replies()
        self.assertTrue(replies and all(a.common_address == 5 for a in replies))

    def test_counter_interrogation(self):
        clock, station, transport, db = connect()
        db.values[4] = PointValue(123456, 0, T0)
        master = Master(station, transport)
        master.send(Asdu(101, 6, 5, [0], [5], [0]))
        replies = master.replies()
        self.assertEqual([(a.type_id, a.cause) for a in replies], [(101, 7), (15, 37), (101, 10)])
        self.assertEqual(list(replies[1].values), [123456])

    def test_large_interrogation_waits_for_the_window(self):
        points = [StationPoint(i, 13) for i in range(1, 1001)]
        clock, station, transport, db = connect(Database(points), LinkParams(k=2, w=1))
        master = Master(station, transport)
        master.send(Asdu(100, 6, 5, [0], [20], [0]))
        seen = []
        for _ in range(100):
            got = master.replies()
            if not got:
                break
            seen += got
            self.assertLessEqual(len(got), 2)
        ioas = [i for a in seen if a.cause == 20 for i in a.ioas]
        self.assertEqual(ioas, list(range(1, 1001)))
        self.assertEqual(seen[-1].cause, 10)
        per_asdu = objects_per_asdu(13)
        self.assertEqual(max(len(a.ioas) for a in seen), per_asdu)

    def test_unknown_address_type_and_cause(self):
        clock, station, transport, db = connect()
        master = Master(station, transport)
        master.send(Asdu(100, 6, 9, [0], [20], [0]))
        master.send(Asdu(105, 6, 5, [0], [1], [0]))  # reset process: not served
        master.send(Asdu(100, 3, 5, [0], [20], [0]))
        replies = master.replies()
        self.assertEqual(
            [(a.cause, a.negative) for a in replies], [(46, True), (44, True), (45, True)]
        )


class ReadAndClockTests(SynchronousTestCase):
    def test_read(self):
        clock, station, transport, db = connect()
        db.values[3] = PointValue(2.5, 0, T0)
        master = Master(station, transport)
        master.send(Asdu(102, 5, 5, [3], [None], [0]))
        master.send(Asdu(102, 5, 5, [99], [None], [0]))
        first, second = master.replies()
        self.assertEqual((first.type_id, first.cause, list(first.values)), (36, 5, [2.5]))
        self.assertEqual((second.cause, second.negative), (47, True))

    def test_clock_sync_accepted_or_refused(self):
        clock, station, transport, db = connect()
        master = Master(station, transport)
        when = datetime.datetime(2026, 12, 3, 10, 0, tzinfo=UTC)
        master.send(Asdu(103, 6, 5, [0], [None], [0], [when]))
        db.accept_clock = False
        master.send(Asdu(103, 6, 5, [0], [None], [0], [when]))
        first, second = master.replies()
        self.assertEqual((first.cause, first.negative, first.times[0]), (7, False, when))
        self.assertEqual((second.cause, second.negative), (7, True))
        self.assertEqual(station.clock_synced, when)


class CommandTests(SynchronousTestCase):
    def test_direct_command_waits_for_the_field_device(self):
        clock, station, transport, db = connect()
        master = Master(station, transport)
        master.send(Asdu(45, 6, 5, [2], [True], [0]))
        self.assertEqual(master.replies(), [])  # no ACT_CON before the device answered
        request, d = db.requests[0]
        self.assertEqual(
            (request.value, request.selected, request.peer), (1, False, "10.0.0.1:5000")
        )
        d.callback(CommandAnswer(True, "confirmed"))
        replies = master.replies()
        self.assertEqual([(a.cause, a.negative) for a in replies], [(7, False), (10, False)])

    def test_refused_by_the_device(self):
        clock, station, transport, db = connect()
        master = Master(station, transport)
        master.send(Asdu(46, 6, 5, [5], [2], [0]))
        request, d = db.requests[0]
        self.assertEqual(request.value, 1)  # DCO 2 = ON
        d.callback(CommandAnswer(False, "offline"))
        self.assertEqual([(a.cause, a.negative) for a in master.replies()], [(7, True)])

    def test_select_before_operate(self):
        clock, station, transport, db = connect()
        master = Master(station, transport)
        master.send(Asdu(45, 6, 5, [2], [True], [0x80]))
        self.assertEqual([(a.cause, a.negative) for a in master.replies()], [(7, False)])
        self.assertEqual(db.requests, [])  # the select itself goes nowhere
        master.send(Asdu(45, 6, 5, [2], [True], [0]))
        request, d = db.requests[0]
        self.assertTrue(request.selected)
        d.callback(CommandAnswer(True))
        self.assertEqual([a.cause for a in master.replies()], [7, 10])

    def test_expired_selection_is_negative(self):
        clock, station, transport, db = connect()
        master = Master(station, transport)
        master.send(Asdu(45, 6, 5, [2], [True], [0x80]))
        master.replies()
        clock.advance(31)
        master.send(Asdu(45, 6, 5, [2], [True], [0]))
        self.assertEqual([(a.cause, a.negative) for a in master.replies()], [(7, True)])
        self.assertEqual(db.requests, [])

    def test_unknown_ioa_read_only_type_and_refusal(self):
        clock, station, transport, db = connect()
        master = Master(station, transport)
        master.send(Asdu(45, 6, 5, [99], [True], [0]))  # unmapped
        master.send(Asdu(45, 6, 5, [1], [True], [0]))  # mapped, no commands
        master.send(Asdu(46, 6, 5, [2], [2], [0]))  # wrong type for the point
        master.send(Asdu(45, 3, 5, [2], [True], [0]))  # wrong cause
        db.refusal = "device offline"
        master.send(Asdu(45, 6, 5, [2], [True], [0]))
        master.send(Asdu(46, 6, 5, [5], [3], [0]))  # DCO 3: not permitted
        self.assertEqual(
            [(a.cause, a.negative) for a in master.replies()],
            [(47, True), (47, True), (44, True), (45, True), (7, True), (7, True)],
        )
        self.assertEqual(db.requests, [])

    def test_second_command_while_the_first_runs(self):
        clock, station, transport, db = connect()
        master = Master(station, transport)
        master.send(Asdu(45, 6, 5, [2], [True], [0]))
        master.send(Asdu(45, 6, 5, [2], [False], [0]))
        self.assertEqual([(a.cause, a.negative) for a in master.replies()], [(7, True)])
        self.assertEqual(len(db.requests), 1)

    def test_answer_after_the_link_closed_is_dropped(self):
        clock, station, transport, db = connect()
        master = Master(station, transport)
        master.send(Asdu(45, 6, 5, [2], [True], [0]))
        station.connectionLost()
        db.requests[0][1].callback(CommandAnswer(True))
        self.assertEqual(transport.value(), b"")


class EventTests(SynchronousTestCase):
    def test_events_go_out_time_tagged_and_packed(self):
        clock, station, transport, db = connect()
        master = Master(station, transport)
        station.post_events([Event(1, 36, float(i), 0, T0 + i) for i in range(3)])
        station.post_events([Event(2, 30, True, NOT_TOPICAL, T0)])
        replies = master.replies()
        self.assertEqual(
            [(a.type_id, a.cause, len(a.ioas)) for a in replies], [(36, 3, 3), (30, 3, 1)]
        )
        self.assertEqual(replies[0].times[2], datetime.datetime.fromtimestamp(T0 + 2, UTC))
        self.assertEqual(replies[1].qualities[0], NOT_TOPICAL)
        self.assertEqual(station.events_sent, 4)

    def test_events_wait_for_startdt(self):
        clock = Clock()
        station = Iec104Outstation(clock, Database(POINTS))
        transport = StringTransport()
        station.makeConnection(transport)
        station.post_events([Event(1, 36, 1.0, 0, T0)])
        self.assertEqual(transport.value(), b"")
        station.dataReceived(encode_u(UFunction.STARTDT_ACT))
        self.assertEqual(station.state, LinkState.STARTED)
        frames, _ = decode_apdus(transport.value())
        self.assertEqual(len([f for f in frames if isinstance(f, IFrame)]), 1)

    def test_overflow_drops_the_oldest(self):
        clock, station, transport, db = connect(params=LinkParams(k=1, w=1), event_queue=10)
        master = Master(station, transport)
        station.post_events([Event(1, 36, -1.0, 0, T0)])  # goes out: the k=1 window is full
        station.post_events([Event(1, 36, float(i), 0, T0) for i in range(25)])
        self.assertEqual((len(station.events), station.events.dropped), (10, 15))
        first = master.replies()  # acknowledging it lets the 10 newest go
        second = master.replies()
        self.assertEqual([list(a.values) for a in first], [[-1.0]])
        self.assertEqual([list(a.values) for a in second], [[float(i) for i in range(15, 25)]])


class RequeueTests(SynchronousTestCase):
    """Events sent but not acknowledged go back to the (group's) queue (clause 10)."""

    def test_unacknowledged_events_requeued_on_deactivate_and_loss(self):
        clock, station, transport, db = connect()
        station.post_events([Event(1, 36, 1.0, 0, T0)])
        station.post_events([Event(1, 36, 2.0, 0, T0)])
        self.assertEqual((station.events_sent, len(station.events)), (2, 0))
        station.deactivate()  # nothing acknowledged yet: both back, oldest first
        self.assertEqual([e.value for e in station.events.events], [1.0, 2.0])

    def test_acknowledged_events_are_not_requeued(self):
        clock, station, transport, db = connect()
        master = Master(station, transport)
        station.post_events([Event(1, 36, 1.0, 0, T0)])
        master.replies()  # acknowledges it
        station.post_events([Event(1, 36, 2.0, 0, T0)])
        station.connectionLost()
        self.assertEqual([e.value for e in station.events.events], [2.0])

    def test_requeue_respects_the_bound(self):
        queue = EventQueue(3)
        queue.extend([Event(9, 36, 9.0, 0, T0), Event(9, 36, 10.0, 0, T0)])
        dropped = queue.requeue([Event(1, 36, float(i), 0, T0) for i in range(3)])
        self.assertEqual((dropped, queue.dropped), (2, 2))
        self.assertEqual([e.value for e in queue.events], [2.0, 9.0, 10.0])


class ConversionTests(SynchronousTestCase):
    def test_quality_bits(self):
        self.assertEqual(quality_bits("good", []), 0)
        self.assertEqual(quality_bits("invalid", ["timeout"]), Quality.IV)
        self.assertEqual(quality_bits("questionable", []), Quality.NT)
        self.assertEqual(quality_bits("questionable", ["SB"]), Quality.SB)
        self.assertEqual(quality_bits("invalid", ["IV", "OV"]), Quality.IV | Quality.OV)

    def test_monitor_values(self):
        self.assertEqual(monitor_value(1, 1), (True, 0))
        self.assertEqual(monitor_value(3, True), (2, 0))
        self.assertEqual(monitor_value(11, 40000), (32767, Quality.OV))
        self.assertEqual(monitor_value(9, 0.5), (0.5, 0))
        self.assertEqual(monitor_value(13, "text"), (0, Quality.IV))
        self.assertEqual(monitor_value(36, 2.5), (2.5, 0))
        self.assertEqual(monitor_value(15, float("nan")), (0, Quality.IV))

    def test_command_values(self):
        self.assertEqual(command_value(45, True), 1)
        self.assertEqual([command_value(46, v) for v in (0, 1, 2, 3)], [None, 0, 1, None])
        self.assertEqual(command_value(50, 2.5), 2.5)
        self.assertEqual(command_value(47, 2), 2)

    @given(
        st.one_of(
            st.integers(-(2**40), 2**40),
            st.floats(allow_nan=True),
            st.booleans(),
            st.text(max_size=5),
        )
    )
    def test_every_value_encodes(self, value):
        """Whatever a sample holds, every monitor type gets an encodable object."""
        for type_id in (1, 3, 5, 7, 9, 11, 13, 15, 30, 31, 32, 33, 34, 35, 36, 37):
            converted, bits = monitor_value(type_id, value)
            when = datetime.datetime.fromtimestamp(T0, UTC) if type_id >= 30 else None
            asdu = Asdu.build(type_id, 3, 1, [(1, converted, bits, when, None)])
            encode_asdu(asdu)

    def test_queue_take_respects_types(self):
        queue = EventQueue(100)
        queue.extend(
            [Event(1, 36, 1.0, 0, T0), Event(2, 36, 2.0, 0, T0), Event(3, 30, True, 0, T0)]
        )

        first = queue.take(IEC104)
        self.assertEqual((first.type_id, list(first.ioas)), (36, [1, 2]))
        self.assertEqual(queue.take(IEC104).type_id, 30)
        self.assertIsNone(queue.take(IEC104))
