"""Gateway benchmark: values/s from a field flood up through the gateway to a c104 master.

    python bench/gateway.py --duration 10

In one run it

1. starts, for each phase afresh, a private ``redis-server``, our IEC 104 simulator
   flooding (SQ=1 ``M_ME_NC_1`` frames of 48 points, IOAs 1..``--points``, every value
   changing) and the daemon
   (``twistd -n pydatacoll``, role all), exactly as ``bench/ingest.py`` does, and
   configures the device and its points over REST;
2. **collector only**: for ``--duration`` seconds measures the samples stored per second
   (``XADD`` calls in Redis' ``INFO commandstats``, one per stored sample);
3. creates a gateway (``POST /api/v1/gateways``) and maps every point to an IOA
   (``POST /api/v2/gateways/bench/points``, type 13: spontaneous data goes as
   ``M_ME_TF_1`` with CP56Time2a), connects lib60870's client (``c104.Client``, the
   test dependency) to it, and for ``--duration`` seconds measures, side by side, the
   samples stored per second and the values per second the c104 client received
   spontaneously (objects of COT 3 I-frames, counted in its raw-frame callback);
4. prints both phases, the gateway's dropped events (its queue keeps the newest), the CPU
   of the daemon and of the simulator, and the machine's load.

Every process it starts is stopped again, by its PID.
"""

import argparse
import contextlib
import json
import os
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import c104  # the test dependency (GPL): the upstream master here, never shipped

if __package__ in (None, ""):  # run as a script: bench/ is on sys.path
    from ingest import (
        BATCH,
        HOST,
        START_TIMEOUT,
        TWISTD,
        Resp,
        answers,
        configure,
        delta,
        http,
        snapshot,
        start_daemon,
        start_redis,
        start_simulator,
        wait_until,
    )
    from rest import BenchError, Child, free_port, use_checkout
else:
    from .ingest import (
        BATCH,
        HOST,
        START_TIMEOUT,
        TWISTD,
        Resp,
        answers,
        configure,
        delta,
        http,
        snapshot,
        start_daemon,
        start_redis,
        start_simulator,
        wait_until,
    )
    from .rest import BenchError, Child, free_port, use_checkout

GATEWAY_ID = "bench"


