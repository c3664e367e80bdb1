"""An IEC 104 device's settings, parsed and checked from the configuration model.

Device settings are the device's free attributes (all optional): ``k``, ``w``, ``t0`` ..
``t3``, ``timezone`` (IANA name, default UTC), ``endpoints`` (redundant ``"host:port"``
list tried after ``ip:port``), ``interrogation_interval``, ``interrogation_groups``,
``counter_interval``, ``clock_sync_interval``, ``clock_sync`` (on start, default true),
``command_timeout``, ``wait_termination``, and for IEC 62351-3 TLS ``tls_ca``,
``tls_cert``, ``tls_key`` (file paths where the collector runs) and optionally
``tls_fingerprints`` (SHA-256 of the accepted server certificates). Every error is a
`ValidationError` naming the attribute.
"""

from __future__ import annotations

import datetime
import zoneinfo
from typing import Any

import attrs

from pydatacoll import errors
from pydatacoll.model import Device, Field, Term, TermItem
from pydatacoll.protocols.iec104.asdu import IEC104, AsduParams
from pydatacoll.protocols.iec104.link import LinkParams
from pydatacoll.protocols.iec104.tls import TlsSettings, tls_settings

#: Device attributes and how they are checked.
SETTINGS = (
    Field("k", "integer", "k: unacknowledged I-frames we may send", minimum=1, maximum=32767),
    Field("w", "integer", "w: acknowledge after this many I-frames", minimum=1, maximum=32767),
    Field("t0", "number", "t0: connect timeout (s)", minimum=0.1, maximum=255),
    Field("t1", "number", "t1: acknowledgement timeout (s)", minimum=0.1, maximum=255),
    Field("t2", "number", "t2: acknowledge a quiet link after (s)", minimum=0.1, maximum=255),
    Field("t3", "number", "t3: test an idle link after (s)", minimum=0.1, maximum=172800),
    Field("interrogation_interval", "number", "periodic GI (s, 0 = off)", minimum=0, maximum=1e6),
    Field("counter_interval", "number", "periodic counter interrogation", minimum=0, maximum=1e6),
    Field("clock_sync_interval", "number", "periodic clock sync (s)", minimum=0, maximum=1e6),
    Field("command_timeout", "number", "command confirmation timeout", minimum=0.1, maximum=600),
)


def _settings(device: Device) -> dict[str, Any]:
    values = {}
    for field in SETTINGS:
        if device.extra.get(field.name) is not None:
            values[field.name] = field.convert(device.extra[field.name])
    return values


def _endpoints(device: Device) -> list[tuple[str, int]]:
    assert device.ip is not None
    endpoints = [(device.ip, device.port or 2404)]
    extra = device.extra.get("endpoints") or []
    if not isinstance(extra, list) or len(extra) > 8:
        raise errors.ValidationError(
            "endpoints is a list of at most 8 host:port", field="endpoints"
        )
    for text in extra:
        host, _, port = str(text).rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise errors.ValidationError(f"{text!r} is not host:port", field="endpoints")
        endpoints.append((host, int(port)))
    return endpoints


def _timezone(device: Device) -> datetime.tzinfo:
    name = device.extra.get("timezone") or "UTC"
    if name == "UTC":
        return datetime.UTC
    try:
        return zoneinfo.ZoneInfo(str(name))
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
        raise errors.ValidationError(f"unknown time zone {name!r}", field="timezone") from None


@attrs.frozen
class DeviceSettings:
    """An ``iec104`` device's settings, checked."""

    link: LinkParams
    asdu: AsduParams
    #: `StationParams` fields other than the common addresses (those come from terms).
    station: dict[str, Any]
    endpoints: list[tuple[str, int]]
    #: IEC 62351-3 TLS (``tls_ca``, ``tls_cert``, ``tls_key``, ``tls_fingerprints``).
    tls: TlsSettings | None = None


def parse_device(device: Device) -> DeviceSettings:
    """The settings of an ``iec104`` device; `ValidationError` names the bad attribute."""
    values = _settings(device)
    link = {k: values[k] for k in ("k", "w", "t0", "t1", "t2", "t3") if k in values}
    try:
        link_params = LinkParams(**link)
    except ValueError as exc:
        # "w (9) must not exceed k (8)", "t2 (20) must be less than t1 (15)": name the first.
        named = str(exc).split(" ", 1)[0]
        field = named if named in link else next(iter(link), "k")
        raise errors.ValidationError(str(exc), field=field) from None
    tz = _timezone(device)
    station: dict[str, Any] = {
        "interrogation_interval": values.get("interrogation_interval", 0.0),
        "counter_interval": values.get("counter_interval", 0.0),
        "clock_sync_interval": values.get("clock_sync_interval", 0.0),
        "command_timeout": values.get("command_timeout", 10.0),
        "clock_sync_on_start": bool(device.extra.get("clock_sync", True)),
        "wait_termination": bool(device.extra.get("wait_termination", False)),
    }
    groups = device.extra.get("interrogation_groups")
    if groups is not None:
        if isinstance(groups, list):  # JSON 3.0 is the integer 3
            groups = [int(g) if isinstance(g, float) and g.is_integer() else g for g in groups]
        if not isinstance(groups, list) or not all(
            isinstance(g, int) and not isinstance(g, bool) and 0 <= g <= 16 for g in groups
        ):
            raise errors.ValidationError(
                "interrogation_groups is a list of 0 (station) to 16",
                field="interrogation_groups",
            )
        station["interrogation_groups"] = tuple(groups) or (0,)
    asdu = AsduParams(tz=tz) if tz is not datetime.UTC else IEC104
    return DeviceSettings(
        link_params, asdu, station, _endpoints(device), tls_settings(device.extra)
    )


def check_device(device: Device) -> None:
    """Refuse (with `ValidationError`) settings an ``iec104`` device cannot run with."""
    parse_device(device)


def check_point(device: Device, term: Term, term_item: TermItem) -> None:
    """Refuse a point an ``iec104`` device could not map: it needs its IOA."""
    if term_item.protocol_code is None:
        raise errors.ValidationError(
            "protocol_code (the information object address) is required for an iec104 point",
            field="protocol_code",
        )
