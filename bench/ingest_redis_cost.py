"""Redis's own cost of the ingest script, in instructions per stored sample (callgrind).

    python bench/ingest_redis_cost.py --points 4800 --rounds 2

Wall-clock figures move with whatever else runs on the machine; the instructions
redis-server executes per stored sample do not. In one run it

1. starts a private ``redis-server`` (no persistence, a temporary directory) and fills
   the history stream of each of ``--points`` points of device 1 with ``--prefill``
   entries (default: ``--history``, so that trimming runs as in a long-lived collector),
   by pipelined ``XADD``; saves the dataset and stops that server;
2. starts ``valgrind --tool=callgrind --instr-atstart=no redis-server`` on the saved
   dataset, runs one round uninstrumented (the script's first ``EVAL``, the hash's
   fields), then switches instrumentation on (``callgrind_control -i on``) for
   ``--rounds`` rounds and off again: a round is one sample of every point, in ingest
   script calls of ``ingest.BATCH`` samples built by the collector's own encoder
   (`RedisIngest._encode`: short floats as IEC 104 ``M_ME_NC_1`` gives them, one receive
   time per 48-point frame; the first round trims every history, as a collector's first
   sample of a point does, and the next ones only every ``trim_interval`` samples);
3. prints the instructions per stored sample, the calls of each command per sample
   (``INFO commandstats``) and the top functions of the profile (``callgrind_annotate``,
   self and inclusive).

``--no-valgrind`` runs the same calls on a native redis-server and prints the
microseconds of ``EVALSHA`` per sample instead (machine-dependent). Every process it
starts is stopped again, by its PID.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: bench/ is on sys.path
    from ingest import Resp, redis_ping
    from rest import BenchError, Child, free_port, redis_argv, use_checkout, wait_until
else:
    from .ingest import Resp, redis_ping
    from .rest import BenchError, Child, free_port, redis_argv, use_checkout, wait_until

DEVICE_ID = "1"
TERM_ID = "1"
#: Points per IEC 104 frame in bench/ingest.py's flood (one receive time each).
FRAME_POINTS = 48
PIPELINE = 2000


def short_float(rng: random.Random) -> float:
    """A value as an ``M_ME_NC_1`` short float decodes to (float32 widened)."""
    return float(struct.unpack("<f", struct.pack("<f", rng.uniform(-1000.0, 1000.0)))[0])


def send_all(redis: Resp, commands: Sequence[bytes]) -> list[Any]:
    """Send ``commands`` pipelined; their replies."""
    redis.sock.sendall(b"".join(commands))
    return [redis._read() for _ in commands]


def prefill(redis: Resp, points: int, entries: int, history: int, rng: random.Random) -> None:
    """Each point's stream filled with ``entries`` samples, as the script appends them."""
    from pydatacoll.store import keys
    from pydatacoll.store.redis import encode_command

    sample = '{"value":%r,"quality":"good","flags":[],"source_time":null,' + (
        '"receive_time":"2026-12-03T18:00:00.000+00:00"}'
    )
    batch: list[bytes] = []
    for _ in range(entries):
        for ioa in range(1, points + 1):
            key = keys.POINT_DATA % (DEVICE_ID, TERM_ID, ioa)
            text = sample % short_float(rng)
            batch.append(encode_command("XADD", key, "MAXLEN", "~", history, "*", "sample", text))
            if len(batch) == PIPELINE:
                send_all(redis, batch)
                batch = []
    if batch:
        send_all(redis, batch)


def round_commands(sink: Any, points: int, rng: random.Random, now: float) -> list[bytes]:
    """One sample of every point, as the collector's script calls (``sink`` encodes)."""
    from pydatacoll.model import Sample
    from pydatacoll.store import ingest

    samples = [
        Sample(
            DEVICE_ID,
            TERM_ID,
            str(ioa),
            short_float(rng),
            receive_time=now + (ioa - 1) // FRAME_POINTS * 0.0005,
        )
        for ioa in range(1, points + 1)
    ]
    commands = []
    for start in range(0, points, ingest.BATCH):
        body, argc = sink._encode([(DEVICE_ID, samples[start : start + ingest.BATCH])])
        commands.append(f"*{argc + 3}\r\n{ingest._EVALSHA_HEAD}{body}".encode())
    return commands


def run_round(redis: Resp, commands: Sequence[bytes]) -> int:
    """Send one round's calls (8 in flight, as the collector does); samples stored."""
    written = 0
    for start in range(0, len(commands), 8):
        for reply in send_all(redis, commands[start : start + 8]):
            written += int(reply[0])
    return written


