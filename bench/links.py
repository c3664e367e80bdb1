"""Many IEC 104 links in one collector: our daemon next to a bare Twisted peer, one run.

    python bench/links.py --links 5000
    python bench/links.py --links 1000 --quiet 10 --py-spy-start /tmp/start.raw

In one run it

1. starts a private ``redis-server`` on a free port of 127.0.0.1 (no persistence; never
   the shared Redis on 6379) and one simulator process serving ``--links`` ports, one
   station (CA 1, ``--points`` floats) per port, a spontaneous change of one random point
   of one random port every ``--spontaneous-interval`` s::

       python -m pydatacoll.testing.iec104_sim --port BASE --ports N --points P \\
           --spontaneous-interval S

2. **peer**: in a subprocess of its own (so that its CPU and memory are its own), a bare
   Twisted protocol per link doing only what holding a link needs (STARTDT, one station
   interrogation, S-frames for what it receives, TESTFR answers; no decoding, no storage):
   the least code that holds N IEC 104 links. It measures the seconds until every link
   got its STARTDT confirmation and its interrogation's ACT_TERM, its RSS, and its CPU
   (core) over ``--quiet`` s once every link is up;
3. **ours**: the daemon (``twistd -n pydatacoll``; it raises its own file limit) on the
   private Redis: first empty (its RSS and CPU with no device), then ``--role api`` only
   to take the configuration over REST, ``POST /api/v2/{items,devices,terms,term_items}``
   in batches of 1,000 (N devices ``iec104`` at the simulator's ports, a term each, P
   items, P term-items each), then the whole daemon on that configuration: the seconds
   from its process start to every device's status ``online`` (read from Redis:
   ``HS:DEVICE_STATUS:{id}``, pipelined), then after ``--settle`` s the quiet window of
   ``--quiet`` s: CPU of the daemon, of redis-server and of the simulator
   (``/proc/PID/stat``), the daemon's RSS and open files, Redis commands per second
   (``INFO commandstats`` deltas), then the latency (p50 / p99 over ``--requests``
   sequential requests on one keep-alive connection) of ``GET /api/v1/devices`` and
   ``GET /api/v1/devices/{id}/status``, and the seconds it takes to stop. (Configuring a
   running collector with 60,000 changes makes it read each device's configuration
   again for every message that touches it; on a loaded machine its Redis replies then
   ran past the 5 s timeout: that is not the start this measures.)
4. the peer's figures are from the same simulator, before ours;
5. prints every figure, ours beside the peer's with the ratio, the cost of one link
   (RSS above the empty daemon, Redis writes per second, CPU) and the targets of issue 13
   (all online within 60 s, RSS under 400 MiB, under 0.3 core quiet).

``--py-spy-start FILE`` / ``--py-spy-quiet FILE`` sample the daemon with py-spy (found on
PATH or ``--py-spy-bin``) from the configuration to all online, or during the quiet
window, and print where its time goes. Every process it starts is stopped by its PID.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import platform
import random
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: bench/ is on sys.path
    from ingest import (
        HOST,
        TWISTD,
        Resp,
        answers,
        cpu_seconds,
        machine_busy_seconds,
        rss_mib,
        start_redis,
        summarise_py_spy,
        wait_until,
    )
    from rest import BenchError, Child, free_port, use_checkout
else:
    from .ingest import (
        HOST,
        TWISTD,
        Resp,
        answers,
        cpu_seconds,
        machine_busy_seconds,
        rss_mib,
        start_redis,
        summarise_py_spy,
        wait_until,
    )
    from .rest import BenchError, Child, free_port, use_checkout

HERE = Path(__file__).resolve().parent
TARGET_ONLINE_S = 60.0
TARGET_RSS_MIB = 400.0
TARGET_CPU = 0.3
STATUS_KEY = "HS:DEVICE_STATUS:%s"
#: Elements per v2 batch request (the API takes up to 10,000 and 1 MiB per body).
BATCH = 1000


def raise_nofile() -> None:
    """This process's (and so its children's) soft file limit up to the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def free_port_range(count: int) -> int:
    """The first of ``count`` consecutive TCP ports of 127.0.0.1 free right now, below
    the ephemeral range (so that no outgoing connection takes one meanwhile)."""
    rng = random.Random()
    for _attempt in range(50):
        base = rng.randrange(12000, 32000 - count)
        try:
            with contextlib.ExitStack() as stack:
                for port in range(base, base + count):
                    s = stack.enter_context(socket.socket())
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    s.bind((HOST, port))
            return base
        except OSError:
            continue
    raise BenchError(f"no {count} consecutive free ports")


