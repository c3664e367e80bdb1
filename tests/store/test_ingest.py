"""The ingest path's bounds: pause on overload, buffer on outage, flush on stop.

The Redis side is a scripted stand-in here (each script call is a Deferred the test
fires); the NT marks of ingest.lua run on MemoryRedis and a real redis-server alike in
the device store's contract tests (`tests.store.devices_contract`).
"""

import json

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from pydatacoll.errors import StoreUnavailable
from pydatacoll.interfaces import IIngest
from pydatacoll.model import Sample
from pydatacoll.store import ingest, keys
from pydatacoll.store.ingest import RedisIngest, encode
from pydatacoll.store.redis import bulk, decode_command
from pydatacoll.testing.memory import MemoryRedis


class ScriptedRedis:
    def __init__(self):
        self.connected = True
        self.calls = []
        self.waiters = []

    def when_connected(self):
        d = defer.Deferred()
        self.waiters.append(d)
        return d

    def call_encoded(self, command):
        name, _, numkeys, *args = decode_command(command)
        assert (name, numkeys) == ("EVALSHA", "0")
        d = defer.Deferred()
        self.calls.append((args, d))
        return d

    def answer(self):
        args, d = self.calls.pop(0)
        d.callback([sum(max(n, 0) for _, _, n in segments(args)), 0, 0])
        return args

    def fail(self):
        args, d = self.calls.pop(0)
        d.errback(StoreUnavailable("Redis is not reachable"))


def segments(args):
    """(device_id, token, n) of each segment of a script call."""
    found, i = [], 6
    while i < len(args):
        device_id, token, n = args[i], args[i + 1], int(args[i + 2])
        found.append((device_id, token, n))
        i += 4 + 3 * max(n, 0)
    return found


def samples(n, start=0):
    return [Sample("d", "t", f"i{i}", float(i), receive_time=1.5) for i in range(start, start + n)]


class TickingClock(Clock):
    """A `Clock` whose every reading is a millisecond later."""

    def seconds(self):
        self.rightNow += 0.001
        return self.rightNow


