"""End to end: a real twistd daemon with the mqtt plugin, a private Mosquitto, a Modbus
simulator (pymodbus' server) whose input register counts, and paho as the subscriber.

The outage test stops the broker for 15 s while the value keeps changing and checks that
every sample the daemon stored in Redis meanwhile arrives over MQTT afterwards, in order.
"""

import json
import os
import signal
import tempfile
import time

import redis as redis_py
from twisted.trial.unittest import SynchronousTestCase

from pydatacoll.store import keys
from pydatacoll.testing.mosquitto import PrivateMosquitto
from pydatacoll.testing.redis import PrivateRedis, free_port
from tests.integration.test_collector_e2e import ModbusSim
from tests.integration.test_daemon import Daemon, request
from tests.processing.mqtt_support import Subscriber, wait_until

#: The broker's outage (s): long enough for the plugin's reconnect backoff to reach its
#: 1 s cap (0.2, 0.4, 0.8, 1) and for about 20 samples (one per 0.3 s scan) to queue.
OUTAGE = 6.0
COUNT = "pydatacoll/m1/mt1/count"
COIL = "pydatacoll/m1/mt1/coil"


class _DaemonCase(SynchronousTestCase):
    """A private Redis, Mosquitto, Modbus simulator and paho subscriber; daemons on demand."""

    def setUp(self):
        self.workdir = tempfile.mkdtemp()
        self.redis = PrivateRedis()
        self.addCleanup(self.redis.stop)
        self.sync = redis_py.Redis(port=self.redis.port, decode_responses=True)
        self.addCleanup(self.sync.close)
        self.broker = PrivateMosquitto(persistent=True)
        self.addCleanup(self.broker.cleanup)
        self.modbus = ModbusSim(free_port(), self.workdir)
        self.addCleanup(self.modbus.kill)
        # A persistent session: the broker keeps what is published while it reconnects.
        self.subscriber = Subscriber(self.broker.port, ["pydatacoll/#"], session="e2e-sub")
        self.addCleanup(self.subscriber.close)

    def start_daemon(self, **mqtt):
        options = {
            "url": self.broker.url,
            "collector": "fep1",
            "retry_initial": "0.2",
            "retry_max": "1",
            "keepalive": "5",
            "connect_timeout": "2",
            "status_interval": "0.5",
            **mqtt,
        }
        path = os.path.join(self.workdir, f"pydatacoll-{free_port()}.ini")
        with open(path, "w") as f:
            f.write("[plugins]\nenabled = mqtt\n[plugin:mqtt]\n")
            f.writelines(f"{k} = {v}\n" for k, v in options.items())
        daemon = Daemon(
            self.workdir, "--config", path, "--redis", f"redis://127.0.0.1:{self.redis.port}/0"
        )
        self.addCleanup(daemon.stop)
        return daemon

    def configure(self, daemon):
        def ok(path, body):
            status, reply = request("POST", daemon.base + path, body)
            self.assertIn(status, (200, 201), f"{path}: {reply}")

        ok(
            "/api/v1/devices",
            {
                "id": "m1",
                "protocol": "modbus",
                "ip": "127.0.0.1",
                "port": self.modbus.port,
                "scan_interval": 0.3,
                "timeout": 0.5,
                "reconnect_initial": 0.2,
                "reconnect_max": 1,
            },
        )
        ok("/api/v1/terms", {"id": "mt1", "device_id": "m1", "address": 1})
        for item in ("count", "coil"):
            ok("/api/v1/items", {"id": item})
        ok(
            "/api/v1/terms/mt1/items",
            {"item_id": "count", "protocol_code": 0, "code_type": "input"},
        )
        ok("/api/v1/terms/mt1/items", {"item_id": "coil", "protocol_code": 3, "code_type": "coil"})

    def received(self, topic):
        return [json.loads(p) for t, p, _ in self.subscriber.taken() if t == topic]

    def stored(self):
        """Every sample of the count point the daemon stored, oldest first (its stream)."""
        entries = self.sync.xrange(keys.POINT_DATA % ("m1", "mt1", "count"))
        samples = [json.loads(fields["sample"]) for _, fields in entries]
        return [(s["value"], s["source_time"] or s["receive_time"]) for s in samples]

    def coil(self):
        return self.modbus.command("get 1 coil 3 1")["values"][0]

    def audit(self, daemon):
        return request("GET", daemon.base + "/api/v1/device_ctrl/log")[1]


