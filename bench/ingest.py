"""Ingest benchmark: IEC 104 samples/s the daemon stores in Redis, next to redis-benchmark.

    python bench/ingest.py --duration 10

In one run it

1. starts a private ``redis-server`` on a free port of 127.0.0.1 (no persistence, in a
   temporary directory; never the shared Redis on 6379);
2. starts the daemon and configures it (step 3); once the collector has applied the
   points (its log says ``points updated (4800)``) starts our RTU simulator flooding on
   the device's port, in a subprocess::

       python -m pydatacoll.testing.iec104_sim --port SPORT --ca 1 --points 4800 --flood \\
           --flood-delay 0.2 -k 12 -w 8

   (SQ=1 ``M_ME_NC_1`` frames of 48 points, IOAs 1..4800, as fast as the master's
   acknowledgements allow);
3. starts the daemon in the foreground from a temporary directory, ``twistd -n --pidfile=
   pydatacoll --redis redis://127.0.0.1:RPORT/0 --api tcp:APORT:interface=127.0.0.1``, and
   configures it over REST only: one ``iec104`` device at the simulator (``clock_sync``
   false), one term with address 1, and 4800 items and 4800 term-items (protocol_code =
   IOA) in a few ``POST /api/v2/items`` and ``POST /api/v2/term_items`` batches;
4. waits for the first stored sample, warms up, then for ``--duration`` seconds measures
   samples stored per second *from Redis itself*: the delta of ``INFO commandstats``
   calls of ``XADD`` (the ingest script runs exactly one ``XADD`` per stored sample, next
   to one ``HSET`` per device and call and one ``PUBLISH`` per 40 samples of a device;
   those deltas are printed too, as a check), and the CPU of the daemon, of redis-server and of
   the simulator from ``/proc/PID/stat`` (utime + stime), with the machine's busy cores;
   the device status adds samples decoded and the ingest path's dropped and buffered
   counts;
5. stops the daemon, then runs ``bench/c104_peer.py --mode callback`` against the same
   simulator for ``--duration`` seconds (a c104.Client, lib60870, with one Python callback
   per point: the peer of issue 13), then stops the simulator;
6. runs ``redis-benchmark -p RPORT -t hset -n 200000 -q`` without and with ``-P 16``
   against the same redis-server;
7. prints our samples/s, the CPU figures, c104's points/s with the ratio ours / c104
   (issue 13: at least 250,000 samples/s stored and 2.5 times c104) and both HSET rates
   with the ratio ours / HSET unpipelined (issue 5).

``--py-spy FILE`` also samples the daemon with py-spy during the measured window and prints
where its time goes. Every process it starts is stopped again, by its PID.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import platform
import re
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
from datetime import datetime
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: bench/ is on sys.path
    from rest import BenchError, Child, free_port, use_checkout
else:
    from .rest import BenchError, Child, free_port, use_checkout

HOST = "127.0.0.1"
#: ``twistd`` run by this Python (the venv's ``twistd`` script may not see the plugin).
TWISTD = [
    sys.executable,
    "-c",
    "import sys; from twisted.scripts.twistd import run; sys.exit(run())",
]
TARGET = 250_000
#: Samples stored per second / points per second c104 decodes with one Python callback.
TARGET_RATIO = 2.5
DEVICE_ID = "1"
TERM_ID = "1"
#: Elements per v2 batch request (the API takes up to 10,000 and 1 MiB per body).
BATCH = 2400
START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
_LISTENING = re.compile(r"listening on ([0-9.]+):(\d+)")
_RPS = re.compile(r"HSET:\s*([0-9.]+)\s+requests per second")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_busy_seconds() -> float:
    """CPU seconds all cores spent busy since boot (``/proc/stat``: all but idle, iowait)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:8]]
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def stolen_seconds() -> float:
    """CPU seconds the hypervisor gave other guests while ours waited, all cores, since
    boot (``/proc/stat``'s steal): on a shared virtual machine the figures vary with it."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()
    return int(fields[8]) / os.sysconf("SC_CLK_TCK") if len(fields) > 8 else 0.0


def rss_mib(pid: int) -> float:
    """Resident memory of process ``pid`` in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def wait_until(what: str, ready: Callable[[], Any], child: Child, timeout: float) -> Any:
    """Poll ``ready`` until it returns something true; `BenchError` on timeout or exit."""
    deadline = time.monotonic() + timeout
    while True:
        child.check_running()
        result = ready()
        if result:
            return result
        if time.monotonic() > deadline:
            raise BenchError(f"{what}: not ready after {timeout:.0f} s\n{child.log_tail()}")
        time.sleep(0.1)


