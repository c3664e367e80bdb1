"""Server-Sent Events clients over raw TCP, for tests: what a browser's EventSource reads.

`SseProtocol` runs on the reactor (trial tests); `BlockingSse` is a plain socket (tests
driving daemons in subprocesses). Both send one ``GET`` and parse the HTTP head, the
chunked body and the events: ``{"event", "id", "data", "retry"}`` or ``{"comment"}``.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable, Mapping
from typing import Any

from twisted.internet import defer
from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure
from twisted.web.http import _ChunkedTransferDecoder


def request_bytes(path: str, headers: Mapping[str, str] | None = None) -> bytes:
    """The GET request of a stream."""
    lines = [
        f"GET {path} HTTP/1.1",
        "Host: 127.0.0.1",
        "Accept: text/event-stream",
        "Connection: close",
    ]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


class SseParser:
    """Bytes of an HTTP response in, head and events out."""

    def __init__(self) -> None:
        self.status: int | None = None
        self.headers: dict[str, str] = {}
        self.body = b""  # a response that is not a stream (an error)
        self.events: list[dict[str, Any]] = []
        self._head = b""
        self._text = ""
        self._decoder: Any = None
        self.finished = False

    def feed(self, data: bytes) -> None:
        """Parse what came."""
        if self.status is None:
            self._head += data
            if b"\r\n\r\n" not in self._head:
                return
            head, _, data = self._head.partition(b"\r\n\r\n")
            status_line, *lines = head.decode("latin-1").split("\r\n")
            self.status = int(status_line.split()[1])
            for line in lines:
                name, _, value = line.partition(":")
                self.headers[name.strip().lower()] = value.strip()
            if self.headers.get("transfer-encoding") == "chunked":
                self._decoder = _ChunkedTransferDecoder(self._chunk, self._done)
        if not data:
            return
        if self._decoder is not None:
            self._decoder.dataReceived(data)
        else:
            self._chunk(data)

    def _done(self, rest: bytes) -> None:
        self.finished = True

    def _chunk(self, data: bytes) -> None:
        self.body += data
        if not self.headers.get("content-type", "").startswith("text/event-stream"):
            return
        self._text += data.decode("utf-8")
        while "\n\n" in self._text:
            block, self._text = self._text.split("\n\n", 1)
            event: dict[str, Any] = {}
            for line in block.split("\n"):
                if line.startswith(":"):
                    event["comment"] = line[1:].strip()
                    continue
                name, _, value = line.partition(":")
                value = value[1:] if value.startswith(" ") else value
                event[name] = value
            if "data" in event:
                event["data"] = json.loads(event["data"])
            self.events.append(event)

    def error(self) -> Any:
        """The JSON body of a response that is not a stream."""
        return json.loads(self.body)

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        """The events named ``kind`` so far."""
        return [e for e in self.events if e.get("event") == kind]


class SseProtocol(Protocol):
    """A stream client on the reactor; `pause_reading` makes it a client that reads nothing."""

    def __init__(self, path: str, headers: Mapping[str, str] | None = None) -> None:
        self.path = path
        self.extra = dict(headers or {})
        self.parser = SseParser()
        self.closed: defer.Deferred[None] = defer.Deferred()

    transport: Any

    def connectionMade(self) -> None:  # noqa: N802 (Twisted API)
        self.transport.write(request_bytes(self.path, self.extra))

    def dataReceived(self, data: bytes) -> None:  # noqa: N802 (Twisted API)
        self.parser.feed(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:  # noqa: N802
        self.closed.callback(None)

    def pause_reading(self) -> None:
        """Stop reading from the socket (the server's writes then back up)."""
        self.transport.pauseProducing()

    def close(self) -> defer.Deferred[None]:
        """Close the connection; fires once it is closed."""
        self.transport.loseConnection()
        return self.closed


class BlockingSse:
    """A stream client on a plain socket (``rcvbuf``: a small receive buffer)."""

    def __init__(
        self,
        port: int,
        path: str,
        headers: Mapping[str, str] | None = None,
        rcvbuf: int | None = None,
    ) -> None:
        self.sock = socket.socket()
        if rcvbuf is not None:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(10)
        self.sock.connect(("127.0.0.1", port))
        self.sock.sendall(request_bytes(path, headers))
        self.parser = SseParser()
        self.eof = False

    def read_until(
        self, predicate: Callable[[SseParser], bool], timeout: float = 30.0
    ) -> SseParser:
        """Read until ``predicate(parser)`` holds; AssertionError after ``timeout``."""
        deadline = time.monotonic() + timeout
        while not predicate(self.parser):
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self.eof:
                raise AssertionError(
                    f"stream: condition not met ({len(self.parser.events)} events)"
                )
            self.sock.settimeout(min(remaining, 1.0))
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                self.eof = True
                continue
            if not data:
                self.eof = True
            self.parser.feed(data)
        return self.parser

    def is_closed_by_peer(self, timeout: float = 30.0) -> bool:
        """Drain the socket until the server closes (or aborts) it; False after ``timeout``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.sock.settimeout(1.0)
            try:
                data = self.sock.recv(1 << 20)
            except TimeoutError:
                continue
            except OSError:  # reset by the peer
                return True
            if not data:
                return True
        return False

    def close(self) -> None:
        """Close the socket."""
        self.sock.close()
