"""ReplyListener's matching, timeouts and bounds, on a fake clock and the in-memory store
(no redis-server): the collector's replies are PUBLISHed to MemoryRedis and reach the
listener through its MemorySubscriber."""

import json

from twisted.internet.defer import CancelledError
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from pydatacoll import errors
from pydatacoll.api.replies import DeviceAnswer, ReplyListener, ReplyTimeout
from pydatacoll.store import keys
from pydatacoll.store_interfaces import ISubscriber
from pydatacoll.testing.memory import MemoryRedis
from pydatacoll.testing.memory_subscriber import memory_subscription


class ReplyListenerTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.store = MemoryRedis()
        self.listener = ReplyListener(
            self.clock,
            instance_id="me",
            max_pending=2,
            subscribe=memory_subscription(self.store),
        )
        self.listener.startService()
        self.addCleanup(self.listener.stopService)

    def deliver(self, request_id, body):
        message = body if isinstance(body, str) else json.dumps(body)
        self.successResultOf(self.store.call("publish", keys.REPLY % ("me", request_id), message))

    def test_subscribes_through_its_subscriber(self):
        verifyObject(ISubscriber, self.listener.subscriber)
        self.assertTrue(self.listener.subscribed)
        self.assertEqual(self.listener.subscriber.patterns, [keys.REPLY_PATTERN % "me"])

    def test_replies_go_to_their_own_request(self):
        a = self.listener.wait("a", 5)
        b = self.listener.wait("b", 5)
        self.deliver("b", {"request_id": "b", "outcome": "confirmed"})
        self.assertEqual(self.successResultOf(b)["outcome"], "confirmed")
        self.assertNoResult(a)
        self.deliver("a", {"request_id": "a", "outcome": "negative"})
        self.assertEqual(self.successResultOf(a)["outcome"], "negative")
        self.assertEqual(self.listener.pending, 0)

    def test_timeout_runs_on_the_injected_clock(self):
        d = self.listener.wait("a", 5)
        self.clock.advance(4.9)
        self.assertNoResult(d)
        self.clock.advance(0.2)
        self.failureResultOf(d, ReplyTimeout)
        self.deliver("a", {"request_id": "a", "outcome": "confirmed"})
        self.assertEqual(self.listener.late_replies, 1)

    def test_malformed_replies_are_failed_outcomes(self):
        for number, message in enumerate(
            ["{", "[1]", json.dumps({"request_id": "other", "outcome": "confirmed"})]
        ):
            d = self.listener.wait(str(number), 5)
            self.deliver(str(number), message)
            self.assertEqual(self.successResultOf(d)["outcome"], "failed")
        self.store.call("publish", keys.REPLY % ("someone-else", "0"), "{}")
        self.assertEqual(self.listener.late_replies, 0)

    def test_non_finite_values_in_a_reply_become_null(self):
        d = self.listener.wait("nan", 5)
        self.deliver(
            "nan",
            '{"outcome": "confirmed", "sample": {"value": NaN, "quality": "good"}, "x": -Infinity}',
        )
        reply = self.successResultOf(d)
        self.assertEqual((reply["sample"]["value"], reply["x"]), (None, None))

    def test_bounded_and_refused_while_unsubscribed(self):
        waiting = [self.listener.wait("a", 5), self.listener.wait("b", 5)]
        self.assertRaises(errors.Unavailable, self.listener.wait, "c", 5)
        self.store.down()
        self.listener.subscriber.lose()  # the connection drops while Redis is away
        self.assertRaises(errors.Unavailable, self.listener.wait, "d", 5)
        back = self.listener.when_subscribed()
        self.assertNoResult(back)
        self.store.up()  # resubscribed: requests may be sent again
        self.successResultOf(back)
        self.assertTrue(self.listener.subscribed)
        for d in waiting:  # they kept waiting through the outage
            self.assertNoResult(d)
        self.listener.stopService()
        for d in waiting:
            self.failureResultOf(d, errors.Unavailable)

    def test_cancel_forgets_the_request(self):
        d = self.listener.wait("a", 5)
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertEqual((self.listener.pending, self.clock.getDelayedCalls()), (0, []))

    def test_stop_fails_what_waits(self):
        d = self.listener.wait("a", 5)
        self.successResultOf(self.listener.stopService())
        self.failureResultOf(d, errors.Unavailable)
        self.assertEqual(self.clock.getDelayedCalls(), [])


class DeviceAnswerTests(SynchronousTestCase):
    def test_reply_normalisation(self):
        answer = DeviceAnswer.from_reply(
            "r", {"outcome": "negative", "message": 5, "cause": {"cot": 47}, "sample": [1]}
        )
        self.assertEqual(
            (answer.status, answer.message, answer.cause, answer.sample),
            (409, "", '{"cot": 47}', None),
        )
        body = answer.to_json()
        self.assertEqual(
            (body["error"], body["field"], body["outcome"]), ("negative", None, "negative")
        )
        ok = DeviceAnswer.from_reply("r", {"outcome": "confirmed", "sample": {"value": 1}})
        self.assertEqual((ok.status, "error" in ok.to_json()), (200, False))
        self.assertEqual(DeviceAnswer.from_reply("r", {"outcome": None}).status, 502)
