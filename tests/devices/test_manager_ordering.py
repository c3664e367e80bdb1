"""The device manager when Redis is not reachable yet as its subscription comes up.

The first pass then fails inside ``reconcile()`` itself (RedisClient fails at once): it
must not leave a finished pass marked as running, or no later change is ever applied.
"""

from twisted.internet.defer import fail, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from pydatacoll.config import load_settings
from pydatacoll.devices.manager import DeviceManager
from pydatacoll.errors import StoreUnavailable


class _Redis:
    """RedisClient double: fails at once while ``up`` is false; an empty store otherwise."""

    address = None

    def __init__(self):
        self.up = False
        self.calls = 0

    def when_ready(self):
        return succeed(None)

    def call(self, command, *args, **kwargs):
        self.calls += 1
        if not self.up:
            return fail(StoreUnavailable("Redis is not reachable"))
        return succeed({"get": None, "smembers": []}.get(command))


class ReconcileOrderingTests(SynchronousTestCase):
    def test_synchronous_failure_does_not_wedge_and_is_retried(self):
        redis = _Redis()
        manager = DeviceManager(
            redis, load_settings(None, {"redis": "redis://127.0.0.1:1/0"}), Clock(), drivers={}
        )
        manager.reconcile()  # fails at once, inside the call
        self.assertIsNone(manager._reconciling)
        self.assertIsNone(manager.version)
        redis.up = True
        self.successResultOf(manager._check_version())  # the periodic check retries
        self.assertEqual(manager.version, 0)
        manager.reconcile({"d1"})  # and a change message runs at once
        self.assertIsNone(manager._reconciling)