# -- Redis (a minimal RESP client: the benchmark needs nothing but the standard library) --


class Resp:
    """One blocking connection to redis-server, for INFO and XLEN only."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection((HOST, port), timeout=5.0)
        self.file = self.sock.makefile("rb")

    def call(self, *args: str) -> Any:
        """Send one command, read one reply."""
        parts = [f"*{len(args)}\r\n".encode()]
        for arg in args:
            data = arg.encode()
            parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
        self.sock.sendall(b"".join(parts))
        return self._read()

    def _read(self) -> Any:
        line = self.file.readline().rstrip(b"\r\n")
        kind, rest = line[:1], line[1:]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            raise BenchError(f"redis: {rest.decode()}")
        if kind == b":":
            return int(rest)
        if kind == b"$":
            size = int(rest)
            if size < 0:
                return None
            data = self.file.read(size + 2)[:-2]
            return data.decode()
        if kind == b"*":
            return [self._read() for _ in range(int(rest))]
        raise BenchError(f"redis: unexpected reply {line!r}")

    def commandstats(self) -> dict[str, tuple[int, int]]:
        """Command -> (calls, usec) from ``INFO commandstats``."""
        stats = {}
        for line in self.call("INFO", "commandstats").splitlines():
            if line.startswith("cmdstat_"):
                name, _, rest = line[len("cmdstat_") :].partition(":")
                fields = dict(item.split("=") for item in rest.split(","))
                stats[name] = (int(fields["calls"]), int(float(fields["usec"])))
        return stats

    def close(self) -> None:
        """Close the connection."""
        self.file.close()
        self.sock.close()


def redis_ping(port: int) -> bool:
    """Whether a redis-server on ``port`` answers PING."""
    try:
        with socket.create_connection((HOST, port), timeout=1.0) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


# -- HTTP ---------------------------------------------------------------------------------


def http(base: str, method: str, path: str, body: Any = None, timeout: float = 30.0) -> Any:
    """The decoded JSON answer of one request; `BenchError` on a status >= 400."""
    data = None if body is None else json.dumps(body).encode()
    headers = {} if body is None else {"Content-Type": "application/json"}
    request = urllib.request.Request(base + path, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            text = response.read()
    except urllib.error.HTTPError as error:
        raise BenchError(f"{method} {path}: {error.code} {error.read()[:300]!r}") from None
    return json.loads(text) if text[:1] in (b"{", b"[") else text


def answers(base: str) -> bool:
    """Whether ``GET /api/v1/devices`` answers now."""
    try:
        http(base, "GET", "/api/v1/devices", timeout=2.0)
        return True
    except (OSError, BenchError):
        return False


def configure(base: str, sim_port: int, points: int) -> None:
    """One device at the simulator, one term (CA 1), ``points`` items and term-items."""
    http(
        base,
        "POST",
        "/api/v1/devices",
        {
            "id": DEVICE_ID,
            "name": "bench flood",
            "protocol": "iec104",
            "ip": HOST,
            "port": sim_port,
            "clock_sync": False,
        },
    )
    http(
        base,
        "POST",
        "/api/v1/terms",
        {"id": TERM_ID, "name": "station 1", "device_id": DEVICE_ID, "address": 1},
    )
    ioas = range(1, points + 1)
    for start in range(0, points, BATCH):
        chunk = ioas[start : start + BATCH]
        http(base, "POST", "/api/v2/items", [{"id": str(i), "name": f"p{i}"} for i in chunk])
        http(
            base,
            "POST",
            "/api/v2/term_items",
            [{"term_id": TERM_ID, "item_id": str(i), "protocol_code": i} for i in chunk],
        )


def device_status(base: str) -> dict[str, Any]:
    """The device status the collector wrote (every 2 s)."""
    try:
        status = http(base, "GET", f"/api/v1/devices/{DEVICE_ID}/status", timeout=5.0)
    except (OSError, BenchError):
        return {}
    return status if isinstance(status, dict) else {}


# -- redis-benchmark ----------------------------------------------------------------------


def redis_benchmark(port: int, requests: int, pipeline: int) -> dict[str, Any]:
    """HSET requests/s of ``redis-benchmark`` (``pipeline`` 1: one round trip each)."""
    binary = shutil.which("redis-benchmark")
    argv = ["redis-benchmark", "-p", str(port), "-t", "hset", "-n", str(requests), "-q"]
    if pipeline > 1:
        argv += ["-P", str(pipeline)]
    command = " ".join(argv)
    if binary is None:
        return {"command": command, "error": "redis-benchmark is not on PATH"}
    out = subprocess.run(
        [binary, *argv[1:]], capture_output=True, text=True, timeout=120, check=False
    )
    # -q redraws its progress with \r; the last HSET figure is the final one.
    found = _RPS.findall(out.stdout)
    if out.returncode != 0 or not found:
        return {"command": command, "error": (out.stderr or out.stdout).strip()[-300:]}
    return {"command": command, "ops_per_s": round(float(found[-1]))}


# -- py-spy -------------------------------------------------------------------------------


def summarise_py_spy(raw: Path, top: int) -> list[str]:
    """Self and inclusive shares of the top functions in py-spy's collapsed stacks."""
    own: collections.Counter[str] = collections.Counter()
    total: collections.Counter[str] = collections.Counter()
    samples = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [re.sub(r":\d+\)$", ")", f) for f in stack.split(";") if f]
        samples += count
        if frames:
            own[frames[-1]] += count
        for frame in set(frames):
            total[frame] += count
    if not samples:
        return ["py-spy: no samples"]
    lines = [f"py-spy: {samples} samples; self time (top {top}):"]
    lines += [f"  {100 * n / samples:5.1f} %  {name}" for name, n in own.most_common(top)]
    lines.append(f"inclusive time (top {top}):")
    lines += [f"  {100 * n / samples:5.1f} %  {name}" for name, n in total.most_common(top)]
    return lines


