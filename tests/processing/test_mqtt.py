"""The mqtt plugin: options, JSON codec and the outbox (the processor against a private
Mosquitto and a real Redis: tests/integration/test_mqtt_processor.py)."""

import configparser
import json
import os
import tempfile

from twisted.application.service import IService, Service
from twisted.internet import reactor
from twisted.internet.defer import Deferred, fail, inlineCallbacks, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface.verify import verifyObject

from pydatacoll.control.commander import CommandSettings, make_commander
from pydatacoll.errors import ConfigError
from pydatacoll.interfaces import IProcessor, IProcessorFactory
from pydatacoll.model import Sample
from pydatacoll.plugins.mqtt import mqtt as mqtt_factory
from pydatacoll.processing import ProcessorContext
from pydatacoll.processing.mqtt.codec import JsonEncoder, sample_record, subscription_filter
from pydatacoll.processing.mqtt.commands import MqttCommands, json_command_body
from pydatacoll.processing.mqtt.options import OPTION_DEFAULTS, MqttOptions
from pydatacoll.processing.mqtt.outbox import Outbox
from pydatacoll.processing.spool import Spool
from pydatacoll.store import keys
from pydatacoll.testing.memory import MemoryRedis
from pydatacoll.testing.memory_api import MemoryReplyListener
from tests.control.support import store_point
from tests.processing.support import wait_for

ETC = os.path.join(os.path.dirname(__file__), "..", "..", "etc", "pydatacoll.ini")


class OptionTests(SynchronousTestCase):
    def test_ini_mirrors_defaults(self):
        """etc/pydatacoll.ini documents every [plugin:mqtt] option with its default."""
        parser = configparser.ConfigParser(interpolation=None)
        parser.read(ETC)
        section = dict(parser.items("plugin:mqtt"))
        self.assertEqual(section, {k: v[0] for k, v in OPTION_DEFAULTS.items()})
        options = MqttOptions.parse(section)
        self.assertEqual((options.qos, options.mode, options.retain), (1, "json", False))
        self.assertEqual(options.client_id, f"pydatacoll-{options.collector}")
        self.assertEqual(options.edge_node_id, options.collector)

    def test_bad_options_name_their_key(self):
        for options, key in (
            ({"url": "http://x"}, "plugin:mqtt.url"),
            ({"qos": "2"}, "plugin:mqtt.qos"),
            ({"mode": "xml"}, "plugin:mqtt.mode"),
            ({"topic": "a/{nope}"}, "plugin:mqtt.topic"),
            ({"topic": "a/#"}, "plugin:mqtt.topic"),
            ({"commands_acl": "1:2"}, "plugin:mqtt.commands_acl"),
            ({"cert_file": "c.pem"}, "plugin:mqtt.key_file"),
            ({"cert_file": "c.pem", "key_file": "k.pem"}, "plugin:mqtt.cert_file"),
            ({"colour": "red"}, "plugin:mqtt.colour"),
        ):
            with self.assertRaises(ConfigError) as caught:
                MqttOptions.parse(options)
            self.assertEqual(caught.exception.key, key, options)

    def test_url_and_acl(self):
        options = MqttOptions.parse(
            {
                "url": "mqtts://u%40x:pw@broker.example:8884",
                "commands": "true",
                "commands_acl": "1:*:*, 2:10:100?",
            }
        )
        self.assertEqual((options.host, options.port, options.tls), ("broker.example", 8884, True))
        self.assertEqual((options.url_username, options.url_password), ("u@x", "pw"))
        self.assertEqual(MqttOptions.parse({"url": "mqtts://b"}).port, 8883)
        self.assertEqual(options.describe, "mqtts://broker.example:8884")
        self.assertTrue(options.command_allowed(("1", "10", "1000")))
        self.assertTrue(options.command_allowed(("2", "10", "1001")))
        self.assertFalse(options.command_allowed(("2", "10", "1010")))
        off = MqttOptions.parse({"commands_acl": "*:*:*"})
        self.assertFalse(off.command_allowed(("1", "10", "1000")))

    def test_factory_builds_a_processor(self):
        self.assertTrue(verifyObject(IProcessorFactory, mqtt_factory))
        processor = mqtt_factory.build(_context({"collector": "c1"}))
        self.assertTrue(verifyObject(IProcessor, processor))
        self.assertTrue(verifyObject(IService, processor))
        self.assertEqual(processor.status()["connected"], False)
        with self.assertRaises(ConfigError):
            mqtt_factory.build(_context({"url": "mqtts://h", "ca_file": "/nonexistent.pem"}))


