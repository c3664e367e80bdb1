"""The metric families read from the process's own counters (fast, with stand-ins).

The real daemons' expositions are parsed in tests/integration/test_operability.py.
"""

from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import HTTPConnectionPool

from pydatacoll.control.priority import CommandPriority
from pydatacoll.metrics import ProcessMetrics, device_figures, metrics_site
from tests.api.test_app import http_call

MODBUS = {
    "device_id": "m1",
    "protocol": "modbus",
    "state": "online",
    "points_updated": 120,
    "last_value_time": "2026-12-03T10:00:00+00:00",
    "counters": {
        "link": {
            "timeouts": 2,
            "exceptions": 1,
            "frame_errors": 1,
            "rtt_last": 0.012,
            "reconnects": 3,
        }
    },
}
IEC104 = {
    "device_id": "c1",
    "protocol": "iec104",
    "state": "offline",
    "points_updated": 7,
    "last_value_time": None,
    "counters": {"timeouts": 1, "sequence_errors": 2, "asdus_skipped": 5, "reconnects": 4},
}
INGEST = {
    "written": 10,
    "skipped": 1,
    "dropped": 2,
    "buffered": 3,
    "buffer_limit": 100,
    "write_failures": 4,
    "congested": True,
    "pauses": 5,
}


class _Ingest:
    observe_batch = None

    def status(self):
        return dict(INGEST)


class _Manager:
    def __init__(self):
        self.ingest = _Ingest()
        self.priority = CommandPriority(Clock(), 0.1)
        self.priority.holds, self.priority.capped, self.priority.held_seconds = 7, 1, 0.25
        self.running_devices = {"m1": None, "c1": None, "gone": None}

    def device_status(self, device_id):
        return {"m1": MODBUS, "c1": IEC104}.get(device_id)


class _Processors:
    def status(self):
        return {
            "limits": {"enabled": True, "state": "running", "errors": 2, "emit_dropped": 0},
            "history": {"enabled": False, "state": "disabled", "errors": 0},
        }


def parse(text):
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


class MetricsTests(SynchronousTestCase):
    def test_device_figures_of_both_protocols(self):
        self.assertEqual(
            device_figures(MODBUS),
            {
                "up": 1.0,
                "round_trip": 0.012,
                "samples": 120.0,
                "errors": 4.0,
                "disconnections": 3.0,
                "last_value": 1796292000.0,
            },
        )
        self.assertEqual(
            device_figures(IEC104),
            {
                "up": 0.0,
                "round_trip": None,
                "samples": 7.0,
                "errors": 3.0,
                "disconnections": 4.0,
                "last_value": None,
            },
        )

    def test_collector_families(self):
        metrics = ProcessMetrics(Clock())
        manager = _Manager()
        metrics.watch_collector(manager, _Processors())
        manager.ingest.observe_batch(250, 0.003)
        found = parse(self.successResultOf(metrics.exposition()).decode())
        m1 = (("device_id", "m1"), ("protocol", "modbus"))
        c1 = (("device_id", "c1"), ("protocol", "iec104"))
        self.assertEqual(found[("pydatacoll_device_up", m1)], 1)
        self.assertEqual(found[("pydatacoll_device_up", c1)], 0)
        self.assertEqual(found[("pydatacoll_device_round_trip_seconds", m1)], 0.012)
        self.assertNotIn(("pydatacoll_device_round_trip_seconds", c1), found)
        self.assertEqual(found[("pydatacoll_device_read_errors_total", c1)], 3)
        self.assertEqual(found[("pydatacoll_device_disconnections_total", m1)], 3)
        self.assertEqual(found[("pydatacoll_device_samples_total", m1)], 120)
        self.assertEqual(found[("pydatacoll_ingest_samples_dropped_total", ())], 2)
        self.assertEqual(found[("pydatacoll_ingest_buffered_samples", ())], 3)
        self.assertEqual(found[("pydatacoll_ingest_congested", ())], 1)
        self.assertEqual(found[("pydatacoll_command_holds_total", ())], 7)
        self.assertEqual(found[("pydatacoll_command_holds_capped_total", ())], 1)
        self.assertEqual(found[("pydatacoll_command_held_seconds_total", ())], 0.25)
        self.assertEqual(found[("pydatacoll_ingest_batch_samples_sum", ())], 250)
        self.assertEqual(found[("pydatacoll_ingest_redis_round_trip_seconds_count", ())], 1)
        self.assertEqual(found[("pydatacoll_plugin_up", (("plugin", "limits"),))], 1)
        self.assertEqual(found[("pydatacoll_plugin_enabled", (("plugin", "history"),))], 0)
        self.assertEqual(found[("pydatacoll_plugin_errors_total", (("plugin", "limits"),))], 2)
        # bounded labels: device_id/protocol, plugin, and the fixed sets of the others
        labels = {name for _, pairs in found for name, _ in pairs}
        self.assertLessEqual(labels, {"device_id", "protocol", "plugin", "le"})
        self.assertFalse([k for k in found if k[0].endswith("_created")])

    def test_registries_are_per_process(self):
        one, two = ProcessMetrics(Clock()), ProcessMetrics(Clock())
        one.commands.labels("confirmed").inc()
        self.assertIsNot(one.registry, two.registry)
        found = parse(self.successResultOf(two.exposition()).decode())
        self.assertNotIn(("pydatacoll_commands_total", (("outcome", "confirmed"),)), found)


