"""An in-memory `ISubscriber` over `pydatacoll.testing.memory.MemoryRedis`'s PUBLISH.

It subscribes when the store is up (at once, or as soon as ``up()`` is called), hears
every PUBLISH of its channels and patterns synchronously, and can be made to lose its
connection (`MemorySubscriber.lose`) to test what an owner does on resubscription.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Sequence
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from zope.interface import implementer

from pydatacoll.store_interfaces import ISubscriber
from pydatacoll.testing.memory import MemoryRedis


@implementer(ISubscriber)
class MemorySubscriber(Service):
    """Same constructor keywords as `pydatacoll.store.subscriber.Subscriber`, over a
    `MemoryRedis` instead of an address."""

    log = Logger()

    def __init__(
        self,
        store: MemoryRedis,
        handler: Callable[[str, str], None],
        *,
        channels: Sequence[str] = (),
        patterns: Sequence[str] = (),
        on_subscribed: Callable[[], None] | None = None,
        on_lost: Callable[[], None] | None = None,
        name: str = "subscriber",
    ) -> None:
        self.store = store
        self.handler = handler
        self.channels = list(channels)
        self.patterns = list(patterns)
        self.on_subscribed = on_subscribed
        self.on_lost = on_lost
        self.label = name
        self.subscribed = False
        #: Subscriptions made so far (the first one and every resubscription).
        self.subscriptions = 0
        self._ear = _Ear(self)

    def startService(self) -> None:
        super().startService()
        self._connect()

    def stopService(self) -> Deferred[None]:
        super().stopService()
        self._unsubscribe()
        return succeed(None)

    def lose(self) -> None:
        """The connection drops: messages are no longer heard until it resubscribes,
        at once if the store is up, else when it comes back."""
        was = self.subscribed
        self._unsubscribe()
        if was and self.on_lost is not None:
            self.on_lost()
        self._connect()

    def resubscribe(self) -> None:
        """As `lose`: the owner's ``on_subscribed`` runs again once resubscribed."""
        self.lose()

    def update_channels(self, channels: Sequence[str]) -> Deferred[None]:
        """Subscribe exactly ``channels`` from now on."""
        self.channels = sorted(set(channels))
        return succeed(None)

    def _connect(self) -> None:
        if self.running:
            self.store.when_connected().addCallback(self._subscribe)

    def _subscribe(self, _: object) -> None:
        if not self.running or self.subscribed:
            return
        self.store.listeners.append(self._ear)
        self.subscribed = True
        self.subscriptions += 1
        if self.on_subscribed is not None:
            try:
                self.on_subscribed()
            except Exception:
                self.log.failure("{name}: on_subscribed failed", name=self.label)

    def _unsubscribe(self) -> None:
        if self._ear in self.store.listeners:
            self.store.listeners.remove(self._ear)
        self.subscribed = False

    def matches(self, channel: str) -> bool:
        """Whether ``channel`` is one of its channels or matches one of its patterns."""
        return channel in self.channels or any(
            fnmatch.fnmatchcase(channel, pattern) for pattern in self.patterns
        )

    def _heard(self, channel: str, message: str) -> None:
        try:
            self.handler(channel, message)
        except Exception:
            self.log.failure(
                "{name}: handling a message on {channel}", name=self.label, channel=channel
            )


class _Ear:
    """What a `MemorySubscriber` puts in `MemoryRedis.listeners`: it hears only its own
    channels, and PUBLISH counts it only for those (as Redis counts subscribers)."""

    def __init__(self, subscriber: MemorySubscriber) -> None:
        self.matches = subscriber.matches
        self._heard = subscriber._heard

    def __call__(self, channel: str, message: str) -> None:
        self._heard(channel, message)


def memory_subscription(store: MemoryRedis) -> Callable[..., MemorySubscriber]:
    """A subscription factory (as `pydatacoll.devices.manager.redis_subscription`) of
    `MemorySubscriber`s over ``store``."""

    def subscribe(handler: Callable[[str, str], None], **options: Any) -> MemorySubscriber:
        return MemorySubscriber(store, handler, **options)

    return subscribe
