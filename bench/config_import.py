"""Configuration import benchmark: 20,000 points through ``PUT /api/v1/config``.

It starts a private ``redis-server`` and the daemon (``twistd -n pydatacoll``, collector
included, so the change messages of the import are consumed as in production), builds a
configuration of ``--devices`` Modbus devices with one term each, ``--items`` items
and ``--points`` term-items in all (plus a few formulas), and for each format (JSON,
a zip of CSV files, XLSX) times, over HTTP from this process:

1. ``PUT`` of the file onto an empty configuration (everything created);
2. the same ``PUT`` again (everything compared, nothing written);
3. ``GET /api/v1/config?format=...`` (the export);
4. ``PUT`` of an empty configuration (everything deleted).

and after the first import, how long until the collector has taken up every device
(each has a status). The peer here is the v2 batch routes: the same configuration
posted as ``/api/v2/devices``, ``terms``, ``items``, ``term_items`` batches of 2,400
(four+ requests per collection, not atomic as a whole).

Usage::

    python bench/config_import.py                 # 20,000 points
    python bench/config_import.py --points 50000 --json out.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: bench/ is on sys.path
    from rest import BenchError, start_daemon, start_redis, stop_daemon, use_checkout
else:
    from .rest import BenchError, start_daemon, start_redis, stop_daemon, use_checkout

use_checkout()
from pydatacoll.configio.formats import FORMATS, encode  # noqa: E402

BATCH = 2400


def configuration(devices: int, items: int, points: int) -> dict[str, list[dict[str, Any]]]:
    """Modbus devices (nothing listens on their port), one term each, shared items."""
    per_device = -(-points // devices)
    bodies: dict[str, list[dict[str, Any]]] = {
        "device": [],
        "term": [],
        "item": [],
        "term_item": [],
        "formula": [],
    }
    for d in range(1, devices + 1):
        bodies["device"].append(
            {"id": str(d), "name": f"rtu {d}", "protocol": "modbus", "ip": "127.0.0.1",
             "port": 1, "station": f"substation {d % 7}"}
        )  # fmt: skip
        bodies["term"].append({"id": str(100 + d), "device_id": str(d), "address": 1})
    for i in range(1, items + 1):
        bodies["item"].append({"id": str(1000 + i), "name": f"measurement {i}", "unit": "kV"})
    count = 0
    for d in range(1, devices + 1):
        for n in range(per_device):
            if count == points:
                break
            bodies["term_item"].append(
                {"term_id": str(100 + d), "item_id": str(1000 + 1 + n % items),
                 "protocol_code": n, "code_type": "holding", "coefficient": 0.1,
                 "base_val": 0, "up_limit": 250.5, "down_limit": 0}
            )  # fmt: skip
            count += 1
    for f in range(1, 11):
        bodies["formula"].append(
            {"id": str(f), "formula": "p1 * 2", "device_id": "1", "term_id": "101",
             "item_id": str(1000 + f), "p1": f"2:102:{1000 + f}"}
        )  # fmt: skip
    return bodies


def call(
    base: str, method: str, path: str, body: bytes | None = None, content_type: str = ""
) -> tuple[int, bytes, float]:
    """Status, body and seconds of one request."""
    request = urllib.request.Request(base + path, data=body, method=method)
    if content_type:
        request.add_header("Content-Type", content_type)
    started = time.perf_counter()
    try:
        with urllib.request.urlopen(request, timeout=600) as response:
            status, answer = response.status, response.read()
    except urllib.error.HTTPError as e:
        status, answer = e.code, e.read()
    return status, answer, time.perf_counter() - started


def expect(status: int, answer: bytes, what: str) -> Any:
    if status != 200:
        raise BenchError(f"{what}: {status} {answer[:500]!r}")
    return json.loads(answer) if answer[:1] in (b"{", b"[") else answer


def all_devices_up(base: str, devices: int, deadline: float) -> float:
    """Seconds until every device has a collector status (not "unknown")."""
    started = time.perf_counter()
    while time.perf_counter() < deadline:
        pending = 0
        for d in range(1, devices + 1):
            status, answer, _ = call(base, "GET", f"/api/v1/devices/{d}/status")
            if status != 200 or json.loads(answer).get("state") == "unknown":
                pending += 1
                break
        if not pending:
            return time.perf_counter() - started
        time.sleep(0.2)
    raise BenchError("the collector did not take up every device in time")


def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    bodies = configuration(args.devices, args.items, args.points)
    empty = encode({}, "json")
    results: dict[str, Any] = {"points": args.points, "devices": args.devices, "formats": {}}
    with contextlib.ExitStack() as stack:
        redis_port = start_redis(stack, workdir)
        daemon, base = start_daemon(stack, workdir, redis_port)
        try:
            for fmt in ("json", "csv", "xlsx"):
                content_type = FORMATS[fmt][0]
                raw = encode(bodies, fmt)
                expect(*call(base, "PUT", "/api/v1/config", empty, "application/json")[:2], "wipe")
                status, answer, seconds = call(base, "PUT", "/api/v1/config", raw, content_type)
                summary = expect(status, answer, f"import {fmt}")
                created = len(summary["created"]["term_items"])
                if created != args.points:
                    raise BenchError(f"{fmt}: {created} points created, not {args.points}")
                up = all_devices_up(base, args.devices, time.perf_counter() + 300)
                status, answer, again = call(base, "PUT", "/api/v1/config", raw, content_type)
                summary = expect(status, answer, f"re-import {fmt}")
                if summary["unchanged"]["term_items"] != args.points:
                    raise BenchError(f"{fmt}: the re-import changed something: {summary}")
                status, answer, export = call(base, "GET", f"/api/v1/config?format={fmt}")
                expect(status, answer, f"export {fmt}")
                status, answer, wipe = call(
                    base, "PUT", "/api/v1/config", empty, "application/json"
                )
                summary = expect(status, answer, "delete all")
                if len(summary["deleted"]["term_items"]) != args.points:
                    raise BenchError(f"{fmt}: the wipe did not delete every point")
                results["formats"][fmt] = {
                    "bytes": len(raw),
                    "import_s": round(seconds, 3),
                    "collector_up_s": round(up, 3),
                    "reimport_unchanged_s": round(again, 3),
                    "export_s": round(export, 3),
                    "delete_all_s": round(wipe, 3),
                }
                print(f"{fmt:5} {len(raw):>10,} bytes  import {seconds:6.2f} s  "
                      f"collector up +{up:5.2f} s  re-import {again:5.2f} s  "
                      f"export {export:5.2f} s  delete all {wipe:5.2f} s", flush=True)  # fmt: skip
            started = time.perf_counter()
            for entity, collection in (("device", "devices"), ("term", "terms"),
                                       ("item", "items"), ("term_item", "term_items")):  # fmt: skip
                elements = bodies[entity]
                for low in range(0, len(elements), BATCH):
                    body = json.dumps(elements[low : low + BATCH]).encode()
                    status, answer, _ = call(base, "POST", f"/api/v2/{collection}", body,
                                             "application/json")  # fmt: skip
                    expect(status, answer, f"v2 {collection}")
            v2 = time.perf_counter() - started
            results["v2_batches_s"] = round(v2, 3)
            print(f"peer: the same devices, terms, items and points as v2 batches of {BATCH}: "
                  f"{v2:.2f} s")  # fmt: skip
        finally:
            problems = stop_daemon(daemon)
        if problems:
            raise BenchError("; ".join(problems) + "\n" + daemon.log_tail())
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--points", type=int, default=20_000)
    parser.add_argument("--devices", type=int, default=40)
    parser.add_argument("--items", type=int, default=500)
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="pydatacoll-bench-") as workdir:
        try:
            results = run(args, Path(workdir))
        except BenchError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
