"""txredisapi's reply parser without one reactor turn per bulk string.

txredisapi's pure-Python parser (``LineReceiver``) ends every bulk string
(``$n\\r\\n...``) by pausing the transport and parsing the rest of what it has read in a
``callLater(0)``: one reactor turn per bulk string. A pub/sub message is three or four
of them, a device's configuration (``store/device_config.lua``) tens of thousands. While
other work fills each turn (an IEC 104 flood, the ingest), a command's request and reply
then wait several whole turns each, and a large reply can take longer than the reply
timeout (seen: the reconcile of a 4800-point device failed with "Not received Redis
response in 5.0 seconds" under a flood).

It also removes a misrouted answer: when the deferred rest of a read ran after the reply
timeout of its command (both due in the same turn of a busy reactor), the timeout failed
the waiting commands and the late reply stayed queued, to answer the next command sent
on that connection before it closed (seen at 5,000 links under load: ``GET
STR:CONFIG_VERSION`` answered with a device's configuration;
``tests/store/test_replies_parser.py`` LateReplyTests).

`install` (idempotent, done when `pydatacoll.store.redis` is imported, which every
connection's module imports) parses the rest at once, in a loop (no
recursion, however many elements a reply has). The replies and their order are the same.
"""

from __future__ import annotations

from typing import Any

import txredisapi

_RECEIVER: Any = txredisapi.LineReceiver
#: The parser's buffer (a name-mangled private attribute of ``LineReceiver``).
_BUFFER = "_LineReceiver__buffer"


def _set_line_mode(self: Any, extra: bytes = b"") -> None:
    self.line_mode = 1
    if extra:
        # The rest of what was read: parsed now by the loop in `_data_received`.
        setattr(self, _BUFFER, extra + getattr(self, _BUFFER))
        self._pdc_more = True


def install() -> None:
    """Patch ``txredisapi.LineReceiver`` (once)."""
    if getattr(_RECEIVER, "_pdc_installed", False):
        return
    original = _RECEIVER.dataReceived

    def _data_received(self: Any, data: bytes, unpause: bool = False) -> Any:
        why = original(self, data, unpause)
        while getattr(self, "_pdc_more", False) and not self.paused and not why:
            self._pdc_more = False
            why = original(self, b"")
        return why

    _RECEIVER.dataReceived = _data_received
    _RECEIVER.setLineMode = _set_line_mode
    _RECEIVER._pdc_installed = True
