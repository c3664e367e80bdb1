"""IEC 62351-3: TLS for IEC 104 links, both ends (our master, and the gateway's station).

Both ends authenticate each other (mutual TLS): a CA file, our certificate and key, and
optionally the SHA-256 fingerprints of the peer certificates we accept (pinning). TLS 1.2
is the minimum (TLS 1.3 preferred by OpenSSL); TLS 1.2 is limited to the ECDHE AES-GCM
suites of IEC 62351-3 Ed. 2; renegotiation is refused (``OP_NO_RENEGOTIATION``); session
resumption is OpenSSL's default (session tickets).

The master checks the server certificate itself, at depth 0, in its verify callback:
the chain (the configured CA), the pins, and that the certificate *names* the host
(subjectAltName DNS or IP). Twisted's own name check only logs a certificate without any
subjectAltName and lets the handshake succeed; here it is a refusal. Every refusal and
every failed handshake is written to the link's ``last_error`` (the device status).
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from collections.abc import Callable, Mapping
from typing import Any

import attrs
from OpenSSL import SSL, crypto
from service_identity.cryptography import extract_patterns
from service_identity.hazmat import DNS_ID, IPAddress_ID, verify_service_identity
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator, IStreamClientEndpoint
from twisted.internet.protocol import connectionDone
from twisted.internet.ssl import (
    AcceptableCiphers,
    Certificate,
    CertificateOptions,
    PrivateCertificate,
    TLSVersion,
    trustRootFromCertificates,
)
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from twisted.python.failure import Failure
from zope.interface import implementer

from pydatacoll.errors import ValidationError

#: TLS 1.2 suites of IEC 62351-3 Ed. 2 (TLS 1.3 keeps OpenSSL's AEAD suites).
CIPHERS = (
    "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256"
)
_FINGERPRINT = re.compile(r"^[0-9a-f]{64}$")
#: Readable names of the X.509 verification errors seen with a wrong or missing CA.
_X509_ERRORS = {
    2: "unable to get issuer certificate",
    9: "certificate is not yet valid",
    10: "certificate has expired",
    18: "self-signed certificate",
    19: "self-signed certificate in the chain",
    20: "unable to get local issuer certificate",
    21: "unable to verify the first certificate",
}
log = Logger()


class TlsRefused(Exception):
    """The peer's certificate was refused (chain, pin or name)."""


@attrs.frozen
class TlsSettings:
    """Where the TLS material is, and the pinned peer certificates (SHA-256, hex)."""

    ca_file: str
    cert_file: str
    key_file: str
    fingerprints: tuple[str, ...] = ()


def tls_settings(attributes: Mapping[str, Any]) -> TlsSettings | None:
    """The ``tls_ca``, ``tls_cert``, ``tls_key``, ``tls_fingerprints`` of a device or a
    gateway (None when none is given); `ValidationError` names the bad attribute.

    Only their shape is checked here: the files are read where the link runs.
    """
    names = ("tls_ca", "tls_cert", "tls_key")
    given = {name: attributes.get(name) for name in names}
    pins = attributes.get("tls_fingerprints")
    if all(v is None for v in given.values()) and pins is None:
        return None
    for name, value in given.items():
        if not isinstance(value, str) or not value.strip() or len(value) > 1024:
            raise ValidationError(
                f"{name} must be a file path (TLS needs tls_ca, tls_cert and tls_key)",
                field=name,
            )
    return TlsSettings(
        str(given["tls_ca"]),
        str(given["tls_cert"]),
        str(given["tls_key"]),
        parse_fingerprints(pins),
    )


def parse_fingerprints(value: Any) -> tuple[str, ...]:
    """SHA-256 fingerprints as 64 hex digits (colons and case ignored)."""
    if value is None:
        return ()
    if not isinstance(value, list) or len(value) > 32:
        raise ValidationError(
            "tls_fingerprints is a list of at most 32 SHA-256 fingerprints",
            field="tls_fingerprints",
        )
    result = []
    for text in value:
        clean = str(text).replace(":", "").strip().lower()
        if not _FINGERPRINT.match(clean):
            raise ValidationError(
                f"{str(text)[:100]!r} is not a SHA-256 fingerprint (64 hex digits)",
                field="tls_fingerprints",
            )
        result.append(clean)
    return tuple(result)


