"""IEC 62351-3: our master against lib60870's TLS server (c104.Server + TransportSecurity).

Certificates are made by the test (`pydatacoll.testing.certs`), with a subjectAltName of
IP 127.0.0.1 (c104's own sample certificates have none).
"""

import tempfile

import c104
from twisted.internet import defer, reactor
from twisted.trial.unittest import SynchronousTestCase, TestCase

from pydatacoll.errors import ValidationError
from pydatacoll.model import Device
from pydatacoll.protocols.iec104.client import Iec104Client, StationParams
from pydatacoll.protocols.iec104.link import LinkParams, LinkState
from pydatacoll.protocols.iec104.runtime import check_device, parse_device
from pydatacoll.protocols.iec104.tls import StrictClientTLS, TlsSettings, parse_fingerprints
from pydatacoll.testing.certs import make_pki
from pydatacoll.testing.redis import free_port
from tests.integration.iec104_peer import poll_until


class TlsServer:
    """A c104 TLS server with one float point (IOA 1001 = 12.5) on CA 1."""

    def __init__(self, ca, cert, key, version=None):
        self.port = free_port()
        tls = c104.TransportSecurity(validate=True, only_known=False)
        tls.set_certificate(cert=cert, key=key)
        tls.set_ca_certificate(cert=ca)
        if version is not None:
            tls.set_version(min=version, max=version)
        self.server = c104.Server(ip="127.0.0.1", port=self.port, transport_security=tls)
        station = self.server.add_station(common_address=1)
        point = station.add_point(io_address=1001, type=c104.Type.M_ME_NC_1, report_ms=0)
        point.value = 12.5
        self.server.start()

    def stop(self):
        self.server.stop()


class MasterTlsTests(TestCase):
    timeout = 60

    def setUp(self):
        self.pki = make_pki(tempfile.mkdtemp())

    def server(self, ca=None, issued=None, version=None):
        issued = issued or self.pki.server
        server = TlsServer(ca or self.pki.ca, issued.cert, issued.key, version)
        self.addCleanup(server.stop)
        return server

    def master(self, server, ca=None, client=None, pins=()):
        client = client or self.pki.client
        settings = TlsSettings(ca or self.pki.ca, client.cert, client.key, tuple(pins))
        self.values = {}
        master = Iec104Client(
            reactor,
            [("127.0.0.1", server.port)],
            link=LinkParams(t0=2),
            station=StationParams(common_addresses=(1,), clock_sync_on_start=False),
            on_data=lambda asdu: self.values.update(zip(asdu.ioas, asdu.values, strict=True)),
            retry=lambda attempt: 0.5,
            tls=settings,
        )
        master.startService()
        self.addCleanup(master.stopService)
        return master

    @defer.inlineCallbacks
    def refused(self, master, text):
        error = yield poll_until(
            reactor, lambda: master.counters.last_error if master.counters.last_error else None
        )
        self.assertIn(text, error)
        self.assertNotEqual(master.state, LinkState.STARTED)
        self.assertEqual(self.values, {})

    @defer.inlineCallbacks
    def test_values_arrive_over_tls_1_3_and_1_2(self):
        for version in (c104.TlsVersion.TLS_1_3, c104.TlsVersion.TLS_1_2):
            server = self.server(version=version)
            master = self.master(server)
            yield poll_until(reactor, lambda: self.values.get(1001) == 12.5, timeout=10)
            self.assertEqual(master.state, LinkState.STARTED)
            transport = master.protocol.transport
            self.assertTrue(transport.getPeerCertificate() is not None)
            yield master.stopService()

    @defer.inlineCallbacks
    def test_pinned_fingerprint_accepted(self):
        server = self.server()
        self.master(server, pins=[self.pki.server.fingerprint])
        yield poll_until(reactor, lambda: self.values.get(1001) == 12.5, timeout=10)

    def test_server_from_another_ca_refused(self):
        server = self.server(ca=self.pki.other_ca, issued=self.pki.server_other_ca)
        return self.refused(self.master(server), "not trusted by the configured CA")

    def test_server_without_subject_alt_name_refused(self):
        """Twisted alone would only log this one and go on."""
        server = self.server(issued=self.pki.server_no_san)
        return self.refused(self.master(server), "does not name 127.0.0.1")

    def test_server_naming_another_host_refused(self):
        server = self.server(issued=self.pki.server_wrong_name)
        return self.refused(self.master(server), "does not name 127.0.0.1")

    def test_pin_mismatch_refused(self):
        server = self.server()
        master = self.master(server, pins=[self.pki.client.fingerprint])
        return self.refused(master, "is not one of tls_fingerprints")

    def test_our_certificate_from_another_ca_refused_by_the_server(self):
        server = self.server()
        master = self.master(server, client=self.pki.client_other_ca)
        return self.refused(master, "TLS handshake with 127.0.0.1")


class TlsSettingsTests(SynchronousTestCase):
    def test_device_attributes(self):
        """Shape checked at the REST boundary, naming the attribute; files read at run time."""
        base = {"id": "1", "protocol": "iec104", "ip": "127.0.0.1"}
        device = Device.from_json(
            {**base, "tls_ca": "/ca.pem", "tls_cert": "/c.pem", "tls_key": "/c.key"}
        )
        self.assertEqual(parse_device(device).tls, TlsSettings("/ca.pem", "/c.pem", "/c.key"))
        self.assertIsNone(parse_device(Device.from_json(base)).tls)
        for extra, field in (
            ({"tls_ca": "/ca.pem"}, "tls_cert"),
            ({"tls_ca": "/ca.pem", "tls_cert": "/c.pem", "tls_key": 5}, "tls_key"),
            (
                {
                    "tls_ca": "/a",
                    "tls_cert": "/b",
                    "tls_key": "/c",
                    "tls_fingerprints": ["12:34"],
                },
                "tls_fingerprints",
            ),
        ):
            with self.assertRaises(ValidationError) as caught:
                check_device(Device.from_json({**base, **extra}))
            self.assertEqual(caught.exception.field, field)

    def test_fingerprints_normalised(self):
        colons = ":".join(["AB"] * 32)
        self.assertEqual(parse_fingerprints([colons]), ("ab" * 32,))

    def test_missing_files_are_a_clear_error(self):
        with self.assertRaises(ValidationError) as caught:
            StrictClientTLS(TlsSettings("/nowhere/ca.pem", "/c.pem", "/c.key"), "127.0.0.1")
        self.assertIn("/nowhere/ca.pem", caught.exception.message)
