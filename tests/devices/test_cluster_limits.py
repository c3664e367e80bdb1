"""Limit checks with the device manager in cluster mode (MemoryRedis, a Clock): what
happens to the alarms of a device deleted through the configuration script."""

from __future__ import annotations

import attrs

from pydatacoll.model import Sample
from pydatacoll.processing.limits import LimitsProcessor
from pydatacoll.store import keys
from pydatacoll.store.config import ConfigStore
from tests.processing.memory_support import memory_context

from .test_cluster import ClusterManagerHarness


class DeletedDeviceAlarmTests(ClusterManagerHarness):
    def raise_and_delete(self, cluster: bool) -> dict:
        """d0's point gets an up limit, a collector raises ``high`` on it, then the API
        deletes d0 (config.lua: the device, its terms and term-items, one change message
        with the cascade). The active alarms left afterwards."""
        self.store.data[keys.TERM_ITEM % ("td0", "i")]["up_limit"] = "10"
        self.store.call("sadd", keys.TERMS, ["td0"])
        manager = self.start("a")
        context = memory_context(self.store, self.clock, {"check_interval": "1"})
        ownership = manager.ownership if cluster else None
        limits = LimitsProcessor(attrs.evolve(context, cluster=ownership))
        limits.startService()
        self.addCleanup(lambda: limits.stopService() if limits.running else None)
        manager.sinks.append(limits)
        self.clock.advance(0.1)
        self.assertTrue(manager.ownership.owns("d0"))
        now = self.clock.seconds()
        manager.samples_received([Sample("d0", "td0", "i", 20.0, receive_time=now)])
        self.clock.advance(0.1)
        self.assertIn("d0:td0:i:high", self.store.data[keys.ALARMS])
        self.successResultOf(
            ConfigStore(self.store).apply([{"op": "delete", "entity": "device", "id": "d0"}])
        )
        self.clock.advance(5)
        self.assertNotIn("d0", manager.running_devices)
        return self.store.data.get(keys.ALARMS) or {}

    def test_cluster_mode_clears_the_alarms_of_a_deleted_device(self) -> None:
        self.assertNotIn("d0:td0:i:high", self.raise_and_delete(cluster=True))

    def test_outside_the_cluster_the_deletion_clears_them_too(self) -> None:
        self.assertNotIn("d0:td0:i:high", self.raise_and_delete(cluster=False))
