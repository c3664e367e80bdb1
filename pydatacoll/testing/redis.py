"""A private redis-server for tests: a free port on 127.0.0.1, nothing kept on disk."""

from __future__ import annotations

import atexit
import os
import shutil
import socket
import subprocess
import tempfile
import time
from typing import Any

from twisted.internet.defer import Deferred

from pydatacoll.store.embedded import find_redis_server


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PrivateRedis:
    """A redis-server process of the tests' own; `stop` (or exit) ends it."""

    def __init__(self, persistent: bool = False) -> None:
        self.port = free_port()
        self._dir = tempfile.mkdtemp(prefix="pydatacoll-redis-")
        binary = find_redis_server()
        version = subprocess.run([binary, "--version"], capture_output=True, text=True).stdout
        args = [
            binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            # persistent: the configuration survives `restart` (an outage, not a wipe)
            "yes" if persistent else "no",
            "--appendfsync",
            "always",
            "--dir",
            self._dir,
        ]
        if " v=6." not in version:
            args += ["--enable-debug-command", "yes"]
        self._args = args
        self._start()
        atexit.register(self.stop)

    def _start(self) -> None:
        self._process = subprocess.Popen(self._args, stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                break
            except OSError:
                if time.monotonic() > deadline or self._process.poll() is not None:
                    self.stop()
                    raise RuntimeError("the private redis-server did not start") from None
                time.sleep(0.02)  # harness start-up only, not test logic

    def kill(self, hard: bool = False) -> None:
        """End the server but keep its port and directory (an outage; see `restart`).

        ``hard``: SIGKILL (a crash: no shutdown, only what the AOF holds survives; with
        ``appendfsync always`` that is every write Redis acknowledged).
        """
        if self._process.poll() is None:
            if hard:
                self._process.kill()
            else:
                self._process.terminate()
            self._process.wait(10)

    def start(self) -> None:
        """Start the server again after `kill` (on its append-only file if persistent)."""
        if self._process.poll() is None:
            raise RuntimeError("the private redis-server is running already")
        self._start()

    def restart(self) -> None:
        """Start the server again on the same port (empty unless ``persistent``)."""
        self.kill()
        self._start()

    @property
    def url(self) -> str:
        """The ``redis://`` URL of database 0."""
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        """End the server and remove its directory."""
        if self._process.poll() is None:
            self._process.terminate()
            self._process.wait(10)
        shutil.rmtree(self._dir, ignore_errors=True)


_shared: PrivateRedis | None = None


def shared_redis() -> PrivateRedis:
    """One private server for the whole test run (tests flush it; it is theirs)."""
    global _shared
    if _shared is None:
        _shared = PrivateRedis()
    return _shared


def digest(client: object) -> str:
    """A digest of the whole keyspace (``DEBUG DIGEST``) over a blocking redis-py client.

    It blocks: call it off the reactor thread (``deferToThread``) or from a process of
    its own; on the reactor use `RedisView.digest`.
    """
    return str(client.execute_command("DEBUG", "DIGEST"))  # type: ignore[attr-defined]


class RedisView:
    """The look-ups and writes tests make behind the code's back, without blocking.

    Each method sends one command over ``client`` (a started
    `pydatacoll.store.redis.RedisClient`, or anything with its ``call``) and returns a
    Deferred firing with what redis-py's method of the same name answers (strings,
    sets for SMEMBERS, ``[(id, {field: value})]`` for XRANGE). Tests on the reactor use
    it instead of a redis-py client, whose every call would block the reactor thread.
    """

    def __init__(self, client: Any) -> None:
        self.client = client

    def _command(self, *args: Any) -> Deferred[Any]:
        d: Deferred[Any] = self.client.call("execute_command", *args)
        return d

    def flushall(self) -> Deferred[Any]:
        return self._command("FLUSHALL")

    def digest(self) -> Deferred[str]:
        """A digest of the whole keyspace (``DEBUG DIGEST``)."""
        return self._command("DEBUG", "DIGEST").addCallback(str)

    def get(self, key: str) -> Deferred[Any]:
        return self._command("GET", key)

    def exists(self, key: str) -> Deferred[Any]:
        return self._command("EXISTS", key)

    def keys(self, pattern: str = "*") -> Deferred[Any]:
        return self._command("KEYS", pattern).addCallback(list)

    def type(self, key: str) -> Deferred[Any]:  # noqa: A003 (redis-py's name)
        return self._command("TYPE", key)

    def hget(self, key: str, field: str) -> Deferred[Any]:
        return self._command("HGET", key, field)

    def hgetall(self, key: str) -> Deferred[Any]:
        return self._command("HGETALL", key).addCallback(_pairs)

    def hset(
        self,
        key: str,
        field: str | None = None,
        value: Any = None,
        mapping: dict[str, Any] | None = None,
    ) -> Deferred[Any]:
        """``HSET key field value`` and/or every pair of ``mapping``, in one command."""
        pairs = [] if field is None else [field, value]
        for name, text in (mapping or {}).items():
            pairs += [name, text]
        return self._command("HSET", key, *pairs)

    def smembers(self, key: str) -> Deferred[Any]:
        return self._command("SMEMBERS", key).addCallback(set)

    def publish(self, channel: str, message: str) -> Deferred[Any]:
        return self._command("PUBLISH", channel, message)

    def eval(self, script: str, numkeys: int, *keys_and_args: Any) -> Deferred[Any]:  # noqa: A003
        """``EVAL`` as redis-py spells it: the script, the number of keys, keys, args."""
        return self._command("EVAL", script, numkeys, *keys_and_args)

    def xadd(self, key: str, fields: dict[str, Any], id: str = "*") -> Deferred[Any]:  # noqa: A002
        flat = [part for name, value in fields.items() for part in (name, value)]
        return self._command("XADD", key, id, *flat)

    def xlen(self, key: str) -> Deferred[Any]:
        return self._command("XLEN", key)

    def xrange(self, key: str, min: str = "-", max: str = "+") -> Deferred[Any]:  # noqa: A002
        def entries(reply: Any) -> list[tuple[str, dict[str, Any]]]:
            return [(entry_id, _pairs(fields)) for entry_id, fields in reply or []]

        return self._command("XRANGE", key, min, max).addCallback(entries)

    def client_list(self) -> Deferred[list[dict[str, str]]]:
        """``CLIENT LIST`` as redis-py parses it: one dict per connection."""

        def parsed(text: Any) -> list[dict[str, str]]:
            return [
                dict(part.split("=", 1) for part in line.split(" ") if "=" in part)
                for line in str(text).splitlines()
                if line.strip()
            ]

        return self._command("CLIENT", "LIST").addCallback(parsed)

    def client_kill_id(self, client_id: str) -> Deferred[Any]:
        """``CLIENT KILL ID client_id``: ends that connection."""
        return self._command("CLIENT", "KILL", "ID", client_id)


def _pairs(reply: Any) -> dict[str, Any]:
    """A flat [field, value, ...] reply (or a dict already) as a dict."""
    if isinstance(reply, dict):
        return reply
    items = list(reply or [])
    return dict(zip(items[::2], items[1::2], strict=True))


os.environ.setdefault(
    "HYPOTHESIS_STORAGE_DIRECTORY", os.path.join(tempfile.gettempdir(), "pydatacoll-hypothesis")
)
