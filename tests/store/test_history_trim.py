"""When the ingest path asks the script to trim a point's history (store/history_trim.py);
that the script keeps the bound is tested in tests.store.devices_contract (on MemoryRedis
and on a real redis-server)."""

from twisted.trial.unittest import SynchronousTestCase

from pydatacoll.model import Sample
from pydatacoll.store.history_trim import TRIM_MAX, TrimSchedule, trim_interval


def batch(*items):
    return [Sample("d", "t", item, 1.0, receive_time=1.5) for item in items]


class TrimIntervalTests(SynchronousTestCase):
    def test_a_tenth_of_the_history_from_one_to_the_maximum(self):
        self.assertEqual(
            [trim_interval(n) for n in (1, 9, 10, 20, 1000, 10**6)],
            [1, 1, 1, 2, TRIM_MAX, TRIM_MAX],
        )


class TrimScheduleTests(SynchronousTestCase):
    def setUp(self):
        self.schedule = TrimSchedule(30)  # every 3 samples of a point

    def test_first_sample_then_every_interval_per_point(self):
        self.assertEqual(self.schedule.due("d", "", batch("a", "b", "a", "a", "a")), "1 2 5")
        # b's 3rd sample since its trim is the 4th here; a has 1 since its trim
        self.assertEqual(self.schedule.due("d", "", batch("b", "b", "a", "b")), "4")

    def test_devices_count_apart(self):
        self.assertEqual(self.schedule.due("d", "", batch("a", "a")), "1")
        self.assertEqual(self.schedule.due("e", "", batch("a", "a")), "1")

    def test_a_new_lease_or_forget_counts_again(self):
        self.assertEqual(self.schedule.due("d", "1 x", batch("a", "a")), "1")
        self.assertEqual(self.schedule.due("d", "2 x", batch("a")), "1")  # another lease
        self.schedule.forget()
        self.assertEqual(self.schedule.due("d", "2 x", batch("a")), "1")

    def test_every_sample_when_the_history_is_short(self):
        self.assertEqual(TrimSchedule(5).due("d", "", batch("a", "a", "a")), "1 2 3")