def pipelined(redis: Resp, commands: Sequence[Sequence[str]], chunk: int = 1000) -> list[Any]:
    """Replies of ``commands`` sent ``chunk`` at a time on one connection."""
    replies: list[Any] = []
    for start in range(0, len(commands), chunk):
        parts = []
        for args in commands[start : start + chunk]:
            parts.append(f"*{len(args)}\r\n".encode())
            for arg in args:
                data = arg.encode()
                parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
        redis.sock.sendall(b"".join(parts))
        replies += [redis._read() for _ in commands[start : start + chunk]]
    return replies


def online_count(redis: Resp, ids: Sequence[str]) -> int:
    """How many of the devices ``ids`` have a stored status ``online``."""
    texts = pipelined(redis, [("HGET", STATUS_KEY % i, "status") for i in ids])
    return sum(1 for text in texts if text and json.loads(text).get("state") == "online")


def wait_online(redis: Resp, ids: Sequence[str], daemon: Child, timeout: float) -> dict:
    """Seconds until every device is online, with the count after 10, 30 and 60 s."""
    started = time.perf_counter()
    marks: dict[str, Any] = {}
    while True:
        daemon.check_running()
        n = online_count(redis, ids)
        elapsed = time.perf_counter() - started
        for mark in (10, 30, 60):
            if elapsed >= mark and f"online_after_{mark}s" not in marks:
                marks[f"online_after_{mark}s"] = n
        if n == len(ids):
            return {"all_online_s": round(elapsed, 2), **marks}
        if elapsed > timeout:
            return {"all_online_s": None, "online_at_timeout": n, **marks}
        time.sleep(0.25)


def wait_reads_end(redis: Resp, daemon: Child, started: float, timeout: float) -> float | None:
    """Seconds from ``started`` until the daemon's HGETALL calls stop (under 10 in 1 s)."""
    deadline = time.perf_counter() + timeout
    before = redis.commandstats().get("hgetall", (0, 0))[0]
    while time.perf_counter() < deadline:
        daemon.check_running()
        time.sleep(1.0)
        now = redis.commandstats().get("hgetall", (0, 0))[0]
        if now - before < 10:
            return round(time.perf_counter() - started, 1)
        before = now
    return None


def configuration(links: int, points: int, base_port: int) -> dict[str, list[dict]]:
    """N devices at the simulator's ports, a term (CA 1) each, P items, P term-items each."""
    return {
        "devices": [
            {"id": str(n), "name": f"rtu {n}", "protocol": "iec104", "ip": HOST,
             "port": base_port + n - 1}
            for n in range(1, links + 1)
        ],
        "terms": [
            {"id": f"t{n}", "name": f"station {n}", "device_id": str(n), "address": 1}
            for n in range(1, links + 1)
        ],
        "items": [{"id": f"p{i}", "name": f"point {i}"} for i in range(1, points + 1)],
        "term_items": [
            {"term_id": f"t{n}", "item_id": f"p{i}", "protocol_code": i}
            for n in range(1, links + 1)
            for i in range(1, points + 1)
        ],
    }  # fmt: skip


def post_config(base: str, document: dict) -> dict[str, int]:
    """The configuration over ``POST /api/v2/{collection}`` batches of `BATCH` elements
    (items, devices, terms, term-items); elements stored per collection. (One ``PUT
    /api/v1/config`` of 60,000 changes is one script that ran 4-5 s in Redis: past the
    client's 5 s reply timeout on a loaded machine.)"""
    host, port = base.rsplit("/", 1)[1].split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=300)
    stored: dict[str, int] = {}
    for collection in ("items", "devices", "terms", "term_items"):
        elements = document[collection]
        for start in range(0, len(elements), BATCH):
            body = json.dumps(elements[start : start + BATCH]).encode()
            for attempt in range(4):
                conn.request(
                    "POST", f"/api/v2/{collection}", body, {"Content-Type": "application/json"}
                )
                response = conn.getresponse()
                text = response.read()
                if response.status != 503 or attempt == 3:
                    break
                # A v2 batch is an upsert: sent again, it changes nothing twice.
                stored["retried_503"] = stored.get("retried_503", 0) + 1
            if response.status >= 400:
                raise BenchError(f"POST /api/v2/{collection}: {response.status} {text[:300]!r}")
            stored[collection] = stored.get(collection, 0) + len(json.loads(text))
    conn.close()
    return stored