class IngestTests(SynchronousTestCase):
    def setUp(self):
        self.patch(ingest, "BATCH", 10)
        self.patch(ingest, "IN_FLIGHT", 2)
        self.patch(ingest, "HIGH_WATER", 40)
        self.patch(ingest, "LOW_WATER", 10)
        self.redis = ScriptedRedis()
        self.clock = Clock()
        self.switches = []
        self.ingest = RedisIngest(
            self.redis, self.clock, 100, 100, on_congestion=self.switches.append
        )
        self.ingest.startService()

    def test_interface(self):
        verifyObject(IIngest, self.ingest)

    def test_one_script_call_per_batch_in_order(self):
        self.ingest.samples_received(samples(25))
        self.assertEqual(len(self.redis.calls), 2)  # the next batch is sent while one runs
        args = self.redis.answer()
        self.assertEqual(args[6:9], ["d", "", "10"])  # no cluster: no lease token
        self.assertEqual(args[10:12], ["t:i0", 't","item_id":"i0'])  # field, ids
        self.assertEqual(json.loads(args[12])["value"], 0.0)
        self.redis.answer()
        self.redis.answer()
        self.assertEqual(self.ingest.status()["written"], 25)
        self.assertEqual(self.redis.calls, [])

    def test_held_sends_nothing_new_but_completes_what_is_in_flight(self):
        """A command in flight holds the ingest: the scripts sent complete, no new one
        goes out; released, it writes everything in order."""
        self.ingest.samples_received(samples(10))
        self.ingest.hold(True)
        self.ingest.samples_received(samples(15, start=10))
        self.assertEqual(len(self.redis.calls), 1)
        self.redis.answer()
        self.clock.advance(1)
        self.assertEqual((self.ingest.written, self.redis.calls), (10, []))
        self.ingest.hold(False)
        first = self.redis.answer()
        self.redis.answer()
        self.assertEqual(first[10], "t:i10")  # the first field: the order holds
        self.assertEqual(self.ingest.written, 25)

    def test_stopping_while_held_writes_everything(self):
        self.ingest.hold(True)
        self.ingest.samples_received(samples(15))
        stopped = self.ingest.stopService()
        self.redis.answer()
        self.redis.answer()
        self.successResultOf(stopped)
        self.assertEqual(self.ingest.written, 15)

    def test_a_hold_never_makes_the_ingest_congested(self):
        """While held, samples from devices that are not held (pollers, the commanded
        RTU) pile up; past half the high water the ingest writes again, so a hold never
        brings the congestion that pauses pollers (their pause skips scans)."""
        self.ingest.hold(True)
        for start in range(0, 50, 5):
            self.ingest.samples_received(samples(5, start))
            self.clock.advance(ingest.LINGER / 2)  # 5 samples every 10 ms
            if self.redis.calls:
                self.redis.answer()
        self.assertEqual(self.switches, [])
        self.assertGreater(self.ingest.written, 0)
        self.assertLess(len(self.ingest.buffer), ingest.HIGH_WATER)

    def test_a_hold_while_stopping_does_not_stall_the_last_writes(self):
        """A command that starts while the ingest writes what waits before it stops
        (a late request, the API of the same process) holds nothing: the flush must not
        spin without writing until its timeout and leave samples behind."""
        clock = TickingClock()  # each reading of the time moves it on (a busy loop ends)
        stopping = RedisIngest(self.redis, clock, 100, 100)
        stopping.startService()
        stopping.samples_received(samples(25))  # two scripts in flight, five wait
        stopped = stopping.stopService()
        stopping.hold(True)
        while self.redis.calls:
            self.redis.answer()
        self.successResultOf(stopped)
        self.assertEqual((stopping.written, len(stopping.buffer)), (25, 0))

    def test_overload_pauses_the_devices_until_caught_up(self):
        self.ingest.samples_received(samples(50))
        self.assertEqual(self.switches, [True])
        while len(self.ingest.buffer) >= 10:
            self.redis.answer()
        self.redis.answer()
        self.assertEqual(self.switches, [True, False])
        self.assertEqual(self.ingest.status()["dropped"], 0)

    def test_outage_buffers_drops_the_oldest_and_writes_in_order_later(self):
        self.ingest.samples_received(samples(10))
        self.redis.connected = False
        self.redis.fail()
        self.ingest.samples_received(samples(100, start=10))  # 110 > 100: 10 oldest dropped
        self.assertEqual(self.switches, [])  # an outage does not pause the links
        self.assertEqual(self.ingest.status()["dropped"], 10)
        self.redis.connected = True
        self.clock.advance(0.5)
        first = self.redis.answer()
        self.assertEqual(first[10], "t:i10")

    def test_a_failure_puts_every_batch_in_flight_back_in_order(self):
        self.ingest.samples_received(samples(30))
        self.assertEqual(len(self.redis.calls), 2)
        self.redis.fail()  # the connection went: the second batch's answer never comes
        self.redis.calls.pop(0)[1].errback(StoreUnavailable("lost"))
        self.assertEqual([s.item_id for s in self.ingest.buffer][:3], ["i0", "i1", "i2"])
        self.assertEqual(len(self.ingest.buffer), 30)
        self.clock.advance(0.5)
        self.assertEqual(self.redis.answer()[10], "t:i0")

    def test_histories_are_trimmed_again_after_a_failure_or_a_fence(self):
        """The first sample of each point asks for a trim, the next ones only every
        trim_interval(100) = 10; a failed or fenced batch may not have trimmed, so the
        next sample of each point asks again."""
        everyone = " ".join(str(n) for n in range(1, 11))
        self.ingest.samples_received(samples(10))
        self.assertEqual(self.redis.answer()[9], everyone)
        self.ingest.samples_received(samples(10))
        self.assertEqual(self.redis.answer()[9], "")
        self.ingest.samples_received(samples(10))
        self.redis.fail()
        self.clock.advance(0.5)
        self.assertEqual(self.redis.answer()[9], everyone)
        self.ingest.samples_received(samples(10))
        args, d = self.redis.calls.pop(0)
        self.assertEqual(args[9], "")
        d.callback([0, 0, 10])  # refused: the lease is no longer ours
        self.ingest.samples_received(samples(10))
        self.assertEqual(self.redis.answer()[9], everyone)

    def test_small_batches_linger_to_share_a_call(self):
        for i in range(3):
            self.ingest.samples_received(samples(2, start=2 * i))
        self.assertEqual(self.redis.calls, [])
        self.clock.advance(ingest.LINGER)
        args = self.redis.answer()
        self.assertEqual(args[6:9], ["d", "", "6"])

    def test_stop_writes_what_waits(self):
        self.ingest.samples_received(samples(25))
        d = self.ingest.stopService()
        self.assertNoResult(d)
        self.redis.answer()
        self.redis.answer()
        self.redis.answer()
        self.successResultOf(d)
        self.assertEqual(self.ingest.status()["written"], 25)

    def test_encoding(self):
        cases = [
            (
                Sample("d", "t", "i", 1.25, "good", (), 2.0, 3.0),
                {
                    "value": 1.25,
                    "quality": "good",
                    "flags": [],
                    "source_time": "1970-01-01T00:00:02.000+00:00",
                    "receive_time": "1970-01-01T00:00:03.000+00:00",
                },
            ),
            (
                Sample("d", "t", "i", -0.1, "questionable", (), None, 3.0),
                {
                    "value": -0.1,
                    "quality": "questionable",
                    "flags": [],
                    "source_time": None,
                    "receive_time": "1970-01-01T00:00:03.000+00:00",
                },
            ),
            (
                Sample("d", "t", "i", True, "questionable", ("NT", "SB"), None, 3.0),
                {
                    "value": True,
                    "quality": "questionable",
                    "flags": ["NT", "SB"],
                    "source_time": None,
                    "receive_time": "1970-01-01T00:00:03.000+00:00",
                },
            ),
            (
                Sample("d", "t", "i", float("nan"), "good", (), None, 3.0),
                {
                    "value": None,
                    "quality": "invalid",
                    "flags": ["not_finite"],
                    "source_time": None,
                    "receive_time": "1970-01-01T00:00:03.000+00:00",
                },
            ),
            (
                Sample("d", "t", "i", 'a "text"', "good", (), None, 3.0),
                {
                    "value": 'a "text"',
                    "quality": "good",
                    "flags": [],
                    "source_time": None,
                    "receive_time": "1970-01-01T00:00:03.000+00:00",
                },
            ),
        ]
        sink = RedisIngest(None, Clock(), 100, 100)
        for sample, expected in cases:
            self.assertEqual(json.loads(encode(sample, ingest._Times())), expected)
            # the path's shortcut for the usual sample writes what encode writes
            body, _ = sink._encode([("d", [sample])])
            self.assertTrue(body.endswith(bulk(encode(sample, ingest._Times()))))
            if sample.value == sample.value:
                self.assertEqual(json.loads(encode(sample, ingest._Times())), sample.to_json())

    def test_numbers_of_one_read_share_their_tail(self):
        """Integers and floats with a source time take the shortcut; each sample's text is
        still `encode`'s, whatever its quality and times next to its neighbours'."""
        read = [
            Sample("d", "t", "a", 7, "good", (), 2.0, 2.0),
            Sample("d", "t", "b", -3, "good", (), 2.0, 2.0),
            Sample("d", "t", "c", 0.5, "good", (), 2.0, 2.0),
            Sample("d", "t", "d", 2**70, "questionable", (), 2.0, 2.0),
            Sample("d", "t", "e", 8, "good", (), 2.5, 2.0),
            Sample("d", "t", "f", 9, "good", (), None, 2.0),
            Sample("d", "t", "g", 10, "good", (), None, 3.0),
            Sample("d", "t", "h", True, "good", (), 2.0, 2.0),
            Sample("d", "t", "i", 11, "good", ("NT",), 2.0, 2.0),
            Sample("d", "t", "j", float("inf"), "good", (), 2.0, 2.0),
            Sample("d", "t", "k", 12, "good", (), 2.0, 2.0),
        ]
        body, _ = RedisIngest(None, Clock(), 100, 100)._encode([("d", read)])
        expected = "".join(
            bulk(f"t:{sample.item_id}")
            + bulk(f't","item_id":"{sample.item_id}')
            + bulk(encode(sample, ingest._Times()))
            for sample in read
        )
        self.assertTrue(body.endswith(expected))
        self.assertEqual(json.loads(encode(read[0], ingest._Times()))["value"], 7)