class MqttDaemonTests(_DaemonCase):
    """JSON mode."""

    def test_values_outage_and_will(self):
        daemon = self.start_daemon()
        self.configure(daemon)
        first = wait_until(lambda: self.received(COUNT), 30, "the first value over MQTT")[0]
        self.assertEqual(set(first), {"value", "quality", "time"})
        self.assertEqual(first["quality"], "good")
        self.assertRegex(first["time"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00$")
        wait_until(
            lambda: any(s["state"] == "online" for s in self.received("pydatacoll/m1/status")),
            30,
            "the device status online",
        )
        states = [(p, r) for t, p, r in self.subscriber.taken() if t == "pydatacoll/fep1/state"]
        self.assertIn((b"online", False), states)

        # The broker away for OUTAGE s while the register keeps counting.
        before = len(self.stored())
        self.broker.stop()
        time.sleep(OUTAGE)  # the outage itself: other processes run meanwhile
        during = len(self.stored()) - before
        self.assertGreater(during, OUTAGE, "the value kept changing during the outage")
        self.broker.start()
        stored_at_restart = self.stored()

        def arrived():
            got = [(v["value"], v["time"]) for v in self.received(COUNT)]
            return set(stored_at_restart) <= set(got) and got

        got = wait_until(arrived, 60, "every value stored during the outage")
        unique = sorted(set(got), key=got.index)  # first arrival of each (QoS 1 may repeat)
        self.assertEqual(unique[: len(stored_at_restart)], stored_at_restart)

        def plugin_detail():  # the collector writes its plugins' status every 10 s
            plugins = request("GET", daemon.base + "/api/v1/plugins")[1]
            [mqtt] = [p for p in plugins if p["name"] == "mqtt"]
            detail = mqtt.get("detail") or {}
            return detail if detail.get("link", {}).get("losses") else None

        detail = wait_until(plugin_detail, 30, "the plugin status after the outage")
        self.assertEqual(detail["dropped_total"], 0)
        self.assertGreaterEqual(detail["spool_peak"], during)
        self.assertGreaterEqual(detail["link"]["losses"], 1)

        # SIGKILL: the broker publishes the last will, retained.
        daemon.process.send_signal(signal.SIGKILL)
        daemon.process.wait(10)
        wait_until(
            lambda: ("pydatacoll/fep1/state", b"offline", False) in self.subscriber.taken(),
            30,
            "the last will",
        )
        late = Subscriber(self.broker.port, ["pydatacoll/fep1/state"])
        self.addCleanup(late.close)
        wait_until(lambda: late.taken(), 10, "the retained state")
        self.assertEqual(late.taken()[-1], ("pydatacoll/fep1/state", b"offline", True))

    def test_commands_off_by_default(self):
        daemon = self.start_daemon()
        self.configure(daemon)
        wait_until(lambda: self.received(COUNT), 30, "values")
        self.assertFalse(self.coil())
        self.subscriber.publish(COIL + "/set", json.dumps({"value": 1, "client": "tester"}))
        time.sleep(3)  # nothing may happen: give it time to (wrongly) happen
        self.assertFalse(self.coil())
        self.assertEqual(self.received(COIL + "/set/result"), [])
        self.assertEqual(self.audit(daemon), [])

    def test_commands_with_acl(self):
        daemon = self.start_daemon(commands="true", commands_acl="m1:mt1:coil")
        self.configure(daemon)
        wait_until(lambda: self.received(COUNT), 30, "values")
        # The plugin subscribed when it connected; its reply listener needs Redis.
        time.sleep(1)
        self.subscriber.publish(COIL + "/set", json.dumps({"value": 1, "client": "tester"}))
        result = wait_until(lambda: self.received(COIL + "/set/result"), 30, "the result")[0]
        self.assertEqual(result["outcome"], "confirmed", result)
        self.assertEqual(result["client"], "mqtt:tester")
        wait_until(self.coil, 10, "the coil set")
        self.subscriber.publish(COUNT + "/set", "5")
        refused = wait_until(lambda: self.received(COUNT + "/set/result"), 30, "the refusal")[0]
        self.assertEqual(refused["outcome"], "refused")
        log = self.audit(daemon)
        self.assertEqual(
            [(e["client"], e["item_id"], e["outcome"]) for e in reversed(log)],
            [("mqtt:tester", "coil", "confirmed"), ("mqtt:anonymous", "count", "refused")],
        )
        self.assertEqual(log[0]["token_id"], "mqtt:pydatacoll-fep1")


class SparkplugDaemonTests(_DaemonCase):
    """The same daemon in Sparkplug B mode."""

    def setUp(self):
        super().setUp()
        self.subscriber.close()
        self.subscriber = Subscriber(self.broker.port, ["spBv1.0/#"])
        self.addCleanup(self.subscriber.close)

    def payloads(self, kind=None):
        from pydatacoll.processing.mqtt import sparkplug_b_pb2 as pb

        found = []
        for topic, payload, _ in self.subscriber.taken():
            parts = topic.split("/")
            if kind is None or parts[2] == kind:
                found.append(
                    (parts[2], parts[4] if len(parts) > 4 else None, pb.Payload.FromString(payload))
                )
        return found

    def test_sparkplug_sequence_rebirth_and_death(self):
        from pydatacoll.processing.mqtt import sparkplug_b_pb2 as pb

        daemon = self.start_daemon(mode="sparkplug", group_id="plant", edge_node_id="fep1")
        self.configure(daemon)
        wait_until(lambda: len(self.payloads("DDATA")) >= 3, 30, "DDATA")
        kinds = [k for k, _, _ in self.payloads()]
        self.assertEqual(kinds[0], "NBIRTH")
        self.assertIn("DBIRTH", kinds)
        self.assertLess(kinds.index("DBIRTH"), kinds.index("DDATA"))
        _, _, nbirth = self.payloads("NBIRTH")[0]
        bd_seq = {m.name: m.long_value for m in nbirth.metrics}["bdSeq"]
        self.assertEqual(nbirth.seq, 0)

        def full_birth():  # the coil's term-item may come after the first DBIRTH
            for _, device, payload in self.payloads("DBIRTH"):
                names = {m.name: m for m in payload.metrics}
                if device == "m1" and set(names) == {"mt1/count", "mt1/coil"}:
                    return names
            return None

        names = wait_until(full_birth, 30, "a DBIRTH with every metric")
        self.assertEqual(names["mt1/coil"].datatype, pb.Boolean)
        aliases = {m.alias for m in names.values()}
        self.assertEqual(len(aliases), 2)
        seqs = [p.seq for k, _, p in self.payloads() if k != "NDEATH"]
        self.assertEqual(seqs[: len(seqs)], [i % 256 for i in range(len(seqs))])
        for _, _, data in self.payloads("DDATA"):
            for metric in data.metrics:
                self.assertEqual(metric.name, "")
                self.assertIn(metric.alias, aliases)

        # NCMD Node Control/Rebirth: NBIRTH (same bdSeq, seq 0) and DBIRTH again.
        before = len(self.payloads("NBIRTH"))
        command = pb.Payload()
        metric = command.metrics.add()
        metric.name, metric.datatype, metric.boolean_value = (
            "Node Control/Rebirth",
            pb.Boolean,
            True,
        )
        self.subscriber.publish("spBv1.0/plant/NCMD/fep1", command.SerializeToString())
        wait_until(lambda: len(self.payloads("NBIRTH")) > before, 30, "the rebirth")
        _, _, reborn = self.payloads("NBIRTH")[-1]
        self.assertEqual(
            ({m.name: m.long_value for m in reborn.metrics}["bdSeq"], reborn.seq), (bd_seq, 0)
        )
        kinds = [k for k, _, _ in self.payloads()]
        last_nbirth = len(kinds) - 1 - kinds[::-1].index("NBIRTH")
        wait_until(
            lambda: "DBIRTH" in [k for k, _, _ in self.payloads()][last_nbirth:], 30, "DBIRTH"
        )

        # SIGKILL: the broker sends NDEATH (the will) with the NBIRTH's bdSeq.
        daemon.process.send_signal(signal.SIGKILL)
        daemon.process.wait(10)
        wait_until(lambda: self.payloads("NDEATH"), 30, "NDEATH")
        _, _, death = self.payloads("NDEATH")[0]
        self.assertEqual([(m.name, m.long_value) for m in death.metrics], [("bdSeq", bd_seq)])
