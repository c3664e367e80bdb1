"""History benchmark: samples/s written to MySQL by the history plugin vs plain PyMySQL.

Both write the same rows into the same fixed schema of a scratch database, in the same
run: the plugin through its whole path (policy, queue, batches with their markers,
adbapi thread); the ceiling a plain blocking PyMySQL ``executemany`` loop, one commit
per batch of the same size. Rounds alternate; the best of each is reported.

    .venv/bin/python bench/history.py [--samples 200000] [--batch 1000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import uuid

import pymysql
from twisted.internet import reactor, threads
from twisted.internet.defer import ensureDeferred

if __package__ in (None, ""):  # run as a script: bench/ is on sys.path
    from rest import use_checkout
else:
    from .rest import use_checkout

use_checkout()
from pydatacoll.config import Settings  # noqa: E402
from pydatacoll.model import Sample  # noqa: E402
from pydatacoll.plugins.history import history  # noqa: E402
from pydatacoll.processing import ProcessorContext  # noqa: E402
from pydatacoll.processing.history import INSERT_SAMPLES, sample_row  # noqa: E402
from pydatacoll.testing.history import drained  # noqa: E402

MYSQL = {"host": "127.0.0.1", "port": 3306, "user": "root", "password": ""}


def make_samples(count: int) -> list[Sample]:
    """``count`` samples over 100 points of 10 devices, a collector's receive times."""
    start = 1700000000.0
    return [
        Sample(
            str(i % 10),
            str(i % 100),
            "1000",
            float(i) * 0.5,
            "good",
            (),
            start + i * 1e-3,
            start + i * 1e-3 + 5e-4,
        )
        for i in range(count)
    ]


def admin(database: str | None, *statements: str) -> None:
    connection = pymysql.connect(**MYSQL, database=database, autocommit=True)
    try:
        with connection.cursor() as cursor:
            for statement in statements:
                cursor.execute(statement)
    finally:
        connection.close()


def ceiling(database: str, rows: list[tuple], batch: int) -> float:
    """Plain PyMySQL: executemany + commit per batch; seconds taken."""
    connection = pymysql.connect(**MYSQL, database=database, charset="utf8mb4", autocommit=False)
    try:
        started = time.perf_counter()
        with connection.cursor() as cursor:
            for i in range(0, len(rows), batch):
                cursor.executemany(INSERT_SAMPLES, rows[i : i + batch])
                connection.commit()
        return time.perf_counter() - started
    finally:
        connection.close()


async def plugin(database: str, samples: list[Sample], batch: int, frame: int) -> float:
    """The history plugin fed ``frame`` samples per call from the reactor; seconds until
    every row is committed."""
    context = ProcessorContext(
        reactor=reactor,
        settings=Settings(),
        options={
            "url": f"mysql://root@127.0.0.1:3306/{database}",
            "batch_samples": str(batch),
            "queue_samples": str(len(samples) + batch),
        },
        redis=None,
        emit=lambda s: None,
        data_dir=tempfile.mkdtemp(prefix="pdc-bench-history-"),
    )
    processor = history.build(context)
    processor.startService()
    await drained(processor)  # schema created, spool opened
    started = time.perf_counter()
    for i in range(0, len(samples), frame):
        processor.samples_received(samples[i : i + frame])
    await drained(processor, timeout=600)
    elapsed = time.perf_counter() - started
    status = processor.status()
    await processor.stopService()
    assert status["written"] == len(samples) and status["dropped_total"] == 0, status
    return elapsed


async def main(args: argparse.Namespace) -> None:
    database = f"pdc_bench_{uuid.uuid4().hex[:10]}"
    samples = make_samples(args.samples)
    rows = [sample_row(s) for s in samples]
    await threads.deferToThread(admin, None, f"CREATE DATABASE `{database}`")
    try:
        best_plugin = best_plain = float("inf")
        for round_number in range(args.rounds):
            await threads.deferToThread(
                admin,
                database,
                "DROP TABLE IF EXISTS samples",
                "DROP TABLE IF EXISTS sample_batches",
            )
            t_plugin = await plugin(database, samples, args.batch, args.frame)
            await threads.deferToThread(admin, database, "TRUNCATE TABLE samples")
            t_plain = await threads.deferToThread(ceiling, database, rows, args.batch)
            best_plugin, best_plain = min(best_plugin, t_plugin), min(best_plain, t_plain)
            print(
                f"round {round_number + 1}: plugin {args.samples / t_plugin:,.0f} samples/s, "
                f"plain PyMySQL {args.samples / t_plain:,.0f} samples/s"
            )
        plugin_rate, plain_rate = args.samples / best_plugin, args.samples / best_plain
        print(
            f"samples={args.samples} batch={args.batch} frame={args.frame} (best of {args.rounds})"
        )
        print(f"history plugin:                {plugin_rate:12,.0f} samples/s")
        print(f"plain PyMySQL executemany:     {plain_rate:12,.0f} samples/s (ceiling)")
        print(f"ratio plugin / ceiling:        {plugin_rate / plain_rate:12.2f} (target >= 0.70)")
    finally:
        await threads.deferToThread(admin, None, f"DROP DATABASE IF EXISTS `{database}`")


def run() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--frame", type=int, default=100, help="samples per samples_received")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    failures = []

    def go() -> None:
        d = ensureDeferred(main(args))
        d.addErrback(lambda f: failures.append(f) or f.printTraceback())
        d.addBoth(lambda _: reactor.stop())

    reactor.callWhenRunning(go)
    reactor.run()
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    run()
