"""Driver discovery: the built-in protocol drivers, then ``pydatacoll.plugins`` providers."""

from __future__ import annotations

from typing import Any

from twisted.logger import Logger
from twisted.plugin import getPlugins
from zope.interface.exceptions import Invalid
from zope.interface.verify import verifyObject

from pydatacoll.interfaces import IProtocolDriver

log = Logger(namespace="pydatacoll.devices.manager.DeviceManager")


def builtin_drivers() -> list[Any]:
    """The drivers that ship with PyDataColl (also found through ``twisted.plugin``)."""
    from pydatacoll.protocols.iec104.runtime import driver as iec104
    from pydatacoll.protocols.modbus.runtime import driver as modbus

    return [iec104, modbus]


def discover_drivers() -> dict[str, Any]:
    """Protocol name -> driver: the built-ins, then ``pydatacoll.plugins`` providers.

    Each driver is checked with ``verifyObject``; a broken one, or a second driver for a
    name, is logged and left out.
    """
    found: dict[str, Any] = {}
    candidates = list(builtin_drivers())
    try:
        import pydatacoll.plugins as drop_in

        candidates += list(getPlugins(IProtocolDriver, drop_in))
    except ImportError:
        pass
    for driver in candidates:
        try:
            verifyObject(IProtocolDriver, driver)
        except Invalid as exc:
            log.error("protocol driver {driver!r} refused: {error}", driver=driver, error=exc)
            continue
        if driver.name in found:
            if found[driver.name] is not driver and type(found[driver.name]) is not type(driver):
                log.error("a second driver for protocol {name} is ignored", name=driver.name)
            continue
        found[driver.name] = driver
    return found
