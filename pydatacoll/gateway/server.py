"""One gateway: its listening port, its IEC 104 connections and its image of the points.

`GatewayServer` is the `IStationDatabase` of its outstation connections: it keeps the
latest sample of each point it serves (newer samples win), turns changes into
spontaneous events for its redundancy groups, and passes commands to its `CommandPath`.
"""

from __future__ import annotations

import datetime
import functools
import json
from collections.abc import Iterable
from typing import Any

import attrs
from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.endpoints import serverFromString
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from zope.interface import implementer

from pydatacoll.gateway.commands import CommandPath
from pydatacoll.gateway.model import UNTIMED, Gateway, GatewayPoint
from pydatacoll.gateway.redundancy import RedundancyGroup
from pydatacoll.interfaces import IStationDatabase
from pydatacoll.protocols import get_protocol
from pydatacoll.protocols.iec104.station import (
    NOT_TOPICAL,
    TIMED_TWIN,
    CommandAnswer,
    CommandRequest,
    Event,
    Iec104Outstation,
    PointValue,
    StationPoint,
    monitor_value,
    quality_bits,
)
from pydatacoll.protocols.iec104.tls import server_factory

#: Connections one gateway accepts at once; more are closed at once.
MAX_CONNECTIONS = 16
DEFAULT_LISTEN = "tcp:2404"
DEFAULT_EVENT_QUEUE = 10000
DEFAULT_COMMAND_TIMEOUT = 10.0


class _StationFactory(Factory):
    noisy = False

    def __init__(self, server: GatewayServer) -> None:
        self.server = server

    def buildProtocol(self, addr: Any) -> Iec104Outstation | None:  # noqa: N802 (Twisted API)
        return self.server.build_connection(addr)


