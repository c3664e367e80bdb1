"""`CommandPriority` on a `Clock`: a command holds the data back until it is answered,
never its own device, at most ``max_hold`` at a time and half the time over a stretch."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from pydatacoll.control.priority import LINGER, CommandPriority


class Holder:
    """Records what the priority asks of it: ("hold", exempt), ("release", id), "release"."""

    def __init__(self) -> None:
        self.calls: list[object] = []
        self.held = False

    def hold_data(self, exempt: object) -> None:
        self.calls.append(("hold", sorted(exempt)))  # type: ignore[call-overload]
        self.held = True

    def release_device(self, device_id: str) -> None:
        self.calls.append(("release", device_id))

    def release_data(self) -> None:
        self.calls.append("release")
        self.held = False


class CommandPriorityTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1000)
        self.priority = CommandPriority(self.clock, max_hold=0.1)
        self.holder = Holder()
        self.priority.add_holder(self.holder)

    def test_a_command_holds_data_until_it_is_answered(self) -> None:
        self.priority.begin("rtu")
        self.assertEqual(self.holder.calls, [("hold", ["rtu"])])
        self.clock.advance(0.005)
        self.priority.end("rtu")
        self.assertTrue(self.priority.held)  # until its answer is written
        self.clock.advance(LINGER)
        self.assertEqual(self.holder.calls[-1], "release")
        self.assertFalse(self.priority.held)
        status = self.priority.status()
        self.assertEqual(
            (status["holds"], status["capped"], status["held_seconds"]), (1, 0, 0.005 + LINGER)
        )
        self.assertEqual(self.clock.getDelayedCalls(), [])  # the cap timer is cancelled

    def test_nested_commands_share_one_hold_and_free_their_devices(self) -> None:
        """The API and the collector of one process count the same command; a second
        command for a held device frees that device at once."""
        self.priority.begin("rtu")  # the API
        self.priority.begin("rtu")  # the collector part, same command
        self.priority.begin("meter")  # another command, for a device held meanwhile
        self.assertEqual(
            self.holder.calls, [("hold", ["rtu"]), ("release", "rtu"), ("release", "meter")]
        )
        self.priority.end("rtu")
        self.priority.end("meter")
        self.assertTrue(self.priority.held)  # the API's end of the first is still due
        self.priority.end("rtu")
        self.clock.advance(LINGER)
        self.assertFalse(self.priority.held)
        self.assertEqual(self.holder.calls[-1], "release")
        self.assertEqual(self.priority.status()["holds"], 1)

    def test_a_command_right_after_the_last_keeps_the_hold(self) -> None:
        """Select, then execute at once: one hold, not a release and a hold again."""
        self.priority.begin("rtu")
        self.priority.end("rtu")
        self.clock.advance(LINGER / 2)
        self.priority.begin("rtu")
        self.clock.advance(LINGER)
        self.assertTrue(self.priority.held)
        self.priority.end("rtu")
        self.clock.advance(LINGER)
        self.assertEqual(self.holder.calls, [("hold", ["rtu"]), ("release", "rtu"), "release"])

    def test_a_hold_lasts_max_hold_at_most(self) -> None:
        """A slow RTU (its confirmation takes seconds) holds the data 0.1 s only."""
        self.priority.begin("rtu")
        self.clock.advance(0.1)
        self.assertFalse(self.priority.held)
        self.assertEqual(self.holder.calls[-1], "release")
        self.priority.end("rtu")  # later: nothing more to release
        self.assertEqual(self.holder.calls.count("release"), 1)
        self.assertEqual(self.priority.status()["capped"], 1)

    def test_data_is_held_at_most_half_the_time(self) -> None:
        """Back-to-back commands, each 20 ms, for 10 s: data is held about half of it."""
        for _ in range(500):
            self.priority.begin("rtu")
            self.clock.advance(0.02)
            self.priority.end("rtu")
        status = self.priority.status()
        self.assertGreater(status["held_seconds"], 4.5)
        self.assertLessEqual(status["held_seconds"], 5.0 + 0.1)
        self.assertGreater(status["unheld"], 0)  # some commands found no budget

    def test_commands_spaced_out_are_each_held(self) -> None:
        """A command every 30 ms taking 10 ms (12 ms held, 40 % of the time): every one
        is held."""
        for _ in range(100):
            self.priority.begin("rtu")
            self.clock.advance(0.01)
            self.priority.end("rtu")
            self.clock.advance(LINGER)
            self.clock.advance(0.02 - LINGER)
        status = self.priority.status()
        self.assertEqual((status["holds"], status["unheld"]), (100, 0))

    def test_zero_holds_nothing(self) -> None:
        priority = CommandPriority(self.clock, max_hold=0)
        holder = Holder()
        priority.add_holder(holder)
        priority.begin("rtu")
        priority.end("rtu")
        self.assertEqual(holder.calls, [])
        self.assertEqual(priority.status()["commands"], 0)

    def test_a_failing_holder_does_not_stop_the_others(self) -> None:
        class Broken(Holder):
            def hold_data(self, exempt: object) -> None:
                raise RuntimeError("broken")

        priority = CommandPriority(self.clock, max_hold=0.1)
        priority.add_holder(Broken())
        priority.add_holder(self.holder)
        priority.begin("rtu")
        self.assertTrue(self.holder.held)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        priority.end("rtu")
        self.clock.advance(LINGER)
        self.assertFalse(self.holder.held)

    def test_stop_releases(self) -> None:
        self.priority.begin("rtu")
        self.priority.stop()
        self.assertFalse(self.holder.held)
        self.assertEqual(self.clock.getDelayedCalls(), [])
