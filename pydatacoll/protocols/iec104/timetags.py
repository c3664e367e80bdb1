"""CP56Time2a and CP24Time2a time tags (IEC 60870-5-4, 6.8), in a given time zone."""

from __future__ import annotations

import datetime
import struct

UTC = datetime.UTC


def encode_cp56(when: datetime.datetime, tz: datetime.tzinfo = UTC, invalid: bool = False) -> bytes:
    """CP56Time2a of ``when`` (aware; a naive value is taken as being in ``tz``)."""
    return bytes(write_cp56(when, tz, invalid, bytearray(7)))


def write_cp56(
    when: datetime.datetime, tz: datetime.tzinfo, invalid: bool, out: bytearray
) -> bytearray:
    """Write the CP56Time2a octets of ``when`` into ``out`` (7 octets) and return it."""
    local = when.replace(tzinfo=tz) if when.tzinfo is None else when.astimezone(tz)
    if not 2000 <= local.year <= 2127:
        raise ValueError(f"CP56Time2a cannot carry the year {local.year}")
    ms = local.second * 1000 + local.microsecond // 1000
    dst = local.dst()
    struct.pack_into(
        "<HBBBBB",
        out,
        0,
        ms,
        local.minute | (0x80 if invalid else 0),
        local.hour | (0x80 if dst else 0),
        local.day | (local.isoweekday() << 5),
        local.month,
        local.year - 2000,
    )
    return out


def decode_cp56(
    ms: int, minute: int, hour: int, day: int, month: int, year: int, tz: datetime.tzinfo = UTC
) -> tuple[datetime.datetime | None, bool]:
    """The aware time of CP56Time2a fields and whether it is invalid.

    A time whose fields are out of range comes back as None (and invalid): RTUs without a
    clock send zeros, which must not close the link.
    """
    invalid = bool(minute & 0x80)
    try:
        when = datetime.datetime(
            2000 + (year & 0x7F),
            month & 0x0F,
            day & 0x1F,
            hour & 0x1F,
            minute & 0x3F,
            ms // 1000,
            (ms % 1000) * 1000,
            tzinfo=tz,
            # SU marks summer time: it picks the right one of an hour that occurs twice.
            fold=0 if hour & 0x80 or isinstance(tz, datetime.timezone) else 1,
        )
    except ValueError:
        return None, True
    return when, invalid


def decode_cp24(
    ms: int, minute: int, reference: datetime.datetime
) -> tuple[datetime.datetime | None, bool]:
    """The time of CP24Time2a fields: the one nearest to ``reference`` (an aware time).

    CP24Time2a carries no hour: the hour is the reference's, or the one before or after
    when that puts the time nearer to the reference (a time tag is never more than half
    an hour from when it arrives).
    """
    invalid = bool(minute & 0x80)
    minute &= 0x3F
    if minute > 59 or ms > 59999:
        return None, True
    when = reference.replace(minute=minute, second=ms // 1000, microsecond=(ms % 1000) * 1000)
    half_hour = datetime.timedelta(minutes=30)
    if when - reference > half_hour:
        when -= datetime.timedelta(hours=1)
    elif reference - when > half_hour:
        when += datetime.timedelta(hours=1)
    return when, invalid
