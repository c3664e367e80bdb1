"""A Modbus device's settings and points, built from the configuration model.

Device settings are free attributes of the device (``{"protocol": "modbus", "timeout":
2, "byte_order": "CDAB", ...}``), the unit id is the term's ``address`` and a term may
set its own ``scan_interval``; see ``docs/modbus.rst``. Pure code: every error is a
`ValidationError` naming the field.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import attrs

from pydatacoll.errors import ValidationError
from pydatacoll.model import Device, Field, Term, TermItem
from pydatacoll.protocols.modbus.codec import PointFormat, Table, point_format

#: Device settings: name -> (declaration, default). Booleans are declared as 0/1 integers.
SETTINGS: dict[str, tuple[Field, Any]] = {
    f.name: (f, default)
    for f, default in (
        (Field("timeout", "number", "seconds to wait for each response", minimum=0.01,
               maximum=300), 1.0),
        (Field("connect_timeout", "number", "seconds to wait for TCP connect", minimum=0.1,
               maximum=300), 5.0),
        (Field("max_in_flight", "integer", "requests outstanding per connection", minimum=1,
               maximum=16), 1),
        (Field("max_queue", "integer", "requests waiting per connection (more are refused)",
               minimum=1, maximum=10000), 256),
        (Field("request_pause", "number", "seconds of silence after each response",
               minimum=0, maximum=60), 0.0),
        (Field("connect_pause", "number", "seconds to wait after connecting", minimum=0,
               maximum=60), 0.0),
        (Field("silent_timeouts", "integer",
               "consecutive timeouts without a valid response before the link is "
               "dropped (0: never)", minimum=0, maximum=1000), 3),
        (Field("scan_interval", "number", "default seconds between scans", minimum=0.01,
               maximum=86400), 1.0),
        (Field("byte_order", "string", "default byte order of multi-byte points",
               max_length=8), "ABCD"),
        (Field("max_read_registers", "integer", "registers per merged read", minimum=1,
               maximum=125), 125),
        (Field("max_read_bits", "integer", "bits per merged read", minimum=1, maximum=2000),
         2000),
        (Field("max_register_gap", "integer", "unused registers a merged read may bridge",
               minimum=0, maximum=124), 4),
        (Field("max_bit_gap", "integer", "unused bits a merged read may bridge", minimum=0,
               maximum=1999), 32),
        (Field("single_writes", "integer", "1: FC5/FC6 for one coil/register, 0: FC15/FC16",
               minimum=0, maximum=1), True),
        (Field("verify_writes", "integer", "1: read every write back", minimum=0, maximum=1),
         False),
        (Field("degrade_after", "integer", "consecutive failed reads before a unit is skipped "
               "(0: never)", minimum=0, maximum=1000), 3),
        (Field("degrade_time", "number", "first skip period of a failing unit (s)",
               minimum=0.1, maximum=86400), 10.0),
        (Field("degrade_max", "number", "longest skip period of a failing unit (s)",
               minimum=0.1, maximum=86400), 300.0),
        (Field("reconnect_initial", "number", "first reconnect delay (s)", minimum=0.01,
               maximum=3600), 1.0),
        (Field("reconnect_max", "number", "longest reconnect delay (s)", minimum=0.01,
               maximum=3600), 60.0),
        (Field("reconnect_factor", "number", "reconnect delay growth per failure",
               minimum=1, maximum=10), 2.0),
    )
}  # fmt: skip

_SCAN_INTERVAL = SETTINGS["scan_interval"][0]


@attrs.frozen
class ModbusSettings:
    """Everything a Modbus device link and its poller need, with defaults."""

    host: str
    port: int = 502
    timeout: float = 1.0
    connect_timeout: float = 5.0
    max_in_flight: int = 1
    max_queue: int = 256
    request_pause: float = 0.0
    connect_pause: float = 0.0
    silent_timeouts: int = 3
    scan_interval: float = 1.0
    byte_order: str = "ABCD"
    max_read_registers: int = 125
    max_read_bits: int = 2000
    max_register_gap: int = 4
    max_bit_gap: int = 32
    single_writes: bool = True
    verify_writes: bool = False
    degrade_after: int = 3
    degrade_time: float = 10.0
    degrade_max: float = 300.0
    reconnect_initial: float = 1.0
    reconnect_max: float = 60.0
    reconnect_factor: float = 2.0

    @classmethod
    def from_device(cls, device: Device) -> ModbusSettings:
        """The settings of a ``modbus`` device (its free attributes); `ValidationError`."""
        if device.ip is None:
            raise ValidationError("ip is required for protocol modbus", field="ip")
        return cls.from_mapping(device.extra, host=device.ip, port=device.port or 502)

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], **known: Any) -> ModbusSettings:
        """Settings from a mapping of setting names to JSON values (unknown names ignored)."""
        for name, (field, default) in SETTINGS.items():
            value = values.get(name)
            if value is None:
                continue
            if isinstance(default, bool):
                if isinstance(value, bool):
                    value = int(value)
                known[name] = bool(field.convert(value))
            else:
                known[name] = field.convert(value)
        settings = cls(**known)
        point_format("holding", "uint32", default_byte_order=settings.byte_order)
        if settings.degrade_max < settings.degrade_time:
            raise ValidationError("degrade_max must be at least degrade_time", field="degrade_max")
        return settings


@attrs.frozen
class ModbusPoint:
    """One point of a Modbus device: where it is, how it is coded, how often it is read."""

    key: str
    unit_id: int
    address: int
    format: PointFormat
    coefficient: float | None = None
    base_val: float | None = None
    scan_interval: float = 1.0

    @property
    def table(self) -> Table:
        """The point's register table."""
        return self.format.table

    @property
    def width(self) -> int:
        """Registers (or bits) the point spans."""
        return self.format.width


