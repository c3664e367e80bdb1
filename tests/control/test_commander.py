"""The one command path, in memory: `Commander` over `MemoryRedis` (stores and PUBLISH),
the real `ReplyListener` on an in-memory subscription, a collector played by a
`MemorySubscriber` on the request channels, timeouts on a `Clock`. Every device_ctrl
outcome has its audit entry; only a 2xx outcome is success."""

import json

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from pydatacoll import errors
from pydatacoll.control.commander import Commander, CommandSettings, make_commander
from pydatacoll.control.priority import LINGER, CommandPriority
from pydatacoll.control.replies import DeviceAnswer, ReplyListener
from pydatacoll.interfaces import ICommander
from pydatacoll.model import iso_time
from pydatacoll.store import keys
from pydatacoll.testing.memory import MemoryRedis
from pydatacoll.testing.memory_subscriber import memory_subscription
from tests.control.support import store_point

IDS = {"device_id": "1", "term_id": "10", "item_id": "1000"}
SAMPLE = {**IDS, "value": 7, "quality": "good", "flags": [], "source_time": None}
AUDIT_FIELDS = [
    "time",
    "request_id",
    "client",
    "token_id",
    "device_id",
    "term_id",
    "item_id",
    "value",
    "select",
    "outcome",
    "status",
    "message",
    "cause",
]


class Counter:
    """The ``commands`` metric of `ProcessMetrics`: outcome -> count."""

    def __init__(self):
        self.counts = {}

    def labels(self, outcome):
        self.counts.setdefault(outcome, 0)

        class _Child:
            def inc(child):
                self.counts[outcome] += 1

        return _Child()


class Metrics:
    def __init__(self):
        self.commands = Counter()


