"""A private Mosquitto broker for tests: a free port on 127.0.0.1, its own config file.

Never the shared broker on 1883. ``persistent=True`` keeps sessions (and the messages
queued for an offline QoS 1 subscriber) across `restart`, as an outage would.
"""

from __future__ import annotations

import atexit
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time

from pydatacoll.testing.redis import free_port


def find_mosquitto() -> str:
    """The mosquitto binary (Debian installs it in /usr/sbin)."""
    for candidate in (shutil.which("mosquitto"), "/usr/sbin/mosquitto"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise RuntimeError("mosquitto is not installed (apt-get install mosquitto)")


class PrivateMosquitto:
    """A mosquitto process of the tests' own; `stop`, `start` again, `kill`."""

    def __init__(self, persistent: bool = True, port: int | None = None) -> None:
        self.port = port or free_port()
        self.directory = tempfile.mkdtemp(prefix="pydatacoll-mosquitto-")
        self.config = os.path.join(self.directory, "mosquitto.conf")
        lines = [
            f"listener {self.port} 127.0.0.1",
            "allow_anonymous true",
            # run as whoever started it (as root it would switch to "mosquitto", which
            # cannot write the persistence file in this private directory)
            f"user {pwd.getpwuid(os.geteuid()).pw_name}",
            f"persistence {'true' if persistent else 'false'}",
            f"persistence_location {self.directory}/",
            "max_queued_messages 0",
            "max_inflight_messages 0",
            "log_dest stderr",
            "log_type error",
            "log_type warning",
        ]
        with open(self.config, "w") as f:
            f.write("\n".join(lines) + "\n")
        self._process: subprocess.Popen[bytes] | None = None
        self.start()
        atexit.register(self.stop)

    @property
    def url(self) -> str:
        """``mqtt://127.0.0.1:PORT``."""
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self) -> None:
        """Start (again) and wait until it accepts connections."""
        log = open(os.path.join(self.directory, "mosquitto.log"), "ab")
        self._process = subprocess.Popen(
            [find_mosquitto(), "-c", self.config], stdout=log, stderr=log
        )
        log.close()
        deadline = time.monotonic() + 15
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
                if self._process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"mosquitto did not start on port {self.port}") from None
                time.sleep(0.05)  # waiting for another process to listen

    def stop(self) -> None:
        """SIGTERM (it saves its sessions) and wait."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def cleanup(self) -> None:
        """Stop and remove its directory."""
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)
