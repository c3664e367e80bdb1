"""The REST API in memory: `MemoryRedis` behind the real stores, requests through
`treq.testing.StubTreq` into the API's own `Site` (body limits included), a `Clock`.

No redis-server and no socket: every route runs to its answer synchronously. The
same route tests run over a private redis-server from tests/integration (they use only
what both harnesses offer: ``call``, ``raw_call``, ``request``, ``sync``, ``digest``,
``redis_down``, ``watch_channels``). Over Redis ``sync``'s look-ups and ``digest`` answer
with Deferreds (nothing blocks the reactor), here at once: the route mixins ``yield``
them, which inlineCallbacks turns into the value either way.
"""

import fnmatch
import json

from treq.testing import StubTreq
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from pydatacoll.api.app import ApiApp
from pydatacoll.config import load_settings
from pydatacoll.store.config import ConfigStore
from pydatacoll.testing.fixtures import CREATE_ALL
from pydatacoll.testing.memory import MemoryRedis

#: Where the stub API "listens" (what the route list and redirects show).
BASE = "http://127.0.0.1:8080"


class SyncView:
    """The few redis-py calls the route tests use to look at Redis, over `MemoryRedis`."""

    def __init__(self, memory: MemoryRedis) -> None:
        self.memory = memory

    def _call(self, command, *args):
        d = self.memory.call(command, *args)
        found = []
        d.addBoth(found.append)
        result = found[0]
        if hasattr(result, "raiseException"):
            result.raiseException()
        return result

    def hget(self, key, field):
        return self._call("hget", key, field)

    def hgetall(self, key):
        return self._call("hgetall", key)

    def get(self, key):
        return self._call("get", key)

    def smembers(self, key):
        return self._call("smembers", key)

    def exists(self, key):
        return self._call("exists", key)

    def keys(self, pattern="*"):
        return [k for k in self._call("keys", pattern) if self.memory._exists(k)]

    def type(self, key):
        value = self.memory.data.get(key)
        kinds = {str: "string", dict: "hash", set: "set", list: "list"}
        if isinstance(value, list) and value and isinstance(value[0], tuple):
            return "stream"
        return kinds.get(type(value), "none")

    def xadd(self, key, fields, id=None):  # noqa: A002 (redis-py's name)
        if id is not None:  # an explicit id: appended as Redis would (ids must grow)
            self.memory._typed(key, list).append((id, dict(fields)))
            return id
        flat = [part for name, value in fields.items() for part in (name, value)]
        return self._call("execute_command", "XADD", key, "*", *flat)

    def xlen(self, key):
        return len(self.memory.data.get(key) or [])

    def hset(self, key, field, value):
        return self._call("hset", key, field, value)

    def flushall(self):
        self.memory.data.clear()


@inlineCallbacks
def http_call(url, method, pool, body=None, raw=None, headers=None):
    """One HTTP request over real TCP (tests/integration); fires with (status, parsed
    JSON or text)."""
    import treq

    headers = dict(headers or {})
    data = raw
    if body is not None:
        data = json.dumps(body).encode()
        headers.setdefault(b"Content-Type", [b"application/json"])
    response = yield treq.request(method, url, data=data, headers=headers, pool=pool)
    text = (yield treq.content(response)).decode()
    return response.code, parsed(text)


def parsed(text):
    try:
        return json.loads(text) if text else None
    except ValueError:
        return text


class ApiCalls:
    """JSON calls on an API test case whose ``request(method, path, data, headers)``
    fires with (response, body bytes): in memory (StubTreq) or over real TCP."""

    @inlineCallbacks
    def raw_call(self, method, path, body=None, raw=None, headers=None):
        """One request; fires with (status, parsed JSON or text)."""
        headers = dict(headers or {})
        data = raw
        if body is not None:
            data = json.dumps(body).encode()
            headers.setdefault(b"Content-Type", [b"application/json"])
        response, content = yield self.request(method, path, data, headers)
        return response.code, parsed(content.decode())

    def call(self, method, path, body=None, raw=None, headers=None):
        return self.raw_call(method, path, body, raw, headers)

    @inlineCallbacks
    def seed(self):
        for method, path, body in CREATE_ALL:
            status, result = yield self.call(method, path, body)
            self.assertEqual(status, 201, result)


class MemoryApiCase(ApiCalls, TestCase):
    """The API over `MemoryRedis` and `StubTreq`; ``settings_overrides`` and ``token``
    shape the settings, ``make_api`` may be overridden."""

    token = None
    settings_overrides: dict = {}

    def setUp(self):
        self.clock = Clock()
        self.clock.advance(1_790_000_000)
        self.memory = MemoryRedis(clock=self.clock)
        self.sync = SyncView(self.memory)
        overrides = {"api_token": self.token, **self.settings_overrides}
        self.settings = load_settings(None, overrides)
        self.api = self.make_api()
        self.base = BASE
        self.stub = StubTreq(self.api.app.resource())
        # The API's own Site: its request class keeps the body limits.
        self.stub._agent._serverFactory = self.api.site()

    def make_api(self):
        return ApiApp(ConfigStore(self.memory), self.settings, clock=self.clock)

    def digest(self):
        return self.memory.digest()

    def flush(self):
        """Deliver what the API wrote since (answers that waited for a reply or a timer)."""
        self.stub.flush()

    def advance(self, seconds):
        """Let ``seconds`` pass on the API's clock, and deliver what that answered."""
        self.clock.advance(seconds)
        self.flush()

    def redis_down(self):
        self.memory.down()

    def watch_channels(self, pattern):
        """Start recording messages on channels matching ``pattern``; the returned
        callable gives [(channel, message text)] so far."""
        start = len(self.memory.published)

        def seen():
            return [
                (channel, message)
                for channel, message in self.memory.published[start:]
                if fnmatch.fnmatchcase(channel, pattern)
            ]

        return seen

    @inlineCallbacks
    def request(self, method, path, data=None, headers=None, **options):
        """One request; fires with (response, body bytes)."""
        response = yield self.stub.request(
            method, self.base + path, data=data, headers=headers, **options
        )
        body = yield self.stub.content(response)
        return response, body
