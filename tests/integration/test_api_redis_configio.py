"""Configuration export and import over real HTTP and a private redis-server: the route
tests of tests/api/test_configio.py, and the command line that uses the routes."""

import json
import sys

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.utils import getProcessOutputAndValue

from pydatacoll.api.app import ApiApp
from pydatacoll.store.config import ConfigStore
from tests.api.test_configio import (
    ConfigIoRouteTests,
    ProtectedReadsRouteTests,
    StatusPageRouteTests,
)
from tests.integration.test_api_redis import RedisApiCase


class RedisConfigIoCase(RedisApiCase):
    def make_api(self):
        # clock=reactor: files are encoded and decoded in the reactor's thread pool
        return ApiApp(ConfigStore(self.client), self.settings, clock=reactor)


class RedisConfigIoTests(ConfigIoRouteTests, RedisConfigIoCase):
    @inlineCallbacks
    def test_command_line_uses_the_routes(self):
        """python -m pydatacoll.configio export/import FILE --api URL."""
        yield self.seed()
        before = yield self.stored_configuration()
        path = self.mktemp() + ".xlsx"

        def run(*args):
            return getProcessOutputAndValue(
                sys.executable,
                ["-m", "pydatacoll.configio", *args, "--api", self.base, "--token", self.token],
                env=None,
            )

        out, err, code = yield run("export", path)
        self.assertEqual(code, 0, err)
        yield self.sync.flushall()
        out, err, code = yield run("import", path, "--replace", "--dry-run")
        self.assertEqual(code, 0, err)
        self.assertIn(b"would create", out)
        self.assertEqual((yield self.sync.keys("HS:*")), [])
        out, err, code = yield run("import", path, "--replace")
        self.assertEqual(code, 0, err)
        self.assertEqual((yield self.stored_configuration()), before)
        bad = self.mktemp() + ".json"
        with open(bad, "w") as f:
            json.dump({"items": [{"id": "1", "unit": 5}]}, f)
        out, err, code = yield run("import", bad)
        self.assertEqual(code, 1)
        self.assertIn(b"items row 1", err)
        self.assertIn(b"unit", err)


class RedisProtectedReadsTests(ProtectedReadsRouteTests, RedisConfigIoCase):
    pass


class RedisStatusPageTests(StatusPageRouteTests, RedisConfigIoCase):
    pass