class JsonCodecTests(SynchronousTestCase):
    def setUp(self):
        self.encoder = JsonEncoder(MqttOptions.parse({"collector": "fep1", "retain": "true"}))

    def test_sample(self):
        sample = Sample("1", "10", "1000", 12.5, "questionable", ("NT",), None, 1700000000.25)
        [message] = self.encoder.encode(sample_record(sample), False)
        self.assertEqual(message.topic, "pydatacoll/1/10/1000")
        self.assertEqual(
            json.loads(message.payload),
            {"value": 12.5, "quality": "questionable", "time": "2023-11-14T22:13:20.250+00:00"},
        )
        self.assertEqual((message.qos, message.retain), (1, True))

    def test_source_time_wins(self):
        sample = Sample("1", "10", "1000", True, source_time=1.0, receive_time=2.0)
        [message] = self.encoder.encode(sample_record(sample), False)
        self.assertEqual(json.loads(message.payload)["time"], "1970-01-01T00:00:01.000+00:00")

    def test_status_alarm_result_state(self):
        [status] = self.encoder.encode(("s", "7", "offline", 0.0), False)
        self.assertEqual(status.topic, "pydatacoll/7/status")
        self.assertEqual(json.loads(status.payload)["state"], "offline")
        self.assertTrue(status.retain)
        [alarm] = self.encoder.encode(("a", '{"event": "raise"}'), False)
        self.assertEqual((alarm.topic, alarm.payload), ("pydatacoll/alarms", b'{"event": "raise"}'))
        [result] = self.encoder.encode(("r", "1", "10", "1000", "{}"), False)
        self.assertEqual(result.topic, "pydatacoll/1/10/1000/set/result")
        will = self.encoder.will()
        self.assertEqual(
            (will.topic, will.payload, will.retain), ("pydatacoll/fep1/state", b"offline", True)
        )
        self.assertEqual(self.encoder.session_start()[0].payload, b"online")
        self.assertEqual(
            subscription_filter("site/{collector}/{device_id}/{term_id}/{item_id}", "fep1"),
            "site/fep1/+/+/+",
        )


def _context(options, data_dir=None, redis=None):
    from pydatacoll.config import Settings

    return ProcessorContext(
        reactor=reactor,
        settings=Settings(),
        options=options,
        redis=redis,
        emit=lambda samples: None,
        data_dir=data_dir or tempfile.mkdtemp(),
    )


