"""Commands ahead of data in the device manager: while a request is in flight the devices
that sent lately and pause without loss stop reading and the ingest sends no new script
(`pydatacoll.control.priority`); everything reads and writes again once it is answered.
In memory (MemoryRedis, its PUBLISH as the request channel), on a `Clock`."""

from __future__ import annotations

import json
from typing import Any

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from pydatacoll.control.priority import LINGER
from pydatacoll.control.replies import ReplyListener
from pydatacoll.devices.status import STATE_CHECK_INTERVAL
from pydatacoll.model import ControlOutcome, Sample
from pydatacoll.store import keys
from pydatacoll.store.ingest import BATCH
from pydatacoll.testing.memory import MemoryRedis
from pydatacoll.testing.memory_subscriber import memory_subscription

from .support import FakeDriver, HeldIngest, add_point, configure, memory_manager


class CommandHoldTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1000)
        self.store = MemoryRedis()
        # d: the commanded RTU; f: an IEC 104-like flood; m: a poller (its pause skips
        # scans: never held); q: an IEC 104-like device that sent nothing lately.
        configure(self.store, "d", "f", "m", "q")
        for device_id in ("d", "f", "m", "q"):
            add_point(self.store, device_id, f"t{device_id}", "i")
        self.driver = FakeDriver()
        self.manager = memory_manager(self.store, self.clock, self.driver)
        self.manager.startService()
        self.addCleanup(self.manager.stopService)
        self.replies = ReplyListener(
            self.clock, instance_id="api", subscribe=memory_subscription(self.store)
        )
        self.replies.startService()
        self.addCleanup(self.replies.stopService)
        self.runtimes = self.driver.runtimes
        for device_id in ("d", "f", "q"):
            self.runtimes[device_id].lossless_pause = True
        self.confirmation: defer.Deferred[ControlOutcome] = defer.Deferred()
        self.runtimes["d"].control = self.confirmation

    def send(self, device_id: str, count: int = 1) -> None:
        """``count`` samples from ``device_id``, as its runtime delivers them."""
        self.manager.samples_received(
            [
                Sample(device_id, f"t{device_id}", "i", float(n), receive_time=self.clock.seconds())
                for n in range(count)
            ]
        )

    def command(self, device_id: str = "d", request_id: str = "r1") -> defer.Deferred[Any]:
        d = self.replies.wait(request_id, 5)
        message = {
            "request_id": request_id,
            "reply_to": self.replies.reply_channel(request_id),
            "device_id": device_id,
            "term_id": f"t{device_id}",
            "item_id": "i",
            "value": 1,
        }
        self.store.call("publish", keys.DEVICE_CTRL, json.dumps(message))
        return d

    def paused(self) -> set[str]:
        return {device_id for device_id, runtime in self.runtimes.items() if runtime.paused}

    def test_a_command_holds_the_senders_that_pause_without_loss(self) -> None:
        for device_id in ("d", "f", "m"):
            self.send(device_id)
        answer = self.command()
        self.assertEqual(self.paused(), {"f"})  # not d (its confirmation), m, nor quiet q
        self.assertTrue(self.manager.ingest.holding)
        self.confirmation.callback(ControlOutcome("confirmed", "done"))
        self.assertEqual(self.successResultOf(answer)["outcome"], "confirmed")
        self.clock.advance(LINGER)
        self.assertEqual(self.paused(), set())
        self.assertFalse(self.manager.ingest.holding)
        self.assertEqual(self.manager.priority.status()["holds"], 1)

    def test_the_ingest_sends_nothing_new_while_held_and_everything_after(self) -> None:
        self.send("f")
        answer = self.command()
        self.send("d", BATCH * 2)  # the RTU's own samples still come in
        self.clock.advance(0.05)  # past the ingest's linger, within the hold
        self.assertEqual(self.manager.ingest.written, 0)
        self.assertEqual(len(self.manager.ingest.buffer), BATCH * 2 + 1)
        self.confirmation.callback(ControlOutcome("confirmed", "done"))
        self.successResultOf(answer)
        self.clock.advance(LINGER)
        self.clock.advance(1)
        self.assertEqual(self.manager.ingest.written, BATCH * 2 + 1)

    def test_only_recent_senders_are_held(self) -> None:
        """Senders age out after two state checks (about half a second)."""
        self.send("f")
        self.clock.advance(STATE_CHECK_INTERVAL)
        self.clock.advance(STATE_CHECK_INTERVAL)
        self.send("q")
        answer = self.command()
        self.assertEqual(self.paused(), {"q"})
        self.confirmation.callback(ControlOutcome("confirmed", "done"))
        self.successResultOf(answer)

    def test_a_hold_ends_after_command_hold_seconds_even_if_unanswered(self) -> None:
        self.send("f")
        answer = self.command()
        self.assertEqual(self.paused(), {"f"})
        self.clock.advance(self.manager.settings.command_hold)
        self.assertEqual(self.paused(), set())
        self.assertFalse(self.manager.ingest.holding)
        self.assertNoResult(answer)
        self.confirmation.callback(ControlOutcome("confirmed", "slow"))
        self.assertEqual(self.successResultOf(answer)["outcome"], "confirmed")

    def test_a_command_for_a_held_device_reads_it_again(self) -> None:
        self.send("f")
        first = self.command()
        self.assertEqual(self.paused(), {"f"})
        self.runtimes["f"].control = defer.succeed(ControlOutcome("confirmed", "f done"))
        second = self.command("f", "r2")
        self.assertEqual(self.successResultOf(second)["outcome"], "confirmed")
        self.assertNotIn("f", self.paused())
        self.confirmation.callback(ControlOutcome("confirmed", "done"))
        self.successResultOf(first)

    def test_congestion_and_hold_release_each_other_only_when_both_end(self) -> None:
        ingest = HeldIngest()
        self.patch(self.manager, "ingest", ingest)
        self.send("f")
        ingest.congested = True
        self.manager._congestion(True)  # f has samples waiting: paused
        self.assertEqual(self.paused(), {"f"})
        answer = self.command()
        self.assertTrue(ingest.holding)
        ingest.congested = False
        self.manager._congestion(False)  # caught up, but the command's hold goes on
        self.assertEqual(self.paused(), {"f"})
        self.confirmation.callback(ControlOutcome("confirmed", "done"))
        self.successResultOf(answer)
        self.clock.advance(LINGER)
        self.assertEqual(self.paused(), set())
        # The other way round: held, then congested, then the hold ends first.
        self.confirmation = self.runtimes["d"].control = defer.Deferred()
        self.send("f")
        answer = self.command(request_id="r2")
        ingest.buffer.extend([Sample("f", "tf", "i", 1.0, receive_time=0.0)])
        ingest.congested = True
        self.manager._congestion(True)
        self.confirmation.callback(ControlOutcome("confirmed", "done"))
        self.successResultOf(answer)
        self.clock.advance(LINGER)
        self.assertEqual(self.paused(), {"f"})  # congestion still holds it
        ingest.congested = False
        self.manager._congestion(False)
        self.assertEqual(self.paused(), set())

    def test_command_hold_zero_holds_nothing(self) -> None:
        manager = memory_manager(self.store, self.clock, FakeDriver(), command_hold="0")
        self.assertEqual(manager.priority.max_hold, 0)
        manager.samples_received([Sample("f", "tf", "i", 1.0, receive_time=0.0)])
        manager.priority.begin("d")
        self.assertFalse(manager.ingest.holding)
        manager.priority.end("d")

    def test_a_device_restarted_while_held_reads_for_its_own_command(self) -> None:
        """f is held, then restarted (its configuration changed) while the hold goes on,
        and congestion pauses its new run: a command for f must read the new run, not
        resume the stopped one it replaced."""
        self.send("f")
        answer = self.command()
        self.assertEqual(self.paused(), {"f"})
        first = self.runtimes["f"]
        self.store.data[keys.DEVICE % "f"]["port"] = "2"
        self.store.data[keys.CONFIG_VERSION] = "2"
        change = {"entity": "device", "op": "fresh", "version": 2, "id": "f"}
        self.store.call("publish", keys.CHANGE_CHANNELS["device"]["fresh"], json.dumps(change))
        second = self.runtimes["f"]
        self.assertIsNot(second, first)
        ingest = HeldIngest()  # congested at will
        self.patch(self.manager, "ingest", ingest)
        ingest.buffer.append(Sample("f", "tf", "i", 1.0, receive_time=0.0))
        ingest.congested = True
        self.manager._congestion(True)
        self.assertTrue(second.paused)
        second.control = defer.Deferred()
        command = self.command("f", "r2")
        self.assertFalse(second.paused)  # its confirmation must be read at once
        second.control.callback(ControlOutcome("confirmed", "f done"))
        self.successResultOf(command)
        self.confirmation.callback(ControlOutcome("confirmed", "done"))
        self.successResultOf(answer)
