"""Modbus polling benchmark: PyDataColl's driver against pymodbus' AsyncModbusTcpClient.

500 devices x 30 holding registers (uint16, addresses 0-29, unit 1), each device polled
once a second over its own TCP connection, against pymodbus' own server
(`pydatacoll.testing.modbus_sim`, run as ``--servers`` processes on 127.0.0.1). Four
phases run one after the other, each in its own process so that its CPU is its own:

``ours``
    one `ModbusDriver` per device on Twisted's default reactor: planner (one merged
    30-register read), client protocol, supervised link, decode and scale of every point
    of every point into `ReadBatch` values, counted by the batch callback;
``ours-protocol``
    our protocol layer alone (`ModbusLink` and the client protocol): the same merged
    read per device per second, registers counted, not decoded into points;
``pymodbus-merged``
    one AsyncModbusTcpClient per device on asyncio, one ``read_holding_registers(0,
    count=30)`` per device per second (the same merged read);
``pymodbus-naive``
    the same clients, one ``read_holding_registers(n, count=1)`` per point per second.

Each phase warms up for ``--warmup`` s and is then measured for ``--duration`` s: CPU
seconds of its process per wall second (``getrusage``) and points delivered per second.
The figures are printed side by side with the ratio of each peer to ours.

Usage::

    python bench/modbus_poll.py
    python bench/modbus_poll.py --devices 100 --duration 5
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import socket
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def cpu_seconds() -> float:
    """User + system CPU of this process so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def free_ports(count: int) -> list[int]:
    """``count`` consecutive free TCP ports on 127.0.0.1 (best effort)."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base = s.getsockname()[1]
        if base + count > 65000:
            continue
        ok = True
        for port in range(base, base + count):
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    ok = False
                    break
        if ok:
            return list(range(base, base + count))


# ---------------------------------------------------------------- phase: ours (Twisted)


def run_ours(args: argparse.Namespace, ports: list[int]) -> dict:
    """Poll with PyDataColl's ModbusDriver; returns the measured figures."""
    from twisted.internet import reactor

    from pydatacoll.model import Device, Term, TermItem
    from pydatacoll.protocols.modbus.config import ModbusSettings, build_points
    from pydatacoll.protocols.modbus.driver import ModbusDriver

    counts = {"points": 0, "bad": 0}

    def on_batch(batch):
        for quality in batch.qualities:
            if quality == "good":
                counts["points"] += 1
            else:
                counts["bad"] += 1

    drivers = []
    term = Term.from_json({"id": "t", "device_id": "d", "address": 1})
    items = [
        TermItem.from_json({"term_id": "t", "item_id": str(n), "protocol_code": n})
        for n in range(args.points)
    ]
    for i in range(args.devices):
        device = Device.from_json(
            {
                "id": f"d{i}",
                "protocol": "modbus",
                "ip": "127.0.0.1",
                "port": ports[i % len(ports)],
                "timeout": 3,
                "scan_interval": 1,
            }
        )
        settings = ModbusSettings.from_device(device)
        driver = ModbusDriver(
            device.id, settings, build_points(settings, [term], items), on_batch, reactor=reactor
        )
        driver.startService()
        drivers.append(driver)
    result: dict = {}

    def start_measuring():
        result["cpu0"], result["wall0"] = cpu_seconds(), time.monotonic()
        counts["points"] = counts["bad"] = 0
        reactor.callLater(args.duration, stop_measuring)

    def stop_measuring():
        result["cpu"] = cpu_seconds() - result["cpu0"]
        result["wall"] = time.monotonic() - result["wall0"]
        result["points"] = counts["points"]
        result["bad"] = counts["bad"]
        stats = [d.stats()["link"] for d in drivers]
        result["timeouts"] = sum(s["timeouts"] for s in stats)
        result["reconnects"] = sum(s["reconnects"] for s in stats)
        reactor.stop()

    reactor.callLater(args.warmup, start_measuring)
    reactor.run()
    return result


