"""The device manager against a real Redis and our IEC 104 simulator over TCP (the unit
tests on MemoryRedis are in tests/devices)."""

import json

import attrs
from twisted.internet import defer, reactor
from twisted.internet.task import deferLater
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.trial.unittest import TestCase
from zope.interface.verify import verifyObject

from pydatacoll.api.replies import ReplyListener
from pydatacoll.config import load_settings
from pydatacoll.devices.manager import DeviceManager, discover_drivers
from pydatacoll.interfaces import IDeviceRuntime, IProtocolDriver, ISampleSink
from pydatacoll.model import Device, Item, Term, TermItem
from pydatacoll.store import keys
from pydatacoll.store.config import ConfigStore
from pydatacoll.store.points import PointStore
from pydatacoll.store.redis import RedisClient
from pydatacoll.store.subscriber import Subscriber
from pydatacoll.testing.iec104_sim import (
    Behaviour,
    CommandPoint,
    MonitorPoint,
    SimulatorConfig,
    StationConfig,
    start_simulator,
)
from pydatacoll.testing.redis import PrivateRedis, shared_redis


def op(kind, entity):
    body = {"op": kind, "entity": entity.KIND, "id": entity.key, "fields": entity.to_fields()}
    if entity.KIND == "term_item":
        body.update(term_id=entity.term_id, item_id=entity.item_id)
    return body


@defer.inlineCallbacks
def until(predicate, timeout=10.0, what="condition"):
    """Poll ``predicate`` (may return a Deferred) until truthy; fail after ``timeout``."""
    deadline = reactor.seconds() + timeout
    while True:
        result = yield defer.maybeDeferred(predicate)
        if result:
            return result
        if reactor.seconds() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        yield deferLater(reactor, 0.05, lambda: None)


STATION = StationConfig(
    common_address=5,
    points=(
        MonitorPoint(100, 13, 12.5),
        MonitorPoint(101, 13, 20.0, quality=0x40),
        MonitorPoint(200, 1, True),
        MonitorPoint(300, 11, 1234),
    ),
    commands=(
        CommandPoint(400, 45, monitor_ioa=200),
        CommandPoint(401, 50, select_before_operate=True, monitor_ioa=100),
        CommandPoint(402, 45, behaviour=Behaviour.REJECT),
    ),
)


class _Base(TestCase):
    timeout = 60
    redis_server = None

    @defer.inlineCallbacks
    def setUp(self):
        server = self.redis_server or shared_redis()
        self.server = server
        self.settings = load_settings(None, {"redis": server.url, "history_length": "50"})
        self.client = RedisClient(self.settings.redis, timeout=2, pool_size=2)
        self.client.startService()
        self.addCleanup(self.client.stopService)
        yield until(lambda: self.client.connected, what="redis")
        yield self.client.call("flushdb")
        self.store = ConfigStore(self.client)
        self.points = PointStore(self.client)
        self.replies = ReplyListener(reactor, self.settings.redis, instance_id="test")
        self.replies.startService()
        self.addCleanup(self.replies.stopService)
        listening, self.registry = yield start_simulator(
            reactor, config=SimulatorConfig(stations=(STATION,))
        )
        self.addCleanup(listening.stopListening)
        self.sim_port = listening.getHost().port
        self.seen = []
        sink = _Recorder(self.seen)
        self.manager = DeviceManager(self.client, self.settings, reactor, sinks=[sink])

    def start_manager(self):
        self.manager.startService()
        self.addCleanup(self.manager.stopService)
        return until(lambda: self.manager.subscriber.subscribed, what="subscription")

    def configure(self, *extra_points):
        device = Device.from_json(
            {"id": "d1", "protocol": "iec104", "ip": "127.0.0.1", "port": self.sim_port, "t3": 5}
        )
        term = Term.from_json({"id": "t1", "device_id": "d1", "address": 5})
        items = [op("create", term)]
        for item_id in ("i100", "i101", "i200", "i300", "i400", "i401", "i402", *extra_points):
            items.append(op("create", Item.from_json({"id": item_id})))
        ops = []
        points = [
            ("i100", 100, None, 2, 1),
            ("i101", 101, None, None, None),
            ("i200", 200, None, None, None),
            ("i300", 300, None, 0.1, None),
            ("i400", 400, 45, None, None),
            ("i401", 401, 50, 2, 1),
            ("i402", 402, 45, None, None),
        ]
        for item_id, ioa, code_type, coefficient, base_val in points:
            body = {"term_id": "t1", "item_id": item_id, "protocol_code": ioa}
            if code_type:
                body["code_type"] = code_type
            if coefficient is not None:
                body["coefficient"] = coefficient
            if base_val is not None:
                body["base_val"] = base_val
            ops.append(op("create", TermItem.from_json(body)))
        # A term needs its device, a point its term and item: three changes, in order.
        d = self.store.apply([op("create", device)])
        d.addCallback(lambda _: self.store.apply(items))
        d.addCallback(lambda _: self.store.apply(ops))
        return d

    def latest(self, item_id, device_id="d1"):
        """A Deferred of the point's latest stored sample (None when there is none)."""
        d = self.client.call("hget", keys.DEVICE_VALUES % device_id, f"t1:{item_id}")
        return d.addCallback(lambda text: json.loads(text) if text else None)

    def latest_is(self, item_id, field, expected, device_id="d1"):
        """A Deferred: whether the point's latest sample has ``field == expected``."""
        d = self.latest(item_id, device_id)
        return d.addCallback(lambda sample: (sample or {}).get(field) == expected)

    @defer.inlineCallbacks
    def request(self, channel, body):
        """Publish a device_call/ctrl request and wait for its reply (as the API does)."""
        yield self.replies.when_subscribed()
        request_id = body["request_id"]
        reply = self.replies.wait(request_id, 30)
        message = {
            **body,
            "reply_to": self.replies.reply_channel(request_id),
            "deadline": reactor.seconds() + 30,
        }
        yield self.client.call("publish", channel, json.dumps(message))
        answer = yield reply
        return answer