class MarkOrderTests(SynchronousTestCase):
    def setUp(self):
        self.patch(ingest, "BATCH", 10)
        self.patch(ingest, "IN_FLIGHT", 2)
        self.redis = ScriptedRedis()
        self.clock = Clock()
        self.ingest = RedisIngest(self.redis, self.clock, 100, 100)
        self.ingest.startService()

    def layout(self, args):
        """(device_id, n) of each segment of a script call."""
        return [(device_id, n) for device_id, _, n in segments(args)]

    def test_a_mark_keeps_its_place_across_a_failure(self):
        self.ingest.samples_received(samples(5))
        self.ingest.mark_not_topical("d")
        self.ingest.samples_received(samples(3, 5))
        self.clock.advance(ingest.LINGER)
        self.assertEqual(self.layout(self.redis.calls[0][0]), [("d", 5), ("d", -1), ("d", 3)])
        self.redis.fail()
        self.clock.advance(0.5)
        args = self.redis.answer()
        self.assertEqual(self.layout(args), [("d", 5), ("d", -1), ("d", 3)])
        self.assertEqual(self.ingest.status()["marks_written"], 1)

    def test_marks_split_batches_and_outlive_drops(self):
        self.ingest.samples_received(samples(15))  # two batches of 10 and 5
        self.ingest.mark_not_topical("d")
        self.ingest.mark_not_topical("e")  # no sample: a batch of marks only
        self.assertEqual(self.layout(self.redis.answer()), [("d", 10)])
        self.assertEqual(self.layout(self.redis.answer()), [("d", 5)])  # sent before the marks
        self.assertEqual(self.layout(self.redis.answer()), [("d", -1), ("e", -1)])
        self.assertEqual(self.redis.calls, [])
        # An outage longer than the buffer drops samples, never the marks.
        self.ingest.samples_received(samples(5))
        self.clock.advance(ingest.LINGER)
        self.ingest.mark_not_topical("d")
        self.redis.fail()
        self.ingest.samples_received(samples(100, 5))  # the buffer holds 100
        self.clock.advance(0.5)
        layouts = []
        while self.redis.calls:
            layouts += self.layout(self.redis.answer())
        self.assertEqual(layouts[0], ("d", -1))
        self.assertEqual(sum(n for _, n in layouts if n > 0), 100)