class CommanderTests(SynchronousTestCase):
    def setUp(self):
        self.memory = MemoryRedis()
        self.clock = Clock()
        self.clock.advance(1_800_000_000)
        self.successResultOf(store_point(self.memory))
        subscribe = memory_subscription(self.memory)
        self.replies = ReplyListener(self.clock, subscribe=subscribe, instance_id="me")
        self.replies.startService()
        self.addCleanup(self.replies.stopService)
        #: What the collector answers: ``script(channel, request)`` -> reply or None.
        self.script = lambda channel, request: {"outcome": "confirmed", "message": "done"}
        self.requests = []
        self.collector = subscribe(
            self.collect, channels=[keys.DEVICE_CALL, keys.DEVICE_CTRL], name="collector"
        )
        self.collector.startService()
        self.metrics = Metrics()
        settings = CommandSettings(device_timeout=2.0, ctrl_log_length=5)
        self.commander = make_commander(
            self.memory, settings, self.clock, self.replies, self.metrics
        )

    def collect(self, channel, message):
        request = json.loads(message)
        self.requests.append((channel, request))
        reply = self.script(channel, request)
        if reply is not None:
            self.reply(request, reply)

    def reply(self, request, reply):
        body = json.dumps({"request_id": request["request_id"], **reply})
        self.memory.call("publish", request["reply_to"], body)

    def ctrl(self, body=None, **options):
        return self.commander.device_ctrl(
            "r1", dict(IDS), body or {"value": 7}, "10.0.0.9:4000", "tok", **options
        )

    def audit(self):
        """The audit entries, oldest first."""
        return [fields for _, fields in self.memory.data.get(keys.CTRL_LOG, [])]

    def assert_failed_with(self, d, outcome, status):
        error = self.failureResultOf(d, errors.ApiError).value
        self.assertEqual((getattr(error, "outcome", error.code), error.status), (outcome, status))
        return error

    def assert_nothing_waits(self):
        self.assertEqual(self.replies.pending, 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    # -- outcomes ---------------------------------------------------------------------------
    def test_provides_its_interface(self):
        self.assertTrue(verifyObject(ICommander, self.commander))

    def test_confirmed_is_success_with_its_audit_entry(self):
        answer = self.successResultOf(self.ctrl({"value": 7, "select": True}))
        self.assertEqual(
            (answer.outcome, answer.status, answer.message), ("confirmed", 200, "done")
        )
        ((channel, request),) = self.requests
        self.assertEqual(channel, keys.DEVICE_CTRL)
        self.assertEqual(
            request,
            {
                "request_id": "r1",
                **IDS,
                "value": 7,
                "select": True,
                "client": "10.0.0.9:4000",
                "token_id": "tok",
                "reply_to": keys.REPLY % ("me", "r1"),
                "deadline": self.clock.seconds() + 2.0,
                # What the collector's audit entry needs (it writes it with its answer).
                "audit": {
                    "time": iso_time(self.clock.seconds()),
                    "request_id": "r1",
                    "client": "10.0.0.9:4000",
                    "token_id": "tok",
                    **IDS,
                    "value": "7",
                    "select": "true",
                },
                "audit_length": 5,
            },
        )
        (entry,) = self.audit()
        self.assertEqual(list(entry), AUDIT_FIELDS)
        self.assertEqual(
            entry,
            {
                "time": iso_time(self.clock.seconds()),
                "request_id": "r1",
                "client": "10.0.0.9:4000",
                "token_id": "tok",
                **IDS,
                "value": "7",
                "select": "true",
                "outcome": "confirmed",
                "status": "200",
                "message": "done",
                "cause": "",
            },
        )
        self.assertEqual(self.metrics.commands.counts, {"confirmed": 1})
        self.assert_nothing_waits()

    def test_refused_before_sending_is_audited_and_not_sent(self):
        error = self.assert_failed_with(self.ctrl(refused="not allowed by the ACL"), "refused", 400)
        self.assertEqual(error.message, "not allowed by the ACL")
        self.assertEqual(self.requests, [])
        (entry,) = self.audit()
        self.assertEqual(
            (entry["outcome"], entry["status"], entry["message"]),
            ("refused", "400", "not allowed by the ACL"),
        )
        self.assert_nothing_waits()

    def test_refused_by_the_collector_names_the_value(self):
        self.script = lambda c, r: {"outcome": "refused", "message": "read-only", "cause": "ro"}
        error = self.assert_failed_with(self.ctrl(), "refused", 400)
        self.assertEqual((error.field, error.cause), ("value", "ro"))
        self.assertEqual((self.audit()[0]["outcome"], self.audit()[0]["cause"]), ("refused", "ro"))

    def test_a_negative_confirmation_is_never_success(self):
        self.script = lambda c, r: {"ok": True, "outcome": "negative", "message": "P/N set"}
        error = self.assert_failed_with(self.ctrl(), "negative", 409)
        self.assertEqual(error.to_json()["error"], "negative")
        (entry,) = self.audit()
        self.assertEqual((entry["outcome"], entry["status"]), ("negative", "409"))
        self.assertEqual(self.metrics.commands.counts, {"negative": 1})
        self.assert_nothing_waits()

    def test_a_late_confirmation_is_a_timeout(self):
        self.script = lambda c, r: None  # the collector answers after the timeout
        d = self.ctrl()
        self.clock.advance(1.99)
        self.assertNoResult(d)
        self.clock.advance(0.01)
        error = self.assert_failed_with(d, "timeout", 504)
        self.assertIn("may still have been executed", error.message)
        ((_, request),) = self.requests
        self.reply(request, {"outcome": "confirmed", "message": "done, but too late"})
        self.assertEqual(self.replies.late_replies, 1)
        (entry,) = self.audit()  # the late confirmation changes nothing
        self.assertEqual((entry["outcome"], entry["status"]), ("timeout", "504"))
        # Settled: a collector answering now finds the request taken and audits nothing.
        self.assertEqual(self.memory.live_get(keys.CTRL_DONE % "r1"), "timeout")
        self.assert_nothing_waits()

    def test_an_answer_the_collector_audited_is_not_audited_again(self):
        self.script = lambda c, r: {"outcome": "confirmed", "message": "done", "audited": True}
        answer = self.successResultOf(self.ctrl())
        self.assertEqual((answer.outcome, answer.audited), ("confirmed", True))
        self.assertEqual(self.audit(), [])  # the (fake) collector's entry would be the one
        self.assertEqual(self.metrics.commands.counts, {"confirmed": 1})

    def test_an_answer_settled_before_it_arrived_is_the_answer(self):
        """The collector answered (and audited) just before the API's timer fired, its
        message not read yet: the API answers with it and writes no second entry."""
        self.script = lambda c, r: None
        d = self.ctrl()
        body = {"request_id": "r1", "outcome": "negative", "message": "no", "audited": True}
        self.memory.set_px(keys.CTRL_DONE % "r1", json.dumps(body), 60000)
        self.clock.advance(2.0)
        self.assert_failed_with(d, "negative", 409)
        self.assertEqual(self.audit(), [])
        self.assert_nothing_waits()

    def test_a_timeout_of_the_callers_own(self):
        self.script = lambda c, r: None
        d = self.ctrl(timeout=0.5)
        self.assertEqual(self.requests[0][1]["deadline"], self.clock.seconds() + 0.5)
        self.clock.advance(0.5)
        self.assert_failed_with(d, "timeout", 504)

    def test_no_collector_listening_is_unavailable_and_nothing_waits(self):
        self.collector.stopService()
        error = self.assert_failed_with(self.ctrl(), "unavailable", 503)
        self.assertIn("no collector is running", error.message)
        self.assertEqual(self.audit()[0]["outcome"], "unavailable")
        self.assert_nothing_waits()

    def test_not_subscribed_is_unavailable_and_nothing_is_sent(self):
        self.replies.subscriber.stopService()  # the subscription is lost, not yet back
        error = self.assert_failed_with(self.ctrl(), "unavailable", 503)
        self.assertIn("not subscribed", error.message)
        self.assertEqual((self.requests, self.audit()[0]["outcome"]), ([], "unavailable"))

    def test_store_lost_while_publishing_is_audited_and_nothing_waits(self):
        self.memory.fail_next("evalsha")  # the lookups and the PUBLISH: one script call
        self.assert_failed_with(self.ctrl(), "redis_unavailable", 503)
        self.assertEqual(self.requests, [])
        (entry,) = self.audit()
        self.assertEqual((entry["outcome"], entry["status"]), ("redis_unavailable", "503"))
        self.assert_nothing_waits()

    def test_store_down_fails_and_the_lost_audit_entry_is_logged(self):
        self.memory.down()
        self.assert_failed_with(self.ctrl(), "redis_unavailable", 503)
        self.assertEqual(len(self.flushLoggedErrors(errors.StoreUnavailable)), 1)
        self.assertEqual((self.requests, self.audit()), ([], []))
        self.assertEqual(self.metrics.commands.counts, {"redis_unavailable": 1})

    def test_an_audit_entry_the_store_refuses_leaves_the_answer(self):
        self.memory.fail_next("execute_command")
        answer = self.successResultOf(self.ctrl())
        self.assertEqual(answer.outcome, "confirmed")
        self.assertEqual(len(self.flushLoggedErrors(errors.StoreUnavailable)), 1)
        self.assertEqual(self.audit(), [])

    def test_the_audit_is_bounded(self):
        for n in range(7):
            self.successResultOf(
                self.commander.device_ctrl(f"r{n}", dict(IDS), {"value": n}, "c", "tok")
            )
        self.assertEqual([e["request_id"] for e in self.audit()], [f"r{n}" for n in range(2, 7)])

    # -- refusals before anything is sent -------------------------------------------------
    def test_unknown_points_and_bad_values_are_refused_and_audited(self):
        for ids, body, outcome, field in (
            ({**IDS, "item_id": "9"}, {"value": 1}, "not_found", "item_id"),
            ({**IDS, "device_id": "2"}, {"value": 1}, "not_found", "device_id"),
            (IDS, {"value": [1]}, "invalid", "value"),
            (IDS, {"value": "x" * 257}, "invalid", "value"),
            (IDS, {"value": 1, "select": "yes"}, "invalid", "select"),
        ):
            d = self.commander.device_ctrl("r", dict(ids), body, "c", "tok")
            error = self.failureResultOf(d, errors.ApiError).value
            self.assertEqual((error.code, error.field), (outcome, field))
        self.assertEqual(self.requests, [])
        self.assertEqual(
            [e["outcome"] for e in self.audit()],
            ["not_found", "not_found", "invalid", "invalid", "invalid"],
        )
        self.assertEqual(self.audit()[3]["value"], '"' + "x" * 255)

    def test_without_a_reply_listener_nothing_is_served(self):
        settings = CommandSettings()
        commander = make_commander(self.memory, settings, self.clock, None)
        self.assertIsInstance(commander, Commander)
        error = self.assert_failed_with(
            commander.device_ctrl("r", dict(IDS), {"value": 1}, "c", "tok"), "unavailable", 503
        )
        self.assertEqual(error.message, "device requests are not served here")
        self.assertEqual(self.requests, [])

    # -- device_call ------------------------------------------------------------------------
    def test_device_call_answers_the_sample_and_is_not_audited(self):
        self.script = lambda c, r: {"outcome": "confirmed", "message": "", "sample": SAMPLE}
        answer = self.successResultOf(self.commander.device_call("c1", dict(IDS)))
        self.assertIsInstance(answer, DeviceAnswer)
        self.assertEqual((answer.status, answer.sample), (200, SAMPLE))
        ((channel, request),) = self.requests
        self.assertEqual(channel, keys.DEVICE_CALL)
        self.assertNotIn("value", request)
        self.assertEqual(self.audit(), [])
        self.script = lambda c, r: None
        d = self.commander.device_call("c2", dict(IDS))
        self.clock.advance(2.0)
        error = self.assert_failed_with(d, "timeout", 504)
        self.assertNotIn("executed", error.message)
        self.assertEqual(self.metrics.commands.counts, {})


class CommandPriorityTests(CommanderTests):
    """The API's end of commands ahead of data: the process's data is held from the
    request until its answer is audited, whatever the outcome."""

    def setUp(self):
        super().setUp()
        from tests.control.test_priority import Holder

        self.priority = CommandPriority(self.clock, max_hold=0.1)
        self.holder = Holder()
        self.priority.add_holder(self.holder)
        self.commander.priority = self.priority
        self.seen = []
        self.script = lambda channel, request: (
            self.seen.append(self.holder.held)
            or {
                "outcome": "confirmed",
                "message": "done",
            }
        )

    def assert_nothing_waits(self):
        self.clock.advance(LINGER)  # the hold outlives the answer that long
        super().assert_nothing_waits()

    def test_held_from_request_to_answer(self):
        self.successResultOf(self.ctrl())
        self.clock.advance(LINGER)
        self.assertEqual(self.seen, [True])  # the collector got it while data was held
        self.assertEqual(self.holder.calls, [("hold", ["1"]), "release"])
        self.successResultOf(self.commander.device_call("r2", dict(IDS)))
        self.clock.advance(LINGER)
        self.assertEqual(self.seen, [True, True])
        self.assertFalse(self.priority.held)

    def test_released_on_a_timeout_and_a_refusal(self):
        self.script = lambda channel, request: None  # nobody answers
        d = self.ctrl()
        self.assertTrue(self.priority.held)
        self.clock.advance(2.0)
        self.assert_failed_with(d, "timeout", 504)
        self.assertEqual(self.priority.status()["commands"], 0)
        self.failureResultOf(self.ctrl(refused="read-only token"), errors.ApiError)
        self.assertEqual(self.priority.status()["holds"], 1)  # the refusal held nothing

    def test_an_invalid_command_holds_nothing(self):
        """A value or select the API refuses before sending anything only writes its
        audit entry: like a refusal, it holds no data and spends none of the budget."""
        for body in ({"value": {"nested": 1}}, {"value": "x" * 300}, {"value": 1, "select": 2}):
            d = self.ctrl(body)
            self.assert_failed_with(d, "invalid", 400)
        self.assertEqual(self.holder.calls, [])
        self.assertEqual(self.priority.status()["holds"], 0)
        self.assertEqual(len(self.audit()), 3)  # each still audited
