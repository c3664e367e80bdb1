"""Command round trip under an IEC 104 flood: ``POST /api/v1/device_ctrl`` latency.

    python bench/ctrl.py --commands 200

In one run it starts a private ``redis-server``, our IEC 104 simulator flooding (as
``bench/ingest.py`` does: 4800 points, SQ=1 ``M_ME_NC_1``, k=12, w=8), a second simulator
that only answers commands (the RTU: ``C_SC_NA_1`` at IOA 20001, confirmed at once), and
the daemon (``twistd -n pydatacoll``, every role in one process), configured over REST:
device 1 (the flood) and device 2 (the RTU, one term-item ``protocol_code`` 20001,
``code_type`` 45). Then, one after another, ``--commands`` ``device_ctrl`` requests to
device 2 (value alternately true and false), each timed from the request to the HTTP
answer, first while device 1 floods, then once the flood simulator is stopped and the
ingest has drained (idle). It prints p50, p90, p99 and max of both phases, the samples
stored per second by the flood alone and during the commands (``XADD`` calls), the share
of that time the daemon held the flood back for the commands (``[collector]
command_hold``, docs/collector.rst "Commands ahead of data", from ``/metrics``), and the
targets of issue 13 (p50 < 20 ms and p99 < 100 ms under the flood).

The peer figure is the idle phase: the same path with no data to queue behind.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: bench/ is on sys.path
    from ingest import (
        _LISTENING,
        HOST,
        START_TIMEOUT,
        Resp,
        configure,
        http,
        start_daemon,
        start_redis,
        start_simulator,
        wait_until,
    )
    from rest import BenchError, Child, use_checkout
else:
    from .ingest import (
        _LISTENING,
        HOST,
        START_TIMEOUT,
        Resp,
        configure,
        http,
        start_daemon,
        start_redis,
        start_simulator,
        wait_until,
    )
    from .rest import BenchError, Child, use_checkout

RTU_DEVICE = "2"
RTU_TERM = "2"
RTU_ITEM = "c1"
RTU_IOA = 20001  # C_SC_NA_1 of pydatacoll.testing.iec104_sim
TARGET_P50_MS = 20.0
TARGET_P99_MS = 100.0


def start_rtu(stack: contextlib.ExitStack, workdir: Path) -> tuple[Child, int]:
    """Our simulator as a quiet RTU (no flood, one float point); the child and its port."""
    argv = [
        sys.executable,
        "-m", "pydatacoll.testing.iec104_sim",
        "--port", "0",
        "--ca", "1",
        "--points", "1",
    ]  # fmt: skip
    child = Child("rtu", argv, workdir / "rtu.log")
    stack.callback(child.stop)

    def listening() -> int | None:
        match = _LISTENING.search(child.log_text())
        return int(match.group(2)) if match else None

    return child, wait_until("rtu", listening, child, START_TIMEOUT)


def configure_rtu(base: str, port: int) -> None:
    """Device 2 at the RTU, term 2 (CA 1), one command point (IOA 20001, type 45)."""
    http(
        base,
        "POST",
        "/api/v1/devices",
        {
            "id": RTU_DEVICE,
            "name": "bench rtu",
            "protocol": "iec104",
            "ip": HOST,
            "port": port,
            "clock_sync": False,
        },
    )
    http(
        base,
        "POST",
        "/api/v1/terms",
        {"id": RTU_TERM, "name": "rtu station", "device_id": RTU_DEVICE, "address": 1},
    )
    http(base, "POST", "/api/v1/items", {"id": RTU_ITEM, "name": "breaker"})
    http(
        base,
        "POST",
        f"/api/v1/terms/{RTU_TERM}/items",
        {"item_id": RTU_ITEM, "protocol_code": RTU_IOA, "code_type": 45},
    )


def command(base: str, value: bool) -> tuple[float, dict[str, Any]]:
    """One device_ctrl: (milliseconds from request to answer, the answer)."""
    body = {"device_id": RTU_DEVICE, "term_id": RTU_TERM, "item_id": RTU_ITEM, "value": value}
    started = time.perf_counter()
    answer = http(base, "POST", "/api/v1/device_ctrl", body, timeout=30.0)
    return (time.perf_counter() - started) * 1000.0, answer


def phase(base: str, count: int, pause: float) -> dict[str, Any]:
    """``count`` commands one after another; their latency percentiles and outcomes."""
    latencies: list[float] = []
    outcomes: dict[str, int] = {}
    for i in range(count):
        ms, answer = command(base, i % 2 == 0)
        latencies.append(ms)
        outcome = str(answer.get("outcome")) if isinstance(answer, dict) else repr(answer)
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
        time.sleep(pause)
    ordered = sorted(latencies)

    def pct(p: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(p * len(ordered)))], 2)

    return {
        "commands": count,
        "p50_ms": round(statistics.median(ordered), 2),
        "p90_ms": pct(0.90),
        "p99_ms": pct(0.99),
        "max_ms": round(ordered[-1], 2),
        "outcomes": outcomes,
    }


def rtu_online(base: str) -> bool:
    """Device 2 reports its link up."""
    try:
        status = http(base, "GET", f"/api/v1/devices/{RTU_DEVICE}/status")
    except Exception:
        return False
    return isinstance(status, dict) and status.get("state") == "online"


def command_holds(base: str) -> dict[str, float]:
    """The daemon's commands-ahead-of-data counters (``/metrics``)."""
    text = http(base, "GET", "/metrics")
    text = text.decode() if isinstance(text, bytes) else str(text)
    found = {}
    for name in ("holds", "holds_capped", "unheld", "held_seconds"):
        match = re.search(rf"^pydatacoll_command_{name}_total (\S+)$", text, re.M)
        found[name] = float(match.group(1)) if match else 0.0
    return found