class ManagerTests(_Base):
    def test_driver_interfaces(self):
        drivers = discover_drivers()
        self.assertEqual(sorted(drivers), ["iec104", "modbus"])
        for driver in drivers.values():
            verifyObject(IProtocolDriver, driver)
        verifyObject(ISampleSink, self.manager)

    @defer.inlineCallbacks
    def test_configured_device_delivers_scaled_values(self):
        yield self.configure()
        yield self.start_manager()
        yield until(lambda: self.latest("i300"), what="interrogation values")
        latest = {}
        for item_id in ("i100", "i101", "i200", "i300"):
            latest[item_id] = yield self.latest(item_id)
        self.assertEqual(latest["i100"]["value"], 12.5 * 2 + 1)
        self.assertEqual(latest["i101"]["quality"], "questionable")
        self.assertEqual(latest["i101"]["flags"], ["NT"])
        self.assertEqual(latest["i200"]["value"], True)
        self.assertAlmostEqual(latest["i300"]["value"], 123.4)
        history = yield self.points.read_samples(("d1", "t1", "i100"), 1, None, None)
        self.assertEqual(history[0]["value"], 26.0)
        runtime = self.manager.running_devices["d1"].runtime
        verifyObject(IDeviceRuntime, runtime)
        self.assertTrue(self.seen)
        # Spontaneous change: stored, published, and given to the processors.
        self.registry.update(5, 100, 40.0)
        yield until(lambda: self.latest_is("i100", "value", 81.0), what="spontaneous")
        text = yield until(
            lambda: self.client.call("hget", keys.DEVICE_STATUS % "d1", "status"), what="status"
        )
        status = json.loads(text)
        self.assertEqual(status["state"], "online")
        self.assertGreater(status["points_updated"], 4)

    @defer.inlineCallbacks
    def test_changes_follow_without_dropping_the_link(self):
        yield self.configure("i999")
        yield self.start_manager()
        yield until(lambda: self.latest("i100"), what="values")
        connects = len(self.registry.connections)
        # Point i999 appears at IOA 101 (moved from i101): no new link, new values.
        yield self.store.apply(
            [
                {
                    "op": "delete",
                    "entity": "term_item",
                    "id": "t1:i101",
                    "term_id": "t1",
                    "item_id": "i101",
                },
                op(
                    "create",
                    TermItem.from_json({"term_id": "t1", "item_id": "i999", "protocol_code": 101}),
                ),
            ]
        )
        running = self.manager.running_devices["d1"]
        yield until(
            lambda: any(ti.item_id == "i999" for ti in running.config.term_items), what="new points"
        )
        self.registry.update(5, 101, 77.0)
        yield until(lambda: self.latest_is("i999", "value", 77.0), what="moved point")
        self.assertEqual(len(self.registry.connections), connects)
        # A changed address restarts the device only; deleting it stops it.
        yield self.store.apply(
            [
                op(
                    "put",
                    Device.from_json(
                        {
                            "id": "d1",
                            "protocol": "iec104",
                            "ip": "127.0.0.1",
                            "port": self.sim_port,
                            "t3": 6,
                        }
                    ),
                )
            ]
        )
        yield until(
            lambda: self.manager.running_devices["d1"].config.device.extra.get("t3") == 6,
            what="restart",
        )
        yield self.store.apply([{"op": "delete", "entity": "device", "id": "d1"}])
        yield until(lambda: "d1" not in self.manager.running_devices, what="stop")

    @defer.inlineCallbacks
    def test_device_call_and_ctrl(self):
        yield self.configure()
        yield self.start_manager()
        yield until(lambda: self.latest("i100"), what="values")
        reply = yield self.request(
            keys.DEVICE_CALL,
            {"request_id": "r1", "device_id": "d1", "term_id": "t1", "item_id": "i300"},
        )
        self.assertEqual(reply["outcome"], "confirmed")
        self.assertAlmostEqual(reply["sample"]["value"], 123.4)
        reply = yield self.request(
            keys.DEVICE_CTRL,
            {"request_id": "r2", "device_id": "d1", "term_id": "t1", "item_id": "i400", "value": 0},
        )
        self.assertEqual((reply["ok"], reply["outcome"]), (True, "confirmed"))
        received = self.registry.received(5)
        self.assertEqual([(r.asdu.ioas[0], r.asdu.values[0]) for r in received][-1], (400, False))
        # Set-point in engineering units, select-before-operate: raw = (91 - 1) / 2.
        reply = yield self.request(
            keys.DEVICE_CTRL,
            {
                "request_id": "r3",
                "device_id": "d1",
                "term_id": "t1",
                "item_id": "i401",
                "value": 91,
                "select": True,
            },
        )
        self.assertEqual(reply["outcome"], "confirmed")
        self.assertEqual(self.registry.received(5)[-1].asdu.values[0], 45.0)
        reply = yield self.request(
            keys.DEVICE_CTRL,
            {"request_id": "r4", "device_id": "d1", "term_id": "t1", "item_id": "i402", "value": 1},
        )
        self.assertEqual((reply["ok"], reply["outcome"]), (False, "negative"))
        self.assertEqual(reply["cause"], "ACTIVATION_CON")
        reply = yield self.request(
            keys.DEVICE_CTRL,
            {"request_id": "r5", "device_id": "d1", "term_id": "t1", "item_id": "i100", "value": 1},
        )
        self.assertEqual(reply["outcome"], "refused")  # no command type on this point
        reply = yield self.request(
            keys.DEVICE_CALL,
            {"request_id": "r6", "device_id": "d1", "term_id": "t1", "item_id": "nope"},
        )
        self.assertEqual(reply["outcome"], "not_found")

    @defer.inlineCallbacks
    def test_readable_log(self):
        """One line per device_ctrl (a collector without the API logs it), one line per
        device state change, no debug chatter, no unmatched ACT_TERM, repeats counted."""
        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)

        def lines(word):
            return [formatEvent(e) for e in events if word in formatEvent(e)]

        self.manager = DeviceManager(
            self.client, attrs.evolve(self.settings, role="collector"), reactor
        )
        yield self.configure()
        yield self.start_manager()
        yield until(lambda: self.latest("i100"), what="values")
        yield until(lambda: lines("device d1: online"), what="the online line")
        for n in range(3):
            reply = yield self.request(
                keys.DEVICE_CTRL,
                {
                    "request_id": f"c{n}",
                    "device_id": "d1",
                    "term_id": "t1",
                    "item_id": "i400",
                    "value": n % 2 == 0,
                },
            )
            self.assertEqual(reply["outcome"], "confirmed")
        self.assertEqual(len(lines("device_ctrl")), 3, lines("device_ctrl"))
        self.assertIn("= True: confirmed", lines("device_ctrl")[0])
        self.assertEqual(lines("unmatched"), [])
        self.assertEqual([e for e in events if e.get("log_level") == LogLevel.debug], [])
        # points changed many times: one line, then one with the count
        for _ in range(20):
            self.manager._update_points(
                "d1", self.manager.running_devices["d1"], self.manager.running_devices["d1"].config
            )
        self.assertEqual(len(lines("points updated")), 1)
        states = [line for line in lines("device d1: ") if "points updated" not in line]
        self.assertEqual(states, ["device d1: online"])

    @defer.inlineCallbacks
    def test_frame_log_is_bounded(self):
        self.manager = DeviceManager(
            self.client, attrs.evolve(self.settings, frame_log_length=5), reactor
        )
        yield self.configure()
        yield self.start_manager()
        frames = yield until(
            lambda: self.client.call("lrange", keys.FRAME_LOG % "d1", 0, -1).addCallback(
                lambda frames: frames if len(frames) == 5 else None
            ),
            what="frame log",
        )
        entry = frames[-1]
        when, direction, octets = entry.split(",")
        self.assertIn(direction, ("send", "recv"))
        self.assertTrue(octets.startswith("68"))

    @defer.inlineCallbacks
    def test_offline_device(self):
        yield self.configure()
        yield self.start_manager()
        yield until(lambda: self.latest("i100"), what="values")
        for connection in list(self.registry.connections):
            connection.transport.loseConnection()
        runtime = self.manager.running_devices["d1"].runtime
        yield until(lambda: runtime.client.state.value != "started", what="offline")
        # The simulator accepts again at once: the link comes back by itself.
        yield until(lambda: runtime.client.state.value == "started", what="reconnect")


