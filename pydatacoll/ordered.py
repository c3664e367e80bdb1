"""`OrderedService`: a MultiService that stops its children in reverse start order.

Bottom layer (imports Twisted only), so that the composition root (`pydatacoll.service`)
and the collector role (`pydatacoll.devices.collector`) can both use it without importing
each other.
"""

from __future__ import annotations

from typing import Any

from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure


class OrderedService(MultiService):
    """A MultiService that stops its children one at a time, the last started first.

    Twisted's MultiService stops them all at once; here the API stops before the
    collector, and the collector (which writes what it still holds) before Redis.
    """

    log = Logger()

    def stopService(self) -> Deferred[None]:
        Service.stopService(self)
        d: Deferred[Any] = succeed(None)
        for child in reversed(list(self)):
            d.addCallback(_stop, child)
            d.addErrback(self._stop_failed, child)
        return d.addCallback(lambda _: None)

    def _stop_failed(self, failure: Failure, child: Any) -> None:
        self.log.failure("stopping {name}", failure, name=child.name)


def _stop(_: object, child: Any) -> Any:
    return child.stopService()