class Counter:
    """Objects of spontaneous (COT 3) I-frames seen by c104's raw callback."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.values = 0
        self.frames = 0

    def on_receive_raw(self, connection: c104.Connection, data: bytes) -> None:
        # APCI (6) then type, VSQ, COT: one callback per APDU
        if len(data) > 8 and not data[2] & 1 and data[8] & 0x3F == 3:
            with self.lock:
                self.values += data[7] & 0x7F
                self.frames += 1

    def read(self) -> int:
        with self.lock:
            return self.values


def measure(
    redis: Resp, children: dict[str, Any], seconds: float, counter: Counter | None
) -> dict[str, Any]:
    """Stored samples/s (and values/s at the c104 client) over ``seconds``."""
    before = snapshot(redis, children)
    seen0 = counter.read() if counter is not None else 0
    time.sleep(seconds)
    after = snapshot(redis, children)
    seen1 = counter.read() if counter is not None else 0
    wall = after["time"] - before["time"]
    xadd, _ = delta(before, after, "xadd")
    figures = {
        "seconds": round(wall, 2),
        "stored_per_s": round(xadd / wall),
        "cpu": {
            name: round((after["cpu"][name] - before["cpu"][name]) / wall, 2)
            for name in before["cpu"]
        },
    }
    if counter is not None:
        figures["upstream_per_s"] = round((seen1 - seen0) / wall)
    return figures


def configure_points(base: str, sim_port: int, points: int, gateway_port: int | None) -> None:
    """The device and its points, the gateway and its points (when ``gateway_port``),
    and only then the device at the simulator: configuring under a flood that saturates
    Redis would take longer than the measurement."""
    configure(base, free_port(), points)  # a port nobody listens on: no flood yet
    if gateway_port is not None:
        configure_gateway(base, gateway_port, points)
    http(base, "PUT", "/api/v1/devices/1", {"port": sim_port})


def configure_gateway(base: str, port: int, points: int) -> None:
    """The gateway and one point per IOA (type 13)."""
    http(
        base,
        "POST",
        "/api/v1/gateways",
        {
            "id": GATEWAY_ID,
            "protocol": "iec104",
            "listen": f"tcp:{port}:interface={HOST}",
            "common_address": 1,
        },
    )
    for start in range(1, points + 1, BATCH):
        chunk = range(start, min(points, start + BATCH - 1) + 1)
        http(
            base,
            "POST",
            f"/api/v2/gateways/{GATEWAY_ID}/points",
            [
                {"ioa": i, "type_id": 13, "device_id": "1", "term_id": "1", "item_id": str(i)}
                for i in chunk
            ],
        )


def start_role(stack: contextlib.ExitStack, workdir: Path, redis_port: int, role: str) -> Child:
    """``twistd -n pydatacoll --role ROLE`` (no API) in its own directory."""
    rundir = workdir / role
    rundir.mkdir()
    argv = [
        *TWISTD, "-n", "--pidfile=", "pydatacoll", "--role", role,
        "--redis", f"redis://{HOST}:{redis_port}/0",
    ]  # fmt: skip
    child = Child(role, argv, workdir / f"{role}.log", cwd=rundir)
    stack.callback(child.stop)
    return child


def start_api(stack: contextlib.ExitStack, workdir: Path, redis_port: int) -> tuple[Child, str]:
    """``twistd -n pydatacoll --role api``; the child and its base URL."""
    port = free_port()
    rundir = workdir / "api"
    rundir.mkdir()
    argv = [
        *TWISTD, "-n", "--pidfile=", "pydatacoll", "--role", "api",
        "--redis", f"redis://{HOST}:{redis_port}/0",
        "--api", f"tcp:{port}:interface={HOST}",
    ]  # fmt: skip
    child = Child("api", argv, workdir / "api.log", cwd=rundir)
    stack.callback(child.stop)
    base = f"http://{HOST}:{port}"
    wait_until("the API (GET /api/v1/devices)", lambda: answers(base), child, START_TIMEOUT)
    return child, base


def start(
    stack: contextlib.ExitStack,
    workdir: Path,
    points: int,
    gateway_port: int | None,
    split: bool = False,
) -> tuple[Resp, dict[str, Any], str]:
    """Redis, the flooding simulator, the daemon configured; once samples are stored.

    ``split``: the API, the collector and the gateway in three processes (roles api,
    collector, gateway) instead of one (role all).
    """
    workdir.mkdir()
    _, redis_port = start_redis(stack, workdir)
    sim, sim_port = start_simulator(stack, workdir, points, 12, 8)
    extra: dict[str, Any] = {}
    if split:
        daemon, base = start_api(stack, workdir, redis_port)
        extra["collector"] = start_role(stack, workdir, redis_port, "collector")
        extra["gateway"] = start_role(stack, workdir, redis_port, "gateway")
    else:
        daemon, base = start_daemon(stack, workdir, redis_port)
    redis = Resp(redis_port)
    stack.callback(redis.close)
    configure_points(base, sim_port, points, gateway_port)
    wait_until(
        "first stored sample",
        lambda: redis.commandstats().get("xadd", (0, 0))[0] > 0,
        daemon,
        START_TIMEOUT,
    )
    return redis, {"daemon": daemon, "simulator": sim, **extra}, base


def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """Both phases (each with fresh processes); every figure in one dict."""
    figures: dict[str, Any] = {"load_before": os.getloadavg()}
    with contextlib.ExitStack() as stack:
        redis, children, base = start(stack, workdir / "alone", args.points, None)
        time.sleep(args.warmup)
        figures["collector_only"] = measure(redis, children, args.duration, None)
    with contextlib.ExitStack() as stack:
        port = free_port()
        redis, children, base = start(
            stack, workdir / "gateway", args.points, port, split=args.split
        )
        daemon = children["daemon"]

        def listening() -> bool:
            status = http(base, "GET", f"/api/v1/gateways/{GATEWAY_ID}/status")
            return isinstance(status, dict) and status.get("state") == "listening"

        try:
            wait_until("gateway listening", listening, daemon, 2 * START_TIMEOUT)
        except BenchError as error:
            lines = [
                f"{name}: {line}"
                for name, child in children.items()
                if name != "simulator"
                for line in child.log_text().splitlines()
                if "gateway" in line.lower()
            ]
            raise BenchError(f"{error}\n" + "\n".join(lines[-20:])) from None
        counter = Counter()
        client = c104.Client(tick_rate_ms=50, command_timeout_ms=5000)
        connection = client.add_connection(ip=HOST, port=port, init=c104.Init.NONE)
        connection.on_receive_raw(callable=counter.on_receive_raw)
        client.start()
        stack.callback(client.stop)
        wait_until("c104 receiving", lambda: counter.read() > 0, daemon, START_TIMEOUT)
        time.sleep(args.warmup)
        figures["through_gateway"] = measure(redis, children, args.duration, counter)
        time.sleep(2.5)  # the status is written every 2 s
        status = http(base, "GET", f"/api/v1/gateways/{GATEWAY_ID}/status")
        figures["gateway_status"] = {
            k: status.get(k) for k in ("state", "points", "groups") if isinstance(status, dict)
        }
        figures["load_during"] = os.getloadavg()
    return figures


def report(args: argparse.Namespace, figures: dict[str, Any]) -> None:
    """The figures side by side."""
    alone, through = figures["collector_only"], figures["through_gateway"]
    layout = "api, collector, gateway in 3 processes" if args.split else "one process"
    print(
        f"points {args.points}, {args.duration:g} s per phase, gateway phase: {layout}, "
        f"load {figures['load_during']}"
    )
    print(f"  collector only:   {alone['stored_per_s']:>9,} samples/s stored   cpu {alone['cpu']}")
    print(
        f"  with the gateway: {through['stored_per_s']:>9,} samples/s stored, "
        f"{through['upstream_per_s']:>9,} values/s at the c104 client   cpu {through['cpu']}"
    )
    groups = (figures.get("gateway_status") or {}).get("groups") or []
    for group in groups:
        print(
            f"  gateway {group['group']}: {group['events_dropped']:,} events dropped "
            f"(queue keeps the newest), {group['events_queued']:,} queued at the end"
        )
    print(json.dumps(figures, default=str))


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per phase")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds before measuring")
    parser.add_argument("--points", type=int, default=4800, help="points flooded and mapped")
    parser.add_argument(
        "--split",
        action="store_true",
        help="second phase with the API, collector and gateway as three processes",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    use_checkout()
    with tempfile.TemporaryDirectory(prefix="pydatacoll-bench-gateway-") as workdir:
        try:
            figures = run(args, Path(workdir))
        except BenchError as error:
            print(f"benchmark failed: {error}", file=sys.stderr)
            return 1
    report(args, figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
