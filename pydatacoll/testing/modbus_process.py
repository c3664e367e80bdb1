"""Run `pydatacoll.testing.modbus_sim` as a child process of a Twisted program.

`ModbusSimProcess.start` spawns the simulator (with ``--control``) and fires when it
listens; `command` sends a control line and fires with the JSON answer; `kill` ends it.
Used by the integration tests and the benchmark; nothing here blocks the reactor.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from collections import deque
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

#: Control commands may wait for answers at most this many at a time.
MAX_WAITING = 64


class ModbusSimProcess(ProcessProtocol):
    """One simulator process; its stdout lines are answers, the first says it listens."""

    log = Logger()

    def __init__(self) -> None:
        self.ports: list[int] = []
        self._started: Deferred[ModbusSimProcess] = Deferred()
        self._ended: Deferred[None] = Deferred()
        self._waiting: deque[Deferred[Any]] = deque()
        self._buffer = b""
        self.stderr = b""
        self.running = False

    @classmethod
    def start(cls, reactor: Any, port: int, *args: str) -> Deferred[ModbusSimProcess]:
        """Spawn ``python -m pydatacoll.testing.modbus_sim --port PORT --control ARGS``."""
        process = cls()
        argv = [sys.executable, "-m", "pydatacoll.testing.modbus_sim", "--port", str(port)]
        argv += ["--control", *args]
        reactor.spawnProcess(process, sys.executable, argv, env=dict(os.environ))
        return process._started

    def connectionMade(self) -> None:
        """The child exists."""
        self.running = True

    def outReceived(self, data: bytes) -> None:
        """Split stdout into lines: the ``listening`` line, then JSON answers."""
        self._buffer += data
        while b"\n" in self._buffer:
            line, self._buffer = self._buffer.split(b"\n", 1)
            text = line.decode()
            if text.startswith("listening") and not self._started.called:
                self.ports = [int(p) for p in text.split()[2:]]
                self._started.callback(self)
            elif self._waiting:
                self._waiting.popleft().callback(json.loads(text))

    def errReceived(self, data: bytes) -> None:
        """Keep the last of stderr for error messages."""
        self.stderr = (self.stderr + data)[-4000:]

    def processEnded(self, reason: Failure) -> None:
        """Fail whoever still waits; fire `kill`'s Deferred."""
        self.running = False
        error = RuntimeError(f"modbus_sim ended: {self.stderr.decode(errors='replace')[-500:]}")
        if not self._started.called:
            self._started.errback(Failure(error))
        while self._waiting:
            self._waiting.popleft().errback(Failure(error))
        self._ended.callback(None)

    def command(self, line: str) -> Deferred[Any]:
        """Send a control command; fires with its JSON answer."""
        if len(self._waiting) >= MAX_WAITING:
            raise RuntimeError("too many control commands waiting")
        d: Deferred[Any] = Deferred()
        self._waiting.append(d)
        assert self.transport is not None
        self.transport.write(line.encode() + b"\n")
        return d

    def kill(self) -> Deferred[None]:
        """SIGKILL the simulator (no goodbye to its clients); fires when it is gone."""
        if self.running:
            assert self.transport is not None
            self.transport.signalProcess(signal.SIGKILL)
        return self._ended
