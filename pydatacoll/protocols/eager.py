"""Sending a small frame at once on a TCP transport that has nothing else to send.

Twisted's `FileDescriptor.write` always buffers: it asks the reactor to watch the socket
for writability and sends on a later reactor turn, which costs two ``epoll_ctl`` calls
and one writable event dispatched through the reactor per frame. A poller that sends one
request per device per second pays that for every request (500 a second at 500 Modbus
devices, 8 % of the protocol layer's CPU). `write_now` sends the bytes with the
transport's own `writeSomeData` when nothing waits to be sent before them, and hands what
is left (a partial send, or everything after an error) to ``transport.write`` as before,
so the order of the bytes and the handling of a lost connection stay Twisted's.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import tcp


def write_now(transport: Any, data: bytes) -> None:
    """Write ``data`` on ``transport``: at once when it is a plain TCP connection with an
    empty send buffer, otherwise (or for the rest of a partial send) by ``write``."""
    if (
        isinstance(transport, tcp.Connection)
        and not transport.TLS
        and transport.connected
        and not transport.disconnecting
        and not transport._aborting  # what is written after an abort is dropped
        and not transport._writeDisconnecting
        and not transport._writeDisconnected
        and not transport._tempDataLen
        and len(transport.dataBuffer) == transport.offset
    ):
        sent = transport.writeSomeData(data)
        if type(sent) is int:  # otherwise the connection is lost: doWrite will say so
            if sent >= len(data):
                return
            data = data[sent:]
    transport.write(data)
