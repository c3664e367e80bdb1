"""Prometheus metrics of one PyDataColl process (``GET /metrics``).

`ProcessMetrics` owns a `CollectorRegistry` of its own (never the global one). Most
figures are not counted twice: at scrape time, on the reactor thread, they are read from
the counters the process already keeps (each device's status and link counters, the
ingest path's counters, the plugins' states, the event stream's clients). Only what
nothing else measured is observed here: HTTP request durations by route template, the
ingest path's Redis round trips and batch sizes, and device_ctrl outcomes.

Where each family is served (see docs/operations.rst):

- a process running the collector (role ``all``, or ``collector`` with
  ``[collector] metrics_endpoint``) serves the device, ingest and plugin families from
  memory;
- an API-only process (role ``api``) serves the device and plugin families from the
  status the collectors write to Redis every 2 s (``HS:DEVICE_STATUS:*``,
  ``HS:PLUGIN_STATUS``), and no ingest family (that lives in the collector process);
- HTTP, stream and command families come from the process serving the API.

Labels are bounded: ``device_id`` and ``protocol`` (one series per configured device),
``plugin`` (installed plugins), ``route`` (the route *template*, never the raw path),
``method``, ``code``, ``outcome``, ``event`` (fixed sets).
"""

from __future__ import annotations

import hmac
import re
from collections.abc import Iterator
from datetime import datetime
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector
from twisted.internet.defer import inlineCallbacks
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

from pydatacoll.store.live import LiveStore

__all__ = ["CONTENT_TYPE_LATEST", "ProcessMetrics"]

#: Routes whose requests are not timed: a stream lasts as long as its client stays.
UNTIMED_ROUTES = frozenset({"/api/v1/stream"})
_PLACEHOLDER = re.compile(r"<(?:[^:>]+:)?(\w+)>")


class ProcessMetrics:
    """The registry of one process and the sources it reads at scrape time."""

    log = Logger()

    def __init__(self, clock: Any) -> None:
        self.clock = clock
        # No *_created series: they would double the series of every counter.
        disable_created_metrics()
        self.registry = CollectorRegistry(auto_describe=False)
        self.http = Histogram(
            "pydatacoll_http_request_duration_seconds",
            "REST requests by method, route template and status code.",
            ["method", "route", "code"],
            registry=self.registry,
        )
        self.commands = Counter(
            "pydatacoll_commands",
            "device_ctrl requests by outcome (as in the audit log).",
            ["outcome"],
            registry=self.registry,
        )
        self.redis_round_trip = Histogram(
            "pydatacoll_ingest_redis_round_trip_seconds",
            "Round trip of one ingest batch (one script call) to Redis.",
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "pydatacoll_ingest_batch_samples",
            "Samples per ingest batch written to Redis.",
            buckets=(1, 5, 10, 50, 100, 250, 500, 1000, 2000),
            registry=self.registry,
        )
        ProcessCollector(registry=self.registry)
        self.manager: Any = None
        self.processors: Any = None
        self.hub: Any = None
        self.config_cache: Any = None
        self.live: LiveStore | None = None
        #: Statuses read from Redis for the scrape in progress (API-only processes).
        self._stored: tuple[dict[str, Any], dict[str, Any]] = ({}, {})
        self.registry.register(_Snapshot(self))

    # -- sources ------------------------------------------------------------------------
    def watch_collector(self, manager: Any, processors: Any) -> None:
        """Read the devices, the ingest path and the plugins of this process."""
        self.manager = manager
        self.processors = processors
        manager.ingest.observe_batch = self._observe_batch

    def watch_stream(self, hub: Any) -> None:
        """Read the event stream's clients."""
        self.hub = hub

    def watch_config_cache(self, cache: Any) -> None:
        """Read the API's configuration cache (`pydatacoll.store.config_cache`)."""
        self.config_cache = cache

    def watch_redis(self, redis: Any) -> None:
        """Read device and plugin states from Redis (a process without the collector)."""
        self.live = LiveStore(redis)

    def _observe_batch(self, samples: int, seconds: float) -> None:
        self.batch_size.observe(samples)
        self.redis_round_trip.observe(seconds)

    def time_requests(self, site: Any, app: Any) -> None:
        """Time every request of ``site`` by the Klein route template it matched."""
        base = site.requestFactory
        metrics = self

        class _TimedRequest(base):  # type: ignore[misc, valid-type]
            def process(self) -> None:
                started = metrics.clock.seconds()
                self.notifyFinish().addBoth(metrics._request_done, self, started)
                super().process()

        site.requestFactory = _TimedRequest

    def _request_done(self, result: Any, request: Any, started: float) -> None:
        route = route_template(request)
        if route in UNTIMED_ROUTES:
            return
        method = request.method.decode("ascii", "replace")
        if method not in ("GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH"):
            method = "other"
        elapsed = max(0.0, self.clock.seconds() - started)
        self.http.labels(method, route, str(request.code)).observe(elapsed)

    # -- exposition -----------------------------------------------------------------------
    @inlineCallbacks
    def exposition(self) -> Any:
        """The text exposition, built on the reactor thread (Redis read first if needed)."""
        if self.manager is None and self.live is not None:
            device_ids = yield self.live.device_ids()
            statuses = yield self.live.statuses(device_ids)
            plugins = yield self.live.plugin_statuses()
            self._stored = (statuses, plugins)
        try:
            body: bytes = generate_latest(self.registry)
        finally:
            self._stored = ({}, {})
        return body


