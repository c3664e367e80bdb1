"""The device protocol stacks (``iec104``, ``modbus``) and their registry.

Importing this package loads only `registry` (the bottom layer: the model uses it);
the stacks are imported by name when used.
"""

from pydatacoll.protocols.registry import (
    TERM_PROTOCOLS,
    DeviceProtocol,
    device_protocols,
    get_protocol,
    register_protocol,
    registered_protocols,
)

__all__ = [
    "TERM_PROTOCOLS",
    "DeviceProtocol",
    "device_protocols",
    "get_protocol",
    "register_protocol",
    "registered_protocols",
]