def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """Both phases; every figure in one dict."""
    figures: dict[str, Any] = {"load_before": os.getloadavg()}
    with contextlib.ExitStack() as stack:
        _, redis_port = start_redis(stack, workdir)
        flood, flood_port = start_simulator(stack, workdir, args.points, 12, 8)
        _, rtu_port = start_rtu(stack, workdir)
        daemon, base = start_daemon(stack, workdir, redis_port)
        redis = Resp(redis_port)
        stack.callback(redis.close)
        configure(base, flood_port, args.points)
        configure_rtu(base, rtu_port)
        wait_until("device 2 online", lambda: rtu_online(base), daemon, START_TIMEOUT)
        wait_until(
            "first stored sample",
            lambda: redis.commandstats().get("xadd", (0, 0))[0] > 0,
            daemon,
            START_TIMEOUT,
        )
        time.sleep(args.warmup)
        # The flood alone first: what the commands' holds cost it shows beside this.
        stats0, t0 = redis.commandstats(), time.perf_counter()
        time.sleep(args.warmup)
        stats1, t1 = redis.commandstats(), time.perf_counter()
        xadd = stats1.get("xadd", (0, 0))[0] - stats0.get("xadd", (0, 0))[0]
        figures["flood_alone_per_s"] = round(xadd / (t1 - t0))
        holds0 = command_holds(base)
        stats0, t0 = redis.commandstats(), time.perf_counter()
        figures["flood"] = phase(base, args.commands, args.pause)
        stats1, t1 = redis.commandstats(), time.perf_counter()
        xadd = stats1.get("xadd", (0, 0))[0] - stats0.get("xadd", (0, 0))[0]
        figures["flood"]["stored_per_s"] = round(xadd / (t1 - t0))
        # How long Redis is held by one ingest script (a command arriving meanwhile waits)
        calls = stats1.get("evalsha", (0, 0))[0] - stats0.get("evalsha", (0, 0))[0]
        usec = stats1.get("evalsha", (0, 0))[1] - stats0.get("evalsha", (0, 0))[1]
        figures["flood"]["script_ms"] = round(usec / calls / 1000.0, 2) if calls else None
        figures["flood"]["redis_script_share"] = round(usec / 1e6 / (t1 - t0), 3)
        holds1 = command_holds(base)
        figures["holds"] = {k: round(holds1[k] - holds0[k], 3) for k in holds1}
        figures["held_share"] = round(figures["holds"]["held_seconds"] / (t1 - t0), 3)
        figures["load_during"] = os.getloadavg()
        flood.stop()
        time.sleep(args.warmup)  # the ingest drains what the flood left
        figures["idle"] = phase(base, args.commands, args.pause)
        daemon.check_running()
    return figures


def report(figures: dict[str, Any]) -> None:
    """Both phases side by side, with the targets."""
    print(f"{'phase':28} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'max ms':>8}  outcomes")
    for name, key in (("under the flood", "flood"), ("idle (peer: no data)", "idle")):
        f = figures[key]
        print(
            f"{name:28} {f['p50_ms']:>8.2f} {f['p90_ms']:>8.2f} {f['p99_ms']:>8.2f} "
            f"{f['max_ms']:>8.2f}  {f['outcomes']}"
        )
    flood, idle = figures["flood"], figures["idle"]
    print(
        f"during the flood phase: {flood['stored_per_s']:,} samples stored per second; one "
        f"ingest script holds Redis {flood['script_ms']} ms on average, scripts hold it "
        f"{flood['redis_script_share']:.0%} of the time"
    )
    holds = figures["holds"]
    print(
        f"the flood alone stored {figures['flood_alone_per_s']:,} samples/s; during the "
        f"commands the data was held {figures['held_share']:.0%} of the time "
        f"({holds['holds']:g} holds, {holds['holds_capped']:g} capped, "
        f"{holds['unheld']:g} commands not held; [collector] command_hold)"
    )
    print(
        f"ratio flood / idle: p50 {flood['p50_ms'] / idle['p50_ms']:.1f}x, "
        f"p99 {flood['p99_ms'] / idle['p99_ms']:.1f}x"
    )
    met = flood["p50_ms"] < TARGET_P50_MS and flood["p99_ms"] < TARGET_P99_MS
    print(
        f"target under the flood p50 < {TARGET_P50_MS:g} ms and p99 < {TARGET_P99_MS:g} ms: "
        f"{'met' if met else 'NOT met'}"
    )
    print(f"load average before {figures['load_before']}, during {figures['load_during']}")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--commands", type=int, default=200, help="per phase (200)")
    parser.add_argument("--points", type=int, default=4800, help="flood IOAs 1..N (4800)")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds before each (2)")
    parser.add_argument("--pause", type=float, default=0.01, help="seconds between commands (0.01)")
    parser.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run, print; 0 when it ran (whatever the figure), 1 when it could not."""
    args = parse_args(argv)
    use_checkout()
    with tempfile.TemporaryDirectory(prefix="pydatacoll-bench-ctrl-") as workdir:
        try:
            figures = run(args, Path(workdir))
        except BenchError as error:
            print(f"error: {error}", file=sys.stderr)
            return 1
    report(figures)
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
