"""The northbound gateway against lib60870 (c104.Client) as the control centre's master.

Real parts end to end: a private redis-server, pymodbus' server as the field device, a
real ``twistd pydatacoll`` (role all: REST, collector and gateway), everything configured
over REST, and c104's client connecting to the gateway like a SCADA master would.
"""

import datetime
import os
import socket
import ssl
import time

import c104
from twisted.internet import defer, protocol, reactor, task, threads
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol, wrapClientTLS
from twisted.internet.ssl import Certificate, PrivateCertificate, optionsForClientTLS
from twisted.trial.unittest import TestCase

from pydatacoll.protocols.iec104 import apci
from pydatacoll.protocols.iec104.asdu import decode_asdu
from pydatacoll.testing.certs import make_pki
from pydatacoll.testing.redis import PrivateRedis, free_port
from tests.integration.iec104_peer import (
    SELECT_AND_EXECUTE,
    C104Station,
    command_io_address,
    connect_c104_client,
    feedback_io_address,
    poll_until,
)
from tests.integration.test_collector_e2e import ModbusSim, wait
from tests.integration.test_daemon import Daemon, request

NT_IV = 0x40 | 0x80


class RawLog:
    """Every ASDU c104's client received, decoded by our codec, with its arrival time."""

    def __init__(self, connection: c104.Connection) -> None:
        self.asdus = []
        self.raw = []
        connection.on_receive_raw(callable=self.on_receive_raw)

    def on_receive_raw(self, connection: c104.Connection, data: bytes) -> None:
        self.raw.append(bytes(data))
        try:
            frames, _ = apci.decode_apdus(data)
        except Exception as e:
            self.raw.append(repr(e))
            return
        for frame in frames:
            if isinstance(frame, apci.IFrame):
                self.asdus.append((time.monotonic(), decode_asdu(frame.asdu)))

    def spontaneous(self, ioa):
        return [
            (at, asdu.values[list(asdu.ioas).index(ioa)], asdu)
            for at, asdu in list(self.asdus)
            if asdu.cause == 3 and ioa in asdu.ioas
        ]


