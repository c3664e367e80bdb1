"""The collector's store contract (`tests.store.devices_contract`) on a private
redis-server: the same tests MemoryRedis passes, so its script emulations cannot drift."""

from __future__ import annotations

import json
from typing import Any

from twisted.internet import defer, reactor
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from pydatacoll.config import load_settings
from pydatacoll.model import Sample
from pydatacoll.store import keys
from pydatacoll.store.ingest import RedisIngest
from pydatacoll.store.redis import RedisClient, encode_command
from pydatacoll.store.subscriber import Subscriber
from pydatacoll.testing.redis import shared_redis
from tests.store.devices_contract import DeviceStoreContract, _pairs


class RedisDeviceStoreTests(DeviceStoreContract, TestCase):
    timeout = 30

    @defer.inlineCallbacks
    def setUp(self) -> Any:
        settings = load_settings(None, {"redis": shared_redis().url})
        self.redis = RedisClient(settings.redis, timeout=2, pool_size=1)
        self.redis.startService()
        self.addCleanup(self.redis.stopService)
        self.clock = reactor
        yield self.redis.when_connected()
        yield self.redis.call("flushdb")

    @defer.inlineCallbacks
    def test_encoded_commands_and_the_eval_fallback(self) -> Any:
        """A command in RESP form answers as `call` does; after SCRIPT FLUSH (a restarted
        Redis) the ingest path's EVALSHA falls back to EVAL and stores the sample."""
        yield self.redis.call("set", "k", "é")
        value = yield self.redis.call_encoded(encode_command("GET", "k"))
        self.assertEqual(value, "é")
        yield self.redis.call("set", keys.CONFIG_VERSION, "1")
        yield self.redis.call("execute_command", "SCRIPT", "FLUSH")
        sink = RedisIngest(self.redis, self.clock, 100, 1000)
        sink.settled_version = "1"
        sink.startService()
        sink.samples_received([Sample("d", "t", "i", 2.5, receive_time=1.5)])
        yield sink.stopService()
        self.assertEqual((sink.status()["written"], sink.status()["write_failures"]), (1, 0))
        stored = yield self.redis.call("hget", keys.DEVICE_VALUES % "d", "t:i")
        self.assertEqual(json.loads(stored)["value"], 2.5)

    @defer.inlineCallbacks
    def test_the_script_keys_and_messages_of_each_sample(self) -> Any:
        """The real script's history stream and point channel of each sample (it builds
        them from per-device heads, store/ingest.lua), with publish_points on, and the
        device messages: the same samples, at most 40 a message, in order."""
        messages: list[tuple[str, str]] = []
        subscribed: defer.Deferred[None] = defer.Deferred()
        watcher = Subscriber(
            reactor,
            lambda: load_settings(None, {"redis": shared_redis().url}).redis,
            lambda channel, message: messages.append((channel, message)),
            patterns=[keys.DEVICE_DATA % ("*", "*", "*"), keys.DEVICE_SAMPLES % "*"],
            on_subscribed=lambda: None if subscribed.called else subscribed.callback(None),
            name="sample channels",
        )
        watcher.startService()
        self.addCleanup(watcher.stopService)
        yield subscribed
        yield self.redis.call("set", keys.CONFIG_VERSION, "1")
        sink = RedisIngest(self.redis, self.clock, 100, 1000, publish_points=True)
        sink.settled_version = "1"
        sink.startService()
        points = [("d", "t", f"a{n}") for n in range(41)] + [("d", "t2", "b.c"), ("e", "t", "a")]
        sink.samples_received(
            [Sample(*p, float(n), receive_time=1.5) for n, p in enumerate(points)]
        )
        yield sink.stopService()
        for n, point in enumerate(points):
            [(_, fields)] = yield self.redis.call(
                "execute_command", "XRANGE", keys.POINT_DATA % point, "-", "+"
            )
            self.assertEqual(json.loads(dict(_pairs(fields))["sample"])["value"], float(n))
        for _ in range(50):
            if len(messages) == len(points) + 3:
                break
            yield deferLater(reactor, 0.02, lambda: None)
        singles = [(c, json.loads(m)) for c, m in messages if c.startswith("CHANNEL:DEVICE_DATA")]
        self.assertEqual(
            [(c, m["value"]) for c, m in singles],
            [(keys.DEVICE_DATA % p, float(n)) for n, p in enumerate(points)],
        )
        stream_ids = yield self.redis.call(
            "execute_command", "XRANGE", keys.POINT_DATA % points[-2], "-", "+"
        )
        self.assertEqual(
            singles[-2][1],
            {"device_id": "d", "term_id": "t2", "item_id": "b.c", "id": stream_ids[0][0]}
            | {"value": 41.0, "quality": "good", "flags": [], "source_time": None}
            | {"receive_time": "1970-01-01T00:00:01.500+00:00"},
        )
        batches = [(c, json.loads(m)) for c, m in messages if c.startswith("CHANNEL:DEVICE_SAMP")]
        self.assertEqual(
            [(c, m["device_id"], len(m["samples"])) for c, m in batches],
            [(keys.DEVICE_SAMPLES % "d", "d", 40), (keys.DEVICE_SAMPLES % "d", "d", 2),
             (keys.DEVICE_SAMPLES % "e", "e", 1)],
        )  # fmt: skip
        self.assertEqual([s for _, m in batches for s in m["samples"]], [m for _, m in singles])
