"""A private Redis Sentinel setup for tests: a master, a replica and three Sentinels.

All are ``redis-server`` processes on free ports of 127.0.0.1 (the Sentinels run it with
``--sentinel``), with a small ``down-after-milliseconds`` so a failover takes about a
second. `start` and `wait_for_failover` block (run them with ``deferToThread``).
"""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import tempfile
import time
from typing import Any

import redis

from pydatacoll.store.embedded import find_redis_server
from pydatacoll.testing.redis import free_port

MASTER_NAME = "pdcmaster"


class SentinelSetup:
    """The five processes; `stop` (or exit) ends them and removes their directory."""

    def __init__(self, *, down_after_ms: int = 400, failover_timeout_ms: int = 3000) -> None:
        self.binary = find_redis_server()
        self.dir = tempfile.mkdtemp(prefix="pydatacoll-sentinel-")
        self.master_port = free_port()
        self.replica_port = free_port()
        self.sentinel_ports = [free_port() for _ in range(3)]
        self.down_after_ms = down_after_ms
        self.failover_timeout_ms = failover_timeout_ms
        self.processes: dict[int, subprocess.Popen[bytes]] = {}
        atexit.register(self.stop)

    @property
    def url(self) -> str:
        """The ``sentinel://`` URL of database 0."""
        hosts = ",".join(f"127.0.0.1:{port}" for port in self.sentinel_ports)
        return f"sentinel://{hosts}/{MASTER_NAME}?db=0"

    def _server(self, port: int, *extra: str) -> None:
        data = os.path.join(self.dir, str(port))
        os.makedirs(data, exist_ok=True)
        args = [self.binary, "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
        args += ["--appendonly", "no", "--dir", data, *extra]
        self.processes[port] = subprocess.Popen(args, stdout=subprocess.DEVNULL)

    def _sentinel(self, port: int) -> None:
        path = os.path.join(self.dir, f"sentinel-{port}.conf")
        with open(path, "w", encoding="utf-8") as f:
            f.write(
                f"port {port}\nbind 127.0.0.1\nprotected-mode no\ndir {self.dir}\n"
                f"sentinel monitor {MASTER_NAME} 127.0.0.1 {self.master_port} 2\n"
                f"sentinel down-after-milliseconds {MASTER_NAME} {self.down_after_ms}\n"
                f"sentinel failover-timeout {MASTER_NAME} {self.failover_timeout_ms}\n"
                f"sentinel parallel-syncs {MASTER_NAME} 1\n"
            )
        self.processes[port] = subprocess.Popen(
            [self.binary, path, "--sentinel"], stdout=subprocess.DEVNULL
        )

    def start(self, timeout: float = 30.0) -> None:
        """Start all five and wait until the replica is in sync and every Sentinel knows
        the replica and the two other Sentinels (blocking: harness start-up only)."""
        self._server(self.master_port)
        self._server(self.replica_port, "--replicaof", "127.0.0.1", str(self.master_port))
        for port in self.sentinel_ports:
            self._sentinel(port)
        deadline = time.monotonic() + timeout
        while not self._ready():
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("the Sentinel setup did not come up")
            time.sleep(0.1)  # harness start-up only, not test logic

    def _ready(self) -> bool:
        try:
            replica = redis.Redis(port=self.replica_port, socket_timeout=1)
            if replica.info("replication").get("master_link_status") != "up":
                return False
            for port in self.sentinel_ports:
                sentinel = redis.Redis(port=port, socket_timeout=1)
                state: dict[str, Any] = dict(sentinel.sentinel_master(MASTER_NAME))  # type: ignore[arg-type]
                if int(state["num-other-sentinels"]) < 2 or int(state["num-slaves"]) < 1:
                    return False
        except (redis.RedisError, OSError):
            return False
        return True

    def master(self) -> tuple[str, int] | None:
        """Where the first Sentinel that answers says the master is (blocking)."""
        for port in self.sentinel_ports:
            try:
                host, master_port = redis.Redis(port=port, socket_timeout=1).execute_command(
                    "SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER_NAME
                )
                return host.decode(), int(master_port)
            except (redis.RedisError, OSError, TypeError):
                continue
        return None

    def kill_master(self) -> None:
        """SIGKILL the current master (a crash: nothing flushed, no goodbye)."""
        self.processes[self.master_port].kill()

    def stop(self) -> None:
        """End every process and remove the directory."""
        for process in self.processes.values():
            if process.poll() is None:
                process.kill()
                process.wait(10)
        self.processes.clear()
        shutil.rmtree(self.dir, ignore_errors=True)
