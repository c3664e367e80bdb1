"""txredisapi's parser with `pydatacoll.store.replies_parser` installed: a reply of many
bulk strings is parsed in the read that completes it, not one reactor turn per string."""

from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

import pydatacoll.store.redis  # noqa: F401 (installs the parser fix, as in the daemon)
from pydatacoll.store import replies_parser


class Recorder(replies_parser.txredisapi.BaseRedisProtocol):
    """A protocol that records its replies instead of firing request Deferreds."""

    def __init__(self, clock):
        super().__init__(charset="utf-8", errors="strict")
        self.callLater = clock.callLater  # what the unpatched parser defers the rest to
        self.replies = []
        self.transport = StringTransport()

    def replyReceived(self, reply):  # noqa: N802 (txredisapi API)
        self.replies.append(reply)


def bulk(text):
    return b"$%d\r\n%s\r\n" % (len(text), text)


class ParserTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.protocol = Recorder(self.clock)

    def test_a_pubsub_message_and_a_large_reply_in_one_read(self):
        message = b"*4\r\n" + bulk(b"pmessage") + bulk(b"p:*") + bulk(b"p:1") + bulk(b'{"a":1}')
        many = b"*5000\r\n" + b"".join(bulk(b"v%d" % n) for n in range(5000))
        self.protocol.dataReceived(message + many + b":7\r\n")
        self.assertEqual(self.clock.getDelayedCalls(), [])  # nothing left for later turns
        self.assertFalse(self.protocol.transport.producerState == "paused")
        first, second, third = self.protocol.replies
        self.assertEqual(first, ["pmessage", "p:*", "p:1", '{"a":1}'])
        self.assertEqual(second, [f"v{n}" for n in range(5000)])
        self.assertEqual(third, 7)

    def test_split_reads_still_assemble(self):
        data = b"*3\r\n" + bulk(b"message") + bulk(b"ch") + bulk(b"x" * 100) + b"+OK\r\n"
        for start in range(0, len(data), 7):
            self.protocol.dataReceived(data[start : start + 7])
        self.assertEqual(self.protocol.replies, [["message", "ch", "x" * 100], "OK"])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_install_is_idempotent(self):
        patched = replies_parser.txredisapi.LineReceiver.dataReceived
        replies_parser.install()
        self.assertIs(replies_parser.txredisapi.LineReceiver.dataReceived, patched)
