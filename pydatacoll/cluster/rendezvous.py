"""Rendezvous (highest random weight) hashing of devices over collectors.

Every collector computes the same answer from the same list of live collectors, with no
coordination: a device goes to the collector of highest ``weight(collector, device)``.
When a collector joins, it takes only the devices for which it now scores highest; when
one leaves, only its own devices move, each to its runner-up. The weight is a BLAKE2b
digest, never Python's ``hash`` (salted per process, so two collectors would disagree).
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Iterable, Mapping


def weight(collector_id: str, device_id: str) -> int:
    """A stable 64-bit pseudo-random weight of the pair (same on every machine)."""
    pair = collector_id.encode() + b"\x00" + device_id.encode()  # ids hold no NUL
    digest = hashlib.blake2b(pair, digest_size=8, person=b"pdc-hrw").digest()
    return int.from_bytes(digest, "big")


def owner(
    device_id: str, collectors: Iterable[str], allowed: Collection[str] | None = None
) -> str | None:
    """The collector that should run ``device_id``: None when no live collector may.

    ``allowed`` is the device's optional ``collectors`` restriction (None or empty: any).
    Ties (one in 2**64) go to the larger id, so the answer never depends on order.
    """
    candidates = [c for c in collectors if not allowed or c in allowed]
    if not candidates:
        return None
    return max(candidates, key=lambda c: (weight(c, device_id), c))


def assign(
    devices: Mapping[str, Collection[str] | None], collectors: Iterable[str]
) -> dict[str, str | None]:
    """``{device_id: owner}`` for ``devices`` (device id -> its ``collectors`` restriction)."""
    live = sorted(set(collectors))
    return {device_id: owner(device_id, live, allowed) for device_id, allowed in devices.items()}


def mine(
    collector_id: str, devices: Mapping[str, Collection[str] | None], collectors: Iterable[str]
) -> set[str]:
    """The devices ``collector_id`` should run, given the live ``collectors``."""
    return {d for d, who in assign(devices, collectors).items() if who == collector_id}


def restriction(value: object) -> frozenset[str] | None:
    """A device's free attribute ``collectors`` as a restriction: a JSON list of ids or a
    comma-separated text; None (any collector) when absent or empty."""
    if value is None:
        return None
    if isinstance(value, str):
        names = [n.strip() for n in value.split(",")]
    elif isinstance(value, list | tuple):
        names = [str(n).strip() for n in value]
    else:
        raise ValueError("collectors must be a list of collector ids or a comma-separated text")
    return frozenset(n for n in names if n) or None
