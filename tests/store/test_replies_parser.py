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


class _AbortableTransport(StringTransport):
    def abortConnection(self):  # noqa: N802 (Twisted API)
        self.aborted = True


class LateReplyTests(SynchronousTestCase):
    """A reply that arrives when its command's reply timeout is due, on a busy reactor:
    txredisapi's own parser deferred the rest of the read to a ``callLater(0)`` that
    ran after the timeout, which failed the waiting commands and left the late reply
    queued, and the next command sent on the connection before it closed was answered
    with it (seen at 5000 links under load: ``GET STR:CONFIG_VERSION`` answered with a
    device's configuration). Parsed at once, the reply goes to its own command."""

    def test_the_next_command_never_gets_a_late_reply(self):
        clock = Clock()
        protocol = replies_parser.txredisapi.RedisProtocol(replyTimeout=5, convertNumbers=False)
        protocol.callLater = clock.callLater
        protocol.transport = _AbortableTransport()
        protocol.connected = 1
        first = protocol.execute_command("HGETALL", "device")
        clock.rightNow = 5.0  # the reactor was busy: the reply is read when the timeout is due
        protocol.dataReceived(b"*2\r\n" + bulk(b"name") + bulk(b"rtu"))
        clock.advance(0)  # the due calls: the timeout, and whatever the parser deferred
        second = protocol.execute_command("GET", "STR:CONFIG_VERSION")
        protocol.dataReceived(b"$2\r\n41\r\n")
        clock.advance(0)
        self.assertEqual(self.successResultOf(first), ["name", "rtu"])
        self.assertEqual(self.successResultOf(second), "41")  # never the late ["name", "rtu"]
