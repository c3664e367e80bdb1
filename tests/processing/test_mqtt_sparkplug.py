"""Sparkplug B encoding: births, bdSeq, seq, aliases, datatypes, deaths, NCMD, DCMD."""

import tempfile

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from pydatacoll.processing.mqtt import sparkplug_b_pb2 as pb
from pydatacoll.processing.mqtt.options import MqttOptions
from pydatacoll.processing.mqtt.sparkplug import (
    SparkplugEncoder,
    datatype_of,
    fits,
    metric_value,
    set_value,
)


class FakeProcessor:
    """What the encoder reads of the processor: points, values, states, selection."""

    def __init__(self):
        self.reactor = Clock()
        self.reactor.advance(1700000000)
        self.points = {
            ("1", "10", "v"): {"data_type": "float32"},
            ("1", "10", "n"): {"data_type": "uint16"},
            ("1", "10", "s"): {"data_type": "bool"},
            ("2", "20", "x"): {},
        }
        self.values = {("1", "10", "v"): (1.5, "good", 1700000000.0)}
        self.states = {"1": "online", "2": "offline"}
        self.rebirths = 0
        self.commands = []

    def selected_points(self, device_id):
        return sorted(p for p in self.points if p[0] == device_id)

    def rebirth(self):
        self.rebirths += 1

    def command(self, point, body):
        self.commands.append((point, body))


def decode(message):
    return pb.Payload.FromString(message.payload)