class FieldHarness:
    """pymodbus (field) -> twistd (collector, API, gateway) <- c104 (upstream master)."""

    timeout = 180

    def setUp(self):
        import tempfile

        self.workdir = tempfile.mkdtemp()
        self.redis = PrivateRedis()
        self.addCleanup(self.redis.stop)
        self.modbus = ModbusSim(free_port(), self.workdir)
        self.addCleanup(self.modbus.kill)
        self.daemon = Daemon(self.workdir, "--redis", f"redis://127.0.0.1:{self.redis.port}/0")
        self.addCleanup(self.daemon.stop)
        self.gateway_port = free_port()
        self.configure()

    def ok(self, method, path, body=None):
        status, reply = request(method, self.daemon.base + path, body)
        self.assertIn(status, (200, 201, 204), f"{method} {path}: {status} {reply}")
        return reply

    def rest(self, method, path, body=None):
        return request(method, self.daemon.base + path, body)

    def configure(self):
        self.ok(
            "POST",
            "/api/v1/devices",
            {
                "id": "m1",
                "protocol": "modbus",
                "ip": "127.0.0.1",
                "port": self.modbus.port,
                "scan_interval": 0.2,
                "timeout": 0.5,
                "reconnect_initial": 0.2,
                "reconnect_max": 1,
                "degrade_after": 0,
            },
        )
        self.ok("POST", "/api/v1/terms", {"id": "mt1", "device_id": "m1", "address": 1})
        for item in ("reg", "float", "coil"):
            self.ok("POST", "/api/v1/items", {"id": item})
        for body in (
            {"item_id": "reg", "protocol_code": 0, "code_type": "holding"},
            {
                "item_id": "float",
                "protocol_code": 2,
                "code_type": "holding",
                "data_type": "float32",
                "byte_order": "ABCD",
            },
            {"item_id": "coil", "protocol_code": 3, "code_type": "coil"},
        ):
            self.ok("POST", "/api/v1/terms/mt1/items", body)
        self.ok(
            "POST",
            "/api/v1/gateways",
            {
                "id": "scada",
                "protocol": "iec104",
                "listen": f"tcp:{self.gateway_port}:interface=127.0.0.1",
                "common_address": 7,
            },
        )
        source = {"device_id": "m1", "term_id": "mt1"}
        self.ok(
            "POST",
            "/api/v2/gateways/scada/points",
            [
                {"ioa": 100, "type_id": 35, "item_id": "reg", **source},
                {"ioa": 101, "type_id": 13, "item_id": "float", **source, "groups": [2]},
                {"ioa": 102, "type_id": 1, "item_id": "coil", "command": True, **source},
            ],
        )
        self.wait_for(
            lambda: (
                self.rest("GET", "/api/v1/gateways/scada/status")[1].get("state") == "listening"
            ),
            "the gateway listening",
        )
        self.wait_for(
            lambda: self.rest("GET", "/api/v1/devices/m1/status")[1].get("state") == "online",
            "the modbus device online",
        )

    def wait_for(self, predicate, what, timeout=60):
        """`wait`, with the daemon's log in the failure (these run on a loaded machine)."""
        try:
            return wait(predicate, timeout, what=what)
        except AssertionError as e:
            with open(self.daemon.log.name, "rb") as f:
                tail = f.read()[-4000:].decode(errors="replace")
            raise AssertionError(f"{e}\n--- daemon log ---\n{tail}") from None

    @defer.inlineCallbacks
    def connect(self):
        client, connection = yield connect_c104_client(reactor, "127.0.0.1", self.gateway_port)
        self.addCleanup(client.stop)
        return client, connection

    @defer.inlineCallbacks
    def until_good(self, connection, raw):
        """Interrogate until every point is good (the gateway has seen the device online)."""
        deadline = time.monotonic() + 15
        while True:
            raw.asdus.clear()
            self.assertTrue(connection.interrogation(common_address=7))
            yield poll_until(reactor, lambda: any(a.cause == 10 for _, a in raw.asdus))
            qualities = [q for _, a in raw.asdus if a.cause == 20 for q in a.qualities]
            if qualities and not any(qualities):
                return
            self.assertLess(time.monotonic(), deadline, f"qualities stay {qualities}")
            yield poll_until(reactor, lambda: False, timeout=0.5).addErrback(lambda f: None)

    def command_point(self, connection, ioa, type_name, mode=c104.CommandMode.DIRECT):
        station = connection.get_station(7) or connection.add_station(7)
        if station.get_point(ioa) is not None:  # c104 keeps one point per IOA: the monitor one
            station.remove_point(ioa)
        return station.add_point(
            io_address=ioa, type=getattr(c104.Type, type_name), command_mode=mode
        )

    def ctrl_log(self):
        return self.ok("GET", "/api/v1/device_ctrl/log")

    def point(self, connection, ioa):
        station = connection.get_station(7)
        return None if station is None else station.get_point(ioa)


