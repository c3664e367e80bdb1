"""`MasterResolver.disconnect` leaves nothing of the resolver in the reactor.

A master lookup holds a timer of txredisapi's (``discover_master``'s ``on_timeout``, up
to `SENTINEL_DELAY`); a resolver closed while a lookup was in flight left it behind (a
dirty reactor in ``test_sentinel`` in CI; in the daemon, a lookup failing after stop).
"""

from __future__ import annotations

import socket
from typing import Any

import txredisapi
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from pydatacoll.config import parse_redis_url
from pydatacoll.store.sentinel import MasterResolver


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


class DisconnectTests(TestCase):
    timeout = 20

    @inlineCallbacks
    def test_disconnect_waits_for_a_lookup_in_flight(self) -> Any:
        address = parse_redis_url(f"sentinel://127.0.0.1:{closed_port()}/mymaster?db=0")
        resolver = MasterResolver(address, timeout=0.5)
        lookup = resolver.master()  # no Sentinel answers: it settles on its timer
        self.assertFalse(lookup.called)
        yield resolver.disconnect()
        self.assertTrue(lookup.called)  # settled before disconnect fired: no timer left
        yield deferLater(reactor, 0, lambda: None)
        self.failureResultOf(lookup, txredisapi.MasterNotFoundError)


class _AnsweringSentinel:
    """A Sentinel connection that names a healthy master at once (synchronously)."""

    def sentinel_masters(self) -> Any:
        from twisted.internet.defer import succeed

        state = {"ip": "10.0.0.7", "port": "6390", "is_master": True, "is_sdown": False}
        state.update(is_odown=False, **{"num-other-sentinels": 2})
        return succeed({"mymaster": state})


class LookupTimerTests(TestCase):
    @inlineCallbacks
    def test_an_answer_at_once_leaves_no_timer(self) -> Any:
        """txredisapi's own lookup kept its timer when a Sentinel answered before the
        timer was made (its cancel failed): up to SENTINEL_DELAY in the reactor."""
        from twisted.internet.task import Clock

        address = parse_redis_url(f"sentinel://127.0.0.1:{closed_port()}/mymaster?db=0")
        clock = Clock()
        resolver = MasterResolver(address, timeout=0.5, clock=clock)
        real = resolver.sentinel.sentinels
        resolver.sentinel.sentinels = [_AnsweringSentinel()]
        self.assertEqual(self.successResultOf(resolver.master()), ("10.0.0.7", 6390))
        # the pool's path (txredisapi calls discover_master on the same object)
        found = resolver.sentinel.discover_master("mymaster")
        self.assertEqual(self.successResultOf(found), ("10.0.0.7", 6390))
        self.assertEqual(clock.getDelayedCalls(), [])
        resolver.sentinel.sentinels = real
        yield resolver.disconnect()
        self.failureResultOf(resolver.master(), txredisapi.MasterNotFoundError)
