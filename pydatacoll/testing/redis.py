"""A private redis-server for tests: a free port on 127.0.0.1, nothing kept on disk."""

from __future__ import annotations

import atexit
import os
import shutil
import socket
import subprocess
import tempfile
import time

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
    """A digest of the whole keyspace (``DEBUG DIGEST``)."""
    return str(client.execute_command("DEBUG", "DIGEST"))  # type: ignore[attr-defined]


os.environ.setdefault(
    "HYPOTHESIS_STORAGE_DIRECTORY", os.path.join(tempfile.gettempdir(), "pydatacoll-hypothesis")
)