class OutageTests(_Base):
    """The same manager with a Redis of its own, stopped and restarted mid-flow."""

    def setUp(self):
        # persistent: the configuration survives the restart (an outage, not a wipe)
        self.redis_server = PrivateRedis(persistent=True)
        self.addCleanup(self.redis_server.stop)
        return super().setUp()

    @defer.inlineCallbacks
    def test_samples_during_an_outage_are_stored_afterwards(self):
        yield self.configure()
        yield self.start_manager()
        yield until(lambda: self.latest("i100"), what="values")
        self.server.kill()
        yield until(lambda: not self.client.connected, what="redis down")
        for value in range(10):
            self.registry.update(5, 300, 1000 + value)
        yield until(lambda: self.manager.ingest.status()["buffered"] >= 10, what="buffering")
        self.server.start()
        yield until(lambda: self.manager.ingest.status()["buffered"] == 0, 30, what="flush")
        yield until(lambda: self.client.connected, what="the pool back")

        def stored():
            # "buffered" no longer counts the batches in flight (up to 8 scripts): the
            # last one may still be on its way when it reaches 0
            d = self.points.read_samples(("d1", "t1", "i300"), 10, None, None)
            return d.addCallback(lambda h: h if len(h) >= 10 and h[0]["value"] < 101 else None)

        history = yield until(stored, 30, what="the outage's samples in the history")
        values = [sample["value"] for sample in reversed(history)]
        self.assertEqual([round(v, 1) for v in values], [100.0 + v / 10 for v in range(10)])
        self.assertEqual(self.manager.ingest.status()["dropped"], 0)


