"""The ``mqtt`` processor: samples, device states and alarms to an MQTT broker.

Wiring only (docs/mqtt.rst has the whole story): the selection of points, the outbox
(store-and-forward), the link (paho on the reactor), the encoder of the mode (JSON or
Sparkplug B), and commands from MQTT through the same path as ``device_ctrl``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import (
    CancelledError,
    Deferred,
    DeferredList,
    inlineCallbacks,
    succeed,
)
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from pydatacoll.interfaces import ICommander, IProcessor
from pydatacoll.model import Sample
from pydatacoll.processing.loading import RetryingLoad
from pydatacoll.processing.mqtt.codec import (
    JsonEncoder,
    Message,
    sample_record,
    subscription_filter,
)
from pydatacoll.processing.mqtt.commands import MqttCommands, json_command_body
from pydatacoll.processing.mqtt.link import LinkSettings, MqttLink
from pydatacoll.processing.mqtt.options import MqttOptions
from pydatacoll.processing.mqtt.outbox import Outbox
from pydatacoll.processing.spool import Spool
from pydatacoll.retry import Backoff
from pydatacoll.store import keys
from pydatacoll.store.points import config_version, device_states, latest_values, load_points
from pydatacoll.store.redis import when_connected

NAME = "mqtt"
Point = tuple[str, str, str]


@implementer(IProcessor)
class MqttProcessor(Service):
    """See the module docstring; built by `pydatacoll.plugins.mqtt.MqttFactory`."""

    name = NAME  # type: ignore[assignment]  # Service declares it None
    log = Logger()

    def __init__(
        self,
        reactor: Any,
        options: MqttOptions,
        data_dir: str,
        redis: Any = None,
        settings: Any = None,
        commander: Callable[[], ICommander] | None = None,
    ) -> None:
        """``commander`` builds the `ICommander` commands from MQTT go through (None:
        commands are answered "refused: commands are off")."""
        self.reactor = reactor
        self.options = options
        self.redis = redis
        self.settings = settings
        self.data_dir = data_dir
        if options.mode == "sparkplug":
            from pydatacoll.processing.mqtt.sparkplug import SparkplugEncoder

            self.encoder: Any = SparkplugEncoder(options, data_dir, self)
        else:
            self.encoder = JsonEncoder(options)
        spool = Spool(
            os.path.join(data_dir, "spool"),
            max_bytes=int(options.spool_max_mb * 1024 * 1024),
            max_samples=options.spool_max_records,
            segment_bytes=int(options.spool_segment_mb * 1024 * 1024),
            fsync=options.spool_fsync == "append",
        )
        self.outbox = Outbox(
            reactor,
            spool,
            self._send_record,
            queue_records=options.queue_records,
            window=options.inflight,
        )
        self.link = MqttLink(
            reactor,
            LinkSettings(
                host=options.host,
                port=options.port,
                client_id=options.client_id,
                keepalive=options.keepalive,
                connect_timeout=options.connect_timeout,
                username=options.url_username,
                password=options.url_password,
                tls=options.tls,
                ca_file=options.ca_file,
                cert_file=options.cert_file,
                key_file=options.key_file,
                inflight=options.inflight,
                retry_initial=options.retry_initial,
                retry_max=options.retry_max,
            ),
            on_connected=self._connected,
            on_lost=self._lost,
            on_message=self._message,
            will=self.encoder.will,
        )
        #: Configured points -> their term-item fields (None until loaded).
        self.points: dict[Point, Mapping[str, Any]] | None = None
        self.values: dict[Point, tuple[Any, str, float]] = {}
        self.states: dict[str, str] = {}
        self._selected: dict[Point, bool] = {}
        self._topics: dict[str, Point] = {}
        self._load: RetryingLoad | None = None
        #: The configuration version the points were read at (or followed to).
        self._version: int | None = None
        self._status_loop = LoopingCall(self._poll_states)
        self._status_loop.clock = reactor
        self._alarms: Any = None
        self.counters = {
            "received": 0,
            "selected": 0,
            "commands": 0,
            "commands_refused": 0,
            "commands_ignored": 0,
        }
        #: Commands from MQTT (refused until `_start_commands` connects them).
        self.commands = MqttCommands(reactor, commander, options, self.counters, self.outbox.put)

    @classmethod
    def from_context(cls, context: Any) -> MqttProcessor:
        """Build it from a `pydatacoll.processing.ProcessorContext`."""
        options = MqttOptions.parse(context.options)
        os.makedirs(context.data_dir, exist_ok=True)
        for name in ("ca_file", "cert_file", "key_file"):
            path = getattr(options, name)
            if path and not os.path.isfile(path):
                from pydatacoll.errors import ConfigError

                raise ConfigError(f"plugin:mqtt.{name}", f"no such file: {path}")
        return cls(
            context.reactor,
            options,
            context.data_dir,
            context.redis,
            context.settings,
            commander=context.commander,
        )

    # -- IProcessor -----------------------------------------------------------------

    def samples_received(self, samples: Iterable[Sample]) -> None:
        """Selected samples become records in the outbox; never blocks."""
        records = []
        selected = self._selected
        received = 0
        values = self.values
        for sample in samples:
            received += 1
            point = sample.point
            chosen = selected.get(point)
            if chosen is None:
                chosen = self._select(point)
            if not chosen:
                continue
            record = sample_record(sample)
            values[point] = (sample.value, sample.quality, record[6])
            records.append(record)
        self.counters["received"] += received
        self.counters["selected"] += len(records)
        if records and self.running:
            self.outbox.put(records)

    def config_changed(self, change: Mapping[str, Any]) -> None:
        """Follow term-item (and device/term deletion) changes."""
        if self.points is None:
            return
        version = change.get("version")
        if isinstance(version, int) and self._version is not None:
            if version != self._version + 1:
                self._version = None  # a change was missed: the next poll reloads
            else:
                self._version = version
        entity, op = change.get("entity"), change.get("op")
        touched: set[str] = set()
        if entity == "term_item" and op in ("add", "fresh"):
            data = change.get("data") or {}
            old = change.get("old") or {}
            if old.get("device_id") is not None:
                self._forget(
                    (str(old["device_id"]), str(old.get("term_id")), str(old.get("item_id")))
                )
                touched.add(str(old["device_id"]))
            if data.get("device_id") is not None:
                point = (str(data["device_id"]), str(data.get("term_id")), str(data.get("item_id")))
                self.points[point] = data
                touched.add(point[0])
        removed = []
        if entity == "term_item" and op == "del":
            removed.append(change.get("old") or {})
        if op == "del":
            removed += list((change.get("cascade") or {}).get("term_items") or ())
        for body in removed:
            if isinstance(body, dict) and body.get("device_id") is not None:
                self._forget(
                    (str(body["device_id"]), str(body.get("term_id")), str(body.get("item_id")))
                )
                touched.add(str(body["device_id"]))
        self._selected.clear()
        self._rebuild_topics()
        for device_id in touched:
            self.encoder.points_changed(device_id)

    def status(self) -> dict[str, Any]:
        """Link, outbox and counters, with every kind of drop."""
        outbox = self.outbox
        return {
            "name": NAME,
            "state": "running" if self.running else "stopped",
            "mode": self.options.mode,
            "broker": self.options.describe,
            "client_id": self.options.client_id,
            "connected": self.link.connected,
            "last_error": self.link.last_error,
            "link": dict(self.link.counters),
            "outbox": outbox.mode,
            "waiting": outbox.waiting,
            "in_flight": outbox.in_flight,
            "spool_records": outbox.spool.unread_samples,
            "spool_bytes": outbox.spool.unread_bytes,
            "spool_peak": outbox.spool_peak,
            **outbox.counters,
            **self.counters,
            "config_loaded": self.points is not None,
            "points": len(self.points or {}),
            "dropped": dict(outbox.dropped, spool_corrupt=outbox.spool.corrupt_lines),
            "dropped_total": sum(outbox.dropped.values()) + outbox.spool.corrupt_lines,
            **self.encoder.status(),
        }

    # -- selection ------------------------------------------------------------------

    def _select(self, point: Point) -> bool:
        options = self.options
        chosen = True
        if options.devices and point[0] not in options.devices:
            chosen = False
        else:
            fields = (self.points or {}).get(point)
            flag = None if fields is None else fields.get("mqtt")
            if options.points == "flagged":
                chosen = flag is True
            else:
                chosen = flag is not False
        self._selected[point] = chosen
        return chosen

    def selected_points(self, device_id: str) -> list[Point]:
        """The configured points of a device that are published, in a stable order."""
        return sorted(p for p in (self.points or {}) if p[0] == device_id and self._select(p))

    def _forget(self, point: Point) -> None:
        if self.points is not None:
            self.points.pop(point, None)
        self.values.pop(point, None)

    def _rebuild_topics(self) -> None:
        if isinstance(self.encoder, JsonEncoder) or self.options.commands:
            topic = JsonEncoder(self.options).point_topic
            self._topics = {topic(p): p for p in (self.points or {}) if self._select(p)}

    # -- service --------------------------------------------------------------------

    def startService(self) -> None:  # noqa: N802 (Twisted API)
        """Open the outbox, connect, load the points, follow states and alarms."""
        super().startService()
        self.outbox.start()
        self.link.startService()
        if self.redis is not None:
            self._load_config()
            self._status_loop.start(self.options.status_interval, now=False)
        if hasattr(self.redis, "when_ready"):  # a real pool: subscriptions can be made
            from pydatacoll.store.subscriber import Subscriber

            if self.options.mode == "json":
                self._alarms = Subscriber(
                    self.reactor,
                    lambda: self.redis.address,
                    self._alarm_event,
                    channels=[keys.ALARM],
                    ready=self.redis.when_ready,
                    name="mqtt alarm subscription",
                )
                self._alarms.startService()
            if self.options.commands:
                self._start_commands()

    @inlineCallbacks
    def stopService(self) -> Any:  # noqa: N802 (Twisted API)
        """Say goodbye (offline / NDEATH), disconnect, put what waits on disk."""
        if not self.running:
            return
        super().stopService()
        if self._status_loop.running:
            self._status_loop.stop()
        if self._load is not None:
            self._load.stop()
        if self._alarms is not None:
            yield self._alarms.stopService()
        yield self.commands.stop()
        if self.link.connected:
            goodbyes = [self._publish(m) for m in self.encoder.session_stop()]
            done = DeferredList(goodbyes, consumeErrors=True)
            timeout = self.reactor.callLater(2.0, done.cancel)
            try:
                yield done
            except CancelledError:
                pass
            if timeout.active():
                timeout.cancel()
        self.outbox.link_down("stopping")
        yield self.link.stopService()
        yield self.outbox.stop()

    # -- link events ----------------------------------------------------------------

    def _publish(self, message: Message) -> Deferred[None]:
        return self.link.publish(message.topic, message.payload, message.qos, message.retain)

    def _send_record(self, record: tuple[Any, ...], historical: bool) -> Deferred[None]:
        messages = self.encoder.encode(record, historical)
        if not messages:
            return succeed(None)
        if len(messages) == 1:
            return self._publish(messages[0])
        sent = [self._publish(m) for m in messages]
        d = DeferredList(sent, fireOnOneErrback=True, consumeErrors=True)
        return d.addCallback(lambda _: None)

    def _connected(self) -> None:
        for message in self.encoder.session_start():
            self._publish(message).addErrback(lambda f: None)  # a loss is handled by _lost
        for topic in self.encoder.subscriptions():
            self._subscribe(topic)
        if self.options.commands and isinstance(self.encoder, JsonEncoder):
            topic = subscription_filter(self.options.topic, self.options.collector) + "/set"
            self._subscribe(topic)
        self.outbox.link_up()

    def _subscribe(self, topic: str) -> None:
        def failed(failure: Failure) -> None:
            self.log.warn(
                "mqtt: cannot subscribe {topic}: {e}", topic=topic, e=failure.getErrorMessage()
            )

        self.link.subscribe(topic, 1).addErrback(failed)

    def _lost(self) -> None:
        self.outbox.link_down()
        self.encoder.session_lost()

    def _message(self, topic: str, payload: bytes) -> None:
        if self.encoder.handle(topic, payload):
            return
        if topic.endswith("/set"):
            self._json_command(topic[: -len("/set")], payload)

    def rebirth(self) -> None:
        """Publish the session messages again (Sparkplug NCMD Node Control/Rebirth)."""
        if not self.link.connected:
            return
        for message in self.encoder.session_start():
            self._publish(message).addErrback(lambda f: None)

    # -- configuration and states ---------------------------------------------------

    def _load_config(self) -> None:
        """Read every point (and the latest values) from Redis; retried until it works."""
        if self._load is not None:
            self._load.stop()
        self._load = RetryingLoad(
            self.reactor,
            lambda: when_connected(self.redis),
            self._read_points,
            Backoff(self.options.retry_initial, self.options.retry_max),
            "mqtt: the point configuration",
        )
        self._load.start()

    @inlineCallbacks
    def _read_points(self) -> Any:
        version = yield config_version(self.redis)
        points = yield load_points(self.redis)
        values: dict[Point, tuple[Any, str, float]] = {}
        for device_id in sorted({p[0] for p in points}):
            latest = yield latest_values(self.redis, device_id)
            for (term_id, item_id), sample in latest.items():
                point = (device_id, term_id, item_id)
                if point in points:
                    values[point] = _value_of(sample)
        for point, value in values.items():
            self.values.setdefault(point, value)
        self.points = points
        self._version = version if version is not None else 0
        self._selected.clear()
        self._rebuild_topics()
        self.log.info("mqtt: {n} points loaded", n=len(points))
        self.encoder.points_loaded()

    @inlineCallbacks
    def _poll_states(self) -> Any:
        """Publish each selected device's state when it changes (the collector writes
        it every 2 s); Sparkplug: DDEATH / DBIRTH."""
        if self.points is None:
            return
        try:
            version = yield config_version(self.redis)
        except Exception:
            version = None
        if (
            version is not None
            and version != self._version
            and not (self._load is not None and self._load.pending)
        ):
            # Changed without messages we could follow (v2 batches): read it all again.
            self.log.info("mqtt: configuration version {v}: reloading the points", v=version)
            self._load_config()
        devices = sorted({p[0] for p in self.points})
        if self.options.devices:
            devices = [d for d in devices if d in self.options.devices]
        try:
            states = yield device_states(self.redis, devices)
        except Exception as e:
            self.log.debug("mqtt: device states not read: {e}", e=e)
            return
        now = self.reactor.seconds()
        records = []
        for device_id, state in states.items():
            if self.states.get(device_id) != state:
                self.states[device_id] = state
                records.append(("s", device_id, state, now))
        if records and self.running:
            self.outbox.put(records)

    def _alarm_event(self, channel: str, text: str) -> None:
        try:
            event = json.loads(text)
            point = (str(event["device_id"]), str(event["term_id"]), str(event["item_id"]))
        except (ValueError, KeyError, TypeError):
            self.log.warn("mqtt: not an alarm event: {text}", text=text[:200])
            return
        if self.options.devices and point[0] not in self.options.devices:
            return
        if self.running:
            self.outbox.put([("a", text)])

    # -- commands -------------------------------------------------------------------

    def _start_commands(self) -> None:
        self.commands.start()

    def _json_command(self, point_topic: str, payload: bytes) -> None:
        point = self._topics.get(point_topic)
        if point is None:
            self.counters["commands_ignored"] += 1
            self.log.warn("mqtt: command on {topic}: no such published point", topic=point_topic)
            return
        self.command(point, json_command_body(payload))

    def command(self, point: Point, body: dict[str, Any]) -> Deferred[Any]:
        """Run one command from MQTT through the device_ctrl path; publish its outcome."""
        return self.commands.command(point, body)


def _value_of(sample: Mapping[str, Any]) -> tuple[Any, str, float]:
    from datetime import datetime

    text = sample.get("source_time") or sample.get("receive_time")
    try:
        time = datetime.fromisoformat(text).timestamp() if isinstance(text, str) else 0.0
    except ValueError:
        time = 0.0
    return (sample.get("value"), str(sample.get("quality", "good")), time)
