"""One MQTT connection, paho-mqtt 2.x driven by the Twisted reactor (docs/mqtt.rst).

paho runs here without any thread of its own: its socket is added to the reactor as a
reader (``loop_read``) and, while paho has bytes to send, as a writer (``loop_write``,
through paho's ``on_socket_register_write`` hooks); ``loop_misc`` (keep-alive) runs every
second. Only the connection attempt leaves the reactor: paho's ``reconnect`` resolves
the host, connects TCP and does the TLS handshake with blocking calls, so it runs in a
one-thread pool of its own; the socket is non-blocking before paho hands it over.

Each attempt uses a new paho ``Client``: what was in flight on a lost connection is
failed (`LinkLost`) and the caller (the `pydatacoll.processing.mqtt.outbox.Outbox`)
sends it again, so paho's own resend queue is never used and no message is sent twice
by two parties. Attempts are retried with jittered exponential backoff.
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Callable
from typing import Any

import attrs
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from twisted.application.service import Service
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IReadDescriptor, IWriteDescriptor
from twisted.internet.task import LoopingCall
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadable import isInIOThread
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from pydatacoll.retry import Backoff


class LinkLost(Exception):
    """The connection was lost (or never up) before the broker confirmed a message."""


@attrs.frozen
class Will:
    """The last will the broker publishes if the link dies without a DISCONNECT."""

    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = False


@attrs.frozen
class LinkSettings:
    """Where and how to connect."""

    host: str
    port: int
    client_id: str
    keepalive: int = 30
    connect_timeout: float = 10.0
    username: str = ""
    password: str = attrs.field(default="", repr=False)
    tls: bool = False
    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""
    inflight: int = 100
    retry_initial: float = 0.5
    retry_max: float = 30.0


@implementer(IReadDescriptor, IWriteDescriptor)
class _Socket:
    """paho's socket as the reactor sees it."""

    def __init__(self, link: MqttLink, client: paho.Client, sock: Any) -> None:
        self.link = link
        self.client = client
        self.sock = sock
        self._fileno = sock.fileno()

    def fileno(self) -> int:
        return self._fileno

    def doRead(self) -> None:  # noqa: N802 (Twisted API)
        self.client.loop_read()
        # TLS: bytes already decrypted into the SSL buffer make no fd event.
        pending = getattr(self.sock, "pending", None)
        while pending is not None and self.client.socket() is self.sock and pending() > 0:
            self.client.loop_read()

    def doWrite(self) -> None:  # noqa: N802 (Twisted API)
        self.client.loop_write()

    def connectionLost(self, reason: Failure) -> None:  # noqa: N802 (Twisted API)
        self.link._socket_failed(self.client, reason)

    def logPrefix(self) -> str:  # noqa: N802 (Twisted API)
        return "mqtt"