class _Recorder:
    def __init__(self, seen):
        self.seen = seen

    def samples_received(self, samples):
        self.seen.extend(samples)

    def config_changed(self, change):
        pass


class BadPointTests(_Base):
    """A Modbus device whose stored points include some its driver cannot read."""

    @defer.inlineCallbacks
    def test_a_device_with_bad_points_stored_still_starts_and_polls(self):
        from pydatacoll.testing.modbus_process import ModbusSimProcess
        from pydatacoll.testing.redis import free_port

        port = free_port()
        sim = yield ModbusSimProcess.start(reactor, port, "--size", "16")
        self.addCleanup(sim.kill)
        yield sim.command("set 1 holding 0 [42, 7]")
        device = Device.from_json(
            {
                "id": "m1",
                "protocol": "modbus",
                "ip": "127.0.0.1",
                "port": port,
                "scan_interval": 0.2,
                "timeout": 0.5,
            }
        )
        term = Term.from_json({"id": "t1", "device_id": "m1", "address": 1})
        points = [
            {"item_id": "good", "protocol_code": 0},
            {"item_id": "no_address"},
            {"item_id": "typo", "protocol_code": 1, "code_type": "hodling"},
            {"item_id": "edge", "protocol_code": 15},
            {"item_id": "beyond", "protocol_code": 16},  # the server has 0..15: exception 2
        ]
        entities = [op("create", term)]
        entities += [op("create", Item.from_json({"id": p["item_id"]})) for p in points]
        # Written straight to the store, as points stored before REST checked them were.
        yield self.store.apply([op("create", device)])
        yield self.store.apply(entities)
        yield self.store.apply(
            [op("create", TermItem.from_json({"term_id": "t1", **p})) for p in points]
        )
        yield self.start_manager()

        yield until(lambda: self.latest_is("good", "value", 42, "m1"), what="good point")
        yield until(lambda: self.latest_is("edge", "quality", "good", "m1"), what="edge point")

        def bad_points():
            status = self.manager.device_status("m1")
            return {p["item_id"]: p["field"] for p in status.get("bad_points", [])}

        yield until(lambda: "beyond" in bad_points(), what="refused point listed")
        self.assertEqual(
            bad_points(),
            {"no_address": "protocol_code", "typo": "code_type", "beyond": "protocol_code"},
        )
        self.assertEqual(self.manager.device_status("m1")["state"], "online")
        missing = yield self.latest("no_address", "m1")
        self.assertIsNone(missing)


