"""ReplyListener's matching, timeouts and bounds, on a fake clock (no Redis)."""

import json

from twisted.internet.defer import CancelledError
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from pydatacoll import errors
from pydatacoll.api.replies import DeviceAnswer, ReplyListener, ReplyTimeout
from pydatacoll.config import RedisAddress
from pydatacoll.store import keys


class _Subscribed:
    """Stands for a subscribed connection."""


class ReplyListenerTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.listener = ReplyListener(
            self.clock, RedisAddress(host="127.0.0.1", port=1), instance_id="me", max_pending=2
        )
        self.listener._protocol = _Subscribed()

    def deliver(self, request_id, body):
        message = body if isinstance(body, str) else json.dumps(body)
        self.listener._reply(keys.REPLY % ("me", request_id), message)

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
        self.listener._reply("CHANNEL:REPLY:someone-else:0", "{}")
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
        self.listener.wait("a", 5)
        self.listener.wait("b", 5)
        self.assertRaises(errors.Unavailable, self.listener.wait, "c", 5)
        self.listener._protocol = None
        self.assertRaises(errors.Unavailable, self.listener.wait, "d", 5)

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