@implementer(IStationDatabase)
class GatewayServer(Service):
    """One gateway: its listening port, its connections, its points and their image."""

    log = Logger()

    def __init__(
        self,
        gateway: Gateway,
        points: Iterable[GatewayPoint],
        reactor: Any,
        commands: CommandPath | None = None,
    ) -> None:
        self.gateway = gateway
        self.reactor = reactor
        self.commands = commands
        self.common_address = gateway.common_address or 1
        self.connections: list[Iec104Outstation] = []
        #: Redundancy groups by key; a configured group keeps its events between connections.
        self.groups: dict[str, RedundancyGroup] = {}
        self._conn_group: dict[Iec104Outstation, RedundancyGroup] = {}
        self.port: Any = None
        self.refused_connections = 0
        self.clock_syncs = 0
        self.tls_refusals = 0
        self.last_tls_error: str | None = None
        self._samples: dict[int, tuple[Any, int, float | None]] = {}
        self._online: dict[str, bool] = {}
        self._points: dict[int, GatewayPoint] = {}
        self._station: dict[int, StationPoint] = {}
        #: New points waiting for their latest value before they are served.
        self._held: dict[int, StationPoint] = {}
        self._by_source: dict[tuple[str, str, str], list[int]] = {}
        self._sent: dict[int, PointValue] = {}
        self._sbo: dict[str, bool] = {}  # device id -> its protocol can select first
        self._devices: frozenset[str] = frozenset()
        self.update_points(points)

    @property
    def key(self) -> str:
        """What restarts the gateway when it changes: every gateway field."""
        return json.dumps(self.gateway.to_json(), sort_keys=True, default=str)

    @property
    def devices(self) -> frozenset[str]:
        """The devices whose points this gateway serves."""
        return self._devices

    # --- service ---------------------------------------------------------------------

    @defer.inlineCallbacks
    def start_listening(self) -> Any:
        """Listen on the gateway's endpoint; fails when the endpoint cannot listen."""
        endpoint = serverFromString(self.reactor, self.gateway.listen or DEFAULT_LISTEN)
        factory: Any = _StationFactory(self)
        tls = self.gateway.tls
        if tls is not None:  # IEC 62351-3: mutual TLS, the masters' certificates checked
            factory = server_factory(tls, factory, self._tls_error)
        self.port = yield endpoint.listen(factory)
        address = self.port.getHost()
        self.log.info(
            "gateway {id} listening on {address} (CA {ca}, {n} points)",
            id=self.gateway.id,
            address=f"{getattr(address, 'host', '')}:{getattr(address, 'port', '')}",
            ca=self.common_address,
            n=len(self._points),
        )

    def _tls_error(self, message: str) -> None:
        self.tls_refusals += 1
        self.last_tls_error = message

    def stopService(self) -> defer.Deferred[None]:
        super().stopService()
        for conn in list(self.connections):
            conn.close("the gateway stops")
        port, self.port = self.port, None
        if port is None:
            return defer.succeed(None)
        return defer.maybeDeferred(port.stopListening)

    def build_connection(self, addr: Any) -> Iec104Outstation | None:
        """A protocol for a new upstream connection, or None (refused)."""
        host = getattr(addr, "host", str(addr))
        peer = f"{host}:{getattr(addr, 'port', '')}"
        allowed = self.gateway.allowed_clients
        if allowed and host not in allowed:
            self.refused_connections += 1
            self.log.warn(
                "gateway {id}: connection from {peer} refused (not in allowed_clients)",
                id=self.gateway.id,
                peer=peer,
            )
            return None
        if len(self.connections) >= MAX_CONNECTIONS or not self.running:
            self.refused_connections += 1
            self.log.warn(
                "gateway {id}: connection from {peer} refused ({n} connections)",
                id=self.gateway.id,
                peer=peer,
                n=len(self.connections),
            )
            return None
        group = self._group_of(host, peer)
        conn = Iec104Outstation(
            self.reactor,
            self,
            params=self.gateway.link_params(),
            peer=peer,
            name=f"gateway {self.gateway.id} {peer}",
            on_lost=self._lost,
            events=group.queue,
            on_transfer=group.transfer,
        )
        group.connections.append(conn)
        self._conn_group[conn] = group
        self.connections.append(conn)
        self.log.info("gateway {id}: master {peer} connected", id=self.gateway.id, peer=peer)
        return conn

    def _group_of(self, host: str, peer: str) -> RedundancyGroup:
        """The configured group of ``host``, or a group of this connection alone."""
        size = self.gateway.event_queue or DEFAULT_EVENT_QUEUE
        for index, members in enumerate(self.gateway.redundancy_groups or ()):
            if host in members:
                key = f"group {index + 1}"
                if key not in self.groups:
                    self.groups[key] = RedundancyGroup(key, size, configured=True)
                return self.groups[key]
        key = f"connection {peer}"
        self.groups[key] = RedundancyGroup(key, size, configured=False)
        return self.groups[key]

    def _lost(self, conn: Iec104Outstation) -> None:
        group = self._conn_group.pop(conn, None)
        if group is not None:
            group.lost(conn)
            if not group.configured:
                self.groups.pop(group.key, None)
        if conn in self.connections:
            self.connections.remove(conn)
        self.log.info(
            "gateway {id}: master {peer} disconnected", id=self.gateway.id, peer=conn.peer
        )

    # --- points and values -----------------------------------------------------------

    def update_points(
        self, points: Iterable[GatewayPoint], *, hold_new: bool = False
    ) -> frozenset[str]:
        """Take a new point list (connections stay up); the devices newly referenced.

        ``hold_new``: a point not served before is left out of the station's points
        (interrogations) until `serve_held`, once its latest value has been read: never
        served as a placeholder meanwhile. Its samples are kept from now on.
        """
        before = self.devices
        self._points = {p.ioa: p for p in points}
        self._devices = frozenset(p.device_id for p in self._points.values())
        station = {
            p.ioa: StationPoint(
                p.ioa,
                p.type_id,
                p.groups or (),
                p.counter_group or 0,
                p.accepted_command,
            )
            for p in self._points.values()
        }
        held = {ioa for ioa in station if ioa not in self._station} if hold_new else set()
        self._held = {ioa: station.pop(ioa) for ioa in held}
        self._station = station
        by_source: dict[tuple[str, str, str], list[int]] = {}
        for p in self._points.values():
            by_source.setdefault(p.point, []).append(p.ioa)
        self._by_source = by_source
        for ioa in set(self._samples) - set(self._points):
            del self._samples[ioa]
        for ioa in set(self._sent) - set(self._points):
            del self._sent[ioa]
        return self.devices - before

    def serve_held(self) -> None:
        """Serve the points `update_points` held back (their values have been read)."""
        self._station.update(self._held)
        self._held = {}

    def load(
        self,
        values: dict[str, dict[str, Any]],
        states: dict[str, str | None],
        protocols: dict[str, str | None] | None = None,
    ) -> None:
        """Values, device states and protocols read from Redis (newer samples win).

        A device already known whose state changed sends its points (as at a state read).
        """
        for device_id, name in (protocols or {}).items():
            protocol = get_protocol(name) if name else None
            self._sbo[device_id] = protocol is not None and protocol.select_before_operate
        for device_id, state in states.items():
            if device_id not in self._online:
                self._online[device_id] = state == "online"
        self.device_states(states)
        for point in self._points.values():
            sample = values.get(point.device_id, {}).get(f"{point.term_id}:{point.item_id}")
            if isinstance(sample, dict):
                self._take(point.ioa, sample)
        for ioa in self._points:
            self._sent.setdefault(ioa, self.current(ioa))

    def _take(self, ioa: int, sample: dict[str, Any]) -> bool:
        """Put a sample (a stored/published JSON sample) in the image; False if older."""
        when = _seconds(sample.get("source_time")) or _seconds(sample.get("receive_time"))
        old = self._samples.get(ioa)
        if old is not None and old[2] is not None and when is not None and when < old[2]:
            return False
        quality = sample.get("quality", "good")
        flags = sample.get("flags")
        if quality == "good" and not flags:
            bits = 0  # the usual case, without a call
        else:
            bits = quality_bits(str(quality), flags if isinstance(flags, list) else ())
        self._samples[ioa] = (sample.get("value"), bits, when)
        return True

    def samples(self, messages: list[dict[str, Any]]) -> None:
        """New samples of a device (a DEVICE_SAMPLES batch): changes become events."""
        by_source = self._by_source
        changed: list[int] = []
        for message in messages:
            ioas = by_source.get(
                (
                    str(message.get("device_id")),
                    str(message.get("term_id")),
                    str(message.get("item_id")),
                )
            )
            if ioas is None:
                continue
            for ioa in ioas:
                if self._take(ioa, message):
                    changed.append(ioa)
        if changed:
            self._emit(changed)

    def device_states(self, states: dict[str, str | None]) -> None:
        """The devices' states: a device going offline (or back) changes its points' quality."""
        changed_devices = set()
        for device_id, state in states.items():
            online = state == "online"
            if self._online.get(device_id) != online:
                self._online[device_id] = online
                changed_devices.add(device_id)
        if changed_devices:
            self._emit([p.ioa for p in self._points.values() if p.device_id in changed_devices])

    def _emit(self, ioas: list[int]) -> None:
        """Events for the points whose value or quality differs from what was last sent."""
        events = []
        now = self.reactor.seconds()
        for ioa in ioas:
            current = self.current(ioa)
            last = self._sent.get(ioa)
            if last is not None and last.value == current.value and last.quality == current.quality:
                continue
            self._sent[ioa] = current
            type_id = self._points[ioa].type_id
            timed = TIMED_TWIN.get(type_id, type_id)
            events.append(Event(ioa, timed, current.value, current.quality, current.time or now))
        if events:
            for group in list(self.groups.values()):
                group.post(events)

    # --- IStationDatabase -------------------------------------------------------------

    def station_points(self) -> dict[int, StationPoint]:
        """The points by IOA."""
        return self._station

    def current(self, ioa: int) -> PointValue:
        """A point's value, its quality (NT|IV while its device is not online) and time."""
        point = self._points[ioa]
        sample = self._samples.get(ioa)
        if sample is None:
            value, bits = monitor_value(UNTIMED[point.type_id], 0)
            return PointValue(value, bits | NOT_TOPICAL, None)
        raw, bits, when = sample
        value, more = monitor_value(UNTIMED[point.type_id], raw)
        bits |= more
        if not self._online.get(point.device_id, False):
            bits |= NOT_TOPICAL
        return PointValue(value, bits, when)

    def clock_sync(self, when: Any, peer: str) -> bool:
        """Accepted unless the gateway's ``clock_sync`` is false (the clock is not set)."""
        if self.gateway.clock_sync is False:
            return False
        self.clock_syncs += 1
        return True

    def can_command(self, point: StationPoint) -> str | None:
        """Why a command for ``point`` cannot run now (None: it can)."""
        if self.commands is None:
            return "commands are not served by this process"
        source = self._points[point.ioa]
        if not self._online.get(source.device_id, False):
            return f"device {source.device_id} is not online"
        return None

    def execute(self, request: CommandRequest) -> defer.Deferred[CommandAnswer]:
        """Pass a command to the field device through the device_ctrl round trip."""
        if self.commands is None:
            return defer.succeed(CommandAnswer(False, "commands are not served"))
        point = self._points[request.point.ioa]
        if request.selected and not self._sbo.get(point.device_id, False):
            # The field protocol cannot select first (Modbus): the execute goes down direct.
            request = attrs.evolve(request, selected=False)
        return self.commands.execute(
            self.gateway.id,
            point,
            request,
            self.gateway.command_timeout or DEFAULT_COMMAND_TIMEOUT,
        )

    def status(self) -> dict[str, Any]:
        """The gateway's connections and counters."""
        return {
            "gateway_id": self.gateway.id,
            "state": "listening" if self.port is not None else "stopped",
            "points": len(self._points),
            "tls": self.gateway.tls is not None,
            "refused_connections": self.refused_connections,
            "tls_refusals": self.tls_refusals,
            "last_tls_error": self.last_tls_error,
            "clock_syncs": self.clock_syncs,
            "groups": [
                {
                    "group": g.key,
                    "active": g.active.peer if g.active is not None else None,
                    "connections": [c.peer for c in g.connections],
                    "events_queued": len(g.queue),
                    "events_dropped": g.queue.dropped,
                }
                for g in self.groups.values()
            ],
            "connections": [
                {
                    "peer": c.peer,
                    "state": c.state.value,
                    "events_queued": len(c.events),
                    "events_sent": c.events_sent,
                    "events_dropped": c.events.dropped,
                    "commands_received": c.commands_received,
                    **c.counters.snapshot(),
                }
                for c in self.connections
            ],
        }


@functools.lru_cache(maxsize=256)
def _parse_time(text: str) -> float | None:
    try:
        return datetime.datetime.fromisoformat(text).timestamp()
    except ValueError:
        return None


def _seconds(text: Any) -> float | None:
    """Epoch seconds of an ISO time text (a batch's samples share theirs: cached)."""
    if not isinstance(text, str):
        return None
    return _parse_time(text)
