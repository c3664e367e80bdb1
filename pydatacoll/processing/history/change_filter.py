"""Storage policies: which samples of a point the history keeps (every, on change, none)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import attrs

from pydatacoll.model import Sample

POLICIES = ("every", "change", "none")


@attrs.frozen
class Policy:
    """How a point is stored: every sample, on change (with deadbands), or not at all."""

    mode: str = "every"
    deadband: float = 0.0
    deadband_percent: float = 0.0

    @classmethod
    def from_term_item(cls, fields: Mapping[str, Any], default: Policy) -> Policy:
        """The policy named by a term-item's free attributes (``history``,
        ``history_deadband``, ``history_deadband_percent``); missing ones take
        ``default``'s. Raises ValueError for a bad one."""
        mode = fields.get("history", default.mode)
        if mode not in POLICIES:
            raise ValueError(f"history must be one of {', '.join(POLICIES)}, not {mode!r}")
        bands = []
        for name, fallback in (
            ("history_deadband", default.deadband),
            ("history_deadband_percent", default.deadband_percent),
        ):
            value = fields.get(name, fallback)
            if isinstance(value, bool):
                raise ValueError(f"{name} must be a number")
            value = float(value)
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a non-negative number")
            bands.append(value)
        return cls(mode, bands[0], bands[1])


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def changed(old: Any, new: Any, policy: Policy) -> bool:
    """Whether ``new`` differs enough from the last stored ``old`` to be stored.

    Numbers: ``|new - old| > max(deadband, |old| * deadband_percent / 100)``, or any
    difference when both bands are 0. Anything else: inequality (type included).
    """
    if is_number(old) and is_number(new):
        if not (math.isfinite(old) and math.isfinite(new)):
            return not (old == new or (math.isnan(old) and math.isnan(new)))
        band = max(policy.deadband, abs(old) * policy.deadband_percent / 100.0)
        if band == 0:
            return bool(new != old)
        return abs(new - old) > band
    return type(old) is not type(new) or old != new


class ChangeFilter:
    """Per-point storage decisions: the policy of each term-item and its last stored value.

    The memory it keeps is one entry per configured policy and one per point stored
    "on change" (bounded by the configuration).
    """

    def __init__(self, default: Policy) -> None:
        self.default = default
        self._policies: dict[tuple[str, str], Policy] = {}
        self._last: dict[tuple[str, str, str], tuple[Any, str, tuple[str, ...]]] = {}

    def set_policy(self, term_id: str, item_id: str, policy: Policy | None) -> None:
        """Set (None: forget) a point's policy; its next sample is stored."""
        key = (term_id, item_id)
        if policy is None or policy == self.default:
            self._policies.pop(key, None)
        else:
            self._policies[key] = policy
        for point in [p for p in self._last if p[1:] == key]:
            del self._last[point]

    def clear(self) -> None:
        """Forget every policy and last value."""
        self._policies.clear()
        self._last.clear()

    def policy(self, term_id: str, item_id: str) -> Policy:
        """The policy that applies to a point."""
        return self._policies.get((term_id, item_id), self.default)

    def accept(self, sample: Sample) -> bool:
        """Whether to store ``sample``; a changed quality (or flags) is always stored."""
        policy = self._policies.get((sample.term_id, sample.item_id), self.default)
        if policy.mode == "every":
            return True
        if policy.mode == "none":
            return False
        point = sample.point
        last = self._last.get(point)
        if (
            last is None
            or last[1] != sample.quality
            or last[2] != sample.flags
            or changed(last[0], sample.value, policy)
        ):
            self._last[point] = (sample.value, sample.quality, sample.flags)
            return True
        return False


# -- rows -------------------------------------------------------------------------------

#: A row: (device_id, term_id, item_id, source_time ms | None, receive_time ms,
