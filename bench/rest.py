"""REST read-path benchmark: ``GET /api/v1/devices/{id}`` on PyDataColl against a ceiling peer.

The driver (the default mode) needs only the standard library, ``redis-server`` and
``wrk`` on ``PATH``, and a Python (``sys.executable``) in which PyDataColl, Twisted, Klein
and txredisapi are installed. It

1. starts a private ``redis-server`` on a free port of 127.0.0.1 (no persistence, in a
   temporary directory);
2. starts the daemon in the foreground from this checkout, ``twistd -n --pidfile=
   pydatacoll --api tcp:PORT:interface=127.0.0.1 --redis redis://127.0.0.1:RPORT/0`` (see
   `TWISTD` for how twistd is run), waits until ``GET /api/v1/devices`` answers 200 and
   creates device ``1`` over HTTP, so that the daemon writes the hash ``HS:DEVICE:1``;
3. starts the peer, this same file run with ``--peer``: a bare Klein route doing one
   txredisapi ``HGETALL`` of that hash and returning it as JSON, the ceiling that the
   daemon's read path is measured against;
4. warms both up with 1 s of wrk each, then runs wrk against them in alternation
   (ours, peer, ours, peer, ...) and prints the best round of each side by side with the
   ratio ours/peer (issue 13: >= 1.00, with a p99 no worse than the peer's).

Every process it starts is stopped again, on success, on error and on Ctrl-C. All traffic
goes to 127.0.0.1.

Usage::

    python bench/rest.py --duration 10
    python bench/rest.py --duration 30 --rounds 3 --json rest.json
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import dataclasses
import datetime
import importlib.metadata
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

HOST = "127.0.0.1"
#: The checkout this file belongs to: the daemon runs from here, so that this tree's
#: ``pydatacoll`` and its ``twisted/plugins`` are the ones imported and found.
REPO_ROOT = Path(__file__).resolve().parent.parent


def use_checkout() -> None:
    """Import and run this checkout's ``pydatacoll``, in this process and in its children.

    A bench run from a clone measures that clone, whether the venv has ``pydatacoll``
    installed (``pip install .``: an older copy, maybe), installed editable (the venv's
    ``twistd`` does not see its plugin), or not at all; the simulators and daemons it
    starts inherit ``PYTHONPATH``, whatever their working directory.
    """
    root = str(REPO_ROOT)
    if root not in sys.path:
        sys.path.insert(0, root)
    paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if root not in paths:
        os.environ["PYTHONPATH"] = os.pathsep.join([root, *paths])


#: ``twistd`` run by this Python. ``python -m twisted`` runs ``twist``, which knows neither
#: ``-n`` nor ``--pidfile``; and the ``twistd`` script of a virtualenv does not see the
#: plugin of an editable install, as the checkout is not on its ``sys.path``. ``-c`` puts
#: the working directory (`REPO_ROOT`) first on ``sys.path`` and leaves twistd the rest of
#: the command line.
TWISTD = [
    sys.executable,
    "-c",
    "import sys; from twisted.scripts.twistd import run; sys.exit(run())",
]
DEVICE_ID = "1"
DEVICE = {
    "id": DEVICE_ID,
    "name": "bench device",
    "protocol": "iec104",
    "ip": "127.0.0.1",
    "port": 2404,
}
DEVICE_PATH = f"/api/v1/devices/{DEVICE_ID}"
#: Issue 13, target 3: at least the peer's requests/s, with a p99 no worse than its.
RATIO_TARGET = 1.00
WARMUP_SECONDS = 1
START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
LOG_TAIL_LINES = 40

_PR_SET_PDEATHSIG = 1
_DURATION_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}


class BenchError(Exception):
    """A failure that ends the benchmark with a message (and exit status 1)."""


# -- wrk output ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class WrkResult:
    """The figures of one wrk run."""

    requests_per_sec: float
    p50_ms: float
    p99_ms: float
    requests: int
    seconds: float
    socket_errors: dict[str, int]
    non_2xx_3xx: int

    @property
    def errors(self) -> int:
        """Socket errors plus non-2xx/3xx answers: anything but a clean run is suspect."""
        return sum(self.socket_errors.values()) + self.non_2xx_3xx


def parse_duration_ms(text: str) -> float:
    """Milliseconds of a wrk duration such as ``812.00us``, ``4.21ms``, ``1.02s`` or ``2.00m``."""
    match = re.fullmatch(r"([0-9]+(?:\.[0-9]+)?)(us|ms|s|m|h)", text.strip())
    if match is None:
        raise ValueError(f"not a wrk duration: {text!r}")
    return float(match.group(1)) * _DURATION_UNITS_MS[match.group(2)]


def parse_wrk_output(text: str) -> WrkResult:
    """The figures of the output of ``wrk --latency``; `ValueError` if a figure is missing."""
    rps = re.search(r"^Requests/sec:\s+([0-9.]+)\s*$", text, re.MULTILINE)
    percentiles = dict(
        re.findall(r"^\s+(50|99)%\s+([0-9.]+(?:us|ms|s|m|h))\s*$", text, re.MULTILINE)
    )
    total = re.search(r"^\s*([0-9]+) requests in ([0-9.]+(?:us|ms|s|m|h)),", text, re.MULTILINE)
    if rps is None or total is None or set(percentiles) != {"50", "99"}:
        raise ValueError("wrk output without Requests/sec, 50%/99% latency or request count")
    socket_errors = {
        kind: int(count)
        for kind, count in re.findall(
            r"(connect|read|write|timeout) ([0-9]+)", _line(text, "Socket errors:")
        )
    }
    non_2xx = re.search(r"^\s*Non-2xx or 3xx responses:\s+([0-9]+)", text, re.MULTILINE)
    return WrkResult(
        requests_per_sec=float(rps.group(1)),
        p50_ms=parse_duration_ms(percentiles["50"]),
        p99_ms=parse_duration_ms(percentiles["99"]),
        requests=int(total.group(1)),
        seconds=parse_duration_ms(total.group(2)) / 1000.0,
        socket_errors=socket_errors,
        non_2xx_3xx=int(non_2xx.group(1)) if non_2xx else 0,
    )


def _line(text: str, prefix: str) -> str:
    """The first line of ``text`` that starts (after blanks) with ``prefix``, or ``""``."""
    for line in text.splitlines():
        if line.strip().startswith(prefix):
            return line
    return ""


# -- processes -------------------------------------------------------------------------------


def _die_with_parent() -> None:
    """In the child before exec: get SIGTERM if the driver dies (Linux), so nothing lingers."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


