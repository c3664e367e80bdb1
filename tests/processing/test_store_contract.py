"""The processors' stores over `MemoryRedis` (no redis-server): the contract's fake half."""

from twisted.trial.unittest import TestCase

from pydatacoll.testing.memory import MemoryRedis
from tests.processing.store_contract import ProcessingStoreContract


class MemoryProcessingStoreTests(ProcessingStoreContract, TestCase):
    """Every Deferred here has fired by the time it is returned: no reactor turn is used."""

    def setUp(self):
        self.redis = MemoryRedis()