class GatewayInteropTests(FieldHarness, TestCase):
    """c104's client as the control centre's master against the plain gateway."""

    @defer.inlineCallbacks
    def test_interrogation_and_spontaneous_changes(self):
        """GI answers the field values; a register change arrives spontaneously within 1 s."""
        client, connection = yield self.connect()
        raw = RawLog(connection)
        # The gateway knows the values once the collector has scanned them.
        self.assertTrue(connection.interrogation(common_address=7))
        yield poll_until(
            reactor,
            lambda: all(self.point(connection, ioa) is not None for ioa in (100, 101, 102)),
            timeout=10,
        )
        yield poll_until(reactor, lambda: any(a.cause == 10 for _, a in raw.asdus))
        reg, flt, coil = (self.point(connection, ioa) for ioa in (100, 101, 102))
        self.assertEqual(
            (reg.type, flt.type, coil.type),
            (c104.Type.M_ME_TE_1, c104.Type.M_ME_NC_1, c104.Type.M_SP_NA_1),
        )
        self.assertEqual(int(reg.value), 100)
        self.assertEqual(float(flt.value), 12.5)
        self.assertIs(coil.value, False)
        gi = [a for _, a in raw.asdus if a.cause == 20]
        self.assertTrue(gi and all(a.common_address == 7 for a in gi))
        self.assertTrue(all(q == 0 for a in gi for q in a.qualities), gi)
        self.assertEqual(
            [a.cause for _, a in raw.asdus if a.type_id == 100], [7, 10], "ACT_CON, ACT_TERM"
        )

        # Group 2 holds only IOA 101.
        raw.asdus.clear()
        self.assertTrue(connection.interrogation(common_address=7, qualifier=c104.Qoi.GROUP_2))
        yield poll_until(reactor, lambda: any(a.cause == 10 for _, a in raw.asdus))
        self.assertEqual(sorted(i for _, a in raw.asdus if a.cause == 22 for i in a.ioas), [101])

        # A register change on the field device: spontaneous, CP56-time-tagged, within 1 s.
        self.modbus.command("set 1 holding 0 [4321]")
        changed = time.monotonic()
        arrived = yield poll_until(
            reactor, lambda: [s for s in raw.spontaneous(100) if s[1] == 4321], timeout=5
        )
        at, value, asdu = arrived[0]
        self.assertLess(at - changed, 1.0)
        self.assertEqual(asdu.type_id, 35)  # M_ME_TE_1, as configured
        # An untimed point (M_ME_NC_1) goes spontaneously as its CP56 twin M_ME_TF_1.
        self.modbus.command("set 1 holding 2 [16712, 32768]")  # 12.5 -> 12.53125
        floats = yield poll_until(
            reactor, lambda: [s for s in raw.spontaneous(101) if s[1] != 12.5], timeout=5
        )
        self.assertEqual((floats[0][2].type_id, floats[0][1]), (36, 12.53125))
        self.assertLess(
            abs(asdu.times[0] - datetime.datetime.now(datetime.UTC)), datetime.timedelta(seconds=5)
        )
        yield poll_until(reactor, lambda: int(self.point(connection, 100).value) == 4321)

    @defer.inlineCallbacks
    def test_offline_device_not_topical_and_read_and_clock_sync(self):
        """The field device stops: its points go NT|IV spontaneously; read and clock sync."""
        client, connection = yield self.connect()
        raw = RawLog(connection)
        self.modbus.kill()
        yield poll_until(
            reactor,
            lambda: [s for s in raw.spontaneous(101) if s[2].qualities[0] & NT_IV == NT_IV],
            timeout=15,
        )
        # A read (C_RD_NA_1) answers with COT 5 and the same quality.
        point = self.point(connection, 101)
        if point is None:
            station = connection.get_station(7) or connection.add_station(7)
            point = station.add_point(io_address=101, type=c104.Type.M_ME_NC_1)
        raw.asdus.clear()
        self.assertTrue(point.read())
        replies = yield poll_until(
            reactor, lambda: [a for _, a in raw.asdus if a.cause == 5 and 101 in a.ioas]
        )
        self.assertEqual(replies[0].qualities[0] & NT_IV, NT_IV)
        # Clock synchronisation is accepted by default (the daemon does not set the clock).
        raw.asdus.clear()
        self.assertTrue(connection.clock_sync(common_address=7))
        cons = yield poll_until(reactor, lambda: [a for _, a in raw.asdus if a.type_id == 103])
        self.assertEqual((cons[0].cause, cons[0].negative), (7, False))

    @defer.inlineCallbacks
    def test_clock_sync_refused_and_unknown_address(self):
        """clock_sync false: negative ACT_CON; another common address: COT 46."""
        port = free_port()
        self.ok(
            "POST",
            "/api/v1/gateways",
            {
                "id": "strict",
                "protocol": "iec104",
                "listen": f"tcp:{port}:interface=127.0.0.1",
                "common_address": 7,
                "clock_sync": False,
            },
        )
        self.wait_for(
            lambda: (
                self.rest("GET", "/api/v1/gateways/strict/status")[1].get("state") == "listening"
            ),
            "the second gateway listening",
        )
        client, connection = yield connect_c104_client(reactor, "127.0.0.1", port)
        self.addCleanup(client.stop)
        raw = RawLog(connection)
        self.assertFalse(connection.clock_sync(common_address=7))
        cons = yield poll_until(reactor, lambda: [a for _, a in raw.asdus if a.type_id == 103])
        self.assertEqual((cons[0].cause, cons[0].negative), (7, True))
        connection.interrogation(common_address=9, wait_for_response=False)
        refused = yield poll_until(reactor, lambda: [a for _, a in raw.asdus if a.type_id == 100])
        self.assertEqual((refused[0].cause, refused[0].negative), (46, True))

    @defer.inlineCallbacks
    def test_commands_reach_the_field_device(self):
        """A command changes the pymodbus datastore and is confirmed (ACT_CON, ACT_TERM)
        only then; unmapped and read-only IOAs, and an offline device, are negative."""
        client, connection = yield self.connect()
        raw = RawLog(connection)
        yield self.until_good(connection, raw)
        single = self.command_point(connection, 102, "C_SC_NA_1")
        raw.asdus.clear()
        single.value = True
        self.assertTrue(single.transmit(cause=c104.Cot.ACTIVATION))
        self.assertEqual(self.modbus.command("get 1 coil 3 1")["values"], [True])
        yield poll_until(
            reactor, lambda: [a for _, a in raw.asdus if a.type_id == 45 and a.cause == 10]
        )
        self.assertEqual(
            [(a.cause, a.negative) for _, a in raw.asdus if a.type_id == 45],
            [(7, False), (10, False)],
        )
        entry = self.ctrl_log()[0]
        self.assertEqual(
            (entry["outcome"], entry["token_id"], entry["item_id"], entry["value"]),
            ("confirmed", "gateway:scada", "coil", 1),
        )
        self.assertTrue(entry["client"].startswith("127.0.0.1:"), entry)
        # The new value comes back up spontaneously (the collector scanned it).
        yield poll_until(
            reactor, lambda: [s for s in raw.spontaneous(102) if s[1] is True], timeout=5
        )
        # Unmapped and read-only IOAs: negative, cause 47, nothing sent down.
        before = len(self.ctrl_log())
        unknown = self.command_point(connection, 999, "C_SC_NA_1")
        unknown.value = True
        self.assertFalse(unknown.transmit(cause=c104.Cot.ACTIVATION))
        read_only = self.command_point(connection, 101, "C_SE_NC_1")
        read_only.value = 1.5
        self.assertFalse(read_only.transmit(cause=c104.Cot.ACTIVATION))
        negatives = yield poll_until(
            reactor,
            lambda: [a for _, a in raw.asdus if a.ioas and a.ioas[0] in (999, 101) and a.negative],
        )
        self.assertEqual({a.cause for a in negatives}, {47})
        self.assertEqual(len(self.ctrl_log()), before)

        # The field device goes away: commands are refused (negative ACT_CON).
        self.modbus.kill()
        yield poll_until(
            reactor,
            lambda: [s for s in raw.spontaneous(102) if s[2].qualities[0] & NT_IV == NT_IV],
            timeout=15,
        )
        raw.asdus.clear()
        single.value = False
        self.assertFalse(single.transmit(cause=c104.Cot.ACTIVATION))
        # c104 calls on_receive_raw on its own thread: transmit may return before RawLog
        # has the ACT_CON that ended it.
        yield poll_until(reactor, lambda: [a for _, a in raw.asdus if a.type_id == 45])
        self.assertEqual(
            [(a.cause, a.negative) for _, a in raw.asdus if a.type_id == 45], [(7, True)]
        )

    @defer.inlineCallbacks
    def test_select_before_operate(self):
        """SbO upstream: the select is confirmed here, the execute goes down; Modbus has
        no select-before-operate, so it goes down direct (select null in the audit)."""
        client, connection = yield self.connect()
        raw = RawLog(connection)
        yield self.until_good(connection, raw)
        point = self.command_point(
            connection, 102, "C_SC_NA_1", c104.CommandMode.SELECT_AND_EXECUTE
        )
        raw.asdus.clear()
        point.value = True
        self.assertTrue(point.transmit(cause=c104.Cot.ACTIVATION))
        self.assertEqual(self.modbus.command("get 1 coil 3 1")["values"], [True])
        commands = yield poll_until(
            reactor,
            lambda: (
                [(a.cause, a.select) for _, a in raw.asdus if a.type_id == 45][-1:] == [(10, False)]
                and [(a.cause, a.select) for _, a in raw.asdus if a.type_id == 45]
            ),
        )
        self.assertEqual(commands, [(7, True), (7, False), (10, False)])
        entry = self.ctrl_log()[0]
        self.assertEqual((entry["outcome"], entry["select"]), ("confirmed", None))