#: route_template's answers by (method, path): a path always matches the same route, so
#: the URL map is matched once per path, not twice per request. At most
#: ``_TEMPLATES_KEPT`` paths are kept; past it the oldest is dropped (and matched again).
_TEMPLATES: dict[tuple[Any, Any], str] = {}
_TEMPLATES_KEPT = 4096


def route_template(request: Any) -> str:
    """The Klein route a request matched, as ``/api/v1/devices/{device_id}``; "unmatched"."""
    key = (request.method, request.path)
    found = _TEMPLATES.get(key)
    if found is None:
        found = _route_template(request)
        if len(_TEMPLATES) >= _TEMPLATES_KEPT:
            del _TEMPLATES[next(iter(_TEMPLATES))]
        _TEMPLATES[key] = found
    return found


def _route_template(request: Any) -> str:
    from klein.interfaces import IKleinRequest

    try:
        mapper = IKleinRequest(request).mapper
        rule, arguments = mapper.match(return_rule=True)
    except Exception:
        return "unmatched"

    def placeholder(match: re.Match[str]) -> str:
        # <any(devices,terms):collection> takes a value of a fixed set: name it, as the
        # OpenAPI paths do; every other placeholder stays a placeholder.
        if match.group(0).startswith("<any("):
            return str(arguments.get(match.group(1), "{" + match.group(1) + "}"))
        return "{" + match.group(1) + "}"

    return _PLACEHOLDER.sub(placeholder, rule.rule)


def _seconds(text: Any) -> float | None:
    if not isinstance(text, str):
        return None
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        return None


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def device_figures(status: dict[str, Any]) -> dict[str, float | None]:
    """The figures of one device status (both protocols' counters, see the docs)."""
    counters = status.get("counters") or {}
    link = counters.get("link") if isinstance(counters.get("link"), dict) else None
    if link is not None:  # Modbus: LinkCounters
        errors = sum(_number(link.get(n)) or 0 for n in ("timeouts", "exceptions", "frame_errors"))
        round_trip = _number(link.get("rtt_last"))
        reconnects = _number(link.get("reconnects"))
    else:  # IEC 104: LinkCounters and the client's reconnects
        errors = sum(_number(counters.get(n)) or 0 for n in ("timeouts", "sequence_errors"))
        round_trip = None
        reconnects = _number(counters.get("reconnects"))
    return {
        "up": 1.0 if status.get("state") == "online" else 0.0,
        "round_trip": round_trip,
        "samples": _number(status.get("points_updated")),
        "errors": float(errors),
        "disconnections": reconnects,
        "last_value": _seconds(status.get("last_value_time")),
    }