class LoopNeverDiesTests(SynchronousTestCase):
    def setUp(self):
        self.redis = ScriptedRedis()
        self.clock = Clock()
        self.ingest = RedisIngest(self.redis, self.clock, 100, 100)
        self.ingest.startService()

    def test_a_device_time_out_of_range_is_stored_as_no_time(self):
        times = ingest._Times()
        for bad in (float("nan"), 1e20, float("inf")):
            stored = json.loads(encode(Sample("d", "t", "i", 1.0, source_time=bad), times))
            self.assertEqual((stored["value"], stored["source_time"]), (1.0, None))

    def test_a_batch_that_cannot_be_encoded_does_not_stop_the_path(self):
        real = ingest.encode

        def broken(sample, times):
            if sample.item_id == "bad":
                raise RuntimeError("a bug")
            return real(sample, times)

        self.patch(ingest, "encode", broken)
        # an int: a float takes the path's own shortcut (tested in test_encoding)
        self.ingest.samples_received([Sample("d", "t", "bad", 1)])
        self.clock.advance(ingest.LINGER)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.ingest.samples_received([Sample("d", "t", "good", 2)])
        self.clock.advance(5)
        self.assertEqual(len(self.redis.calls), 1)
        self.assertEqual(self.redis.answer()[8:11], ["1", "1", "t:good"])


class ReconnectTests(SynchronousTestCase):
    def test_writes_as_soon_as_redis_is_back_not_at_the_end_of_the_backoff(self):
        clock = Clock()
        store = MemoryRedis()
        store._set(keys.CONFIG_VERSION, "1")
        sink = RedisIngest(store, clock, 100, 1000)
        sink.settled_version = "1"
        sink.startService()
        store.down()
        sink.samples_received([Sample("d", "t", "i", 1.0, receive_time=1.5)])
        for _ in range(6):  # 15 s of outage: the backoff has grown to 5 s
            clock.advance(2.5)
        self.assertEqual(sink.status()["buffered"], 1)
        store.up()  # the connection is back: no waiting for the timer
        self.assertEqual((sink.status()["written"], sink.status()["buffered"]), (1, 0))
        self.assertIn("t:i", store._hgetall(keys.DEVICE_VALUES % "d"))