class GatewayRedundancyTests(FieldHarness, TestCase):
    """Two c104 clients of one redundancy group: one active, the other kept stopped."""

    @defer.inlineCallbacks
    def test_two_clients_one_group(self):
        port = free_port()
        self.ok(
            "POST",
            "/api/v1/gateways",
            {
                "id": "pair",
                "protocol": "iec104",
                "listen": f"tcp:{port}:interface=127.0.0.1",
                "common_address": 7,
                "redundancy_groups": [["127.0.0.1"]],
            },
        )
        self.ok(
            "POST",
            "/api/v1/gateways/pair/points",
            {"ioa": 100, "type_id": 35, "device_id": "m1", "term_id": "mt1", "item_id": "reg"},
        )
        self.wait_for(
            lambda: self.rest("GET", "/api/v1/gateways/pair/status")[1].get("state") == "listening",
            "the gateway listening",
        )
        client1, first = yield connect_c104_client(reactor, "127.0.0.1", port)
        self.addCleanup(client1.stop)
        raw1 = RawLog(first)
        client2, second = yield connect_c104_client(reactor, "127.0.0.1", port)
        self.addCleanup(client2.stop)
        raw2 = RawLog(second)
        # the second STARTDT made the second connection the active one
        self.modbus.command("set 1 holding 0 [1111]")
        yield poll_until(reactor, lambda: [s for s in raw2.spontaneous(100) if s[1] == 1111])
        self.assertEqual([s for s in raw1.spontaneous(100) if s[1] == 1111], [])
        # STOPDT on the active one: the change is kept for the group ...
        self.assertTrue(second.mute())
        self.modbus.command("set 1 holding 0 [2222]")

        def queued():
            status = self.rest("GET", "/api/v1/gateways/pair/status")[1]
            groups = status.get("groups") or [{}]
            return groups[0].get("events_queued", 0) >= 1 and groups[0]

        group = yield poll_until(reactor, queued, timeout=10)
        self.assertIsNone(group["active"])
        self.assertEqual(len(group["connections"]), 2)
        # ... and sent on the next STARTDT, here of the first connection
        self.assertTrue(first.mute())
        self.assertTrue(first.unmute())
        yield poll_until(reactor, lambda: [s for s in raw1.spontaneous(100) if s[1] == 2222])
        self.assertEqual([s for s in raw2.spontaneous(100) if s[1] == 2222], [])