class OutboxTests(TestCase):
    """The outbox with a scripted sender: order, window, confirmation, disk while down."""

    def setUp(self):
        self.directory = tempfile.mkdtemp()
        self.sent = []  # (record, historical, deferred)

    def outbox(self, window=3, queue_records=100):
        spool = Spool(
            os.path.join(self.directory, "spool"),
            max_bytes=10**6,
            max_samples=1000,
            segment_bytes=300,
            fsync=True,
        )

        def send(record, historical):
            d = Deferred()
            self.sent.append((record, historical, d))
            return d

        box = Outbox(
            reactor, spool, send, queue_records=queue_records, window=window, batch_records=4
        )
        self.addCleanup(box.stop)
        return box

    def confirm_all(self):
        pending = [d for _, _, d in self.sent if not d.called]
        for d in pending:
            d.callback(None)
        return len(pending)

    @inlineCallbacks
    def test_window_order_and_confirmation(self):
        box = self.outbox()
        yield box.start()
        box.link_up()
        yield wait_for(lambda: box.mode == "direct")
        box.put([("v", i) for i in range(10)])
        self.assertEqual([r for r, _, _ in self.sent], [("v", 0), ("v", 1), ("v", 2)])
        self.sent[1][2].callback(None)  # out of order: the window moves by one
        self.assertEqual(len(self.sent), 4)
        self.assertEqual(box.waiting, 10)  # 1 leaves memory only after 0 (in order)
        while self.confirm_all():
            pass
        self.assertEqual([r[1] for r, _, _ in self.sent], list(range(10)))
        self.assertTrue(box.idle)
        yield box.stop()

    @inlineCallbacks
    def test_outage_goes_to_disk_and_comes_back_in_order(self):
        box = self.outbox()
        yield box.start()
        box.link_up()
        yield wait_for(lambda: box.mode == "direct")
        box.put([("v", i) for i in range(5)])
        self.sent[0][2].callback(None)  # 0 confirmed; 1..3 in flight, 4 queued
        box.link_down()
        box.put([("v", i) for i in range(5, 30)])
        yield wait_for(lambda: box.spool.unread_samples == 29)
        self.sent.clear()
        box.link_up()
        while True:
            yield wait_for(lambda: any(not d.called for _, _, d in self.sent) or box.idle)
            if box.idle:
                break
            self.confirm_all()
        records = [r[1] for r, _, _ in self.sent]
        self.assertEqual(records, list(range(1, 30)))
        self.assertTrue(all(historical for _, historical, _ in self.sent))
        self.assertEqual(box.spool.unread_samples, 0)
        yield box.stop()

    @inlineCallbacks
    def test_lost_mid_batch_resends_only_unconfirmed(self):
        box = self.outbox(window=10)
        yield box.start()
        box.put([("v", i) for i in range(4)])  # before the first connection: on disk
        yield wait_for(lambda: box.spool.unread_samples == 4)
        box.link_up()
        yield wait_for(lambda: len(self.sent) == 4)
        self.sent[0][2].callback(None)
        self.sent[2][2].callback(None)
        box.link_down()
        self.sent.clear()
        box.link_up()
        self.assertEqual([r[1] for r, _, _ in self.sent], [1, 3])
        self.confirm_all()
        yield wait_for(lambda: box.idle)
        yield box.stop()

    @inlineCallbacks
    def test_bounds_drop_the_newest_and_count(self):
        box = self.outbox(queue_records=100)
        box.spool.max_samples = 50
        yield box.start()
        box.put([("v", i) for i in range(150)])
        yield wait_for(lambda: not box.spool_writer.appending and not box.spool_writer.pending)
        self.assertEqual(box.dropped["queue_full"] + box.dropped["spool_full"], 100)
        self.assertEqual(box.spool.unread_samples, 50)
        yield box.stop()

    @inlineCallbacks
    def test_stop_keeps_what_was_not_confirmed(self):
        box = self.outbox()
        yield box.start()
        box.link_up()
        yield wait_for(lambda: box.mode == "direct")
        box.put([("v", i) for i in range(6)])
        self.sent[0][2].callback(None)
        yield box.stop()
        self.sent.clear()
        again = self.outbox()
        yield again.start()
        again.link_up()
        yield wait_for(lambda: len(self.sent) == 3)
        while not again.idle:
            self.confirm_all()
            yield wait_for(lambda: any(not d.called for _, _, d in self.sent) or again.idle)
        self.assertEqual([r[1] for r, _, _ in self.sent], [1, 2, 3, 4, 5])
        yield again.stop()