class _Snapshot(Collector):
    """The families read from the process's own counters (or Redis) at scrape time."""

    def __init__(self, metrics: ProcessMetrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        metrics = self.metrics
        statuses: dict[str, dict[str, Any]] = {}
        plugins: dict[str, dict[str, Any]] = {}
        if metrics.manager is not None:
            manager = metrics.manager
            for device_id in sorted(manager.running_devices):
                status = manager.device_status(device_id)
                if status is not None:
                    statuses[device_id] = status
            yield from _ingest_families(manager.ingest.status())
            yield from _priority_families(manager.priority.status())
            if metrics.processors is not None:
                plugins = metrics.processors.status()
        elif metrics.live is not None:
            statuses, plugins = metrics._stored
        yield from _device_families(statuses)
        if metrics.manager is not None or metrics.live is not None:
            yield from _plugin_families(plugins)
        if metrics.hub is not None:
            yield from _stream_families(metrics.hub)
        if metrics.config_cache is not None:
            yield from _config_cache_families(metrics.config_cache)


def _device_families(statuses: dict[str, dict[str, Any]]) -> Iterator[Metric]:
    labels = ["device_id", "protocol"]
    up = GaugeMetricFamily(
        "pydatacoll_device_up", "1 while the device's link is online, else 0.", labels=labels
    )
    rtt = GaugeMetricFamily(
        "pydatacoll_device_round_trip_seconds",
        "Last request/response round trip (Modbus).",
        labels=labels,
    )
    samples = CounterMetricFamily(
        "pydatacoll_device_samples", "Samples read from the device.", labels=labels
    )
    errors = CounterMetricFamily(
        "pydatacoll_device_read_errors",
        "Timeouts, exception responses and bad frames (Modbus); timeouts and sequence "
        "errors (IEC 104).",
        labels=labels,
    )
    disconnections = CounterMetricFamily(
        "pydatacoll_device_disconnections", "Reconnections of the device's link.", labels=labels
    )
    last_value = GaugeMetricFamily(
        "pydatacoll_device_last_value_timestamp_seconds",
        "When the device last delivered a value (Unix time).",
        labels=labels,
    )
    for device_id, status in sorted(statuses.items()):
        values = [device_id, str(status.get("protocol") or "unknown")]
        figures = device_figures(status)
        up.add_metric(values, figures["up"] or 0.0)
        for family, name in (
            (rtt, "round_trip"),
            (samples, "samples"),
            (errors, "errors"),
            (disconnections, "disconnections"),
            (last_value, "last_value"),
        ):
            value = figures[name]
            if value is not None:
                family.add_metric(values, value)
    yield from (up, rtt, samples, errors, disconnections, last_value)


def _ingest_families(status: dict[str, Any]) -> Iterator[Metric]:
    yield GaugeMetricFamily(
        "pydatacoll_ingest_buffered_samples",
        "Samples waiting to be written to Redis.",
        value=status["buffered"],
    )
    yield GaugeMetricFamily(
        "pydatacoll_ingest_buffer_limit_samples",
        "Most samples that may wait ([collector] buffer_samples); past it the oldest drop.",
        value=status["buffer_limit"],
    )
    yield GaugeMetricFamily(
        "pydatacoll_ingest_congested",
        "1 while the devices' input is paused because Redis is slower than they are.",
        value=1 if status["congested"] else 0,
    )
    for name, key, doc in (
        ("pydatacoll_ingest_samples_written", "written", "Samples written to Redis."),
        ("pydatacoll_ingest_samples_skipped", "skipped", "Samples of points deleted meanwhile."),
        ("pydatacoll_ingest_samples_dropped", "dropped", "Samples dropped: buffer full."),
        ("pydatacoll_ingest_write_failures", "write_failures", "Failed batch writes."),
        ("pydatacoll_ingest_pauses", "pauses", "Times the devices' input was paused."),
    ):
        yield CounterMetricFamily(name, doc, value=status[key])


def _priority_families(status: dict[str, Any]) -> Iterator[Metric]:
    """Commands ahead of data (`pydatacoll.control.priority`)."""
    for name, key, doc in (
        (
            "pydatacoll_command_holds",
            "holds",
            "Times a command in flight held the data back ([collector] command_hold).",
        ),
        (
            "pydatacoll_command_holds_capped",
            "capped",
            "Holds ended by their bound while the command was still in flight.",
        ),
        (
            "pydatacoll_command_unheld",
            "unheld",
            "Commands that held nothing: holds had taken half the time lately.",
        ),
        ("pydatacoll_command_held_seconds", "held_seconds", "Seconds the data was held."),
    ):
        yield CounterMetricFamily(name, doc, value=status[key])


def _plugin_families(plugins: dict[str, dict[str, Any]]) -> Iterator[Metric]:
    enabled = GaugeMetricFamily(
        "pydatacoll_plugin_enabled", "1 if [plugins] enabled names the plugin.", labels=["plugin"]
    )
    running = GaugeMetricFamily(
        "pydatacoll_plugin_up", "1 while the processor plugin runs, else 0.", labels=["plugin"]
    )
    errors = CounterMetricFamily(
        "pydatacoll_plugin_errors", "Errors of the processor plugin.", labels=["plugin"]
    )
    dropped = CounterMetricFamily(
        "pydatacoll_plugin_emit_dropped",
        "Samples the plugin emitted past its rate bound (dropped).",
        labels=["plugin"],
    )
    for name, body in sorted(plugins.items()):
        enabled.add_metric([name], 1.0 if body.get("enabled") else 0.0)
        running.add_metric([name], 1.0 if body.get("state") == "running" else 0.0)
        errors.add_metric([name], _number(body.get("errors")) or 0.0)
        dropped.add_metric([name], _number(body.get("emit_dropped")) or 0.0)
    yield from (enabled, running, errors, dropped)


def _config_cache_families(cache: Any) -> Iterator[Metric]:
    reads = CounterMetricFamily(
        "pydatacoll_config_cache_reads",
        "Entity reads (GET /api/v1/{devices,terms,items}/{id}) by where they were answered "
        "from: memory, or redis (a miss, or the cache not provably current).",
        labels=["answer"],
    )
    reads.add_metric(["memory"], cache.hits)
    reads.add_metric(["redis"], cache.misses)
    yield reads
    yield GaugeMetricFamily(
        "pydatacoll_config_cache_entries", "Entities held in memory.", value=len(cache.entries)
    )
    yield CounterMetricFamily(
        "pydatacoll_config_cache_dropped",
        "Entries dropped at [api] config_cache (the least recently used, or the oldest "
        "of 1000 absent ones; read from Redis again).",
        value=cache.dropped,
    )
    yield GaugeMetricFamily(
        "pydatacoll_config_cache_serving",
        "1 while the configuration cache can answer from memory (subscribed, base version "
        "known); 0: every read goes to Redis.",
        value=1.0 if cache.serving else 0.0,
    )
    resets = CounterMetricFamily(
        "pydatacoll_config_cache_resets",
        "Times the configuration cache was cleared and started again, by reason: history "
        "(Redis's history not the one counted: flushed, a lagging replica promoted), "
        "message (without a version), hole (a change not heard), lost (subscription), "
        "no_base (base version not read), early (too many changes while it was read).",
        labels=["reason"],
    )
    for reason, count in cache.resets.items():
        resets.add_metric([reason], count)
    yield resets


def _stream_families(hub: Any) -> Iterator[Metric]:
    yield GaugeMetricFamily(
        "pydatacoll_stream_clients", "Open event streams.", value=len(hub.clients)
    )
    yield CounterMetricFamily(
        "pydatacoll_stream_clients_dropped",
        "Event streams closed because the client did not read.",
        value=hub.dropped,
    )
    events = CounterMetricFamily(
        "pydatacoll_stream_events", "Events fanned out, by kind.", labels=["event"]
    )
    for kind in ("sample", "status", "alarm", "catch_up"):
        events.add_metric([kind], hub.events.get(kind, 0))
    yield events


class _MetricsPage(Resource):
    """``GET /metrics`` alone, for a process without the REST API."""

    isLeaf = True

    def __init__(self, metrics: ProcessMetrics, token: str | None) -> None:
        super().__init__()
        self.metrics = metrics
        self.token = token

    def render_GET(self, request: Any) -> Any:  # noqa: N802 (Twisted API)
        if request.path != b"/metrics":
            request.setResponseCode(404)
            request.setHeader(b"Content-Type", b"application/json; charset=utf-8")
            return b'{"error": "not_found", "message": "only /metrics is served", "field": null}'
        if self.token is not None:
            header = request.getHeader(b"authorization") or b""
            scheme, _, given = header.partition(b" ")
            if scheme.lower() != b"bearer" or not hmac.compare_digest(
                given.strip(), self.token.encode()
            ):
                request.setResponseCode(401)
                request.setHeader(b"WWW-Authenticate", b'Bearer realm="pydatacoll"')
                request.setHeader(b"Content-Type", b"application/json; charset=utf-8")
                return (
                    b'{"error": "unauthorized", "message": "a valid Authorization: Bearer '
                    b'token is required", "field": null}'
                )
        d = self.metrics.exposition()

        def write(body: bytes) -> None:
            request.setHeader(b"Content-Type", CONTENT_TYPE_LATEST.encode())
            request.write(body)
            request.finish()

        def failed(failure: Any) -> None:
            self.metrics.log.failure("building the metrics", failure)
            request.setResponseCode(503)
            request.setHeader(b"Content-Type", b"application/json; charset=utf-8")
            request.write(
                b'{"error": "unavailable", "message": "metrics not available", "field": null}'
            )
            request.finish()

        d.addCallbacks(write, failed)
        request.notifyFinish().addErrback(lambda _: None)
        return NOT_DONE_YET


def metrics_site(metrics: ProcessMetrics, token: str | None) -> Site:
    """A `Site` serving ``GET /metrics`` only (``token``: required as a Bearer token)."""
    site = Site(_MetricsPage(metrics, token))
    site.log = lambda request: None  # type: ignore[method-assign]
    site.displayTracebacks = False
    return site
