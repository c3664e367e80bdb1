"""MQTT northbound benchmark: samples/s the daemon publishes at QoS 1 from an IEC 104 flood.

    python bench/mqtt.py --duration 20 --points 480

1. starts a private redis-server, a private Mosquitto (its own config file, a free port,
   ``sys_interval 1``), our IEC 104 simulator flooding (SQ=1 float frames of 48 points,
   IOAs 1..N, as fast as the master acknowledges) and ``twistd -n pydatacoll`` with the
   ``mqtt`` plugin (JSON mode, ``qos = 1``, every point), then configures the device over
   REST;
2. after ``--warmup`` seconds measures, for ``--duration`` seconds, the PUBLISH packets the
   broker received (``$SYS/broker/publish/messages/received``, so the figure is what the
   broker confirmed, not what the daemon believes) and the daemon's CPU seconds
   (``/proc``); the plugin's own status (confirmed, spooled, dropped) is read from Redis;
3. stops the daemon and runs paho-mqtt's own throughput against the same broker, in its own
   process: the same JSON payload at QoS 1, 100 in flight, loop_start thread;
4. prints both side by side: samples/s and CPU seconds per published sample.

The daemon's CPU includes decoding and storing the whole flood in Redis (the collector's
work whatever the plugin does), so the CPU per published sample is an upper bound for
the plugin. Every process started is stopped again, by its PID. Traffic stays on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: bench/ is on sys.path
    from ingest import (
        HOST,
        START_TIMEOUT,
        TWISTD,
        Resp,
        answers,
        configure,
        cpu_seconds,
        start_redis,
        start_simulator,
        wait_until,
    )
    from rest import BenchError, Child, free_port, use_checkout
else:
    from .ingest import (
        HOST,
        START_TIMEOUT,
        TWISTD,
        Resp,
        answers,
        configure,
        cpu_seconds,
        start_redis,
        start_simulator,
        wait_until,
    )
    from .rest import BenchError, Child, free_port, use_checkout

PAYLOAD = b'{"value":123.456,"quality":"good","time":"2026-12-03T10:00:00.123+00:00"}'


def start_mosquitto(stack: contextlib.ExitStack, workdir: Path) -> tuple[Child, int]:
    """A private Mosquitto publishing its $SYS counters every second."""
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if not os.access(binary, os.X_OK):
        raise BenchError("mosquitto is not installed (Debian: apt-get install -y mosquitto)")
    port = free_port()
    config = workdir / "mosquitto.conf"
    user = __import__("pwd").getpwuid(os.geteuid()).pw_name
    config.write_text(
        f"listener {port} {HOST}\nallow_anonymous true\nuser {user}\nsys_interval 1\n"
        "max_queued_messages 0\npersistence false\n"
    )
    child = Child("mosquitto", [binary, "-c", str(config)], workdir / "mosquitto.log")
    stack.callback(child.stop)

    def listening() -> bool:
        import socket

        try:
            socket.create_connection((HOST, port), timeout=0.5).close()
            return True
        except OSError:
            return False

    wait_until("mosquitto", listening, child, START_TIMEOUT)
    return child, port


class BrokerCounter:
    """``$SYS/broker/publish/messages/received`` as the broker reports it (every second)."""

    def __init__(self, port: int) -> None:
        import paho.mqtt.client as paho
        from paho.mqtt.enums import CallbackAPIVersion

        self.received: list[tuple[float, int]] = []
        self.lock = threading.Lock()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id="bench-sys")
        self.client.on_connect = lambda c, *a: c.subscribe("$SYS/broker/publish/messages/received")
        self.client.on_message = self._message
        self.client.connect(HOST, port)
        self.client.loop_start()

    def _message(self, client: Any, userdata: Any, message: Any) -> None:
        with self.lock:
            self.received.append((time.monotonic(), int(message.payload)))

    def latest(self) -> tuple[float, int]:
        with self.lock:
            return self.received[-1] if self.received else (time.monotonic(), 0)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def start_daemon(
    stack: contextlib.ExitStack, workdir: Path, redis_port: int, mqtt_port: int, inflight: int
) -> tuple[Child, str]:
    """``twistd -n pydatacoll`` with the mqtt plugin enabled."""
    port = free_port()
    rundir = workdir / "daemon"
    rundir.mkdir()
    config = rundir / "pydatacoll.ini"
    config.write_text(
        "[plugins]\nenabled = mqtt\n[plugin:mqtt]\n"
        f"url = mqtt://{HOST}:{mqtt_port}\ncollector = bench\nqos = 1\ninflight = {inflight}\n"
    )
    argv = [
        *TWISTD, "-n", "--pidfile=", "pydatacoll", "--config", str(config),
        "--redis", f"redis://{HOST}:{redis_port}/0",
        "--api", f"tcp:{port}:interface={HOST}",
    ]  # fmt: skip
    child = Child("pydatacoll", argv, workdir / "pydatacoll.log", cwd=rundir)
    stack.callback(child.stop)
    base = f"http://{HOST}:{port}"
    wait_until("pydatacoll (GET /api/v1/devices)", lambda: answers(base), child, START_TIMEOUT)
    return child, base


def plugin_status(redis_port: int) -> dict[str, Any]:
    """The mqtt plugin's status as the collector last wrote it."""
    resp = Resp(redis_port)
    try:
        text = resp.call("HGET", "HS:PLUGIN_STATUS", "mqtt")
    finally:
        resp.close()
    if not text:
        return {}
    body = json.loads(text)
    return dict(body.get("detail") or {})


