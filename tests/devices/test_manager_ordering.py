"""The device manager when Redis is not reachable yet as its subscription comes up.

The first pass then fails inside ``reconcile()`` itself (RedisClient fails at once): it
must not leave a finished pass marked as running, or no later change is ever applied.
"""

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from pydatacoll.config import load_settings
from pydatacoll.devices.manager import DeviceManager
from pydatacoll.testing.memory import MemoryRedis


class ReconcileOrderingTests(SynchronousTestCase):
    def test_synchronous_failure_does_not_wedge_and_is_retried(self):
        redis = MemoryRedis()
        manager = DeviceManager(redis, load_settings(None, {}), Clock(), drivers={})
        redis.fail_next("get")
        manager.reconcile()  # fails at once, inside the call
        self.assertIsNone(manager._reconciling)
        self.assertIsNone(manager.version)
        self.successResultOf(manager._check_version())  # the periodic check retries
        self.assertEqual(manager.version, 0)
        manager.reconcile({"d1"})  # and a change message runs at once
        self.assertIsNone(manager._reconciling)