def latency(base: str, paths: Sequence[str], requests: int) -> dict[str, Any]:
    """p50 / p99 / max milliseconds of sequential GETs of ``paths`` (cycled)."""
    host, port = base.rsplit("/", 1)[1].split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    times, size, failed = [], 0, {}
    for n in range(requests):
        started = time.perf_counter()
        conn.request("GET", paths[n % len(paths)])
        response = conn.getresponse()
        body = response.read()
        times.append(1000 * (time.perf_counter() - started))
        if response.status != 200:
            failed[response.status] = failed.get(response.status, 0) + 1
        size = len(body)
    conn.close()
    times.sort()
    return {
        "p50_ms": round(times[len(times) // 2], 2),
        "p99_ms": round(times[min(len(times) - 1, int(len(times) * 0.99))], 2),
        "max_ms": round(times[-1], 2),
        "bytes": size,
        "not_200": failed,
    }


class PySpy:
    """py-spy recording a process into a raw (collapsed stacks) file until stopped."""

    def __init__(self, binary: str | None, pid: int, out: Path | None) -> None:
        self.out = out
        self.process: subprocess.Popen[bytes] | None = None
        if out is None:
            return
        if binary is None:
            raise BenchError("py-spy is not on PATH (pip install py-spy; or --py-spy-bin)")
        argv = [binary, "record", "-p", str(pid), "-f", "raw", "-r", "100", "-o", str(out)]
        self.process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def stop(self) -> list[str]:
        """Stop recording (SIGINT: py-spy writes its file); the summary lines."""
        if self.process is None or self.out is None:
            return []
        self.process.send_signal(2)
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        if not self.out.exists():
            return ["py-spy: no file"]
        # The reactor thread only: the idle threads of the pool would be most samples.
        reactor_only = self.out.with_suffix(".reactor")
        reactor_only.write_text(
            "".join(
                line + "\n"
                for line in self.out.read_text(errors="replace").splitlines()
                if "mainLoop" in line
            )
        )
        return summarise_py_spy(reactor_only, 25)


def window(children: dict[str, Child], redis: Resp, seconds: float) -> dict[str, Any]:
    """CPU (cores) of every child and Redis commands per second over ``seconds``."""
    pids = {name: child.process.pid for name, child in children.items()}
    cpu0 = {name: cpu_seconds(pid) for name, pid in pids.items()}
    busy0, stats0, t0 = machine_busy_seconds(), redis.commandstats(), time.perf_counter()
    time.sleep(seconds)
    cpu1 = {name: cpu_seconds(pid) for name, pid in pids.items()}
    busy1, stats1, wall = machine_busy_seconds(), redis.commandstats(), time.perf_counter() - t0
    rates = {
        name: round((calls - stats0.get(name, (0, 0))[0]) / wall, 1)
        for name, (calls, _usec) in stats1.items()
        if calls - stats0.get(name, (0, 0))[0] > 0 and name != "info"
    }
    return {
        "cpu": {name: round((cpu1[name] - cpu0[name]) / wall, 3) for name in pids},
        "machine_busy_cores": round((busy1 - busy0) / wall, 2),
        "redis_commands_per_s": rates,
    }


def start_role(
    stack: contextlib.ExitStack, rundir: Path, redis_port: int, role: str
) -> tuple[Child, str]:
    """``twistd -n pydatacoll --role ROLE`` in ``rundir``; the child and its base URL."""
    rundir.mkdir()
    port = free_port()
    argv = [
        *TWISTD, "-n", "--pidfile=", "pydatacoll",
        "--redis", f"redis://{HOST}:{redis_port}/0",
        "--api", f"tcp:{port}:interface={HOST}",
        "--role", role,
    ]  # fmt: skip
    child = Child(f"pydatacoll --role {role}", argv, rundir / "pydatacoll.log", cwd=rundir)
    stack.callback(child.stop)
    base = f"http://{HOST}:{port}"
    wait_until(f"pydatacoll --role {role}", lambda: answers(base), child, 60.0)
    return child, base


def stop(child: Child) -> None:
    """Stop a daemon (SIGTERM; SIGKILL after 10 s)."""
    child.stop()


# -- the peer ------------------------------------------------------------------------------


def peer_main(argv: Sequence[str]) -> int:
    """The peer, in its own process: N bare Twisted links; prints its figures as JSON."""
    from twisted.internet import reactor
    from twisted.internet.protocol import ClientFactory, Protocol

    args = argparse.Namespace(**json.loads(argv[0]))
    startdt_act = bytes.fromhex("680407000000")
    testfr_con = bytes.fromhex("680483000000")
    # C_IC_NA_1, CA 1, IOA 0, QOI 20 (station), send/receive sequence numbers 0.
    gi_act = bytes.fromhex("680e00000000640106000100000000") + b"\x14"
    state = {"started": 0, "gi_done": 0, "lost": 0, "first_started": None}
    t0 = time.perf_counter()
    marks: dict[str, float] = {}

    class Link(Protocol):
        """Holds one link: STARTDT, one GI, S-frames, TESTFR con; decodes nothing."""

        def connectionMade(self) -> None:
            self.buffer = b""
            self.received = 0
            self.transport.write(startdt_act)

        def dataReceived(self, data: bytes) -> None:
            buffer = self.buffer + data
            i_frames = 0
            while len(buffer) >= 2 and len(buffer) >= buffer[1] + 2:
                frame, buffer = buffer[: buffer[1] + 2], buffer[buffer[1] + 2 :]
                control = frame[2]
                if control & 1 == 0:  # I-frame
                    i_frames += 1
                    if frame[6] == 100 and frame[8] & 0x3F == 10:  # GI ACT_TERM
                        state["gi_done"] += 1
                        if state["gi_done"] == args.links:
                            marks["gi_done"] = time.perf_counter() - t0
                elif control == 0x0B:  # STARTDT con
                    state["started"] += 1
                    if state["started"] == args.links:
                        marks["started"] = time.perf_counter() - t0
                    self.transport.write(gi_act)
                elif control == 0x43:  # TESTFR act
                    self.transport.write(testfr_con)
            self.buffer = buffer
            if i_frames:
                self.received = (self.received + i_frames) & 0x7FFF
                n = self.received << 1
                self.transport.write(bytes((0x68, 4, 1, 0, n & 0xFF, n >> 8)))

        def connectionLost(self, reason: Any = None) -> None:
            state["lost"] += 1

    factory = ClientFactory.forProtocol(Link)
    for n in range(args.links):
        reactor.connectTCP(HOST, args.base_port + n, factory, timeout=30)
    result: dict[str, Any] = {}

    def check() -> None:
        if "gi_done" in marks or time.perf_counter() - t0 > args.timeout:
            reactor.callLater(args.settle, quiet)
        else:
            reactor.callLater(0.1, check)

    def quiet() -> None:
        result["cpu0"], result["wall0"] = cpu_self(), time.perf_counter()
        reactor.callLater(args.quiet, done)

    def done() -> None:
        wall = time.perf_counter() - result.pop("wall0")
        result["cpu_quiet"] = round((cpu_self() - result.pop("cpu0")) / wall, 3)
        result["rss_mib"] = round(rss_mib(os.getpid()), 1)
        result["all_started_s"] = round(marks["started"], 2) if "started" in marks else None
        result["all_gi_done_s"] = round(marks["gi_done"], 2) if "gi_done" in marks else None
        result.update(started=state["started"], gi_done=state["gi_done"], lost=state["lost"])
        reactor.stop()

    def cpu_self() -> float:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime

    reactor.callLater(0.1, check)
    reactor.run()
    print(json.dumps(result))
    return 0


def run_peer(args: argparse.Namespace, base_port: int) -> dict[str, Any]:
    """The peer in a subprocess; its figures."""
    spec = {
        "links": args.links,
        "base_port": base_port,
        "timeout": args.timeout,
        "settle": args.settle,
        "quiet": args.quiet,
    }
    out = subprocess.run(
        [sys.executable, str(HERE / "links.py"), "--peer-child", json.dumps(spec)],
        capture_output=True,
        text=True,
        timeout=args.timeout + args.settle + args.quiet + 60,
        check=False,
        env={**os.environ, "PYTHONPATH": str(HERE.parent)},
    )
    if out.returncode != 0:
        raise BenchError(f"peer failed: {out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# -- ours ----------------------------------------------------------------------------------


def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """Both phases on one simulator; every figure in one dict."""
    figures: dict[str, Any] = {"load_before": os.getloadavg()}
    ids = [str(n) for n in range(1, args.links + 1)]
    with contextlib.ExitStack() as stack:
        base_port = free_port_range(args.links)
        sim_argv = [
            sys.executable, "-m", "pydatacoll.testing.iec104_sim",
            "--port", str(base_port), "--ports", str(args.links),
            "--points", str(args.points),
            "--spontaneous-interval", str(args.spontaneous_interval),
        ]  # fmt: skip
        sim = Child("simulator", sim_argv, workdir / "simulator.log")
        stack.callback(sim.stop)
        wait_until(
            "simulator", lambda: "listening on" in sim.log_text(), sim, 30.0 + args.links / 100
        )
        figures["simulator_rss_mib"] = round(rss_mib(sim.process.pid), 1)
        if "peer" in args.phases:
            figures["peer"] = run_peer(args, base_port)
        if "ours" not in args.phases:
            return figures
        redis_child, redis_port = start_redis(stack, workdir)
        redis = Resp(redis_port)
        stack.callback(redis.close)
        # 1. the empty daemon: its RSS and CPU with no device
        daemon, base = start_role(stack, workdir / "empty", redis_port, "all")
        time.sleep(2.0)
        empty = window({"daemon": daemon}, redis, 3.0)
        ours: dict[str, Any] = {
            "empty_rss_mib": round(rss_mib(daemon.process.pid), 1),
            "empty_cpu": empty["cpu"]["daemon"],
        }
        figures["ours"] = ours
        stop(daemon)
        # 2. the configuration, over REST, by an API-only process (no collector)
        api, base = start_role(stack, workdir / "api", redis_port, "api")
        started = time.perf_counter()
        ours["configured"] = post_config(base, configuration(args.links, args.points, base_port))
        ours["configure_s"] = round(time.perf_counter() - started, 2)
        stop(api)
        # 3. the daemon started on it: every link from the process start
        started = time.perf_counter()
        daemon, base = start_role(stack, workdir / "daemon", redis_port, "all")
        spy = PySpy(args.py_spy_bin, daemon.process.pid, args.py_spy_start)
        try:
            ours["start"] = wait_online(redis, ids, daemon, args.timeout)
            if ours["start"]["all_online_s"] is not None:  # from the process start
                ours["start"]["all_online_s"] = round(time.perf_counter() - started, 2)
            ours["start"]["rss_mib_at_online"] = round(rss_mib(daemon.process.pid), 1)
        finally:
            ours["profile_start"] = spy.stop()
        time.sleep(args.settle)
        # The processors load every point at start (the limits plugin: one SMEMBERS and
        # HGETALLs per term, one term after the other): quiet only once that is over.
        ours["points_loaded_after_s"] = wait_reads_end(redis, daemon, started, args.timeout)
        children = {"daemon": daemon, "redis": redis_child, "simulator": sim}
        spy = PySpy(args.py_spy_bin, daemon.process.pid, args.py_spy_quiet)
        try:
            ours["quiet"] = window(children, redis, args.quiet)
        finally:
            ours["profile_quiet"] = spy.stop()
        ours["rss_mib"] = round(rss_mib(daemon.process.pid), 1)
        ours["fds"] = len(os.listdir(f"/proc/{daemon.process.pid}/fd"))
        ours["rest_devices"] = latency(base, ["/api/v1/devices"], args.requests)
        ours["rest_status"] = latency(
            base,
            [f"/api/v1/devices/{ids[(n * 7919) % len(ids)]}/status" for n in range(97)],
            args.requests,
        )
        stopped = time.perf_counter()
        stop(daemon)
        ours["stop_s"] = round(time.perf_counter() - stopped, 2)
    figures["load_after"] = os.getloadavg()
    return figures


def report(args: argparse.Namespace, figures: dict[str, Any]) -> None:
    """Print the figures, ours beside the peer's."""
    print(f"bench/links.py: {args.links} IEC 104 links, {args.points} points each, one change "
          f"every {args.spontaneous_interval} s in all; {platform.python_implementation()} "
          f"{platform.python_version()}, {os.cpu_count()} cores")  # fmt: skip
    print(f"load average before {figures['load_before']}, after {figures.get('load_after')}")
    print(f"simulator RSS {figures['simulator_rss_mib']} MiB")
    peer, ours = figures.get("peer"), figures.get("ours")
    if peer:
        print(f"peer (bare Twisted, STARTDT + GI): {json.dumps(peer)}")
    if not ours:
        return
    for key in ("profile_start", "profile_quiet"):
        if ours.get(key):
            print(f"-- daemon {key}:")
            print("\n".join(ours[key]))
    show = {k: v for k, v in ours.items() if not k.startswith("profile")}
    print("ours:", json.dumps(show, indent=1))
    quiet = ours["quiet"]
    cpu = quiet["cpu"]["daemon"]
    rss_per_link = (ours["rss_mib"] - ours["empty_rss_mib"]) * 1024 / args.links
    writes = sum(quiet["redis_commands_per_s"].values())
    print(
        f"per link: {rss_per_link:.1f} KiB RSS above the empty daemon, "
        f"{writes / args.links:.3f} Redis commands/s, {1e6 * cpu / args.links:.1f} us CPU/s"
    )
    rows = [
        ("all online (s) from the start", ours["start"]["all_online_s"],
         peer and peer.get("all_gi_done_s"), TARGET_ONLINE_S),
        ("RSS (MiB)", ours["rss_mib"], peer and peer.get("rss_mib"), TARGET_RSS_MIB),
        ("CPU quiet (core)", cpu, peer and peer.get("cpu_quiet"), TARGET_CPU),
    ]  # fmt: skip
    print(f"{'figure':32} {'ours':>9} {'peer':>9} {'ours/peer':>9} {'target':>8}")
    for name, mine, theirs, target in rows:
        ratio = f"{mine / theirs:.2f}" if mine and theirs else "-"
        met = "met" if mine is not None and mine <= target else "MISSED"
        print(f"{name:32} {mine!s:>9} {theirs!s:>9} {ratio:>9} {target:>6} {met}")
    for name in ("rest_devices", "rest_status"):
        print(f"{name}: {ours[name]}")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--links", type=int, default=5000)
    parser.add_argument("--points", type=int, default=10, help="float points per station")
    parser.add_argument("--spontaneous-interval", type=float, default=0.25)
    parser.add_argument("--timeout", type=float, default=180.0, help="s to wait for online")
    parser.add_argument("--settle", type=float, default=10.0)
    parser.add_argument("--quiet", type=float, default=20.0, help="quiet window, s")
    parser.add_argument("--requests", type=int, default=200, help="per REST route")
    parser.add_argument("--phases", default="peer,ours")
    parser.add_argument("--py-spy-start", type=Path, default=None)
    parser.add_argument("--py-spy-quiet", type=Path, default=None)
    parser.add_argument("--py-spy-bin", default=shutil.which("py-spy"))
    parser.add_argument("--workdir", type=Path, default=None, help="new dir, kept (logs)")
    parser.add_argument("--json", type=Path, default=None, help="write the figures here too")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["--peer-child"]:
        raise_nofile()
        return peer_main(argv[1:])
    args = parse_args(argv)
    use_checkout()
    raise_nofile()
    with tempfile.TemporaryDirectory(prefix="pydatacoll-links-") as tmp:
        workdir = Path(tmp)
        if args.workdir is not None:  # kept: the logs of the run
            workdir = args.workdir
            workdir.mkdir(parents=True)
        try:
            figures = run(args, workdir)
        except BenchError as error:
            print(f"bench failed: {error}", file=sys.stderr)
            return 1
    report(args, figures)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