def paho_peer(port: int, duration: float, inflight: int) -> dict[str, Any]:
    """paho's own QoS 1 throughput (run in a child process: ``--paho-peer``)."""
    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion

    acked = 0
    done = threading.Event()
    lock = threading.Condition()

    def on_publish(client: Any, userdata: Any, mid: int, reason: Any, properties: Any) -> None:
        nonlocal acked
        with lock:
            acked += 1
            lock.notify()

    client = paho.Client(CallbackAPIVersion.VERSION2, client_id="bench-paho")
    client.max_inflight_messages_set(inflight)
    client.on_publish = on_publish
    client.connect(HOST, port)
    client.loop_start()
    sent = 0
    cpu0, start = time.process_time(), time.monotonic()
    while time.monotonic() - start < duration:
        with lock:
            while sent - acked >= inflight:
                lock.wait(1)
        client.publish(f"bench/paho/{sent % 4800}", PAYLOAD, qos=1)
        sent += 1
    with lock:
        while acked < sent and lock.wait(5):
            pass
    elapsed = time.monotonic() - start
    cpu = time.process_time() - cpu0
    done.set()
    client.disconnect()
    client.loop_stop()
    return {"acked": acked, "seconds": elapsed, "rate": acked / elapsed, "cpu": cpu}


def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    figures: dict[str, Any] = {}
    with contextlib.ExitStack() as stack:
        _redis, redis_port = start_redis(stack, workdir)
        _broker, mqtt_port = start_mosquitto(stack, workdir)
        counter = BrokerCounter(mqtt_port)
        stack.callback(counter.close)
        sim, sim_port = start_simulator(stack, workdir, args.points, 12, 8)
        daemon, base = start_daemon(stack, workdir, redis_port, mqtt_port, args.inflight)
        configure(base, sim_port, args.points)
        wait_until("first published samples", lambda: counter.latest()[1] > 1000, daemon, 60)
        time.sleep(args.warmup)  # the flood and the plugin settle
        t0, n0 = counter.latest()
        cpu0 = cpu_seconds(daemon.process.pid)
        time.sleep(args.duration)  # the measured window: other processes work meanwhile
        t1, n1 = counter.latest()
        cpu1 = cpu_seconds(daemon.process.pid)
        time.sleep(11)  # the collector writes its plugins' status every 10 s
        figures["ours"] = {
            "published": n1 - n0,
            "seconds": t1 - t0,
            "rate": (n1 - n0) / max(t1 - t0, 1e-9),
            "cpu": cpu1 - cpu0,
            "status": plugin_status(redis_port),
        }
        daemon.stop()
        sim.stop()
        peer = subprocess.run(
            [
                sys.executable,
                __file__,
                "--paho-peer",
                str(mqtt_port),
                "--duration",
                str(args.duration),
                "--inflight",
                str(args.inflight),
            ],
            capture_output=True,
            text=True,
            timeout=args.duration + 60,
        )
        if peer.returncode != 0:
            raise BenchError(f"paho peer failed: {peer.stderr[-2000:]}")
        figures["paho"] = json.loads(peer.stdout.strip().splitlines()[-1])
    return figures


def report(args: argparse.Namespace, figures: dict[str, Any]) -> None:
    ours, paho = figures["ours"], figures["paho"]
    status = ours["status"]
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores")
    print(
        f"flood: iec104_sim --points {args.points} --flood; plugin: JSON, qos 1, "
        f"inflight {args.inflight}; window {args.duration:.0f} s after {args.warmup:.0f} s"
    )
    print(
        f"pydatacoll mqtt plugin: {ours['rate']:,.0f} samples/s published at QoS 1 "
        f"(broker count), daemon CPU {ours['cpu'] / ours['seconds']:.2f} core, "
        f"{1e6 * ours['cpu'] / max(ours['published'], 1):.1f} us CPU per published sample"
    )
    if status:
        print(
            "  plugin status: outbox {outbox}, confirmed {confirmed}, spooled {spooled}, "
            "spool_records {spool_records}, dropped {dropped}".format(
                **{k: status.get(k) for k in ("outbox", "confirmed", "spooled", "spool_records")},
                dropped=status.get("dropped"),
            )
        )
    print(
        f"paho-mqtt alone (same broker, payload, QoS 1, inflight {args.inflight}): "
        f"{paho['rate']:,.0f} messages/s, "
        f"{1e6 * paho['cpu'] / max(paho['acked'], 1):.1f} us CPU per message"
    )
    print(f"ratio ours / paho alone: {ours['rate'] / max(paho['rate'], 1e-9):.2f}")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--points", type=int, default=480, help="IOAs 1..N (480)")
    parser.add_argument("--duration", type=float, default=20.0, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds before measuring")
    parser.add_argument("--inflight", type=int, default=100, help="QoS 1 window (100)")
    parser.add_argument("--paho-peer", type=int, default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    use_checkout()
    if args.paho_peer is not None:
        print(json.dumps(paho_peer(args.paho_peer, args.duration, args.inflight)))
        return 0
    with tempfile.TemporaryDirectory(prefix="pydatacoll-bench-mqtt-") as workdir:
        try:
            figures = run(args, Path(workdir))
        except BenchError as e:
            print(f"benchmark failed: {e}", file=sys.stderr)
            return 1
    report(args, figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
