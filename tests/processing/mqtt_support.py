"""A paho subscriber for the MQTT tests (paho's own network thread, the test's side)."""

import threading
import time
import uuid

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion


class Subscriber:
    """Collects (topic, payload, retain) of every message on ``topics``.

    ``session``: a fixed client id with clean_session false, so that the broker (with
    persistence) keeps the QoS 1 messages published while this subscriber is away.
    """

    def __init__(self, port, topics, session=None):
        self.messages = []
        self.lock = threading.Lock()
        self.subscribed = threading.Event()
        self.topics = list(topics)
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=session or f"test-{uuid.uuid4().hex[:8]}",
            clean_session=session is None,
        )
        self.client.on_connect = self._connected
        self.client.on_message = self._message
        self.client.on_subscribe = lambda *a: self.subscribed.set()
        self.client.reconnect_delay_set(0.2, 1)
        self.client.connect("127.0.0.1", port, keepalive=10)
        self.client.loop_start()
        if not self.subscribed.wait(15):
            raise AssertionError("the test subscriber did not subscribe")

    def _connected(self, client, userdata, flags, reason, properties):
        client.subscribe([(t, 1) for t in self.topics])

    def _message(self, client, userdata, message):
        with self.lock:
            self.messages.append((message.topic, bytes(message.payload), message.retain))

    def taken(self):
        with self.lock:
            return list(self.messages)

    def publish(self, topic, payload, qos=1, retain=False):
        self.client.publish(topic, payload, qos=qos, retain=retain).wait_for_publish(10)

    def close(self):
        self.client.disconnect()
        self.client.loop_stop()


def wait_until(predicate, timeout=30.0, what="condition"):
    """Poll (blocking) until ``predicate()`` is truthy; for tests outside the reactor."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)