class OverloadTests(_Base):
    @defer.inlineCallbacks
    def test_past_256_requests_in_flight_the_answer_is_overloaded(self):
        from pydatacoll.devices.manager import MAX_REQUESTS
        from pydatacoll.testing import hostile

        listening, peer = yield hostile.listen(reactor, "modbus", "silent")
        self.addCleanup(listening.stopListening)
        device = Device.from_json(
            {
                "id": "m1",
                "protocol": "modbus",
                "ip": "127.0.0.1",
                "port": listening.getHost().port,
                "timeout": 30,
                "scan_interval": 3600,
                "max_queue": 1000,
            }
        )
        term = Term.from_json({"id": "t1", "device_id": "m1", "address": 1})
        yield self.store.apply([op("create", device)])
        yield self.store.apply([op("create", term), op("create", Item.from_json({"id": "v"}))])
        yield self.store.apply(
            [
                op(
                    "create",
                    TermItem.from_json({"term_id": "t1", "item_id": "v", "protocol_code": 0}),
                )
            ]
        )
        yield self.start_manager()
        yield until(lambda: peer.open, what="the collector connected to the silent peer")
        replies = []
        listener = Subscriber(
            reactor,
            lambda: self.settings.redis,
            lambda channel, message: replies.append(json.loads(message)),
            patterns=[keys.REPLY % ("burst", "*")],
        )
        listener.startService()
        self.addCleanup(listener.stopService)
        yield until(lambda: listener.subscribed, what="the test's subscription")
        for n in range(MAX_REQUESTS + 1):
            message = {
                "request_id": str(n),
                "device_id": "m1",
                "term_id": "t1",
                "item_id": "v",
                "reply_to": keys.REPLY % ("burst", n),
                "deadline": reactor.seconds() + 60,
            }
            yield self.client.call("publish", keys.DEVICE_CALL, json.dumps(message))
        yield until(lambda: replies, what="the overload answer")
        (reply,) = replies
        # the 256 before it wait for the silent device; the one past them is not queued
        self.assertEqual(
            (reply["request_id"], reply["outcome"], reply["ok"]),
            (str(MAX_REQUESTS), "overloaded", False),
        )
        self.assertIn("256 requests", reply["message"])
        yield deferLater(reactor, 0.3, lambda: None)
        self.assertEqual(len(replies), 1)