class GatewayIec104FieldTests(FieldHarness, TestCase):
    """Upstream select-before-operate reaches an IEC 104 field station as its own SbO."""

    @defer.inlineCallbacks
    def test_select_before_operate_down_to_an_iec104_station(self):
        field = C104Station(common_addresses=(1,))
        field.start()
        self.addCleanup(field.stop)
        command = command_io_address("C_SC_NA_1", SELECT_AND_EXECUTE)
        self.ok(
            "POST",
            "/api/v1/devices",
            {"id": "c1", "protocol": "iec104", "ip": "127.0.0.1", "port": field.port},
        )
        self.ok("POST", "/api/v1/terms", {"id": "ct1", "device_id": "c1", "address": 1})
        self.ok("POST", "/api/v1/items", {"id": "breaker"})
        self.ok(
            "POST",
            "/api/v1/terms/ct1/items",
            {"item_id": "breaker", "protocol_code": command, "code_type": 45},
        )
        self.ok(
            "POST",
            "/api/v1/gateways/scada/points",
            {
                "ioa": 200,
                "type_id": 1,
                "device_id": "c1",
                "term_id": "ct1",
                "item_id": "breaker",
                "command": True,
            },
        )
        self.wait_for(
            lambda: self.rest("GET", "/api/v1/devices/c1/status")[1].get("state") == "online",
            "the IEC 104 field station online",
        )
        client, connection = yield self.connect()
        yield poll_until(  # the gateway reads the device states every 2 s
            reactor,
            lambda: self.rest("GET", "/api/v1/gateways/scada/status")[1].get("points") == 4,
            timeout=10,
        )
        point = self.command_point(connection, 200, "C_SC_NA_1", SELECT_AND_EXECUTE)
        point.value = True
        deadline = time.monotonic() + 15
        while not point.transmit(cause=c104.Cot.ACTIVATION):  # until the gateway sees c1 online
            self.assertLess(time.monotonic(), deadline, "the command stays negative")
            yield poll_until(reactor, lambda: False, 0.5).addErrback(lambda f: None)
        sent = [(r.select, r.value) for r in field.commands() if r.io_address == command]
        self.assertEqual(sent[-2:], [(True, 1), (False, 1)])  # select, then execute
        yield poll_until(
            reactor, lambda: field.expected(1, feedback_io_address(command)).value is True
        )
        entry = self.ctrl_log()[0]
        self.assertEqual(
            (entry["device_id"], entry["select"], entry["outcome"]), ("c1", True, "confirmed")
        )