def fingerprint(cert: crypto.X509) -> str:
    """The SHA-256 fingerprint of a certificate (hex, lower case)."""
    return hashlib.sha256(crypto.dump_certificate(crypto.FILETYPE_ASN1, cert)).hexdigest()


def _read(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise ValidationError(f"cannot read the TLS {what} {path}: {e.strerror}") from None


def _material(settings: TlsSettings) -> tuple[Certificate, PrivateCertificate]:
    try:
        ca = Certificate.loadPEM(_read(settings.ca_file, "CA file"))
    except ValidationError:
        raise
    except Exception as e:
        raise ValidationError(f"tls_ca {settings.ca_file} is not a PEM certificate: {e}") from None
    cert = _read(settings.cert_file, "certificate")
    key = _read(settings.key_file, "key")
    try:
        own = PrivateCertificate.loadPEM(cert + b"\n" + key)
    except Exception as e:
        raise ValidationError(
            f"tls_cert/tls_key ({settings.cert_file}, {settings.key_file}) do not load: {e}"
        ) from None
    return ca, own


def _options(settings: TlsSettings, server: bool) -> CertificateOptions:
    ca, own = _material(settings)
    common: dict[str, Any] = {
        "privateKey": own.privateKey.original,
        "certificate": own.original,
        "raiseMinimumTo": TLSVersion.TLSv1_2,
        "acceptableCiphers": AcceptableCiphers.fromOpenSSLCipherString(CIPHERS),
    }
    if server:
        options = CertificateOptions(
            verify=True, caCerts=[ca.original], requireCertificate=True, **common
        )
    else:
        options = CertificateOptions(trustRoot=trustRootFromCertificates([ca]), **common)
    options.getContext().set_options(SSL.OP_NO_RENEGOTIATION)
    return options


def _refusal(err: int, ok: int, cert: crypto.X509, pins: tuple[str, ...]) -> str | None:
    if not ok:
        reason = _X509_ERRORS.get(err, f"X.509 verification error {err}")
        return f"its certificate is not trusted by the configured CA ({reason})"
    if pins and fingerprint(cert) not in pins:
        return f"its certificate (SHA-256 {fingerprint(cert)}) is not one of tls_fingerprints"
    return None


@implementer(IOpenSSLClientConnectionCreator)
class StrictClientTLS:
    """Client TLS that refuses a server whose certificate does not name ``hostname``."""

    def __init__(
        self,
        settings: TlsSettings,
        hostname: str,
        on_refused: Callable[[str], None] | None = None,
    ) -> None:
        self.settings = settings
        self.hostname = hostname
        self.on_refused = on_refused
        self._options = _options(settings, server=False)
        self._server_name: bytes | None = None
        try:
            self._service_id: Any = IPAddress_ID(str(ipaddress.ip_address(hostname)))
        except ValueError:
            self._service_id = DNS_ID(hostname)
            self._server_name = hostname.encode("idna")  # SNI for names, not addresses

    def clientConnectionForTLS(self, tlsProtocol: TLSMemoryBIOProtocol) -> SSL.Connection:  # noqa: N802
        """A connection whose verify callback is ours (chain, pins, subjectAltName)."""
        connection = self._options.clientConnectionForTLS(tlsProtocol)
        if self._server_name is not None:
            connection.set_tlsext_host_name(self._server_name)
        connection.set_verify(
            SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, self._verifier(tlsProtocol)
        )
        return connection

    def _verifier(self, tls: TLSMemoryBIOProtocol) -> Callable[..., bool]:
        def verify(conn: Any, cert: crypto.X509, err: int, depth: int, ok: int) -> bool:
            if depth != 0:
                return bool(ok)  # the chain is judged at the leaf (ok carries its result)
            try:
                reason = _refusal(err, ok, cert, self.settings.fingerprints)
                if reason is None:
                    try:
                        patterns = extract_patterns(cert.to_cryptography())
                        verify_service_identity(patterns, [self._service_id], [])
                    except Exception as e:  # no subjectAltName at all, or not ours
                        reason = f"its certificate does not name {self.hostname} ({e})"
            except Exception as e:
                reason = f"its certificate could not be checked ({e})"
            if reason is None:
                return True
            message = f"TLS: {self.hostname} refused: {reason}"
            if self.on_refused is not None:
                self.on_refused(message)
            tls.failVerification(Failure(TlsRefused(message)))
            return False

        return verify


class _ReportingTLS(TLSMemoryBIOProtocol):
    """Reports a connection lost before its handshake finished, or by a TLS alert.

    With TLS 1.3 a client's handshake is done before the server has judged the client
    certificate: a refusal then arrives as an alert just after, hence the second case.
    """

    def connectionLost(self, reason: Failure = connectionDone) -> None:  # noqa: N802
        why = self._reason or reason
        if not self._handshakeDone or why.check(SSL.Error):
            report = getattr(self.factory, "on_failure", None)
            if report is not None:
                report(why)
        super().connectionLost(reason)


class _TlsFactory(TLSMemoryBIOFactory):
    protocol = _ReportingTLS
    noisy = False
    on_failure: Callable[[Failure], None] | None = None

    def buildProtocol(self, addr: Any) -> Any:  # noqa: N802 (Twisted API)
        inner = self.wrappedFactory.buildProtocol(addr)
        if inner is None:  # refused by the wrapped factory (allowed clients, limits)
            return None
        return self.protocol(self, inner)


@implementer(IStreamClientEndpoint)
class TlsClientEndpoint:
    """TCP then client TLS to ``host:port``; failures go to ``on_error`` (status)."""

    def __init__(
        self,
        reactor: Any,
        host: str,
        port: int,
        timeout: float,
        settings: TlsSettings,
        on_error: Callable[[str], None] | None = None,
    ) -> None:
        self.tcp = TCP4ClientEndpoint(reactor, host, port, timeout=timeout)
        self.address = f"{host}:{port}"
        self.on_error = on_error
        self._refused: str | None = None
        self.creator = StrictClientTLS(settings, host, self._note_refusal)

    def _note_refusal(self, message: str) -> None:
        self._refused = message
        self._report(message)

    def _report(self, message: str) -> None:
        log.warn("{message}", message=message)
        if self.on_error is not None:
            self.on_error(message)

    def _failed(self, reason: Failure) -> None:
        if self._refused is not None:
            self._refused = None
            return  # already reported, with the certificate's reason
        self._report(f"TLS handshake with {self.address} failed: {reason.getErrorMessage()}")

    def connect(self, protocolFactory: Any) -> Any:  # noqa: N803 (Twisted API)
        """Connect and wrap; fires with the wrapped protocol (before the handshake ends)."""
        factory = _TlsFactory(self.creator, True, protocolFactory)
        factory.on_failure = self._failed
        d: Any = self.tcp.connect(factory)
        return d.addCallback(lambda tls: tls.wrappedProtocol)


def client_endpoint(
    reactor: Any,
    host: str,
    port: int,
    timeout: float,
    settings: TlsSettings | None,
    on_error: Callable[[str], None] | None = None,
) -> Any:
    """The endpoint of one IEC 104 link: plain TCP, or TCP + mutual TLS."""
    if settings is None:
        return TCP4ClientEndpoint(reactor, host, port, timeout=timeout)
    return TlsClientEndpoint(reactor, host, port, timeout, settings, on_error)


def server_factory(
    settings: TlsSettings, wrapped: Any, on_error: Callable[[str], None] | None = None
) -> TLSMemoryBIOFactory:
    """A listening factory requiring a client certificate from the CA (and the pins)."""
    options = _options(settings, server=True)
    pins = settings.fingerprints
    context = options.getContext()

    def verify(conn: Any, cert: crypto.X509, err: int, depth: int, ok: int) -> bool:
        if depth != 0:
            return bool(ok)
        reason = _refusal(err, ok, cert, pins)
        if reason is not None:
            message = f"TLS: a client was refused: {reason}"
            log.warn("{message}", message=message)
            if on_error is not None:
                on_error(message)
            return False
        return True

    context.set_verify(
        SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT | SSL.VERIFY_CLIENT_ONCE, verify
    )
    factory = _TlsFactory(options, False, wrapped)

    def failed(reason: Failure) -> None:
        message = f"TLS handshake of a client failed: {reason.getErrorMessage()}"
        log.info("{message}", message=message)
        if on_error is not None:
            on_error(message)

    factory.on_failure = failed
    return factory
