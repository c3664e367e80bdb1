"""`RetryingLoad`, the processors' one "load from the store, retry on failure", on a Clock."""

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from pydatacoll.errors import StoreUnavailable
from pydatacoll.processing.loading import RetryingLoad
from pydatacoll.retry import Backoff


class RetryingLoadTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.ready = Deferred()
        self.results = []  # what each attempt answers, in order (then success)
        self.attempts = []

    def load(self):
        self.attempts.append(self.clock.seconds())
        if self.results:
            return self.results.pop(0)
        return succeed("loaded")

    def loader(self, initial=1.0, maximum=4.0):
        loading = RetryingLoad(
            self.clock, lambda: self.ready, self.load, Backoff(initial, maximum), "things"
        )
        loading.start()
        return loading

    def test_waits_for_the_store_then_loads_once(self):
        loading = self.loader()
        self.clock.advance(100)
        self.assertEqual((self.attempts, loading.pending), ([], True))
        self.ready.callback(None)
        self.assertEqual(self.attempts, [100])
        self.assertTrue(loading.loaded)
        self.assertFalse(loading.pending)
        self.clock.advance(100)
        self.assertEqual(len(self.attempts), 1)

    def test_failures_back_off_up_to_the_cap(self):
        self.results = [fail(StoreUnavailable("down")) for _ in range(4)]
        self.ready.callback(None)
        loading = self.loader()
        self.clock.pump([0.5] * 40)
        self.assertEqual(self.attempts, [0, 1, 3, 7, 11])  # delays 1, 2, 4, 4 (the cap)
        self.assertTrue(loading.loaded)
        self.assertEqual(len(self.flushLoggedErrors()), 0)  # logged as warnings only

    def test_a_raising_load_counts_as_a_failure(self):
        def broken():
            self.attempts.append(self.clock.seconds())
            if len(self.attempts) == 1:
                raise KeyError("bad data")
            return succeed(None)

        self.ready.callback(None)
        loading = RetryingLoad(self.clock, lambda: self.ready, broken, Backoff(2, 2), "things")
        loading.start()
        self.clock.advance(2)
        self.assertEqual(self.attempts, [0, 2])
        self.assertTrue(loading.loaded)

    def test_stop_ends_the_retries(self):
        self.results = [fail(StoreUnavailable("down"))]
        self.ready.callback(None)
        loading = self.loader()
        loading.stop()
        self.clock.advance(60)
        self.assertEqual(self.attempts, [0])
        self.assertFalse(loading.pending)
        self.assertFalse(self.clock.getDelayedCalls())

    def test_stopped_before_the_store_is_ready(self):
        loading = self.loader()
        loading.stop()
        self.ready.callback(None)
        self.assertEqual(self.attempts, [])
