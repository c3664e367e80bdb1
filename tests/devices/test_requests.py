"""device_call / device_ctrl through the in-memory store: the API's reply listener, the
manager and the device, wired by MemoryRedis's PUBLISH (no redis-server, no sockets)."""

from __future__ import annotations

import json
import time
from typing import Any

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from pydatacoll.api.replies import DeviceAnswer, ReplyListener, ReplyTimeout
from pydatacoll.devices.requests import MAX_REQUESTS
from pydatacoll.errors import DeviceTimeout
from pydatacoll.model import ControlOutcome, Sample
from pydatacoll.store import keys
from pydatacoll.testing.memory import MemoryRedis
from pydatacoll.testing.memory_subscriber import memory_subscription

from .support import FakeDriver, HeldIngest, RecordingSink, add_point, configure, memory_manager


class RequestTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.store = MemoryRedis()
        configure(self.store, "d")
        add_point(self.store, "d", "t", "i")
        self.driver = FakeDriver()
        self.sink = RecordingSink()
        self.manager = memory_manager(self.store, self.clock, self.driver, sinks=[self.sink])
        self.manager.startService()
        self.addCleanup(self.manager.stopService)
        self.replies = ReplyListener(
            self.clock, instance_id="api", subscribe=memory_subscription(self.store)
        )
        self.replies.startService()
        self.addCleanup(self.replies.stopService)
        self.runtime = self.driver.runtimes["d"]
        self.number = 0

    def request(self, kind: str, **fields: Any) -> defer.Deferred[dict[str, Any]]:
        """What the API does: wait for the reply, then publish the request."""
        self.number += 1
        request_id = f"r{self.number}"
        d = self.replies.wait(request_id, 5)
        message = {
            "request_id": request_id,
            "reply_to": self.replies.reply_channel(request_id),
            "device_id": "d",
            "term_id": "t",
            "item_id": "i",
            **fields,
        }
        channel = keys.DEVICE_CALL if kind == "call" else keys.DEVICE_CTRL
        self.store.call("publish", channel, json.dumps(message))
        return d

    def test_call_answers_with_the_sample_read_and_stores_it(self) -> None:
        sample = Sample("d", "t", "i", 4.5, receive_time=self.clock.seconds())
        self.runtime.read = defer.succeed(sample)
        reply = self.successResultOf(self.request("call"))
        self.assertEqual((reply["outcome"], reply["sample"]["value"]), ("confirmed", 4.5))
        self.assertEqual(self.sink.samples, [sample])  # the processors saw the fresh value
        self.clock.advance(1)  # the ingest path's linger
        stored = json.loads(self.store.data[keys.DEVICE_VALUES % "d"]["t:i"])
        self.assertEqual(stored["value"], 4.5)

    def test_a_device_error_keeps_its_outcome_and_cause(self) -> None:
        self.runtime.read = defer.fail(DeviceTimeout("no answer", "t1 expired"))
        reply = self.successResultOf(self.request("call"))
        self.assertEqual(
            (reply["outcome"], reply["message"], reply["cause"]),
            ("timeout", "no answer", "t1 expired"),
        )

    def test_a_command_reads_its_device_while_the_ingest_is_congested(self) -> None:
        """A flooding device paused for congestion reads again while a command of its
        runs (its confirmation must not wait for the ingest), and is paused again once
        answered if it still has samples waiting; the API gets its answer meanwhile."""
        ingest = HeldIngest()
        self.patch(self.manager, "ingest", ingest)
        ingest.samples_received([Sample("d", "t", "i", 1.0, receive_time=0.0)])
        ingest.congested = True
        self.manager._congestion(True)
        self.assertTrue(self.runtime.paused)
        confirmation: defer.Deferred[ControlOutcome] = defer.Deferred()
        self.runtime.control = confirmation
        answer = self.request("ctrl", value=1)
        self.assertFalse(self.runtime.paused)  # reading: the confirmation can come in
        # Its samples arriving meanwhile do not pause it again.
        self.manager.samples_received([Sample("d", "t", "i", 2.0, receive_time=0.0)])
        self.assertFalse(self.runtime.paused)
        confirmation.callback(ControlOutcome("confirmed", "done"))
        self.assertEqual(self.successResultOf(answer)["outcome"], "confirmed")
        self.assertTrue(self.runtime.paused)  # still flooding, still congested
        ingest.congested = False
        self.manager._congestion(False)
        self.assertFalse(self.runtime.paused)

    def test_ctrl_answers_the_device_outcome(self) -> None:
        self.runtime.control = defer.succeed(ControlOutcome("negative", "no", "COT 47"))
        answer = DeviceAnswer.from_reply("r1", self.successResultOf(self.request("ctrl")))
        self.assertEqual((answer.status, answer.cause), (409, "COT 47"))

    def test_ctrl_answer_carries_its_audit_entry_once(self) -> None:
        """The collector writes a device_ctrl's audit entry with its answer (one round
        trip), unless the API settled the request as timed out first."""
        audit = {"time": "T", "request_id": "r1", "client": "c", "token_id": "-"}
        audit.update(device_id="d", term_id="t", item_id="i", value="1", select="null")
        self.runtime.control = defer.succeed(ControlOutcome("negative", "no", "COT 47"))
        reply = self.successResultOf(self.request("ctrl", audit=audit, audit_length=3))
        self.assertIs(reply["audited"], True)
        ((_, entry),) = self.store.data[keys.CTRL_LOG]
        self.assertEqual(
            entry,
            {**audit, "outcome": "negative", "status": "409", "message": "no", "cause": "COT 47"},
        )
        self.assertEqual(
            json.loads(self.store.live_get(keys.CTRL_DONE % "r1") or "")["outcome"], "negative"
        )
        # r2 settled by the API (timed out) before the collector answers: no second entry.
        self.store.set_px(keys.CTRL_DONE % "r2", "timeout", 60000)
        self.runtime.control = defer.succeed(ControlOutcome("confirmed", "late"))
        reply = self.successResultOf(self.request("ctrl", audit={**audit, "request_id": "r2"}))
        self.assertEqual(reply["outcome"], "confirmed")  # published: the API counts it late
        self.assertEqual(len(self.store.data[keys.CTRL_LOG]), 1)
        # A device_call, or a request without "audit", is not audited here.
        self.runtime.control = defer.succeed(ControlOutcome("confirmed", "ok"))
        self.assertNotIn("audited", self.successResultOf(self.request("ctrl")))
        self.assertEqual(len(self.store.data[keys.CTRL_LOG]), 1)

    def test_an_answer_long_after_the_deadline_is_not_audited_here(self) -> None:
        """The API settled the command as timed out at its deadline and keeps that for
        DONE_TTL_MS: an answer later still is published but not audited (no second
        entry once the API's mark has expired)."""
        from pydatacoll.devices import requests
        from pydatacoll.store.commands import DONE_TTL_MS

        now = [time.time()]
        self.patch(requests, "time", type("Clock", (), {"time": staticmethod(lambda: now[0])}))
        confirmation: defer.Deferred[ControlOutcome] = defer.Deferred()
        self.runtime.control = confirmation
        audit = {"request_id": "r1"}
        answer = self.request("ctrl", audit=audit, deadline=now[0] + 5)
        now[0] += 5 + DONE_TTL_MS / 1000 + 1
        confirmation.callback(ControlOutcome("confirmed", "very late"))
        reply = self.successResultOf(answer)
        self.assertEqual((reply["outcome"], "audited" in reply), ("confirmed", False))
        self.assertNotIn(keys.CTRL_LOG, self.store.data)

    def test_unknown_point_is_not_found(self) -> None:
        reply = self.successResultOf(self.request("call", item_id="nope"))
        self.assertEqual(reply["outcome"], "not_found")

    def test_a_device_that_cannot_run_is_offline(self) -> None:
        self.driver.fail = True
        self.store.data[keys.DEVICE % "d"]["port"] = "2"  # changed: restarts, and fails
        self.manager.reconcile({"d"})
        reply = self.successResultOf(self.request("call"))
        self.assertEqual(reply["outcome"], "offline")
        self.assertIn("cannot run with", reply["message"])

    def test_another_collectors_device_is_left_to_it(self) -> None:
        d = self.request("call", device_id="elsewhere")
        self.assertNoResult(d)
        self.clock.advance(5)
        self.failureResultOf(d, ReplyTimeout)

    def test_a_request_past_its_deadline_is_dropped(self) -> None:
        d = self.request("ctrl", deadline=time.time() - 1)
        self.clock.advance(5)
        self.failureResultOf(d, ReplyTimeout)

    def test_past_max_requests_the_answer_is_overloaded_at_once(self) -> None:
        self.replies.max_pending = MAX_REQUESTS + 1
        commands: list[defer.Deferred[ControlOutcome]] = []

        def control_point(*_: Any) -> defer.Deferred[ControlOutcome]:
            commands.append(defer.Deferred())  # the device does not answer yet
            return commands[-1]

        self.patch(self.runtime, "control_point", control_point)
        waiting = [self.request("ctrl", value=1) for _ in range(MAX_REQUESTS)]
        answer = DeviceAnswer.from_reply("x", self.successResultOf(self.request("ctrl")))
        self.assertEqual(
            (answer.outcome, answer.status, answer.retry_after), ("overloaded", 503, 1)
        )
        for d in waiting:
            self.assertNoResult(d)
        for command in commands:
            command.callback(ControlOutcome("confirmed", "done"))
        for d in waiting:
            self.assertEqual(self.successResultOf(d)["outcome"], "confirmed")
        self.assertEqual(self.manager._requests, 0)  # every slot given back

    def test_a_reply_that_cannot_be_published_is_logged_not_raised(self) -> None:
        self.store.fail_next("publish")
        self.manager._message(
            keys.DEVICE_CALL,
            json.dumps({"request_id": "x", "reply_to": "R", "device_id": "d", "item_id": "no"}),
        )
        self.assertEqual(self.manager._requests, 0)
