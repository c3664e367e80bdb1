"""The c104 (lib60870) side of the IEC 104 ingest benchmark: what a c104.Client delivers.

    python bench/c104_peer.py --host 127.0.0.1 --port 2404 --ca 1 --duration 5 \\
        --points 4800 --mode callback|nocallback

connects a c104.Client (no GI, no clock sync) to an outstation flooding SQ=1 M_ME_NC_1
frames (IOAs 1..N) and prints one JSON line: points delivered per second and the CPU
seconds this process used (c104's threads run in it, so `time.process_time` covers them).

Modes:
  callback    one Python `Point.on_receive` callback per point (the usual c104 usage).
  nocallback  no per-point Python code; c104 2.2.1 has no counters or statistics on a
              Connection, so points are counted from `Connection.on_receive_raw`: one
              Python call per APDU reading its VSQ (c104 still decodes every point in C).

`--serve-flood` runs a c104.Server flooding its points instead (a stand-in outstation
until ours exists). `run_in_subprocess` is what a benchmark calls to keep the CPU apart.
c104 is GPLv3: this file is test/bench tooling, never imported by pydatacoll.
"""

import argparse
import json
import subprocess
import sys
import threading
import time

import c104

POINTS_PER_APDU = 48


def _connect(host: str, port: int, timeout: float = 5.0) -> tuple[c104.Client, c104.Connection]:
    client = c104.Client(tick_rate_ms=50, command_timeout_ms=1000)
    connection = client.add_connection(ip=host, port=port, init=c104.Init.NONE)
    client.start()
    started = time.monotonic()
    while connection.state != c104.ConnectionState.OPEN:
        waited = time.monotonic() - started
        if waited > timeout:
            client.stop()
            raise TimeoutError(f"no STARTDT with {host}:{port}: {connection.state}")
        # c104 2.2.1's client sometimes stays OPEN_MUTED and never sends STARTDT.
        if waited > 0.5 and connection.state == c104.ConnectionState.OPEN_MUTED:
            connection.unmute()
        time.sleep(0.01)
    return client, connection


def _point(station: c104.Station, ioa: int) -> c104.Point:
    # The flood may have made c104 create the point already (add_point then returns None),
    # also between the two calls (a loaded machine): then it is looked up again.
    point = station.get_point(io_address=ioa) or station.add_point(
        io_address=ioa, type=c104.Type.M_ME_NC_1
    )
    return point or station.get_point(io_address=ioa)


def measure_c104_client(
    host: str,
    port: int,
    common_address: int,
    duration_s: float,
    points: int = 4800,
    mode: str = "callback",
) -> dict:
    """Points/s a c104.Client delivers from host:port for `duration_s`, and its CPU seconds."""
    lock = threading.Lock()
    received = [0]
    cpu_start = time.process_time()
    client, connection = _connect(host, port)
    try:
        # A flood that arrives first makes c104 create the station itself.
        station = connection.get_station(common_address=common_address) or connection.add_station(
            common_address=common_address
        )
        if mode == "callback":

            def on_point(
                point: c104.Point, previous_info: c104.Information, message: c104.IncomingMessage
            ) -> c104.ResponseState:
                with lock:
                    received[0] += 1
                return c104.ResponseState.NONE

            for ioa in range(1, points + 1):
                point = _point(station, ioa)
                point.on_receive(callable=on_point)
        elif mode == "nocallback":
            for ioa in range(1, points + 1):
                _point(station, ioa)

            def on_raw(connection: c104.Connection, data: bytes) -> None:
                if len(data) > 7 and not data[2] & 0x01 and data[6] == 13:
                    with lock:
                        received[0] += data[7] & 0x7F

            connection.on_receive_raw(callable=on_raw)
        else:
            raise ValueError(f"mode must be callback or nocallback, not {mode!r}")
        with lock:
            count0 = received[0]
        cpu0, wall0 = time.process_time(), time.monotonic()
        time.sleep(duration_s)  # a CLI measurement: c104 works on its own threads meanwhile
        with lock:
            count1 = received[0]
        cpu1, wall1 = time.process_time(), time.monotonic()
    finally:
        client.stop()
    wall = wall1 - wall0
    return {
        "peer": "c104.Client",
        "c104": _version(),
        "mode": mode,
        "points": count1 - count0,
        "seconds": round(wall, 3),
        "points_per_s": round((count1 - count0) / wall),
        "cpu_s": round(cpu1 - cpu0, 3),
        "cpu_share": round((cpu1 - cpu0) / wall, 3),
        "points_per_cpu_s": round((count1 - count0) / max(cpu1 - cpu0, 1e-9)),
        "setup_cpu_s": round(cpu0 - cpu_start, 3),
    }


def run_in_subprocess(
    host: str, port: int, common_address: int, duration_s: float, points: int, mode: str
) -> dict:
    """`measure_c104_client` in a fresh interpreter, so its CPU is not the caller's."""
    out = subprocess.run(
        [
            sys.executable,
            __file__,
            "--host",
            host,
            "--port",
            str(port),
            "--ca",
            str(common_address),
            "--duration",
            str(duration_s),
            "--points",
            str(points),
            "--mode",
            mode,
        ],
        check=True,
        capture_output=True,
        text=True,
        timeout=duration_s + 60,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def serve_flood(host: str, port: int, common_address: int, points: int, duration_s: float) -> dict:
    """A c104.Server sending its M_ME_NC_1 points 1..N as SQ=1 batches of 48, flat out."""
    server = c104.Server(ip=host, port=port, tick_rate_ms=50, max_connections=1)
    station = server.add_station(common_address=common_address)
    batch_points = []
    for ioa in range(1, points + 1):
        point = station.add_point(io_address=ioa, type=c104.Type.M_ME_NC_1)
        point.value = float(ioa)
        batch_points.append(point)
    batches = [
        c104.Batch(cause=c104.Cot.SPONTANEOUS, points=batch_points[i : i + POINTS_PER_APDU])
        for i in range(0, points, POINTS_PER_APDU)
    ]
    server.start()
    sent = refused = 0
    deadline = time.monotonic() + duration_s
    try:
        while not server.has_active_connections and time.monotonic() < deadline:
            time.sleep(0.01)
        cpu0, wall0 = time.process_time(), time.monotonic()
        while time.monotonic() < deadline:
            for batch in batches:
                if server.transmit_batch(batch):
                    sent += batch.number_of_objects
                else:
                    refused += 1
                    time.sleep(0.0005)  # the queue is full: give the link a moment
        wall, cpu = time.monotonic() - wall0, time.process_time() - cpu0
    finally:
        server.stop()
    return {
        "peer": "c104.Server flood",
        "points_sent": sent,
        "points_per_s": round(sent / wall),
        "refused_batches": refused,
        "cpu_s": round(cpu, 3),
    }


def _version() -> str:
    from importlib.metadata import version

    return version("c104")


def main(argv: list[str] | None = None) -> int:
    """The command line: print one JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=2404)
    parser.add_argument("--ca", type=int, default=1)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--points", type=int, default=4800)
    parser.add_argument("--mode", choices=("callback", "nocallback"), default="callback")
    parser.add_argument("--serve-flood", action="store_true", help="be the flooding server")
    args = parser.parse_args(argv)
    if args.serve_flood:
        result = serve_flood(args.host, args.port, args.ca, args.points, args.duration)
    else:
        result = measure_c104_client(
            args.host, args.port, args.ca, args.duration, args.points, args.mode
        )
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
