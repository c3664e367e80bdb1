"""The store contracts over `MemoryRedis`: no redis-server needed."""

from twisted.internet.defer import succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from pydatacoll.testing.memory import MemoryRedis
from tests.store.commands_contract import CommandStoreContract
from tests.store.contract import (
    ConfigStoreContract,
    EventStoreContract,
    LiveStoreContract,
    PointStoreContract,
    SnapshotContract,
)


class MemoryStoreCase(TestCase):
    """``self.redis``: a fresh `MemoryRedis` whose clock starts at a plausible time."""

    def setUp(self):
        clock = Clock()
        clock.advance(1_790_000_000)
        self.redis = MemoryRedis(clock=clock)

    def digest(self):
        return succeed(self.redis.digest())


class MemoryConfigStoreTests(MemoryStoreCase, ConfigStoreContract):
    pass


class MemoryPointStoreTests(MemoryStoreCase, PointStoreContract):
    pass


class MemoryEventStoreTests(MemoryStoreCase, EventStoreContract):
    pass


class MemorySnapshotTests(MemoryStoreCase, SnapshotContract):
    pass


class MemoryLiveStoreTests(MemoryStoreCase, LiveStoreContract):
    pass


class MemoryCommandStoreTests(MemoryStoreCase, CommandStoreContract):
    pass