class DrainedTests(SynchronousTestCase):
    def setUp(self):
        self.patch(ingest, "BATCH", 10)
        self.patch(ingest, "IN_FLIGHT", 2)
        self.redis = ScriptedRedis()
        self.clock = Clock()
        self.ingest = RedisIngest(self.redis, self.clock, 100, 100)
        self.ingest.startService()

    def test_fires_once_what_was_queued_is_answered(self):
        self.successResultOf(self.ingest.drained(2))  # nothing queued
        self.ingest.samples_received(samples(15))
        d = self.ingest.drained(2)
        self.ingest.samples_received(samples(5, 15))  # queued later: not waited for
        self.redis.answer()
        self.assertNoResult(d)
        self.redis.answer()
        self.successResultOf(d)

    def test_a_failure_keeps_it_waiting_until_the_timeout(self):
        self.ingest.samples_received(samples(5))
        self.clock.advance(ingest.LINGER)
        d = self.ingest.drained(2)
        self.redis.connected = False
        self.redis.fail()
        self.clock.advance(1.9)
        self.assertNoResult(d)
        self.clock.advance(0.1)
        self.successResultOf(d)

    def test_a_hold_does_not_keep_a_hand_over_waiting(self):
        """A device handed over waits for its last samples (`drained`) before its lease
        goes: a command's hold must not make that wait run out (the samples would then
        be refused under the next owner's lease)."""
        self.ingest.hold(True)  # a command in flight, held for as long as it may be
        self.ingest.samples_received(samples(15))
        d = self.ingest.drained(2)
        self.redis.answer()
        self.redis.answer()
        self.successResultOf(d)
        self.assertEqual(self.ingest.written, 15)
        self.assertEqual(self.clock.seconds(), 0)  # not by the timeout


class PublicationTests(SynchronousTestCase):
    """What subscribers get (MemoryRedis's emulation; the same script on a real
    redis-server in tests.integration.test_store_contract_devices)."""

    def setUp(self):
        self.clock = Clock()
        self.store = MemoryRedis()
        self.store._set(keys.CONFIG_VERSION, "1")

    def run_ingest(self, count, **options):
        sink = RedisIngest(self.store, self.clock, 100, 1000, **options)
        sink.settled_version = "1"
        sink.startService()
        sink.samples_received(samples(count))
        self.clock.advance(ingest.LINGER)
        self.assertEqual(sink.status()["written"], count)
        return [(c, m) for c, m in self.store.published]

    def test_every_sample_on_the_device_channel_in_messages_of_at_most_forty(self):
        published = self.run_ingest(100)
        self.assertEqual({c for c, _ in published}, {keys.DEVICE_SAMPLES % "d"})
        messages = [json.loads(m) for _, m in published]
        self.assertEqual([len(m["samples"]) for m in messages], [40, 40, 20])
        received = [s for m in messages for s in m["samples"]]
        self.assertEqual([s["item_id"] for s in received], [f"i{i}" for i in range(100)])
        stored = self.store.data[keys.POINT_DATA % ("d", "t", "i7")]
        self.assertEqual(received[7]["id"], stored[-1][0])  # its entry id in the history
        self.assertEqual(
            received[7],
            {"device_id": "d", "term_id": "t", "item_id": "i7", "id": received[7]["id"]}
            | json.loads(stored[-1][1]["sample"]),
        )

    def test_the_point_channels_only_when_asked(self):
        published = self.run_ingest(3, publish_points=True)
        points = [(c, json.loads(m)) for c, m in published if c != keys.DEVICE_SAMPLES % "d"]
        self.assertEqual(
            [c for c, _ in points], [keys.DEVICE_DATA % ("d", "t", f"i{i}") for i in range(3)]
        )
        self.assertEqual([m["value"] for _, m in points], [0.0, 1.0, 2.0])
        device = json.loads(dict(published)[keys.DEVICE_SAMPLES % "d"])
        self.assertEqual(device["samples"], [m for _, m in points])


class EncodingTests(SynchronousTestCase):
    def test_resp_round_trip(self):
        from pydatacoll.store.redis import encode_command

        args = ["EVALSHA", "abc", 0, "é \r\n x", b"\x00bytes"]
        data = encode_command(*args)
        self.assertTrue(data.startswith(b"*5\r\n$7\r\nEVALSHA\r\n"))
        self.assertEqual(decode_command(data), ["EVALSHA", "abc", "0", "é \r\n x", "\x00bytes"])
        self.assertEqual(bulk("é"), "$2\r\né\r\n")  # a length in bytes
        self.assertRaises(ValueError, decode_command, data + b"x")
        self.assertRaises(ValueError, decode_command, b"*1\r\n$3\r\nab\r\n")

    def test_a_text_value_with_any_character_reaches_redis_whole(self):
        store = MemoryRedis()
        store._set(keys.CONFIG_VERSION, "1")
        sink = RedisIngest(store, Clock(), 100, 1000)
        sink.settled_version = "1"
        sink.startService()
        value = 'naïve \r\n\t "quoted" 温度'
        sink.samples_received([Sample("d", "t", "i", value, receive_time=1.5)])
        sink.stopService()
        stored = json.loads(store._hgetall(keys.DEVICE_VALUES % "d")["t:i"])
        self.assertEqual(stored["value"], value)