def annotate(out: Path, inclusive: bool, top: int) -> list[str]:
    """The profile's ``top`` functions (self or inclusive), with the totals line."""
    text = subprocess.run(
        ["callgrind_annotate", f"--inclusive={'yes' if inclusive else 'no'}", str(out)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    lines = text.splitlines()
    total = [line for line in lines if "PROGRAM TOTALS" in line]
    start = next(i for i, line in enumerate(lines) if "file:function" in line) + 2
    return total + [line for line in lines[start : start + top] if line.strip()]


def total_instructions(out: Path) -> int:
    """The ``totals:`` line of a callgrind output file (``summary:`` is 0 when the
    instrumentation started off)."""
    for line in out.read_text().splitlines():
        if line.startswith("totals:"):
            return int(line.split()[1])
    raise BenchError(f"no totals in {out}")


def measure(args: argparse.Namespace, workdir: Path) -> None:
    """The whole run (see the module docstring); prints its figures."""
    from pydatacoll.store import ingest, keys

    rng = random.Random(13)
    data_dir = workdir / "redis"
    data_dir.mkdir()
    load = os.getloadavg()
    with contextlib.ExitStack() as stack:
        port = free_port()
        native = Child(
            "redis-server", redis_argv(port, data_dir, args.redis_server), workdir / "redis.log"
        )
        stack.callback(native.stop)
        wait_until("redis-server", lambda: redis_ping(port), native)
        redis = Resp(port)
        redis.sock.settimeout(600)
        started = time.perf_counter()
        redis.call("SET", keys.CONFIG_VERSION, "1")
        prefill(redis, args.points, args.prefill, args.history, rng)
        print(f"prefilled {args.points} streams x {args.prefill} in "
              f"{time.perf_counter() - started:.1f} s")  # fmt: skip
        if not args.no_valgrind:
            redis.call("SAVE")
            redis.close()
            native.stop()
            port = free_port()
            out = workdir / "callgrind.out"
            tool = ["valgrind", "--tool=callgrind", "--instr-atstart=no",
                    f"--callgrind-out-file={out}"]  # fmt: skip
            argv = [*tool, *redis_argv(port, data_dir, args.redis_server)]
            server = Child("valgrind redis-server", argv, workdir / "valgrind.log")
            stack.callback(server.stop)
            wait_until("valgrind redis-server", lambda: redis_ping(port), server, 600)
            redis = Resp(port)
            redis.sock.settimeout(600)
        stack.callback(redis.close)
        now = time.time()
        sink = ingest.RedisIngest(
            None, None, args.history, 100_000, publish_points=args.publish_points
        )
        sink.settled_version = "1"
        if args.trim_every:
            sink.trims.every = args.trim_every
        first = round_commands(sink, args.points, rng, now)
        first[0] = first[0].replace(ingest._EVALSHA_HEAD.encode(), ingest._EVAL_HEAD.encode(), 1)
        run_round(redis, first)  # loads the script; every hash field exists afterwards
        rounds = [round_commands(sink, args.points, rng, now + r + 1) for r in range(args.rounds)]
        before = redis.commandstats()
        if not args.no_valgrind:
            subprocess.run(["callgrind_control", "-i", "on", str(server.process.pid)], check=True,
                           capture_output=True)  # fmt: skip
        written = sum(run_round(redis, commands) for commands in rounds)
        if not args.no_valgrind:
            subprocess.run(["callgrind_control", "-i", "off", str(server.process.pid)], check=True,
                           capture_output=True)  # fmt: skip
        after = redis.commandstats()
        lengths = [int(redis.call("XLEN", keys.POINT_DATA % (DEVICE_ID, TERM_ID, ioa)))
                   for ioa in (1, args.points)]  # fmt: skip
        if not args.no_valgrind:
            redis.sock.sendall(b"SHUTDOWN NOSAVE\r\n")  # no reply: the server exits
            server.process.wait(600)
    print(f"load average before: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; "
          f"points {args.points}, history {args.history}, prefill {args.prefill}, "
          f"rounds {args.rounds}: {written} samples stored; stream lengths {lengths}")  # fmt: skip
    for name in sorted(after):
        calls = after[name][0] - before.get(name, (0, 0))[0]
        usec = after[name][1] - before.get(name, (0, 0))[1]
        if calls:
            print(f"  {name:10} {calls / written:8.4f} calls per sample, "
                  f"{usec / written:7.3f} us per sample")  # fmt: skip
    if args.no_valgrind:
        return
    total = total_instructions(out)
    print(f"redis-server instructions per stored sample: {total / written:,.0f}")
    for inclusive in (False, True):
        print(f"-- top functions, {'inclusive' if inclusive else 'self'}:")
        for line in annotate(out, inclusive, args.top):
            print("  " + line)
    if args.keep:
        shutil.copy(out, args.keep)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--points", type=int, default=4800)
    parser.add_argument("--history", type=int, default=1000, help="[collector] history_length")
    parser.add_argument("--prefill", type=int, default=None, help="entries per stream first")
    parser.add_argument("--rounds", type=int, default=2, help="samples per point measured")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument(
        "--trim-every",
        type=int,
        metavar="N",
        help="trim each history every N samples (default: the collector's, trim_interval)",
    )
    parser.add_argument(
        "--redis-server",
        metavar="PATH",
        help="the redis-server to run (default: the one on PATH; a build with symbols "
        "names the profile's functions)",
    )
    parser.add_argument("--no-valgrind", action="store_true")
    parser.add_argument(
        "--publish-points", action="store_true", help="[collector] publish_points = true"
    )
    parser.add_argument("--keep", metavar="FILE", help="copy the callgrind output there")
    parser.add_argument("--keep-dir", action="store_true", help="keep the temporary directory")
    args = parser.parse_args(argv)
    if args.prefill is None:
        args.prefill = args.history
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run it; 0 when it ran, 1 when it could not."""
    use_checkout()
    args = parse_args(argv)
    with contextlib.ExitStack() as stack:
        if args.keep_dir:
            tmp = tempfile.mkdtemp(prefix="pdc-ingest-cost-")
            print(f"working directory (kept): {tmp}")
        else:
            tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="pdc-ingest-cost-"))
        try:
            measure(args, Path(tmp))
        except BenchError as error:
            print(f"error: {error}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