def point_from_term_item(
    item: TermItem, *, unit_id: int, scan_interval: float, default_byte_order: str = "ABCD"
) -> ModbusPoint:
    """The Modbus point of a term-item; `ValidationError` names the bad field."""
    if item.protocol_code is None:
        raise ValidationError(
            "protocol_code (the register address) is required", field="protocol_code"
        )
    fmt = point_format(
        item.code_type,
        item.data_type,
        item.byte_order,
        item.bit,
        item.count,
        address=item.protocol_code,
        default_byte_order=default_byte_order,
    )
    return ModbusPoint(
        key=item.key,
        unit_id=unit_id,
        address=item.protocol_code,
        format=fmt,
        coefficient=item.coefficient,
        base_val=item.base_val,
        scan_interval=scan_interval,
    )


@attrs.frozen
class BadPoint:
    """A point the driver cannot read, and why; the device's other points still poll."""

    key: str
    field: str | None
    reason: str

    def to_json(self) -> dict[str, Any]:
        """``{term_id, item_id, field, reason}`` as the device status shows it."""
        term_id, _, item_id = self.key.partition(":")
        return {"term_id": term_id, "item_id": item_id, "field": self.field, "reason": self.reason}


def sort_points(
    settings: ModbusSettings, terms: Iterable[Term], term_items: Iterable[TermItem]
) -> tuple[list[ModbusPoint], list[BadPoint]]:
    """The points of a device that the driver can read, and those it cannot.

    A term's unit id is its ``address`` (default 1); its ``scan_interval`` free attribute
    overrides the device's. Term-items of other terms are ignored. A point with a bad
    field (or on a term with a bad unit id or scan interval) is a `BadPoint`.
    """
    units: dict[str, tuple[int, float] | ValidationError] = {}
    for term in terms:
        unit_id = 1 if term.address is None else term.address
        if not 0 <= unit_id <= 255:
            units[term.id] = ValidationError(
                f"term {term.id}: a Modbus unit id (address) is 0 to 255", field="address"
            )
            continue
        interval = settings.scan_interval
        if term.extra.get("scan_interval") is not None:
            try:
                interval = _SCAN_INTERVAL.convert(term.extra["scan_interval"])
            except ValidationError as e:
                units[term.id] = ValidationError(f"term {term.id}: {e.message}", field=e.field)
                continue
        units[term.id] = (unit_id, interval)
    points: list[ModbusPoint] = []
    bad: list[BadPoint] = []
    for item in term_items:
        unit = units.get(item.term_id)
        if unit is None:
            continue
        try:
            if isinstance(unit, ValidationError):
                raise unit
            unit_id, interval = unit
            points.append(
                point_from_term_item(
                    item,
                    unit_id=unit_id,
                    scan_interval=interval,
                    default_byte_order=settings.byte_order,
                )
            )
        except ValidationError as e:
            bad.append(BadPoint(item.key, e.field, f"term_item {item.key}: {e.message}"))
    return points, bad


def build_points(
    settings: ModbusSettings, terms: Iterable[Term], term_items: Iterable[TermItem]
) -> list[ModbusPoint]:
    """The points of a device (see `sort_points`); the first bad one is a `ValidationError`."""
    points, bad = sort_points(settings, terms, term_items)
    if bad:
        raise ValidationError(bad[0].reason, field=bad[0].field)
    return points


def check_device(device: Device) -> None:
    """Refuse (with `ValidationError`) settings a ``modbus`` device cannot run with."""
    ModbusSettings.from_device(device)


def check_point(device: Device, term: Term, term_item: TermItem) -> None:
    """Refuse (with `ValidationError` naming the field) a point the driver cannot read."""
    try:
        byte_order = ModbusSettings.from_device(device).byte_order
    except ValidationError:
        byte_order = "ABCD"  # the device itself is refused where it is checked
    point_from_term_item(term_item, unit_id=1, scan_interval=1.0, default_byte_order=byte_order)
