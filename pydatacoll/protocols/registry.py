"""The registry of device protocols: a lazy table at the bottom layer.

The model validates ``device.protocol`` (and a point's protocol fields) against it and
``GET /api/v1/device_protocols`` serves it. The built-in entries are below; a protocol
driver adds its own entry with `register_protocol` when it is loaded. Checkers are named
``"module:function"`` and imported when first called, so this module (and the model that
uses it) imports no protocol stack: the stacks import the model, never the reverse.
"""

from __future__ import annotations

import importlib
from typing import Any

import attrs


@attrs.frozen
class DeviceProtocol:
    """What the model needs to know of a device protocol."""

    name: str
    description: str
    #: Whether a device of this protocol has a network link (and so needs ``ip``).
    has_link: bool = True
    #: The port used when a device leaves ``port`` out.
    default_port: int | None = None
    #: ``"module:function"`` checking a device's protocol settings (imported when first
    #: used: the drivers import the model). It raises `ValidationError` naming the field.
    checker: str | None = None
    #: ``"module:function"`` checking one point (term-item) of a device of this protocol,
    #: called as ``function(device, term, term_item)``; it raises `ValidationError`.
    point_checker: str | None = None
    #: Whether device_ctrl can select before operating (the gateway passes an upstream
    #: select-before-operate down only then).
    select_before_operate: bool = False
    #: Term-item fields that belong to this protocol alone: a term-item with any of them
    #: set is checked by ``item_checker`` even before its device is known.
    item_fields: tuple[str, ...] = ()
    #: ``"module:function"`` checking those fields of one term-item,
    #: called as ``function(term_item)``; it raises `ValidationError`.
    item_checker: str | None = None

    def check(self, device: Any) -> None:
        """Check ``device``'s protocol settings (nothing to check without a checker)."""
        if self.checker is None:
            return
        module, _, function = self.checker.partition(":")
        getattr(importlib.import_module(module), function)(device)

    def check_point(self, device: Any, term: Any, term_item: Any) -> None:
        """Check a point of ``device`` (nothing to check without a point checker)."""
        if self.point_checker is None:
            return
        module, _, function = self.point_checker.partition(":")
        getattr(importlib.import_module(module), function)(device, term, term_item)

    def check_item(self, term_item: Any) -> None:
        """Check ``term_item``'s fields of this protocol, when it has any of them."""
        if self.item_checker is None:
            return
        if all(getattr(term_item, name, None) is None for name in self.item_fields):
            return
        module, _, function = self.item_checker.partition(":")
        getattr(importlib.import_module(module), function)(term_item)


_REGISTRY: dict[str, DeviceProtocol] = {}


def register_protocol(protocol: DeviceProtocol) -> None:
    """Add a protocol; registering a second, different one under a name is an error."""
    existing = _REGISTRY.get(protocol.name)
    if existing is not None and existing != protocol:
        raise ValueError(f"device protocol {protocol.name!r} is already registered")
    _REGISTRY[protocol.name] = protocol


def get_protocol(name: str) -> DeviceProtocol | None:
    """The registered protocol called ``name``, if any."""
    return _REGISTRY.get(name)


def registered_protocols() -> tuple[DeviceProtocol, ...]:
    """Every registered protocol, by name."""
    return tuple(p for _, p in sorted(_REGISTRY.items()))


def device_protocols() -> dict[str, str]:
    """Protocol name -> description, as ``GET /api/v1/device_protocols`` serves it."""
    return {name: p.description for name, p in sorted(_REGISTRY.items())}


#: Term protocols are informational (the meter's own protocol behind a concentrator).
TERM_PROTOCOLS: dict[str, str] = {
    "dlt645": "DL/T 645-2007 multifunction electricity meter",
    "formula": "formula term: points computed from other points",
    "gdw130": "Q/GDW 130-2005 power load management",
    "iec104": "IEC 60870-5-104 station (common address)",
    "modbus": "Modbus unit (unit id)",
}

register_protocol(
    DeviceProtocol(
        "iec104",
        "IEC 60870-5-104 (DL/T 634.5104) controlled station over TCP",
        default_port=2404,
        checker="pydatacoll.protocols.iec104.config:check_device",
        point_checker="pydatacoll.protocols.iec104.config:check_point",
        select_before_operate=True,
    )
)
register_protocol(
    DeviceProtocol(
        "modbus",
        "Modbus TCP server (slave)",
        default_port=502,
        checker="pydatacoll.protocols.modbus.config:check_device",
        point_checker="pydatacoll.protocols.modbus.config:check_point",
        item_fields=("data_type", "byte_order", "bit", "count"),
        item_checker="pydatacoll.protocols.modbus.codec:check_item_fields",
    )
)
register_protocol(
    DeviceProtocol("formula", "computed points (no link; sources are other points)", has_link=False)
)