class MetricsSiteTests(TestCase):
    """The /metrics-only listener of a collector process, over real HTTP."""

    @inlineCallbacks
    def test_token_path_and_exposition(self):
        metrics = ProcessMetrics(reactor)
        metrics.watch_collector(_Manager(), _Processors())
        port = reactor.listenTCP(0, metrics_site(metrics, "s3cret"), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        pool = HTTPConnectionPool(reactor, persistent=False)
        self.addCleanup(pool.closeCachedConnections)
        base = f"http://127.0.0.1:{port.getHost().port}"
        status, error = yield http_call(base + "/metrics", "GET", pool)
        self.assertEqual((status, error["error"]), (401, "unauthorized"))
        auth = {b"Authorization": [b"Bearer s3cret"]}
        status, error = yield http_call(base + "/api/v1/devices", "GET", pool, headers=auth)
        self.assertEqual((status, error["error"]), (404, "not_found"))
        status, text = yield http_call(base + "/metrics", "GET", pool, headers=auth)
        self.assertEqual(status, 200)
        found = parse(text)
        self.assertEqual(found[("pydatacoll_ingest_samples_written_total", ())], 10)


class RouteTemplateMemoTests(SynchronousTestCase):
    def test_one_match_per_path_and_bounded(self):
        """The route of a (method, path) is matched once, not once per request; at most
        `_TEMPLATES_KEPT` paths are kept."""
        from pydatacoll import metrics

        class Request:
            def __init__(self, path):
                self.method, self.path = b"GET", path

        matched = []
        self.patch(metrics, "_TEMPLATES", {})
        self.patch(metrics, "_route_template", lambda r: matched.append(r.path) or "t")
        for _ in range(3):
            self.assertEqual(metrics.route_template(Request(b"/api/v1/devices/1")), "t")
        self.assertEqual(matched, [b"/api/v1/devices/1"])
        for i in range(metrics._TEMPLATES_KEPT + 10):
            metrics.route_template(Request(b"/api/v1/devices/%d" % i))
        self.assertEqual(len(metrics._TEMPLATES), metrics._TEMPLATES_KEPT)


class ConfigCacheFamiliesTests(SynchronousTestCase):
    def test_reads_entries_dropped(self):
        from pydatacoll.store.config_cache import ConfigCache
        from pydatacoll.testing.memory import MemoryRedis
        from pydatacoll.testing.memory_subscriber import memory_subscription

        memory = MemoryRedis()
        cache = ConfigCache(memory, memory_subscription(memory), 2)
        cache.startService()
        for device_id in ("1", "1", "2", "3"):
            self.successResultOf(cache.read("device", device_id, lambda fields: None))
        metrics = ProcessMetrics(Clock())
        metrics.watch_config_cache(cache)
        found = parse(self.successResultOf(metrics.exposition()).decode())
        self.assertEqual(found[("pydatacoll_config_cache_reads_total", (("answer", "memory"),))], 1)
        self.assertEqual(found[("pydatacoll_config_cache_reads_total", (("answer", "redis"),))], 3)
        self.assertEqual(found[("pydatacoll_config_cache_entries", ())], 2)
        self.assertEqual(found[("pydatacoll_config_cache_dropped_total", ())], 1)

    def test_serving_and_resets(self):
        """Whether the cache answers from memory, and why it restarted: after a lost
        subscription it serves nothing (every read goes to Redis) until subscribed."""
        from pydatacoll.store.config_cache import ConfigCache
        from pydatacoll.testing.memory import MemoryRedis
        from tests.store.test_config_cache import HeldSubscription

        memory = MemoryRedis()
        subscription = HeldSubscription(memory)
        cache = ConfigCache(memory, subscription, 2)
        cache.startService()
        metrics = ProcessMetrics(Clock())
        metrics.watch_config_cache(cache)

        def found():
            return parse(self.successResultOf(metrics.exposition()).decode())

        self.assertEqual(found()[("pydatacoll_config_cache_serving", ())], 1)
        subscription.lose()
        now = found()
        self.assertEqual(now[("pydatacoll_config_cache_serving", ())], 0)
        self.assertEqual(now[("pydatacoll_config_cache_resets_total", (("reason", "lost"),))], 1)
        self.assertEqual(now[("pydatacoll_config_cache_resets_total", (("reason", "history"),))], 0)
        subscription.connect()
        self.assertEqual(found()[("pydatacoll_config_cache_serving", ())], 1)
