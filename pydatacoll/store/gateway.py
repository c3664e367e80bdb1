"""What a northbound gateway reads from and writes to Redis (every command in one place)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from twisted.internet.defer import Deferred, FirstError, gatherResults, inlineCallbacks
from zope.interface import implementer

from pydatacoll.store import keys
from pydatacoll.store.config import natural_key
from pydatacoll.store.redis import when_connected
from pydatacoll.store_interfaces import IGatewayStore


@implementer(IGatewayStore)
class GatewayStore:
    """Gateway configuration, the live values and states of devices, gateway statuses."""

    def __init__(self, redis: Any) -> None:
        self.redis = redis

    def when_connected(self) -> Deferred[None]:
        """Fires once Redis can be used (at once when it can)."""
        return when_connected(self.redis)

    def gateway_ids(self) -> Deferred[list[str]]:
        """Every gateway id, in natural order."""
        d = self.redis.call("smembers", keys.GATEWAYS)
        return d.addCallback(lambda ids: sorted(ids or (), key=natural_key))

    @inlineCallbacks
    def gateway(self, gateway_id: str) -> Any:
        """``(gateway fields, [point fields, ...])`` (hashes of JSON texts), or None."""
        fields = yield self.redis.call("hgetall", keys.GATEWAY % gateway_id)
        if not fields:
            return None
        ioas = yield self.redis.call("smembers", keys.GATEWAY_POINTS % gateway_id)
        # All at once: the pool pipelines them (thousands of points, one round trip each
        # would take seconds on a busy Redis).
        try:
            replies = yield gatherResults(
                [
                    self.redis.call("hgetall", keys.GATEWAY_POINT % (gateway_id, ioa))
                    for ioa in sorted(ioas or (), key=natural_key)
                ],
                consumeErrors=True,
            )
        except FirstError as e:
            e.subFailure.raiseException()  # the first error itself (StoreUnavailable...)
        return fields, [point for point in replies if point]

    def point_ioas(self, gateway_id: str) -> Deferred[list[int]]:
        """The IOAs of a gateway's points, ascending."""
        d = self.redis.call("smembers", keys.GATEWAY_POINTS % gateway_id)
        return d.addCallback(lambda ioas: sorted(int(i) for i in ioas or ()))

    def point_fields(self, gateway_id: str, ioa: int) -> Deferred[dict[str, str]]:
        """One gateway point's hash; empty when missing."""
        return self.redis.call("hgetall", keys.GATEWAY_POINT % (gateway_id, ioa))

    @inlineCallbacks
    def device_values(self, device_ids: Iterable[str]) -> Any:
        """``{device_id: {"term_id:item_id": sample}}``: the latest sample of each point."""
        result: dict[str, dict[str, Any]] = {}
        for device_id in sorted(set(device_ids)):
            stored = yield self.redis.call("hgetall", keys.DEVICE_VALUES % device_id)
            values = {}
            for name, text in (stored or {}).items():
                try:
                    values[name] = json.loads(text)
                except ValueError:
                    continue
            result[device_id] = values
        return result

    @inlineCallbacks
    def device_states(self, device_ids: Iterable[str]) -> Any:
        """``{device_id: state}`` as the collector last wrote it (None: no status)."""
        states: dict[str, str | None] = {}
        for device_id in sorted(set(device_ids)):
            text = yield self.redis.call("hget", keys.DEVICE_STATUS % device_id, "status")
            state = None
            if text:
                try:
                    status = json.loads(text)
                except ValueError:
                    status = None
                if isinstance(status, dict) and isinstance(status.get("state"), str):
                    state = status["state"]
            states[device_id] = state
        return states

    def write_statuses(self, statuses: dict[str, dict[str, Any]]) -> Deferred[Any]:
        """Store each running gateway's status (field = gateway id)."""
        flat: dict[str, str] = {gid: json.dumps(s, default=str) for gid, s in statuses.items()}
        return self.redis.call("hmset", keys.GATEWAY_STATUS, flat)

    def forget_statuses(self, gateway_ids: Iterable[str]) -> Deferred[Any]:
        """Remove the statuses of gateways that no longer run here."""
        return self.redis.call("hdel", keys.GATEWAY_STATUS, list(gateway_ids))

    def read_status(self, gateway_id: str) -> Deferred[Any]:
        """A gateway's stored status (a JSON object), or None."""
        d = self.redis.call("hget", keys.GATEWAY_STATUS, gateway_id)
        return d.addCallback(lambda text: _json_object(text))

    @inlineCallbacks
    def device_protocols(self, device_ids: Iterable[str]) -> Any:
        """``{device_id: protocol name}`` (None for a device that does not exist)."""
        protocols: dict[str, str | None] = {}
        for device_id in sorted(set(device_ids)):
            text = yield self.redis.call("hget", keys.DEVICE % device_id, "protocol")
            try:
                name = json.loads(text) if text else None
            except ValueError:
                name = None
            protocols[device_id] = name if isinstance(name, str) else None
        return protocols


def _json_object(text: Any) -> Any:
    if not text:
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None
