"""A real ``twistd -n pydatacoll`` against the faults of its own process: a second daemon
on one data dir, a SIGKILL, a redis-server left behind, a burst of clients."""

import os
import selectors
import signal
import socket
import subprocess
import tempfile
import time

from twisted.trial.unittest import SynchronousTestCase

from tests.integration.test_daemon import TWISTD, WALK, Daemon, request


def redis_servers(data_dir):
    """Pids of the live redis-server processes whose working directory is ``data_dir``."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/cmdline", "rb") as f:
                title = f.read().split(b"\0")[0]
            cwd = os.readlink(f"/proc/{name}/cwd")
            with open(f"/proc/{name}/stat") as f:
                state = f.read().rsplit(")", 1)[-1].split()[0]
        except OSError:
            continue
        if b"redis-server" in title and cwd == os.path.realpath(data_dir) and state != "Z":
            found.append(int(name))
    return found


def wait_until(predicate, timeout=15.0, what="condition"):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)  # waiting for other processes, not test logic


class DataDirTests(SynchronousTestCase):
    def setUp(self):
        self.workdir = tempfile.mkdtemp(prefix="pydatacoll-datadir-")
        self.data_dir = os.path.join(self.workdir, "pydatacoll-data")
        self.daemons = []
        self.addCleanup(self._cleanup)

    def _cleanup(self):
        for daemon in self.daemons:
            if daemon.process.poll() is None:
                daemon.process.kill()
                daemon.process.wait(30)
        for pid in redis_servers(self.data_dir):
            os.kill(pid, signal.SIGKILL)

    def start(self):
        daemon = Daemon(self.workdir)
        self.daemons.append(daemon)
        return daemon

    def test_a_second_daemon_on_one_data_dir_refuses_to_start(self):
        first = self.start()
        for method, path, body in WALK:
            self.assertEqual(request(method, first.base + path, body)[0], 201)
        [redis_pid] = redis_servers(self.data_dir)
        second = subprocess.run(
            [*TWISTD, "-n", "--pidfile=", "pydatacoll", "--api", "tcp:0:interface=127.0.0.1"],
            cwd=self.workdir,
            capture_output=True,
            timeout=60,
        )
        self.assertNotEqual(second.returncode, 0)
        output = (second.stdout + second.stderr).decode()
        self.assertIn("another pydatacoll daemon (pid", output)
        self.assertIn(self.data_dir, output)
        # the first daemon and its Redis are untouched
        self.assertEqual(redis_servers(self.data_dir), [redis_pid])
        self.assertEqual(request("GET", first.base + "/api/v1/devices")[1], ["1"])
        first.stop()
        self.assertEqual(redis_servers(self.data_dir), [])
        # once it is gone, the data dir is free again
        third = self.start()
        self.assertEqual(request("GET", third.base + "/api/v1/terms/10/items")[1], ["1000"])
        third.stop()

    def test_after_a_sigkill_redis_goes_too_and_the_next_start_keeps_the_configuration(self):
        first = self.start()
        for method, path, body in WALK:
            self.assertEqual(request(method, first.base + path, body)[0], 201)
        [redis_pid] = redis_servers(self.data_dir)
        first.process.send_signal(signal.SIGKILL)
        first.process.wait(30)
        # PR_SET_PDEATHSIG: the kernel sends redis-server SIGTERM; it writes its AOF and exits
        wait_until(lambda: redis_servers(self.data_dir) == [], what="redis-server to follow")
        second = self.start()
        self.assertEqual(len(redis_servers(self.data_dir)), 1)
        self.assertNotEqual(redis_servers(self.data_dir), [redis_pid])
        status, point = request("GET", second.base + "/api/v1/terms/10/items/1000")
        self.assertEqual((status, point["protocol_code"]), (200, 100))
        second.stop()

    def test_a_redis_server_left_behind_is_stopped_before_ours_starts(self):
        first = self.start()
        for method, path, body in WALK:
            self.assertEqual(request(method, first.base + path, body)[0], 201)
        first.stop()
        # What an earlier version (or a platform without a parent-death signal) leaves
        # after a SIGKILL: a redis-server on the data dir's socket and AOF, no daemon.
        orphan = subprocess.Popen(
            [
                "redis-server", "--port", "0",
                "--unixsocket", os.path.join(self.data_dir, "redis.sock"),
                "--dir", self.data_dir, "--appendonly", "yes", "--save", "",
                "--pidfile", os.path.join(self.data_dir, "redis.pid"),
                "--logfile", "orphan.log",
            ],
            start_new_session=True,
        )  # fmt: skip
        self.addCleanup(lambda: orphan.poll() is None and orphan.kill())
        wait_until(lambda: os.path.exists(os.path.join(self.data_dir, "redis.sock")), what="orphan")
        second = self.start()
        self.assertEqual(orphan.wait(30), 0)  # SIGTERM: it wrote its AOF and exited
        [ours] = redis_servers(self.data_dir)
        self.assertNotEqual(ours, orphan.pid)
        self.assertEqual(request("GET", second.base + "/api/v1/devices/1/terms")[1], ["10"])
        second.stop()
        with open(second.log.name, "rb") as f:
            self.assertIn(b"left behind by an earlier run", f.read())


class BurstTests(SynchronousTestCase):
    def test_a_burst_of_200_connections_is_held_and_answered_without_reset(self):
        workdir = tempfile.mkdtemp(prefix="pydatacoll-burst-")
        daemon = Daemon(workdir)
        self.addCleanup(daemon.stop)
        port = daemon.port
        clients = []
        # With the daemon stopped, only the kernel's accept queue (the backlog) holds new
        # connections: each one beyond it waits for a SYN retransmit (1 s, 3 s ...).
        os.kill(daemon.process.pid, signal.SIGSTOP)
        try:
            selector = selectors.DefaultSelector()
            for _ in range(200):
                client = socket.socket()
                client.setblocking(False)
                client.connect_ex(("127.0.0.1", port))
                clients.append(client)
                selector.register(client, selectors.EVENT_WRITE)
            established = set()
            deadline = time.monotonic() + 0.7
            while time.monotonic() < deadline and len(established) < len(clients):
                for key, _ in selector.select(0.05):
                    if key.fileobj.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0:
                        established.add(key.fileobj)
                        selector.unregister(key.fileobj)
        finally:
            os.kill(daemon.process.pid, signal.SIGCONT)
        self.assertEqual(len(established), 200)
        started = time.monotonic()
        for client in clients:
            client.setblocking(True)
            client.settimeout(20)
            client.sendall(b"GET /api/v1/devices HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        answers = []
        for client in clients:
            data = b""
            while True:
                chunk = client.recv(65536)  # a reset would raise ConnectionResetError
                if not chunk:
                    break
                data += chunk
            client.close()
            answers.append(data.split(b"\r\n", 1)[0])
        self.assertEqual(set(answers), {b"HTTP/1.1 200 OK"})
        self.assertLess(time.monotonic() - started, 10)
