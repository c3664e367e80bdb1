"""IEC 104 ingest benchmark: points/s our master decodes from a flood, next to c104's client.

    python bench/iec104_ingest.py --duration 10 --points 4800

1. starts our simulator in a subprocess (``python -m pydatacoll.testing.iec104_sim
   --port 0 --flood ...``: SQ=1 M_ME_NC_1 frames of 48 points, IOAs 1..N, as fast as the
   acknowledgements allow), so this process's CPU is the master's alone;
2. connects our `Iec104Master` (no GI, no clock sync: like the peer) with a consumer
   called once per ASDU that counts ``len(asdu.ioas)`` and sums the values, and measures
   points/s and this process's CPU seconds per wall second for ``--duration`` seconds
   after ``--warmup`` seconds;
3. runs ``bench/c104_peer.py`` against the same simulator, in its own process: a
   c104.Client with one Python callback per point (``--mode callback``), then with none
   (``--mode nocallback``);
4. prints every figure, the simulator's CPU share in each phase (from /proc), and the
   ratio ours / c104-callback (target >= 2).

``--profile FILE`` also runs our phase under cProfile and prints the top functions.
All traffic stays on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import platform
import pstats
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: bench/ is on sys.path
    from rest import use_checkout
else:
    from .rest import use_checkout

HERE = Path(__file__).resolve().parent
TARGET_RATIO = 2.0
_LISTENING = re.compile(r"listening on ([0-9.]+):(\d+)")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Simulator:
    """Our simulator in a subprocess; its log is drained by a thread."""

    def __init__(self, points: int, k: int, w: int) -> None:
        cmd = [
            sys.executable,
            "-m",
            "pydatacoll.testing.iec104_sim",
            "--port",
            "0",
            "--ca",
            "1",
            "--points",
            str(points),
            "--flood",
            # c104_peer adds its station after OPEN; a flood before that makes c104 create
            # the station itself and add_station return None.
            "--flood-delay",
            "0.2",
            "-k",
            str(k),
            "-w",
            str(w),
        ]
        self.command = " ".join(cmd[1:])
        self.process = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        self.log: list[str] = []
        deadline = time.monotonic() + 20
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.log.append(line)
            match = _LISTENING.search(line)
            if match:
                self.host, self.port = match.group(1), int(match.group(2))
                break
            if time.monotonic() > deadline:
                break
        else:
            raise RuntimeError("the simulator did not start:\n" + "".join(self.log))
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            if len(self.log) < 1000:  # bounded: the tail of a long run is not needed
                self.log.append(line)

    def cpu(self) -> float:
        """CPU seconds the simulator has used so far."""
        return cpu_seconds(self.process.pid)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it lingers."""
        self.process.terminate()
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def measure_ours(
    sim: Simulator, duration: float, warmup: float, k: int, w: int, profile: str | None
) -> dict[str, Any]:
    """Run our master on the global reactor against ``sim``; the figures of the phase."""
    from twisted.internet import reactor
    from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol

    from pydatacoll.protocols.iec104.client import Iec104Master, StationParams
    from pydatacoll.protocols.iec104.link import LinkParams

    state = {"points": 0, "asdus": 0, "checksum": 0.0}
    result: dict[str, Any] = {}

    def consume(asdu: Any) -> None:
        # One call per ASDU; the values are read so nothing could be skipped lazily.
        state["points"] += len(asdu.ioas)
        state["asdus"] += 1
        state["checksum"] += sum(asdu.values)

    master = Iec104Master(
        reactor,
        LinkParams(k=k, w=w),
        StationParams(interrogate_on_start=False, clock_sync_on_start=False),
        on_data=consume,
    )
    profiler = cProfile.Profile() if profile else None

    def begin() -> None:
        result["start"] = (state["points"], time.perf_counter(), time.process_time(), sim.cpu())
        if profiler is not None:
            profiler.enable()
        reactor.callLater(duration, end)

    def end() -> None:
        if profiler is not None:
            profiler.disable()
        result["end"] = (state["points"], time.perf_counter(), time.process_time(), sim.cpu())
        master.close("benchmark done")
        reactor.callLater(0.2, reactor.stop)

    def failed(reason: Any) -> None:
        result["error"] = reason.getErrorMessage()
        reactor.stop()

    endpoint = TCP4ClientEndpoint(reactor, sim.host, sim.port)
    connectProtocol(endpoint, master).addCallbacks(
        lambda _: reactor.callLater(warmup, begin), failed
    )
    reactor.callLater(duration + warmup + 30, reactor.stop)  # a hard bound
    reactor.run()
    if "error" in result or "end" not in result:
        raise RuntimeError(f"our master did not run: {result.get('error', 'no end')}")
    (p0, t0, c0, s0), (p1, t1, c1, s1) = result["start"], result["end"]
    wall, cpu = t1 - t0, c1 - c0
    counters = master.counters
    figures = {
        "peer": "ours (Iec104Master, one callback per ASDU)",
        "points": p1 - p0,
        "seconds": round(wall, 3),
        "points_per_s": round((p1 - p0) / wall),
        "cpu_s": round(cpu, 3),
        "cpu_share": round(cpu / wall, 3),
        "points_per_cpu_s": round((p1 - p0) / max(cpu, 1e-9)),
        "sim_cpu_share": round((s1 - s0) / wall, 3),
        "timeouts": counters.timeouts,
        "sequence_errors": counters.sequence_errors,
        "asdus_skipped": counters.asdus_skipped,
    }
    if profiler is not None:
        profiler.dump_stats(profile)
        stats = pstats.Stats(profiler)
        stats.sort_stats("tottime").print_stats(18)
    return figures


