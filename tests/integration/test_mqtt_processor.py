"""The mqtt processor against a private Mosquitto (JSON values, an outage, the broker late)
and a real Redis (points loaded, and again on a silent change)."""

import json
import tempfile

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase

from pydatacoll.model import Sample
from pydatacoll.processing.mqtt.processor import MqttProcessor
from pydatacoll.testing.mosquitto import PrivateMosquitto
from tests.processing.mqtt_support import Subscriber
from tests.processing.support import wait_for
from tests.processing.test_mqtt import _context


class BrokerTests(TestCase):
    """The processor without Redis against a private Mosquitto: JSON values, an outage."""

    timeout = 120

    def setUp(self):
        self.broker = PrivateMosquitto()
        self.addCleanup(self.broker.cleanup)
        self.subscriber = Subscriber(self.broker.port, ["pydatacoll/#"], session="test-sub")
        self.addCleanup(self.subscriber.close)

    def processor(self, **options):
        texts = {
            "url": self.broker.url,
            "collector": "fep1",
            "retry_initial": "0.1",
            "retry_max": "0.5",
            "keepalive": "5",
            "connect_timeout": "2",
            **options,
        }
        processor = MqttProcessor.from_context(_context(texts))
        processor.startService()
        self.addCleanup(processor.stopService)
        return processor

    def values(self, prefix="pydatacoll/1/10/"):
        return [
            (topic, json.loads(payload))
            for topic, payload, _ in self.subscriber.taken()
            if topic.startswith(prefix)
        ]

    @inlineCallbacks
    def test_values_arrive_with_topic_and_payload(self):
        processor = self.processor()
        yield wait_for(lambda: processor.link.connected, 20)
        yield wait_for(lambda: processor.outbox.mode == "direct", 20)
        processor.samples_received(
            [Sample("1", "10", "1000", 230.5, "good", (), None, 1700000000.0)]
        )
        yield wait_for(lambda: self.values(), 20)
        self.assertEqual(
            self.values(),
            [
                (
                    "pydatacoll/1/10/1000",
                    {"value": 230.5, "quality": "good", "time": "2023-11-14T22:13:20.000+00:00"},
                )
            ],
        )
        state = [(p, r) for t, p, r in self.subscriber.taken() if t == "pydatacoll/fep1/state"]
        self.assertEqual(state, [(b"online", False)])
        yield wait_for(lambda: processor.outbox.idle)
        self.assertEqual(processor.status()["confirmed"], 1)
        yield processor.stopService()
        yield wait_for(
            lambda: ("pydatacoll/fep1/state", b"offline", False) in self.subscriber.taken()
        )

    @inlineCallbacks
    def test_outage_every_value_in_order(self):
        processor = self.processor()
        yield wait_for(lambda: processor.outbox.mode == "direct", 20)
        n = 0

        def feed(count):
            nonlocal n
            for _ in range(count):
                processor.samples_received([Sample("1", "10", "1000", n, receive_time=n)])
                n += 1

        feed(50)
        yield wait_for(lambda: len(self.values()) == 50, 20)
        self.broker.stop()
        yield wait_for(lambda: not processor.link.connected, 20)
        feed(300)
        yield wait_for(lambda: processor.status()["spool_records"] == 300, 20)
        self.assertEqual(processor.status()["outbox"], "spooling")
        self.broker.start()
        yield wait_for(lambda: processor.outbox.idle, 30)
        feed(50)
        yield wait_for(lambda: len({v["value"] for _, v in self.values()}) == 400, 30)
        values = [v["value"] for _, v in self.values()]
        first = sorted(set(values), key=values.index)
        self.assertEqual(first, list(range(400)))
        self.assertEqual(processor.status()["dropped_total"], 0)

    @inlineCallbacks
    def test_broker_absent_at_start(self):
        self.broker.stop()
        processor = self.processor()
        processor.samples_received(
            [Sample("1", "10", "1000", i, receive_time=i) for i in range(20)]
        )
        yield wait_for(lambda: processor.status()["spool_records"] == 20, 20)
        self.assertFalse(processor.link.connected)
        self.assertIsNotNone(processor.status()["last_error"])
        self.broker.start()
        yield wait_for(lambda: len(self.values()) >= 20, 30)
        self.assertEqual([v["value"] for _, v in self.values()][:20], list(range(20)))


class ConfigurationTests(TestCase):
    """The points come from Redis, and again when the version moves without messages."""

    timeout = 60

    @inlineCallbacks
    def test_points_loaded_and_reloaded_on_a_silent_change(self):
        from pydatacoll.processing.mqtt.options import MqttOptions as Options
        from pydatacoll.store import keys
        from pydatacoll.testing.redis import free_port
        from tests.processing.support import redis_store

        yield redis_store(self)
        options = Options.parse(
            {
                "url": f"mqtt://127.0.0.1:{free_port()}",  # no broker: records stay on disk
                "status_interval": "0.1",
                "retry_initial": "0.1",
                "points": "flagged",
            }
        )
        processor = MqttProcessor(reactor, options, tempfile.mkdtemp(), redis=self.client)
        processor.startService()
        self.addCleanup(processor.stopService)
        yield wait_for(lambda: processor.points is not None and len(processor.points) == 6)
        self.assertEqual(processor.status()["points"], 6)
        self.assertFalse(processor._select(("1", "10", "1000")))  # flagged: none flagged yet
        # A change written without a change message (as the v2 batch routes do).
        yield self.client.call(
            "hmset",
            keys.TERM_ITEM % ("10", "2000"),
            {"term_id": '"10"', "item_id": '"2000"', "device_id": '"1"', "mqtt": "true"},
        )
        yield self.client.call("sadd", keys.TERM_ITEMS % "10", ["2000"])
        yield self.client.call("incr", keys.CONFIG_VERSION)
        yield wait_for(lambda: ("1", "10", "2000") in (processor.points or {}), 10)
        self.assertTrue(processor._select(("1", "10", "2000")))
        processor.samples_received(
            [Sample("1", "10", "2000", 1, receive_time=1.0), Sample("1", "10", "1000", 2)]
        )
        self.assertEqual(processor.status()["selected"], 1)
