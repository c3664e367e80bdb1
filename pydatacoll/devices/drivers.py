"""Driver discovery: the built-in protocol drivers, then ``pydatacoll.plugins`` providers."""

from __future__ import annotations

from typing import Any

from twisted.logger import Logger

from pydatacoll.discovery import discover
from pydatacoll.interfaces import IProtocolDriver

log = Logger(namespace="pydatacoll.devices.manager.DeviceManager")


def builtin_drivers() -> list[Any]:
    """The drivers that ship with PyDataColl (also found through ``twisted.plugin``)."""
    from pydatacoll.protocols.iec104.runtime import driver as iec104
    from pydatacoll.protocols.modbus.runtime import driver as modbus

    return [iec104, modbus]


def discover_drivers(package: Any = None) -> dict[str, Any]:
    """Protocol name -> driver: the built-ins, then ``pydatacoll.plugins`` providers.

    The one discovery policy (`pydatacoll.discovery`): each driver is checked with
    ``verifyObject``; a broken one is left out, and a protocol name two different
    drivers provide is left out for both (a device of that protocol then reports "no
    driver ... is installed" and the log says why). Every refusal is logged.
    """
    if package is None:
        import pydatacoll.plugins as package
    discovered = discover(
        IProtocolDriver, package, builtins=builtin_drivers(), kind="protocol driver"
    )
    for name, reason in sorted(discovered.refused.items()):
        log.error("protocol driver {name} refused: {reason}", name=name, reason=reason)
    return discovered.found