_DIE_WITH_PARENT = _die_with_parent if sys.platform.startswith("linux") else None


class Child:
    """A subprocess whose output goes to a log file, stopped by `stop` (SIGTERM, then SIGKILL)."""

    def __init__(
        self, name: str, argv: Sequence[str], log_path: Path, cwd: Path | None = None
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self._log = log_path.open("wb")
        try:
            self.process = subprocess.Popen(
                self.argv,
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_DIE_WITH_PARENT,
            )
        except OSError:
            self._log.close()
            raise

    def check_running(self) -> None:
        """`BenchError`, with the end of the log, if the process has already exited."""
        code = self.process.poll()
        if code is not None:
            raise BenchError(f"{self.name} exited with status {code}\n{self.log_tail()}")

    def stop(self) -> int:
        """SIGTERM the process group, wait, SIGKILL it if need be; the exit status.

        Signals go only to a group whose leader has not been reaped yet, so they can never
        reach a process that reused the id. Calling it again just returns the status.
        """
        try:
            if self.process.poll() is None:
                self._signal_group(signal.SIGTERM)
                try:
                    self.process.wait(STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    print(f"warning: {self.name} ignored SIGTERM for {STOP_TIMEOUT:.0f} s; killed")
                    self._signal_group(signal.SIGKILL)
            return self.process.wait()
        finally:
            self._log.close()

    def _signal_group(self, signum: int) -> None:
        """Send ``signum`` to the process group the child leads (it may just have exited)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signum)

    def log_text(self) -> str:
        """Everything the process wrote so far."""
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        """The last lines the process wrote, indented, headed by the log's path."""
        tail = self.log_text().splitlines()[-lines:]
        body = "\n".join(f"    {line}" for line in tail) or "    (empty)"
        return f"  last lines of {self.log_path}:\n{body}"


def free_port() -> int:
    """A TCP port of 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def wait_until(
    what: str, ready: Callable[[], bool], child: Child, timeout: float = START_TIMEOUT
) -> None:
    """Poll ``ready`` until it is true; `BenchError` on timeout or if ``child`` exits."""
    deadline = time.monotonic() + timeout
    while True:
        child.check_running()
        if ready():
            return
        if time.monotonic() > deadline:
            raise BenchError(f"{what}: not ready after {timeout:.0f} s\n{child.log_tail()}")
        time.sleep(0.1)


def redis_ping(port: int) -> bool:
    """Whether a Redis server on ``port`` answers PING."""
    try:
        with socket.create_connection((HOST, port), timeout=1.0) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def redis_argv(port: int, data_dir: Path, binary: str | None = None) -> list[str]:
    """A private ``redis-server`` (``binary``, default the one on PATH) without
    persistence, in ``data_dir``, on 127.0.0.1:``port``."""
    binary = binary or shutil.which("redis-server")
    if binary is None:
        raise BenchError("redis-server is not on PATH (Debian: apt-get install -y redis-server)")
    return [
        binary,
        "--port", str(port),
        "--bind", HOST,
        "--save", "",
        "--appendonly", "no",
        "--dir", str(data_dir),
        "--daemonize", "no",
    ]  # fmt: skip


def start_redis(stack: contextlib.ExitStack, workdir: Path) -> int:
    """Start a private ``redis-server`` without persistence; its port."""
    port = free_port()
    data_dir = workdir / "redis"
    data_dir.mkdir()
    child = Child("redis-server", redis_argv(port, data_dir), workdir / "redis.log")
    stack.callback(child.stop)
    wait_until("redis-server", lambda: redis_ping(port), child)
    return port


def http_request(
    url: str, method: str = "GET", body: dict[str, Any] | None = None, timeout: float = 5.0
) -> tuple[int, bytes]:
    """Status and body of one HTTP request (error statuses are returned, not raised)."""
    data = None if body is None else json.dumps(body).encode()
    headers = {} if body is None else {"Content-Type": "application/json"}
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def answers_200(url: str) -> bool:
    """Whether ``GET url`` answers 200 now."""
    try:
        return http_request(url, timeout=2.0)[0] == 200
    except (OSError, urllib.error.URLError):
        return False


def start_daemon(
    stack: contextlib.ExitStack,
    workdir: Path,
    redis_port: int,
    profile: Path | None = None,
    config: Path | None = None,
) -> tuple[Child, str]:
    """Start PyDataColl, wait for its API and create the benchmark device; child, base URL.

    With ``profile``, twistd runs the daemon under cProfile and saves its stats there when
    it stops (``--profile``)."""
    port = free_port()
    profiling = [] if profile is None else [
        f"--profile={profile}", "--profiler=cprofile", "--savestats",
    ]  # fmt: skip
    argv = [
        *TWISTD, "-n", "--pidfile=", *profiling, "pydatacoll",
        "--api", f"tcp:{port}:interface={HOST}",
        "--redis", f"redis://{HOST}:{redis_port}/0",
        *([] if config is None else ["--config", str(config)]),
    ]  # fmt: skip
    child = Child("pydatacoll", argv, workdir / "pydatacoll.log", cwd=REPO_ROOT)
    stack.callback(child.stop)
    base = f"http://{HOST}:{port}"
    wait_until(
        "pydatacoll (GET /api/v1/devices)", lambda: answers_200(f"{base}/api/v1/devices"), child
    )
    status, body = http_request(f"{base}/api/v1/devices", "POST", DEVICE)
    if status != 201:
        raise BenchError(
            f"POST /api/v1/devices answered {status}, not 201: {body[:500]!r}\n{child.log_tail()}"
        )
    return child, base


def start_peer(stack: contextlib.ExitStack, workdir: Path, redis_port: int) -> tuple[Child, str]:
    """Start the ceiling peer (this file with ``--peer``); child, base URL."""
    port = free_port()
    argv = [
        sys.executable, str(Path(__file__).resolve()), "--peer",
        "--port", str(port), "--redis-port", str(redis_port),
    ]  # fmt: skip
    child = Child("peer", argv, workdir / "peer.log")
    stack.callback(child.stop)
    base = f"http://{HOST}:{port}"
    wait_until("peer", lambda: answers_200(base + DEVICE_PATH), child)
    return child, base


def check_device_answers(servers: dict[str, str]) -> dict[str, int]:
    """GET the device once on each server: 200 with a non-empty JSON object; body sizes."""
    sizes = {}
    for name, base in servers.items():
        status, body = http_request(base + DEVICE_PATH)
        try:
            document = json.loads(body)
        except ValueError:
            document = None
        if status != 200 or not isinstance(document, dict) or not document:
            raise BenchError(f"{name}: GET {DEVICE_PATH} answered {status} {body[:500]!r}")
        sizes[name] = len(body)
    return sizes


def stop_daemon(daemon: Child) -> list[str]:
    """Stop the daemon with SIGTERM; what went wrong in its life, if anything."""
    status = daemon.stop()
    tracebacks = len(
        re.findall(r"Traceback \(most recent call last\)|Unhandled error", daemon.log_text())
    )
    problems = []
    if tracebacks:
        problems.append(f"pydatacoll logged {tracebacks} tracebacks/unhandled errors")
    # twistd ends itself with the signal that stopped it, hence -SIGTERM for a clean stop.
    if status not in (0, -signal.SIGTERM):
        problems.append(f"pydatacoll exited with status {status} on SIGTERM")
    return problems


# -- wrk -------------------------------------------------------------------------------------


def wrk_argv(url: str, seconds: int, connections: int, threads: int) -> list[str]:
    """The wrk command line for one run against ``url``."""
    return ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--latency", url]


def run_wrk(url: str, seconds: int, connections: int, threads: int) -> WrkResult:
    """Run wrk once against ``url``; its figures."""
    argv = wrk_argv(url, seconds, connections, threads)
    try:
        done = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=seconds + 60,
            check=False,
            preexec_fn=_DIE_WITH_PARENT,
        )
    except subprocess.TimeoutExpired:
        raise BenchError(f"wrk did not finish: {shlex.join(argv)}") from None
    if done.returncode != 0:
        raise BenchError(f"{shlex.join(argv)} failed ({done.returncode}):\n{done.stderr}")
    try:
        return parse_wrk_output(done.stdout)
    except ValueError as error:
        raise BenchError(f"{error}; wrk printed:\n{done.stdout}{done.stderr}") from None


def wrk_version() -> str:
    """What ``wrk -v`` says of itself (it exits with 1 after printing it)."""
    done = subprocess.run(["wrk", "-v"], capture_output=True, text=True, check=False)
    match = re.search(r"^wrk (\S+)", done.stdout + done.stderr, re.MULTILINE)
    return match.group(1) if match else "unknown"


# -- report ----------------------------------------------------------------------------------


def best(results: Sequence[WrkResult]) -> WrkResult:
    """The round with the most requests per second."""
    return max(results, key=lambda result: result.requests_per_sec)


def versions() -> dict[str, str]:
    """Versions of the software under test."""
    found = {"python": sys.version.split()[0]}
    for dist in ("Twisted", "klein", "txredisapi", "pydatacoll"):
        try:
            found[dist.lower()] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            found[dist.lower()] = "not installed"
    done = subprocess.run(
        ["redis-server", "--version"], capture_output=True, text=True, check=False
    )
    match = re.search(r"v=(\S+)", done.stdout)
    found["redis-server"] = match.group(1) if match else "unknown"
    found["wrk"] = wrk_version()
    return found


def cpu_count() -> int:
    """What ``nproc`` prints: the CPUs this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def load_average() -> str:
    """The 1, 5 and 15 minute load averages (the machine may be shared)."""
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


def format_row(name: str, result: WrkResult) -> str:
    """One line of the figures table."""
    return (
        f"{name:<6} {result.requests_per_sec:>12.1f} {result.p50_ms:>9.2f} {result.p99_ms:>9.2f}"
        f" {result.requests:>10d} {result.errors:>7d}"
    )


def print_report(
    args: argparse.Namespace,
    found: dict[str, str],
    rounds: dict[str, list[WrkResult]],
    sizes: dict[str, int],
    daemon_problems: list[str],
    load: tuple[str, str] = ("?", "?"),
) -> dict[str, Any]:
    """Print the figures; the same as a JSON-ready dict."""
    winners = {name: best(results) for name, results in rounds.items()}
    if winners["peer"].requests_per_sec <= 0:
        raise BenchError("the peer served no requests: no ratio")
    ratio = winners["ours"].requests_per_sec / winners["peer"].requests_per_sec
    example = shlex.join(wrk_argv("URL", args.duration, args.connections, args.threads))
    print()
    print(
        f"REST read path: GET {DEVICE_PATH}, PyDataColl (ours) and bare Klein + txredisapi (peer)"
    )
    print(f"command:  {shlex.join([sys.executable, *sys.argv])}")
    print(f"wrk:      {example}  (wrk {found['wrk']})")
    print(
        f"versions: Python {found['python']}, Twisted {found['twisted']}, Klein {found['klein']}, "
        f"txredisapi {found['txredisapi']}, pydatacoll {found['pydatacoll']}, "
        f"redis-server {found['redis-server']}"
    )
    print(f"nproc:    {cpu_count()}")
    print(
        f"method:   {WARMUP_SECONDS} s warm-up each, then {args.rounds} rounds each alternating "
        "ours/peer; best round (most requests/s) shown"
    )
    print(f"body:     ours {sizes['ours']} bytes, peer {sizes['peer']} bytes")
    print()
    print(
        f"{'name':<6} {'requests/s':>12} {'p50 ms':>9} {'p99 ms':>9} {'requests':>10} {'errors':>7}"
    )
    for name in ("ours", "peer"):
        print(format_row(name, winners[name]))
    print(f"ratio ours/peer: {ratio:.2f} (target >= {RATIO_TARGET:.2f})")
    p99_ok = winners["ours"].p99_ms <= winners["peer"].p99_ms
    print(f"p99 ours/peer: {winners['ours'].p99_ms:.2f} / {winners['peer'].p99_ms:.2f} ms", end="")
    print(" (target: no worse)" if p99_ok else " (WORSE than the peer's)")
    print(f"load average before/after the rounds: {load[0]} / {load[1]} (nproc {cpu_count()})")
    print()
    print("all rounds (requests/s, p50 ms, p99 ms):")
    for name in ("ours", "peer"):
        figures = ", ".join(
            f"{r.requests_per_sec:.1f} / {r.p50_ms:.2f} / {r.p99_ms:.2f}" for r in rounds[name]
        )
        print(f"  {name}: {figures}")
    problems = [
        f"{name} round {index}: {result.errors} errors "
        f"(socket {result.socket_errors}, non-2xx/3xx {result.non_2xx_3xx})"
        for name, results in rounds.items()
        for index, result in enumerate(results, 1)
        if result.errors
    ]
    problems.extend(daemon_problems)
    for problem in problems:
        print(f"WARNING: {problem}")
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": [sys.executable, *sys.argv],
        "wrk_command": example,
        "versions": found,
        "nproc": cpu_count(),
        "settings": {
            "duration_s": args.duration,
            "connections": args.connections,
            "threads": args.threads,
            "rounds": args.rounds,
            "warmup_s": WARMUP_SECONDS,
            "path": DEVICE_PATH,
        },
        "body_bytes": sizes,
        "best": {name: dataclasses.asdict(result) for name, result in winners.items()},
        "rounds": {
            name: [dataclasses.asdict(result) for result in results]
            for name, results in rounds.items()
        },
        "ratio": round(ratio, 4),
        "target": RATIO_TARGET,
        "load_average": list(load),
        "warnings": problems,
    }


# -- driver ----------------------------------------------------------------------------------


class Stopped(Exception):
    """The driver got SIGTERM."""


def _raise_stopped(signum: int, _frame: object) -> NoReturn:
    """SIGTERM handler: unwind through the cleanups so that the children get stopped."""
    raise Stopped(signum)


def benchmark(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """Start Redis, the daemon and the peer, run wrk, stop everything; the report."""
    with contextlib.ExitStack() as stack:
        redis_port = start_redis(stack, workdir)
        daemon, ours = start_daemon(stack, workdir, redis_port, args.profile, args.config)
        _peer, peer = start_peer(stack, workdir, redis_port)
        servers = {"ours": ours, "peer": peer}
        sizes = check_device_answers(servers)
        print(f"ours at {ours}, peer at {peer}, redis on port {redis_port}; warming up")
        for base in servers.values():
            run_wrk(base + DEVICE_PATH, WARMUP_SECONDS, args.connections, args.threads)
        rounds: dict[str, list[WrkResult]] = {name: [] for name in servers}
        load_before = load_average()
        for index in range(1, args.rounds + 1):
            for name, base in servers.items():
                daemon.check_running()
                result = run_wrk(base + DEVICE_PATH, args.duration, args.connections, args.threads)
                rounds[name].append(result)
                print(
                    f"round {index} {name}: {result.requests_per_sec:.1f} requests/s, "
                    f"p50 {result.p50_ms:.2f} ms, p99 {result.p99_ms:.2f} ms"
                )
        load_after = load_average()
        daemon_problems = stop_daemon(daemon)
        return print_report(
            args, versions(), rounds, sizes, daemon_problems, (load_before, load_after)
        )


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options of both modes."""
    parser = argparse.ArgumentParser(
        description="Benchmark GET /api/v1/devices/{id} of PyDataColl against a bare "
        "Klein + txredisapi peer, with wrk."
    )
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run (10)")
    parser.add_argument("--connections", type=int, default=50, help="wrk connections (50)")
    parser.add_argument("--threads", type=int, default=2, help="wrk threads (2)")
    parser.add_argument("--rounds", type=int, default=2, help="wrk runs per server (2)")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the results here")
    parser.add_argument(
        "--keep-logs",
        type=Path,
        metavar="DIR",
        help="keep the logs of redis-server, pydatacoll and the peer in a new folder in DIR",
    )
    parser.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help="the daemon's configuration file (e.g. [api] config_cache = 0: no cache)",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="FILE",
        help="run PyDataColl under cProfile and save its stats in FILE (pstats format; the "
        "figures are then not comparable)",
    )
    peer = parser.add_argument_group("peer mode (started by the driver)")
    peer.add_argument("--peer", action="store_true", help="serve the ceiling peer and exit")
    peer.add_argument("--port", type=int, help="peer: TCP port on 127.0.0.1")
    peer.add_argument("--redis-port", type=int, help="peer: Redis port on 127.0.0.1")
    args = parser.parse_args(argv)
    if args.peer:
        if args.port is None or args.redis_port is None:
            parser.error("--peer needs --port and --redis-port")
    else:
        if min(args.duration, args.connections, args.threads, args.rounds) < 1:
            parser.error("--duration, --connections, --threads and --rounds must be >= 1")
        if args.connections < args.threads:
            parser.error("wrk needs at least as many connections as threads")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark (or the peer); the exit status."""
    args = parse_args(argv)
    if args.profile is not None:
        args.profile = args.profile.resolve()  # the daemon runs in REPO_ROOT
    if args.config is not None:
        args.config = args.config.resolve()
    use_checkout()
    if args.peer:
        run_peer(args.port, args.redis_port)
        return 0
    if shutil.which("wrk") is None:
        print("error: wrk is not on PATH (Debian: apt-get install -y wrk)", file=sys.stderr)
        return 1
    signal.signal(signal.SIGTERM, _raise_stopped)
    with contextlib.ExitStack() as stack:
        if args.keep_logs is not None:
            args.keep_logs.mkdir(parents=True, exist_ok=True)
            workdir = Path(tempfile.mkdtemp(prefix="bench-rest-", dir=args.keep_logs)).resolve()
            print(f"logs kept in {workdir}")
        else:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-rest-")))
        try:
            report = benchmark(args, workdir)
        except BenchError as error:
            print(f"error: {error}", file=sys.stderr)
            if args.keep_logs is None:
                print("(the logs are deleted; --keep-logs DIR keeps them)", file=sys.stderr)
            return 1
        except (KeyboardInterrupt, Stopped) as stop:
            print("interrupted: every process started is stopped", file=sys.stderr)
            return 128 + (stop.args[0] if isinstance(stop, Stopped) else signal.SIGINT)
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        print(f"results written to {args.json}")
    return 0


# -- peer ------------------------------------------------------------------------------------


def run_peer(port: int, redis_port: int) -> None:
    """The ceiling: one Klein route, one txredisapi HGETALL, the hash as JSON. Runs the reactor."""
    import txredisapi
    from klein import Klein
    from twisted.internet import reactor as default_reactor
    from twisted.web.server import Site

    # The reactor module stands for the reactor object: typed loosely, as Twisted's own
    # code does without the mypy-zope plugin.
    reactor: Any = default_reactor

    app = Klein()
    pool = txredisapi.lazyConnectionPool(
        host=HOST, port=redis_port, poolsize=4, convertNumbers=False
    )

    @app.route("/api/v1/devices/<device_id>", methods=["GET"])
    def get_device(request: Any, device_id: str) -> Any:
        request.setHeader(b"Content-Type", b"application/json")
        deferred = pool.hgetall(f"HS:DEVICE:{device_id}")
        return deferred.addCallback(lambda result: json.dumps(result).encode())

    reactor.listenTCP(port, Site(app.resource()), interface=HOST)
    reactor.run()


if __name__ == "__main__":
    sys.exit(main())