class CommandTests(SynchronousTestCase):
    """`MqttCommands`: the ACL, commands off, and the outcome published as a record."""

    def commands(self, make_commander=None, **texts):
        options = MqttOptions.parse({"url": "mqtt://127.0.0.1:1883", **texts})
        self.records = []
        counters = {"commands": 0, "commands_refused": 0}
        self.clock = Clock()
        return MqttCommands(self.clock, make_commander, options, counters, self.records.extend)

    def test_off_until_started(self):
        commands = self.commands(commands="true")
        self.successResultOf(commands.command(("1", "10", "1000"), {"value": 1}))
        ((kind, *point, text),) = self.records
        self.assertEqual((kind, point), ("r", ["1", "10", "1000"]))
        result = json.loads(text)
        self.assertEqual((result["outcome"], result["client"]), ("refused", "mqtt:anonymous"))
        self.assertEqual(commands.counters["commands"], 1)
        self.successResultOf(commands.stop())

    def test_device_ctrl_answers_and_failures(self):
        calls = []

        class Commander:
            replies = Service()

            def device_ctrl(self, request_id, ids, body, client, token_id, refused=None):
                calls.append((ids, client, token_id, refused))
                if refused:
                    return succeed(_Answer({"outcome": "refused", "message": refused}))
                return fail(RuntimeError("boom"))

        commander = Commander()
        commands = self.commands(
            lambda: commander, commands="true", commands_acl="1:10:1000", client_id="fep"
        )
        commands.start()
        self.assertTrue(commander.replies.running)  # its reply listener runs with it
        commands.command(("1", "10", "1000"), {"value": 1, "client": "ops"})
        commands.command(("1", "10", "1001"), {"value": 2})
        self.assertEqual([c[3] is None for c in calls], [True, False])
        self.assertEqual(calls[0][1:3], ("mqtt:ops", "mqtt:fep"))
        outcomes = [json.loads(r[-1])["outcome"] for r in self.records]
        self.assertEqual(outcomes, ["failed", "refused"])
        self.assertEqual(json.loads(self.records[0][-1])["message"], "internal error")
        self.assertEqual(commands.counters["commands_refused"], 1)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.successResultOf(commands.stop())
        self.assertFalse(commander.replies.running)

    def test_commands_go_through_the_command_path_and_are_audited(self):
        """A real `Commander` on `MemoryRedis`: sent on device_ctrl, confirmed, audited
        under the MQTT client's name, the answer published as a result record."""
        memory = MemoryRedis()
        self.successResultOf(store_point(memory))
        clock = Clock()

        def make():
            replies = MemoryReplyListener(memory, clock)
            replies.startService = replies.stopService = lambda: succeed(None)
            return make_commander(memory, CommandSettings(), clock, replies)

        def collector(channel, message):
            request = json.loads(message)
            reply = {"request_id": request["request_id"], "outcome": "confirmed", "message": ""}
            memory.call("publish", request["reply_to"], json.dumps(reply))

        memory.subscribe(keys.DEVICE_CTRL, collector)
        commands = self.commands(make, commands="true", commands_acl="1:10:*", client_id="fep")
        commands.start()
        self.successResultOf(commands.command(("1", "10", "1000"), {"value": 7, "client": "op"}))
        result = json.loads(self.records[0][-1])
        self.assertEqual((result["outcome"], result["value"]), ("confirmed", 7))
        ((_, entry),) = memory.data[keys.CTRL_LOG]
        self.assertEqual(
            (entry["client"], entry["token_id"], entry["value"], entry["outcome"]),
            ("mqtt:op", "mqtt:fep", "7", "confirmed"),
        )

    def test_json_bodies(self):
        self.assertEqual(json_command_body(b'{"value": 3}'), {"value": 3})
        self.assertEqual(json_command_body(b"5"), {"value": 5})
        self.assertEqual(json_command_body(b"not json"), {"value": None})


class _Answer:
    def __init__(self, body):
        self.body = body

    def to_json(self):
        return self.body