# -- the run ------------------------------------------------------------------------------


def start_redis(stack: contextlib.ExitStack, workdir: Path) -> tuple[Child, int]:
    """A private redis-server without persistence; the child and its port."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise BenchError("redis-server is not on PATH (Debian: apt-get install -y redis-server)")
    port = free_port()
    (workdir / "redis").mkdir()
    argv = [
        binary,
        "--port", str(port),
        "--bind", HOST,
        "--save", "",
        "--appendonly", "no",
        "--dir", str(workdir / "redis"),
        "--daemonize", "no",
    ]  # fmt: skip
    child = Child("redis-server", argv, workdir / "redis.log")
    stack.callback(child.stop)
    wait_until("redis-server", lambda: redis_ping(port), child, START_TIMEOUT)
    return child, port


def start_simulator(
    stack: contextlib.ExitStack, workdir: Path, points: int, k: int, w: int, port: int = 0
) -> tuple[Child, int]:
    """Our IEC 104 simulator flooding on ``port`` (0: a free one); the child and its
    port. (bench/ctrl.py, gateway.py and mqtt.py use it too.)"""
    argv = [
        sys.executable,
        "-m", "pydatacoll.testing.iec104_sim",
        "--port", str(port),
        "--ca", "1",
        "--points", str(points),
        "--flood",
        # c104_peer adds its station after OPEN; a flood before that makes c104 create
        # the station itself (see bench/c104_peer.py).
        "--flood-delay", "0.2",
        "-k", str(k),
        "-w", str(w),
    ]  # fmt: skip
    child = Child("simulator", argv, workdir / "simulator.log")
    stack.callback(child.stop)

    def listening() -> int | None:
        match = _LISTENING.search(child.log_text())
        return int(match.group(2)) if match else None

    return child, wait_until("simulator", listening, child, START_TIMEOUT)


def start_daemon(stack: contextlib.ExitStack, workdir: Path, redis_port: int) -> tuple[Child, str]:
    """``twistd -n pydatacoll`` in its own directory; the child and its base URL."""
    port = free_port()
    rundir = workdir / "daemon"
    rundir.mkdir()
    argv = [
        *TWISTD, "-n", "--pidfile=", "pydatacoll",
        "--redis", f"redis://{HOST}:{redis_port}/0",
        "--api", f"tcp:{port}:interface={HOST}",
    ]  # fmt: skip
    child = Child("pydatacoll", argv, workdir / "pydatacoll.log", cwd=rundir)
    stack.callback(child.stop)
    base = f"http://{HOST}:{port}"
    wait_until("pydatacoll (GET /api/v1/devices)", lambda: answers(base), child, START_TIMEOUT)
    return child, base


def measure_c104(sim: Child, port: int, duration: float, points: int) -> dict[str, Any]:
    """``bench/c104_peer.py --mode callback`` against the same simulator, in its own
    process: what a c104.Client with one Python callback per point decodes per second."""
    argv = [
        sys.executable, str(Path(__file__).resolve().with_name("c104_peer.py")),
        "--host", HOST, "--port", str(port), "--ca", "1", "--duration", str(duration),
        "--points", str(points), "--mode", "callback",
    ]  # fmt: skip
    s0, t0 = cpu_seconds(sim.process.pid), time.perf_counter()
    out = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 60, check=False)
    s1, t1 = cpu_seconds(sim.process.pid), time.perf_counter()
    if out.returncode != 0:
        return {"error": (out.stderr.strip().splitlines() or ["no output"])[-1]}
    figures: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    figures["sim_cpu_share"] = round((s1 - s0) / (t1 - t0), 3)
    return figures


def snapshot(redis: Resp, children: dict[str, Child]) -> dict[str, Any]:
    """Wall time, commandstats and the CPU seconds of every child, read together."""
    cpu = {name: cpu_seconds(child.process.pid) for name, child in children.items()}
    cpu["machine"] = machine_busy_seconds()
    cpu["stolen"] = stolen_seconds()
    return {"time": time.perf_counter(), "stats": redis.commandstats(), "cpu": cpu}


def delta(before: dict[str, Any], after: dict[str, Any], command: str) -> tuple[int, int]:
    """(calls, usec) of ``command`` between two snapshots."""
    c0, u0 = before["stats"].get(command, (0, 0))
    c1, u1 = after["stats"].get(command, (0, 0))
    return c1 - c0, u1 - u0


def wait_settled(redis: Resp, daemon: Child) -> float:
    """Seconds until the ingest script stops checking each point's owner (HGET).

    Until the collector has applied the configuration change that the REST set-up made,
    the ingest script checks every sample's owner with one HGET (``store/ingest.lua``);
    under the flood that reconcile takes seconds, and measuring during it would count
    a transient (about 0.1 to 0.3 HGET per sample) as the steady state.
    """
    started = time.perf_counter()
    calls = redis.commandstats().get("hget", (0, 0))[0]
    quiet_since = started
    while time.perf_counter() - started < START_TIMEOUT:
        time.sleep(0.25)
        now_calls = redis.commandstats().get("hget", (0, 0))[0]
        now = time.perf_counter()
        if now_calls != calls:
            calls, quiet_since = now_calls, now
        elif now - quiet_since >= 1.0:
            return round(quiet_since - started, 2)
        if daemon.process.poll() is not None:
            raise BenchError(f"the daemon exited with {daemon.process.returncode}")
    raise BenchError(f"the ingest still checked owners after {START_TIMEOUT} s")


def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """The whole benchmark; every figure in one dict."""
    figures: dict[str, Any] = {"load_before": os.getloadavg()}
    with contextlib.ExitStack() as stack:
        redis_child, redis_port = start_redis(stack, workdir)
        daemon, base = start_daemon(stack, workdir, redis_port)
        redis = Resp(redis_port)
        stack.callback(redis.close)
        started = time.perf_counter()
        # Configured before the simulator listens: the device's first reconcile reads its
        # 4800 points without the flood (under the flood, on a loaded machine, that read
        # took more than the 5 s reply timeout again and again: see docs/benchmarks.rst).
        sim_port = free_port()
        configure(base, sim_port, args.points)
        applied = f"device {DEVICE_ID}: points updated ({args.points})"
        wait_until("the collector applying the points", lambda: applied in daemon.log_text(),
                   daemon, START_TIMEOUT)  # fmt: skip
        figures["configure_s"] = round(time.perf_counter() - started, 2)
        sim, sim_port = start_simulator(stack, workdir, args.points, args.k, args.w, port=sim_port)

        def flowing() -> bool:
            return redis.commandstats().get("xadd", (0, 0))[0] > 0

        try:
            wait_until("first stored sample", flowing, daemon, START_TIMEOUT)
        except BenchError as error:
            status = device_status(base)
            raise BenchError(f"{error}\n  device status: {json.dumps(status)[:800]}") from None
        time.sleep(args.warmup)
        figures["settle_s"] = wait_settled(redis, daemon)
        children = {"daemon": daemon, "redis": redis_child, "simulator": sim}
        status0 = device_status(base)
        rss0 = rss_mib(daemon.process.pid)
        spy = None
        if args.py_spy:
            spy_bin = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
            spy_argv = [
                spy_bin, "record", "-p", str(daemon.process.pid), "-d", str(int(args.duration)),
                "-r", "200", "-f", "raw", "-o", args.py_spy, "--nonblocking",
            ]  # fmt: skip
            spy = subprocess.Popen(spy_argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        before = snapshot(redis, children)
        time.sleep(args.duration)
        after = snapshot(redis, children)
        status1 = device_status(base)
        figures["daemon_rss_mib"] = (round(rss0), round(rss_mib(daemon.process.pid)))
        if spy is not None:
            _, err = spy.communicate(timeout=args.duration + 30)
            if spy.returncode != 0:
                figures["py_spy_error"] = err.decode(errors="replace").strip()[-300:]
        figures["xlen_point_1"] = redis.call("XLEN", f"XS:DATA:{DEVICE_ID}:{TERM_ID}:1")
        latest = redis.call("HGET", f"HS:VALUE:{DEVICE_ID}", f"{TERM_ID}:1")
        if latest:  # how old the stored "latest" value of point 1 is when read
            received = datetime.fromisoformat(json.loads(latest)["receive_time"])
            figures["latest_age_s"] = round(time.time() - received.timestamp(), 2)
        figures["load_during"] = os.getloadavg()
        code = daemon.stop()
        if code not in (0, -signal.SIGTERM):
            figures.setdefault("problems", []).append(f"pydatacoll exited with {code}")
        if not args.skip_c104:  # the peer gets the machine the daemon had
            figures["c104"] = measure_c104(sim, sim_port, args.duration, args.points)
            figures["load_c104"] = os.getloadavg()
        sim.stop()
        tracebacks = len(re.findall(r"Traceback|Unhandled error", daemon.log_text()))
        if tracebacks:
            figures.setdefault("problems", []).append(
                f"pydatacoll logged {tracebacks} tracebacks/unhandled errors"
            )
        figures["redis_benchmark"] = [
            redis_benchmark(redis_port, args.requests, 1),
            redis_benchmark(redis_port, args.requests, 16),
        ]

    wall = after["time"] - before["time"]
    xadd, xadd_us = delta(before, after, "xadd")
    hset, _ = delta(before, after, "hset")
    publish, _ = delta(before, after, "publish")
    evalsha, evalsha_us = delta(before, after, "evalsha")
    figures.update(
        seconds=round(wall, 3),
        samples=xadd,
        samples_per_s=round(xadd / wall),
        hset_per_s=round(hset / wall),
        publish_per_s=round(publish / wall),
        # every command Redis ran in the window (script-internal calls included), per s
        commands_per_s={
            command: round(calls / wall)
            for command in sorted(after["stats"])
            if (calls := delta(before, after, command)[0]) > 0
        },
        # Redis time inside each command (script-internal calls included), per sample
        command_us_per_sample={
            command: round(usec / xadd, 2)
            for command in sorted(after["stats"])
            if (usec := delta(before, after, command)[1]) > 0 and xadd
        },
        scripts=evalsha,
        samples_per_script=round(xadd / evalsha, 1) if evalsha else None,
        redis_us_per_sample=round(evalsha_us / xadd, 2) if xadd else None,
        xadd_us_per_sample=round(xadd_us / xadd, 2) if xadd else None,
        cpu={
            name: round((after["cpu"][name] - before["cpu"][name]) / wall, 3)
            for name in before["cpu"]
        },
    )
    p0, p1 = status0.get("points_updated"), status1.get("points_updated")
    t0, t1 = status0.get("updated"), status1.get("updated")
    if isinstance(p0, int) and isinstance(p1, int) and t0 and t1 and t0 != t1:
        span = (datetime.fromisoformat(t1) - datetime.fromisoformat(t0)).total_seconds()
        figures["decoded_per_s"] = round((p1 - p0) / span)
        i0, i1 = status0.get("ingest"), status1.get("ingest")
        if isinstance(i0, dict) and isinstance(i1, dict):  # the ingest path's own counters
            figures["dropped_per_s"] = round((i1["dropped"] - i0["dropped"]) / span)
            figures["buffered_end"] = i1["buffered"]
    figures["status_end"] = status1
    if args.py_spy and "py_spy_error" not in figures and Path(args.py_spy).exists():
        figures["py_spy"] = summarise_py_spy(Path(args.py_spy), args.top)
    return figures


def report(args: argparse.Namespace, figures: dict[str, Any]) -> None:
    """The figures side by side."""
    unpiped, piped = figures["redis_benchmark"]
    cpu = figures["cpu"]
    print(f"simulator: iec104_sim --ca 1 --points {args.points} --flood -k {args.k} -w {args.w}")
    print(
        f"measured {figures['seconds']:.1f} s after {args.warmup:g} s of warm-up and "
        f"{figures['settle_s']:g} s until the configuration was settled (no owner HGET)"
    )
    print(f"{'':34} {'per s':>12} {'daemon cpu':>11} {'redis cpu':>10} {'sim cpu':>8}")
    print(
        f"{'ours: samples stored (XADD)':34} {figures['samples_per_s']:>12,} "
        f"{cpu['daemon']:>11.2f} {cpu['redis']:>10.2f} {cpu['simulator']:>8.2f}"
    )
    print(
        f"{'  check: HSET / PUBLISH calls':34} {figures['hset_per_s']:>12,} "
        f"{figures['publish_per_s']:>12,}"
    )
    per_sample = ", ".join(
        f"{command.upper()} {calls / figures['samples_per_s']:.3f}"
        for command, calls in sorted(figures["commands_per_s"].items(), key=lambda kv: -kv[1])
        if figures["samples_per_s"]
    )
    print(f"  Redis commands per stored sample: {per_sample}")
    inside = ", ".join(
        f"{command.upper()} {usec:.2f}"
        for command, usec in sorted(figures["command_us_per_sample"].items(), key=lambda kv: -kv[1])
    )
    print(f"  Redis us per stored sample, by command (EVALSHA includes the rest): {inside}")
    if "decoded_per_s" in figures:
        print(f"{'  samples decoded (points_updated)':34} {figures['decoded_per_s']:>12,}")
    if "dropped_per_s" in figures:
        print(
            f"{'  samples dropped (buffer full)':34} {figures['dropped_per_s']:>12,}"
            f"   ({figures['buffered_end']:,} buffered at the end)"
        )
    peer = figures.get("c104")
    if peer is not None and "error" not in peer:
        print(
            f"{'c104.Client, one callback per point':34} {peer['points_per_s']:>12,} "
            f"{peer['cpu_share']:>11.2f} {'':>10} {peer['sim_cpu_share']:>8.2f}"
        )
        ratio = figures["samples_per_s"] / max(peer["points_per_s"], 1)
        figures["ratio_c104"] = round(ratio, 2)
        load = ", ".join(f"{x:.2f}" for x in figures["load_c104"])
        print(
            f"ratio ours stored / c104 decoded: {ratio:.2f} (target >= {TARGET_RATIO:g}); "
            f"load average after the c104 phase: {load}"
        )
    elif peer is not None:
        print(f"c104 peer failed: {peer['error']}")
    for name, row in (("redis-benchmark HSET", unpiped), ("redis-benchmark HSET -P 16", piped)):
        text = f"{row['ops_per_s']:>12,}" if "ops_per_s" in row else f"  error: {row['error']}"
        print(f"{name:34} {text}")
    print(
        f"scripts: {figures['scripts']:,} EVALSHA, {figures['samples_per_script']} samples each, "
        f"{figures['redis_us_per_sample']} us of Redis per sample "
        f"(XADD alone {figures['xadd_us_per_sample']} us)"
    )
    if "ops_per_s" in unpiped:
        ratio = figures["samples_per_s"] / unpiped["ops_per_s"]
        figures["ratio"] = round(ratio, 2)
        print(f"ratio ours/HSET unpipelined: {ratio:.2f}")
    verdict = "met" if figures["samples_per_s"] >= TARGET else "NOT met"
    print(f"target >= {TARGET:,} samples/s stored: {verdict}")
    rss0, rss1 = figures["daemon_rss_mib"]
    print(
        f"daemon RSS {rss0} -> {rss1} MiB; XLEN of point 1: {figures['xlen_point_1']}; "
        f"its latest value was received {figures.get('latest_age_s', '?')} s before it was read"
    )
    load = ", ".join(f"{x:.2f}" for x in figures["load_during"])
    print(f"load average at the end of the window: {load} (nproc {os.cpu_count()})")
    others = cpu["machine"] - cpu["daemon"] - cpu["redis"] - cpu["simulator"]
    print(f"machine busy {cpu['machine']:.2f} cores, of which {others:.2f} not ours")
    print(
        f"stolen by the hypervisor (steal): {cpu.get('stolen', 0.0):.2f} cores "
        "(a shared virtual machine: with steal the figures are not the machine's best)"
    )
    for problem in figures.get("problems", []):
        print(f"warning: {problem}")
    if "py_spy_error" in figures:
        print(f"py-spy failed: {figures['py_spy_error']}")
    for line in figures.get("py_spy", []):
        print(line)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds measured (10)")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds before (2)")
    parser.add_argument("--points", type=int, default=4800, help="IOAs 1..N (4800)")
    parser.add_argument("-k", type=int, default=12, help="simulator k (12)")
    parser.add_argument("-w", type=int, default=8, help="simulator w (8)")
    parser.add_argument("--skip-c104", action="store_true", help="no c104 peer phase")
    parser.add_argument("--requests", type=int, default=200_000, help="redis-benchmark -n (200000)")
    parser.add_argument("--py-spy", metavar="FILE", help="sample the daemon into FILE (raw)")
    parser.add_argument("--top", type=int, default=25, help="functions py-spy prints (25)")
    parser.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    parser.add_argument("--keep-logs", metavar="DIR", help="keep the logs in a folder of DIR")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run, print; 0 when it ran (whatever the figure), 1 when it could not."""
    args = parse_args(argv)
    use_checkout()
    workdir = Path(tempfile.mkdtemp(prefix="pydatacoll-bench-ingest-"))
    try:
        figures = run(args, workdir)
    except BenchError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    finally:
        if args.keep_logs:
            kept = Path(tempfile.mkdtemp(prefix="ingest-", dir=args.keep_logs))
            for log in workdir.glob("*.log"):
                shutil.copy(log, kept)
            print(f"logs kept in {kept}")
        shutil.rmtree(workdir, ignore_errors=True)
    report(args, figures)
    if args.json:
        meta = {"python": platform.python_version(), "args": vars(args)}
        Path(args.json).write_text(json.dumps({"meta": meta, "figures": figures}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