class TlsRelay(protocol.Protocol):
    """Test code: accepts a plain connection (c104's client) and carries it over mutual TLS
    to the gateway (c104 2.2.1's own TLS client cannot verify a server certificate)."""

    def __init__(self, target_port, creator):
        self.target_port = target_port
        self.creator = creator
        self.peer = None
        self.buffer = []

    def connectionMade(self):
        self.transport.pauseProducing()
        endpoint = wrapClientTLS(
            self.creator, TCP4ClientEndpoint(reactor, "127.0.0.1", self.target_port)
        )
        d = connectProtocol(endpoint, _RelayBack(self))
        d.addCallback(self._connected)
        d.addErrback(lambda f: self.transport.loseConnection())

    def _connected(self, back):
        self.peer = back
        self.transport.resumeProducing()

    def dataReceived(self, data):
        self.peer.transport.write(data)

    def connectionLost(self, reason):
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.loseConnection()


class _RelayBack(protocol.Protocol):
    def __init__(self, front):
        self.front = front

    def dataReceived(self, data):
        self.front.transport.write(data)

    def connectionLost(self, reason):
        self.front.transport.loseConnection()


def tls_attempt(port, ca, cert=None, key=None):
    """Python ssl as a master: handshake, STARTDT; what the gateway answered, or the error."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca)
    if cert is not None:
        context.load_cert_chain(cert, key)
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
            with context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
                tls.sendall(bytes.fromhex("680407000000"))
                answer = tls.recv(6)
                return answer.hex() if answer else "closed"
    except (ssl.SSLError, OSError) as e:
        return f"error: {e}"


class GatewayTlsTests(FieldHarness, TestCase):
    """The gateway with IEC 62351-3 TLS (mutual authentication)."""

    def configure(self):
        super().configure()
        self.pki = make_pki(os.path.join(self.workdir, "pki"))
        self.tls_port = free_port()
        self.ok(
            "POST",
            "/api/v1/gateways",
            {
                "id": "secure",
                "protocol": "iec104",
                "listen": f"tcp:{self.tls_port}:interface=127.0.0.1",
                "common_address": 7,
                "tls_ca": self.pki.ca,
                "tls_cert": self.pki.server.cert,
                "tls_key": self.pki.server.key,
            },
        )
        self.ok(
            "POST",
            "/api/v1/gateways/secure/points",
            {"ioa": 101, "type_id": 13, "device_id": "m1", "term_id": "mt1", "item_id": "float"},
        )
        self.wait_for(
            lambda: (
                self.rest("GET", "/api/v1/gateways/secure/status")[1].get("state") == "listening"
            ),
            "the TLS gateway listening",
        )

    @defer.inlineCallbacks
    def test_c104_through_tls(self):
        """A plain c104 client behind our TLS-terminating relay: GI over mutual TLS."""
        ca = Certificate.loadPEM(open(self.pki.ca, "rb").read())
        own = PrivateCertificate.loadPEM(
            open(self.pki.client.cert, "rb").read() + open(self.pki.client.key, "rb").read()
        )
        creator = optionsForClientTLS("127.0.0.1", trustRoot=ca, clientCertificate=own)
        factory = protocol.Factory.forProtocol(lambda: TlsRelay(self.tls_port, creator))
        relay = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(relay.stopListening)
        client = c104.Client(tick_rate_ms=50, command_timeout_ms=5000)
        connection = client.add_connection(
            ip="127.0.0.1", port=relay.getHost().port, init=c104.Init.NONE
        )
        raw = RawLog(connection)
        client.start()
        self.addCleanup(client.stop)
        # c104 calls must not block here: the relay runs on this thread's reactor.
        yield poll_until(
            reactor,
            lambda: (
                connection.state in (c104.ConnectionState.OPEN, c104.ConnectionState.OPEN_MUTED)
            ),
            10,
        )
        if connection.state == c104.ConnectionState.OPEN_MUTED:
            # c104 2.2.1 sometimes stays muted (no STARTDT): unmute, off this thread.
            yield task.deferLater(reactor, 0.5, lambda: None)
            if connection.state == c104.ConnectionState.OPEN_MUTED:
                yield threads.deferToThread(connection.unmute)
        yield poll_until(reactor, lambda: connection.state == c104.ConnectionState.OPEN, 10)
        connection.interrogation(common_address=7, wait_for_response=False)
        gi = yield poll_until(
            reactor, lambda: [a for _, a in raw.asdus if a.cause == 20], timeout=10
        )
        self.assertEqual((list(gi[0].ioas), list(gi[0].values)), ([101], [12.5]))
        status = yield poll_until(  # the status is written every 2 s
            reactor,
            lambda: (
                (s := self.rest("GET", "/api/v1/gateways/secure/status")[1])["connections"] and s
            ),
            timeout=10,
        )
        self.assertTrue(status["tls"])
        self.assertEqual(status["connections"][0]["state"], "started")

    @defer.inlineCallbacks
    def test_refusals(self):
        """No client certificate, one from another CA: refused; the right one: STARTDT con."""
        pki = self.pki
        good = yield threads.deferToThread(
            tls_attempt, self.tls_port, pki.ca, pki.client.cert, pki.client.key
        )
        self.assertEqual(good, "68040b000000")  # STARTDT con
        none = yield threads.deferToThread(tls_attempt, self.tls_port, pki.ca)
        self.assertTrue(none.startswith("error") or none == "closed", none)
        other = yield threads.deferToThread(
            tls_attempt, self.tls_port, pki.ca, pki.client_other_ca.cert, pki.client_other_ca.key
        )
        self.assertTrue(other.startswith("error") or other == "closed", other)
        wrong_server = yield threads.deferToThread(
            tls_attempt, self.tls_port, pki.other_ca, pki.client.cert, pki.client.key
        )
        self.assertIn("CERTIFICATE_VERIFY_FAILED", wrong_server)

        def refusals():
            status = self.rest("GET", "/api/v1/gateways/secure/status")[1]
            return status if status.get("tls_refusals", 0) >= 2 else None

        status = yield poll_until(reactor, refusals, timeout=10)
        self.assertIn("TLS", status["last_tls_error"])

    @defer.inlineCallbacks
    def test_pinned_masters_only(self):
        """tls_fingerprints: a certificate of the right CA but not pinned is refused."""
        self.ok(
            "PUT", "/api/v1/gateways/secure", {"tls_fingerprints": [self.pki.server.fingerprint]}
        )

        def refused():
            answer = tls_attempt(
                self.tls_port, self.pki.ca, self.pki.client.cert, self.pki.client.key
            )
            return answer.startswith("error") or answer == "closed"

        deadline = time.monotonic() + 15
        while not (yield threads.deferToThread(refused)):
            self.assertLess(time.monotonic(), deadline, "the pinned gateway still accepts")
            yield poll_until(reactor, lambda: False, 0.3).addErrback(lambda f: None)