def run_ours_protocol(args: argparse.Namespace, ports: list[int]) -> dict:
    """Our protocol layer alone: ModbusLink + client protocol, the same merged read per
    device per second, registers counted but not decoded into points."""
    from twisted.internet import reactor
    from twisted.internet.endpoints import HostnameEndpoint

    from pydatacoll.protocols.modbus import pdu as pdus
    from pydatacoll.protocols.modbus.codec import Table
    from pydatacoll.protocols.modbus.config import ModbusSettings
    from pydatacoll.protocols.modbus.link import ModbusLink

    counts = {"points": 0, "bad": 0}
    links = []

    def ok(response):
        counts["points"] += len(response.registers)

    def failed(failure):
        counts["bad"] += args.points

    def poll(link, due):
        request = pdus.read_request(Table.HOLDING, 0, args.points)
        link.request(1, request).addCallbacks(ok, failed)
        due += 1.0
        reactor.callLater(max(0.0, due - reactor.seconds()), poll, link, due)

    for i in range(args.devices):
        port = ports[i % len(ports)]
        settings = ModbusSettings(host="127.0.0.1", port=port, timeout=3)
        link = ModbusLink(HostnameEndpoint(reactor, "127.0.0.1", port), reactor, settings)
        link.startService()
        links.append(link)
        offset = 0.5 + i / args.devices
        reactor.callLater(offset, poll, link, reactor.seconds() + offset)
    result: dict = {}

    def start_measuring():
        result["cpu0"], result["wall0"] = cpu_seconds(), time.monotonic()
        counts["points"] = counts["bad"] = 0
        reactor.callLater(args.duration, stop_measuring)

    def stop_measuring():
        result["cpu"] = cpu_seconds() - result["cpu0"]
        result["wall"] = time.monotonic() - result["wall0"]
        result.update(counts)
        reactor.stop()

    reactor.callLater(args.warmup, start_measuring)
    reactor.run()
    return result


# ---------------------------------------------------------------- phases: pymodbus (asyncio)


def run_pymodbus(args: argparse.Namespace, ports: list[int], naive: bool) -> dict:
    """Poll with pymodbus' AsyncModbusTcpClient, merged or one read per point."""
    import asyncio
    import logging

    from pymodbus.client import AsyncModbusTcpClient

    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    counts = {"points": 0, "bad": 0}

    async def poll(client, offset):
        await asyncio.sleep(offset)
        loop = asyncio.get_running_loop()
        due = loop.time()
        while True:
            try:
                if naive:
                    for n in range(args.points):
                        rr = await client.read_holding_registers(n, count=1, device_id=1)
                        if rr.isError():
                            counts["bad"] += 1
                        else:
                            counts["points"] += 1
                else:
                    rr = await client.read_holding_registers(0, count=args.points, device_id=1)
                    if rr.isError():
                        counts["bad"] += args.points
                    else:
                        counts["points"] += len(rr.registers)
            except Exception:
                counts["bad"] += args.points
            due += 1.0
            await asyncio.sleep(max(0.0, due - loop.time()))

    async def main():
        clients = []
        for i in range(args.devices):
            client = AsyncModbusTcpClient("127.0.0.1", port=ports[i % len(ports)], timeout=3)
            clients.append(client)
        await asyncio.gather(*(c.connect() for c in clients))
        tasks = [asyncio.create_task(poll(c, i / args.devices)) for i, c in enumerate(clients)]
        await asyncio.sleep(args.warmup)
        cpu0, wall0 = cpu_seconds(), time.monotonic()
        counts["points"] = counts["bad"] = 0
        await asyncio.sleep(args.duration)
        result = {
            "cpu": cpu_seconds() - cpu0,
            "wall": time.monotonic() - wall0,
            "points": counts["points"],
            "bad": counts["bad"],
        }
        for task in tasks:
            task.cancel()
        for client in clients:
            client.close()
        return result

    return asyncio.run(main())


# ---------------------------------------------------------------- driver


