"""The old path of the Modbus poller, which is `pydatacoll.protocols.modbus.poller` now.

Kept so that imports written before the rename (``ModbusDriver``) still work; new code
imports `poller.ModbusPoller`. The ``modbus`` protocol driver (the `IProtocolDriver`
plugin) is `pydatacoll.protocols.modbus.runtime.driver`.
"""

from pydatacoll.protocols.modbus.poller import ModbusPoller
from pydatacoll.protocols.modbus.values import (
    BAD_FRAME,
    EXCEPTION,
    GOOD,
    INVALID,
    NOT_CONNECTED,
    OVERLOAD,
    TIMEOUT,
    PointValue,
    ReadBatch,
    decode_read,
    quality_of,
)

#: The old name of `ModbusPoller`.
ModbusDriver = ModbusPoller

__all__ = [
    "BAD_FRAME",
    "EXCEPTION",
    "GOOD",
    "INVALID",
    "NOT_CONNECTED",
    "OVERLOAD",
    "TIMEOUT",
    "ModbusDriver",
    "ModbusPoller",
    "PointValue",
    "ReadBatch",
    "decode_read",
    "quality_of",
]
