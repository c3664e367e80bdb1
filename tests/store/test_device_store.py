"""The collector's store contract (`tests.store.devices_contract`) on MemoryRedis."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from pydatacoll.testing.memory import MemoryRedis

from .devices_contract import DeviceStoreContract


class MemoryDeviceStoreTests(DeviceStoreContract, TestCase):
    def setUp(self) -> None:
        self.redis = MemoryRedis()
        self.clock = Clock()
