"""Which devices this collector holds the lease of, for the processors (cluster mode).

The device manager sets a device owned when its `ClusterMember` takes the device's lease
and not owned when it starts giving it back or loses it; the processors that compute
for devices of their own (the formulas: a formula is computed by the holder of its
result device's lease) follow the changes with `Ownership.watch`, and read the samples
of devices run elsewhere through `Ownership.subscribe` (the per-device sample channels).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from twisted.logger import Logger
from zope.interface import implementer

from pydatacoll.interfaces import IDeviceOwnership

Watcher = Callable[[str, bool], None]


@implementer(IDeviceOwnership)
class Ownership:
    """See the module docstring; ``subscribe`` builds subscriptions, with the keywords
    of `pydatacoll.store.subscriber.Subscriber` (``channels``, ``on_subscribed``,
    ``name``)."""

    log = Logger()

    def __init__(self, collector_id: str, subscribe: Callable[..., Any]) -> None:
        self.collector_id = collector_id
        self._subscribe = subscribe
        self._owned: dict[str, str] = {}
        self._watchers: list[Watcher] = []

    def owns(self, device_id: str) -> bool:
        """Whether this collector holds ``device_id``'s lease now."""
        return device_id in self._owned

    def token(self, device_id: str) -> str | None:
        """The token of ``device_id``'s lease held here, or None."""
        return self._owned.get(device_id)

    @property
    def owned(self) -> frozenset[str]:
        """Every device whose lease this collector holds now."""
        return frozenset(self._owned)

    def watch(self, callback: Watcher) -> None:
        """Call ``callback(device_id, owned)`` on every change."""
        self._watchers.append(callback)

    def unwatch(self, callback: Watcher) -> None:
        """Stop calling ``callback``."""
        if callback in self._watchers:
            self._watchers.remove(callback)

    def subscribe(
        self,
        handler: Callable[[str, str], None],
        channels: Sequence[str],
        on_subscribed: Callable[[], None],
        name: str,
    ) -> Any:
        """An `ISubscriber` (not started) on the collector's Redis."""
        return self._subscribe(handler, channels=channels, on_subscribed=on_subscribed, name=name)

    def set_owned(self, device_id: str, owned: bool, token: str = "") -> None:
        """The device manager: ``device_id``'s lease was taken (True, with its
        ``token``) or is going (False)."""
        if owned == (device_id in self._owned):
            if owned:
                self._owned[device_id] = token
            return
        if owned:
            self._owned[device_id] = token
        else:
            del self._owned[device_id]
        for callback in list(self._watchers):
            try:
                callback(device_id, owned)
            except Exception:
                self.log.failure("an ownership watcher failed")