def start_servers(args: argparse.Namespace) -> tuple[list[subprocess.Popen], list[int]]:
    """The simulator processes and every port they listen on."""
    per_server = args.ports_per_server
    processes, ports = [], []
    for _ in range(args.servers):
        base = free_ports(per_server)[0]
        process = subprocess.Popen(
            [sys.executable, "-m", "pydatacoll.testing.modbus_sim", "--port", str(base),
             "--port-count", str(per_server), "--size", str(max(64, args.points))],
            stdout=subprocess.PIPE,
            cwd=ROOT,
        )  # fmt: skip
        processes.append(process)
        line = process.stdout.readline().decode()
        if not line.startswith("listening"):
            raise RuntimeError(f"the simulator did not start: {line!r}")
        ports += [int(p) for p in line.split()[2:]]
    return processes, ports


def run_phase(phase: str, args: argparse.Namespace, ports: list[int]) -> dict:
    """One phase in a child process of its own; returns its JSON figures."""
    argv = [sys.executable, os.path.abspath(__file__), "--phase", phase]
    argv += ["--ports", ",".join(map(str, ports))]
    for name in ("devices", "points", "duration", "warmup"):
        argv += [f"--{name}", str(getattr(args, name))]
    output = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, timeout=600)
    if output.returncode:
        raise RuntimeError(f"phase {phase} failed:\n{output.stderr[-2000:]}")
    return json.loads(output.stdout.strip().splitlines()[-1])


def main() -> None:
    """Parse the command line; run one phase, or the whole benchmark."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=500)
    parser.add_argument("--points", type=int, default=30)
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds before measuring")
    parser.add_argument("--servers", type=int, default=2, help="simulator processes")
    parser.add_argument("--ports-per-server", type=int, default=5)
    parser.add_argument("--phases", default="ours,ours-protocol,pymodbus-merged,pymodbus-naive")
    parser.add_argument("--phase", help=argparse.SUPPRESS)
    parser.add_argument("--ports", help=argparse.SUPPRESS)
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()

    if args.phase:
        ports = [int(p) for p in args.ports.split(",")]
        if args.phase == "ours":
            result = run_ours(args, ports)
        elif args.phase == "ours-protocol":
            result = run_ours_protocol(args, ports)
        else:
            result = run_pymodbus(args, ports, naive=args.phase == "pymodbus-naive")
        print(json.dumps(result))
        return

    processes, ports = start_servers(args)
    results = {}
    try:
        for phase in args.phases.split(","):
            print(f"running {phase} ...", file=sys.stderr, flush=True)
            results[phase] = run_phase(phase, args, ports)
    finally:
        for process in processes:
            process.send_signal(signal.SIGTERM)
        for process in processes:
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()

    target = args.devices * args.points
    print(
        f"\nModbus polling: {args.devices} devices x {args.points} points every 1 s "
        f"(target {target} points/s), {args.servers} pymodbus server processes, "
        f"{args.duration:g} s measured after {args.warmup:g} s warm-up\n"
    )

    def load(name):
        r = results.get(name)
        return r["cpu"] / r["wall"] if r else None

    ours, ours_protocol = load("ours"), load("ours-protocol")
    header = f"{'phase':<18}{'CPU s/wall s':>14}{'points/s':>12}{'bad/s':>9}"
    print(header + f"{'/ours':>9}{'/ours-protocol':>16}")
    for phase, r in results.items():
        cpu = r["cpu"] / r["wall"]
        ratios = ""
        if not phase.startswith("ours"):
            ratios = f"{cpu / ours:>8.2f}x" if ours else " " * 9
            ratios += f"{cpu / ours_protocol:>15.2f}x" if ours_protocol else ""
        print(
            f"{phase:<18}{cpu:>14.3f}{r['points'] / r['wall']:>12.0f}"
            f"{r['bad'] / r['wall']:>9.0f}{ratios}"
        )
    ours = results.get("ours")
    if ours:
        print(f"\nours: {ours.get('timeouts', 0)} timeouts, {ours.get('reconnects', 0)} reconnects")
    print(
        "The whole-daemon target (decode, scale, store in Redis, publish) cannot be measured "
        "until the device manager (issue 5) exists."
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