class MqttLink(Service):
    """Keeps one MQTT connection up; publishes and subscribes on it.

    ``on_connected()`` runs each time the broker accepts a connection (subscribe and
    publish births there), ``on_lost()`` each time it is lost, ``on_message(topic,
    payload)`` for each message received. ``will()`` gives the last will of the next
    attempt (Sparkplug's changes with bdSeq).
    """

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        settings: LinkSettings,
        *,
        on_connected: Callable[[], None] = lambda: None,
        on_lost: Callable[[], None] = lambda: None,
        on_message: Callable[[str, bytes], None] = lambda topic, payload: None,
        will: Callable[[], Will | None] = lambda: None,
    ) -> None:
        self.reactor = reactor
        self.settings = settings
        self.on_connected = on_connected
        self.on_lost = on_lost
        self.on_message = on_message
        self.will = will
        self.connected = False
        self.last_error: str | None = None
        self.counters = {"connects": 0, "attempts": 0, "losses": 0, "published": 0, "acked": 0}
        self._client: paho.Client | None = None
        self._socket: _Socket | None = None
        self._acks: dict[int, Deferred[None]] = {}
        self._subacks: dict[int, Deferred[None]] = {}
        #: Delays between attempts; ``attempts`` counts the failures since the last connect.
        self._backoff = Backoff(settings.retry_initial, settings.retry_max, jitter=0.2)
        self._retry: Any = None
        self._connect_timer: Any = None
        self._misc = LoopingCall(self._loop_misc)
        self._misc.clock = reactor
        self._pool = ThreadPool(1, 1, name="mqtt-connect")
        self._attempt: Deferred[Any] | None = None

    # -- service --------------------------------------------------------------------

    def startService(self) -> None:  # noqa: N802 (Twisted API)
        """Start connecting."""
        super().startService()
        self._pool.start()
        self._misc.start(1.0, now=False)
        self._connect()

    def stopService(self) -> Deferred[None]:  # noqa: N802 (Twisted API)
        """Send DISCONNECT (the broker then drops the will) and close; fires when closed."""
        if not self.running:
            return succeed(None)
        super().stopService()
        if self._misc.running:
            self._misc.stop()
        for timer in (self._retry, self._connect_timer):
            if timer is not None and timer.active():
                timer.cancel()
        client = self._client
        if client is not None and self.connected:
            client.disconnect()
            client.loop_write()  # the DISCONNECT packet, at once (best effort)
        self._abandon(client, "stopped")
        attempt = self._attempt
        d = succeed(None) if attempt is None else attempt.addBoth(lambda _: None)

        def stop_pool(_: Any) -> None:
            self._pool.stop()

        return d.addCallback(stop_pool)

    # -- public ---------------------------------------------------------------------

    def publish(self, topic: str, payload: bytes, qos: int, retain: bool) -> Deferred[None]:
        """Fires once the broker has it (PUBACK for QoS 1, written for QoS 0);
        fails with `LinkLost` if the connection is lost first (or is down now)."""
        client = self._client
        if client is None or not self.connected:
            return fail(LinkLost("not connected"))
        d: Deferred[None] = Deferred()
        info = client.publish(topic, payload, qos=qos, retain=retain)
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            return fail(LinkLost(f"publish refused: {paho.error_string(info.rc)}"))
        if info.is_published():  # QoS 0 written at once
            return succeed(None)
        self._acks[info.mid] = d
        self.counters["published"] += 1
        return d

    def subscribe(self, topic: str, qos: int = 1) -> Deferred[None]:
        """Fires when the broker confirms the subscription."""
        client = self._client
        if client is None or not self.connected:
            return fail(LinkLost("not connected"))
        rc, mid = client.subscribe(topic, qos=qos)
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS or mid is None:
            return fail(LinkLost(f"subscribe refused: {paho.error_string(rc)}"))
        d: Deferred[None] = Deferred()
        self._subacks[mid] = d
        return d

    @property
    def in_flight(self) -> int:
        """Messages sent and not yet confirmed."""
        return len(self._acks)

    # -- connecting -----------------------------------------------------------------

    def _new_client(self) -> paho.Client:
        s = self.settings
        client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=s.client_id,
            clean_session=True,
            protocol=paho.MQTTv311,
            reconnect_on_failure=False,
        )
        # The outbox bounds what is in flight (``inflight``); paho's own limit would make
        # it scan every message in flight on each PUBACK.
        client.max_inflight_messages_set(0)
        client.max_queued_messages_set(0)
        if s.username:
            client.username_pw_set(s.username, s.password or None)
        if s.tls:
            context = ssl.create_default_context(cafile=s.ca_file or None)
            if s.cert_file:
                context.load_cert_chain(s.cert_file, s.key_file or None)
            client.tls_set_context(context)
        will = self.will()
        if will is not None:
            client.will_set(will.topic, will.payload, qos=will.qos, retain=will.retain)
        client.connect_timeout = s.connect_timeout
        # paho holds a non-reentrant lock while it runs these: what they trigger (a
        # Deferred chain that publishes or disconnects) runs on the next reactor turn.
        client.on_connect = self._later(self._on_connect)
        client.on_disconnect = self._later(self._on_disconnect)
        client.on_publish = self._later(self._on_publish)
        client.on_subscribe = self._later(self._on_subscribe)
        client.on_message = self._later(self._on_message)
        client.on_socket_open = self._on_socket_open
        client.on_socket_close = self._on_socket_close
        client.on_socket_register_write = self._on_register_write
        client.on_socket_unregister_write = self._on_unregister_write
        client.connect_async(s.host, s.port, keepalive=s.keepalive)
        return client

    def _connect(self) -> None:
        self._retry = None
        if not self.running or self._attempt is not None:
            return
        try:
            client = self._new_client()
        except Exception as e:  # a bad CA/cert file: logged, retried (it may be fixed)
            self.log.failure("mqtt: cannot set up the client")
            self._failed(None, f"{type(e).__name__}: {e}")
            return
        self._client = client
        self.counters["attempts"] += 1
        # Blocking DNS, TCP connect and TLS handshake: in the connect thread.
        self._attempt = deferToThreadPool(self.reactor, self._pool, client.reconnect)
        self._attempt.addCallback(self._attempted, client)
        self._attempt.addErrback(self._attempt_failed, client)
        self._connect_timer = self.reactor.callLater(
            self.settings.connect_timeout * 2 + 1, self._connack_timeout, client
        )

    def _attempted(self, rc: Any, client: paho.Client) -> None:
        self._attempt = None
        if client is not self._client:  # stopped or abandoned meanwhile
            sock = client.socket()
            if sock is not None:
                sock.close()
            return
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            self._failed(client, f"connect: {paho.error_string(rc)}")

    def _attempt_failed(self, failure: Failure, client: paho.Client) -> None:
        self._attempt = None
        if client is self._client:
            self._failed(client, failure.getErrorMessage() or failure.type.__name__)

    def _connack_timeout(self, client: paho.Client) -> None:
        self._connect_timer = None
        if client is self._client and not self.connected:
            self._failed(client, "no CONNACK in time")

    def _failed(self, client: paho.Client | None, reason: str) -> None:
        """An attempt or a connection ended: clean up, tell, and retry after a backoff."""
        was_connected = self.connected
        self._abandon(client, reason)
        if was_connected:
            self.counters["losses"] += 1
            self.log.warn(
                "mqtt: connection to {broker} lost: {reason}",
                broker=self._describe(),
                reason=reason,
            )
            try:
                self.on_lost()
            except Exception:
                self.log.failure("mqtt: on_lost failed")
        elif self._backoff.attempts == 0:
            self.log.warn(
                "mqtt: cannot connect to {broker}: {reason}", broker=self._describe(), reason=reason
            )
        self.last_error = reason
        delay = self._backoff.next_delay()
        if self.running and self._retry is None:
            self._retry = self.reactor.callLater(delay, self._connect)

    def _abandon(self, client: paho.Client | None, reason: str) -> None:
        """Forget ``client``: its socket leaves the reactor and closes, waiters fail."""
        if client is not None and client is self._client:
            self._client = None
            self.connected = False
            if self._connect_timer is not None and self._connect_timer.active():
                self._connect_timer.cancel()
            self._connect_timer = None
            sock = client.socket()
            self._drop_socket()
            if sock is not None and self._attempt is None:
                sock.close()
        acks, self._acks = self._acks, {}
        subacks, self._subacks = self._subacks, {}
        for d in [*acks.values(), *subacks.values()]:
            d.errback(LinkLost(reason))

    def _drop_socket(self) -> None:
        wrapper, self._socket = self._socket, None
        if wrapper is not None:
            self.reactor.removeReader(wrapper)
            self.reactor.removeWriter(wrapper)

    def _socket_failed(self, client: paho.Client, reason: Failure) -> None:
        if client is self._client:
            self._failed(client, reason.getErrorMessage())

    def _describe(self) -> str:
        return f"{self.settings.host}:{self.settings.port}"

    # -- paho callbacks (reactor thread, except the socket ones during an attempt) --

    def _later(self, function: Callable[..., None]) -> Callable[..., None]:
        def call(*args: Any) -> None:
            self.reactor.callLater(0, function, *args)

        return call

    def _in_reactor(self, function: Callable[..., None], *args: Any) -> None:
        if isInIOThread():
            function(*args)
        else:
            self.reactor.callFromThread(function, *args)

    def _on_socket_open(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        self._in_reactor(self._socket_opened, client, sock)

    def _socket_opened(self, client: paho.Client, sock: Any) -> None:
        if client is not self._client:
            return
        self._drop_socket()
        try:  # small PUBLISH packets must not wait for the broker's delayed ACK (Nagle)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except (OSError, AttributeError):
            pass
        self._socket = _Socket(self, client, sock)
        self.reactor.addReader(self._socket)
        if client.want_write():
            self.reactor.addWriter(self._socket)

    def _on_socket_close(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        self._in_reactor(self._socket_closed, client)

    def _socket_closed(self, client: paho.Client) -> None:
        if client is self._client:
            self._drop_socket()

    def _on_register_write(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        self._in_reactor(self._want_write, client, True)

    def _on_unregister_write(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        self._in_reactor(self._want_write, client, False)

    def _want_write(self, client: paho.Client, wanted: bool) -> None:
        if client is not self._client or self._socket is None:
            return
        if wanted:
            self.reactor.addWriter(self._socket)
        else:
            self.reactor.removeWriter(self._socket)

    def _on_connect(
        self, client: paho.Client, userdata: Any, flags: Any, reason: Any, properties: Any
    ) -> None:
        if client is not self._client:
            return
        if reason.is_failure:
            self._failed(client, f"the broker refused the connection: {reason}")
            return
        if self._connect_timer is not None and self._connect_timer.active():
            self._connect_timer.cancel()
        self._connect_timer = None
        self.connected = True
        self._backoff.reset()
        self.last_error = None
        self.counters["connects"] += 1
        self.log.info(
            "mqtt: connected to {broker} as {client_id}",
            broker=self._describe(),
            client_id=self.settings.client_id,
        )
        try:
            self.on_connected()
        except Exception:
            self.log.failure("mqtt: on_connected failed")

    def _on_disconnect(
        self, client: paho.Client, userdata: Any, flags: Any, reason: Any, properties: Any
    ) -> None:
        if client is self._client:
            self._failed(client, str(reason))

    def _on_publish(
        self, client: paho.Client, userdata: Any, mid: int, reason: Any, properties: Any
    ) -> None:
        d = self._acks.pop(mid, None) if client is self._client else None
        if d is not None:
            self.counters["acked"] += 1
            d.callback(None)

    def _on_subscribe(
        self, client: paho.Client, userdata: Any, mid: int, reasons: Any, properties: Any
    ) -> None:
        d = self._subacks.pop(mid, None) if client is self._client else None
        if d is None:
            return
        if any(getattr(r, "is_failure", False) for r in reasons):
            d.errback(LinkLost(f"subscription refused: {reasons}"))
        else:
            d.callback(None)

    def _on_message(self, client: paho.Client, userdata: Any, message: Any) -> None:
        if client is not self._client:
            return
        try:
            self.on_message(message.topic, bytes(message.payload))
        except Exception:
            self.log.failure("mqtt: handling a message on {topic}", topic=message.topic)

    def _loop_misc(self) -> None:
        client = self._client
        if client is None or self._attempt is not None:
            return
        try:
            client.loop_misc()
        except Exception:
            self.log.failure("mqtt: keep-alive")