class SparkplugTests(SynchronousTestCase):
    def setUp(self):
        self.processor = FakeProcessor()
        self.directory = tempfile.mkdtemp()
        options = MqttOptions.parse(
            {"mode": "sparkplug", "group_id": "plant", "edge_node_id": "fep1", "commands": "true"}
        )
        self.encoder = SparkplugEncoder(options, self.directory, self.processor)

    def test_bdseq_pairs_will_and_birth_and_survives_restart(self):
        will = self.encoder.will()
        self.assertEqual(will.topic, "spBv1.0/plant/NDEATH/fep1")
        death = pb.Payload.FromString(will.payload)
        self.assertEqual([(m.name, m.long_value) for m in death.metrics], [("bdSeq", 0)])
        nbirth = decode(self.encoder.session_start()[0])
        self.assertEqual(nbirth.seq, 0)
        metrics = {m.name: metric_value(m) for m in nbirth.metrics}
        self.assertEqual(metrics, {"bdSeq": 0, "Node Control/Rebirth": False})
        self.encoder.will()
        again = SparkplugEncoder(self.encoder.options, self.directory, self.processor)
        self.assertEqual(pb.Payload.FromString(again.will().payload).metrics[0].long_value, 2)

    def test_births_data_and_deaths(self):
        self.encoder.will()
        messages = self.encoder.session_start()
        self.assertEqual(
            [m.topic for m in messages],
            ["spBv1.0/plant/NBIRTH/fep1", "spBv1.0/plant/DBIRTH/fep1/1"],  # 2 is offline
        )
        dbirth = decode(messages[1])
        self.assertEqual(dbirth.seq, 1)
        birth = {m.name: (m.alias, m.datatype, metric_value(m), m.is_null) for m in dbirth.metrics}
        self.assertEqual(birth["10/v"][1:3], (pb.Float, 1.5))
        self.assertEqual(birth["10/n"][1], pb.UInt16)
        self.assertTrue(birth["10/n"][3])  # no value yet: is_null
        self.assertEqual(birth["10/s"][1], pb.Boolean)
        self.assertEqual(len({a for a, *_ in birth.values()}), 3)
        quality = dbirth.metrics[0].properties
        self.assertEqual(list(quality.keys), ["Quality"])

        [ddata] = self.encoder.encode(("v", "1", "10", "n", 42, "questionable", 1700000001.5), True)
        self.assertEqual(ddata.topic, "spBv1.0/plant/DDATA/fep1/1")
        data = decode(ddata)
        self.assertEqual(data.seq, 2)
        [metric] = data.metrics
        self.assertEqual(metric.name, "")
        self.assertEqual(metric.alias, birth["10/n"][0])
        self.assertEqual((metric_value(metric), metric.timestamp), (42, 1700000001500))
        self.assertTrue(metric.is_historical)
        self.assertEqual(metric.properties.values[0].int_value, 64)

        # A value that does not fit its datatype: the device is born again first.
        messages = self.encoder.encode(("v", "1", "10", "n", "text", "good", 1.0), False)
        self.assertEqual([m.topic.split("/")[2] for m in messages], ["DBIRTH", "DDATA"])
        reborn = {m.name: m.datatype for m in decode(messages[0]).metrics}
        self.assertEqual(reborn["10/n"], pb.String)

        [ddeath] = self.encoder.encode(("s", "1", "offline", 2.0), False)
        self.assertEqual((ddeath.topic, decode(ddeath).seq), ("spBv1.0/plant/DDEATH/fep1/1", 5))
        self.assertEqual(self.encoder.encode(("s", "1", "offline", 2.0), False), [])
        [dbirth2] = self.encoder.encode(("s", "1", "online", 3.0), False)
        self.assertEqual(dbirth2.topic, "spBv1.0/plant/DBIRTH/fep1/1")
        # Data of a device not born (device 2): DBIRTH first.
        messages = self.encoder.encode(("v", "2", "20", "x", True, "good", 4.0), False)
        self.assertEqual([m.topic.split("/")[2] for m in messages], ["DBIRTH", "DDATA"])

    def test_seq_wraps_at_256(self):
        self.encoder.will()
        self.encoder.session_start()
        seqs = [
            decode(self.encoder.encode(("v", "1", "10", "v", float(i), "good", 1.0), False)[0]).seq
            for i in range(300)
        ]
        self.assertEqual(seqs[:3], [2, 3, 4])
        self.assertEqual(seqs[253:256], [255, 0, 1])

    def test_ncmd_rebirth_and_dcmd(self):
        self.encoder.will()
        self.encoder.session_start()
        command = pb.Payload()
        metric = command.metrics.add()
        metric.name, metric.datatype, metric.boolean_value = (
            "Node Control/Rebirth",
            pb.Boolean,
            True,
        )
        self.assertTrue(self.encoder.handle("spBv1.0/plant/NCMD/fep1", command.SerializeToString()))
        self.assertEqual(self.processor.rebirths, 1)
        dcmd = pb.Payload()
        by_name = dcmd.metrics.add()
        by_name.name, by_name.datatype, by_name.boolean_value = "10/s", pb.Boolean, True
        by_alias = dcmd.metrics.add()
        by_alias.alias = self.encoder.aliases[("1", "10", "n")]
        set_value(by_alias, pb.UInt16, 7)
        self.assertTrue(self.encoder.handle("spBv1.0/plant/DCMD/fep1/1", dcmd.SerializeToString()))
        self.assertEqual(
            self.processor.commands,
            [
                (("1", "10", "s"), {"value": 1, "client": "sparkplug"}),
                (("1", "10", "n"), {"value": 7, "client": "sparkplug"}),
            ],
        )
        self.assertFalse(self.encoder.handle("pydatacoll/1/10/n/set", b"1"))
        self.assertEqual(
            self.encoder.subscriptions(),
            ["spBv1.0/plant/NCMD/fep1", "spBv1.0/plant/DCMD/fep1/+"],
        )

    def test_datatypes(self):
        self.assertEqual(datatype_of({"data_type": "int16", "coefficient": 0.1}, 1.0), pb.Double)
        self.assertEqual(datatype_of({"data_type": "int32"}, 5), pb.Int32)
        self.assertEqual(datatype_of(None, True), pb.Boolean)
        # a coil or discrete input is Boolean before its first read too (no value yet)
        self.assertEqual(datatype_of({"code_type": "coil"}, None), pb.Boolean)
        self.assertEqual(datatype_of({"code_type": 1}, None), pb.Boolean)
        self.assertEqual(datatype_of({"code_type": "holding"}, None), pb.Double)
        self.assertEqual(datatype_of(None, 3), pb.Int64)
        self.assertEqual(datatype_of(None, "a"), pb.String)
        self.assertTrue(fits(pb.Double, 3))
        self.assertFalse(fits(pb.UInt16, -1))
        self.assertFalse(fits(pb.Int64, True))
        metric = pb.Payload.Metric()
        set_value(metric, pb.Int16, -5)
        self.assertEqual((metric.int_value, metric_value(metric)), (0xFFFFFFFB, -5))