def measure_c104(sim: Simulator, duration: float, points: int, mode: str) -> dict[str, Any]:
    """``bench/c104_peer.py`` in its own process against ``sim``, with the simulator's CPU."""
    cmd = [
        sys.executable,
        str(HERE / "c104_peer.py"),
        "--host",
        sim.host,
        "--port",
        str(sim.port),
        "--ca",
        "1",
        "--duration",
        str(duration),
        "--points",
        str(points),
        "--mode",
        mode,
    ]
    s0, t0 = sim.cpu(), time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60)
    s1, t1 = sim.cpu(), time.perf_counter()
    if out.returncode != 0:
        return {"peer": f"c104 {mode}", "error": out.stderr.strip().splitlines()[-1:]}
    figures: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    # The peer's set-up (connecting, adding points) is inside this window too.
    figures["sim_cpu_share"] = round((s1 - s0) / (t1 - t0), 3)
    return figures


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print its figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per side (10)")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds before ours (1)")
    parser.add_argument("--points", type=int, default=4800, help="flood IOAs 1..N (4800)")
    parser.add_argument("-k", type=int, default=12, help="k of both ends (12)")
    parser.add_argument("-w", type=int, default=8, help="w of both ends (8)")
    parser.add_argument("--skip-c104", action="store_true", help="measure ours only")
    parser.add_argument("--profile", metavar="FILE", help="cProfile our phase into FILE")
    parser.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    args = parser.parse_args(argv)
    use_checkout()

    sim = Simulator(args.points, args.k, args.w)
    try:
        ours = measure_ours(sim, args.duration, args.warmup, args.k, args.w, args.profile)
        peers = []
        if not args.skip_c104:
            for mode in ("callback", "nocallback"):
                peers.append(measure_c104(sim, args.duration, args.points, mode))
    finally:
        sim.stop()

    rows = [ours, *peers]
    print(f"simulator: {sim.command}")
    print(f"{'name':<24} {'points/s':>10} {'cpu/wall':>9} {'points/cpu-s':>13} {'sim cpu':>8}")
    for name, row in zip(
        ["ours"] + [f"c104 {p.get('mode', '?')}" for p in peers], rows, strict=True
    ):
        if "error" in row:
            print(f"{name:<24} error: {row['error']}")
            continue
        print(
            f"{name:<24} {row['points_per_s']:>10,} {row['cpu_share']:>9.2f} "
            f"{row['points_per_cpu_s']:>13,} {row['sim_cpu_share']:>8.2f}"
        )
    callback = next((p for p in peers if p.get("mode") == "callback" and "error" not in p), None)
    if callback:
        ratio = ours["points_per_s"] / max(callback["points_per_s"], 1)
        print(f"ratio ours/c104-callback: {ratio:.2f} (target >= {TARGET_RATIO:g})")
        ours["ratio"] = round(ratio, 2)
    print(
        f"link errors (ours): timeouts {ours['timeouts']}, sequence errors "
        f"{ours['sequence_errors']}, skipped ASDUs {ours['asdus_skipped']}"
    )
    if args.json:
        meta = {"python": platform.python_version(), "machine": platform.machine()}
        Path(args.json).write_text(json.dumps({"meta": meta, "figures": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
