"""Configuration export and import from the command line, through the REST API.

    python -m pydatacoll.configio export FILE --api URL [--token T]
    python -m pydatacoll.configio import FILE --api URL [--token T] [--replace] [--dry-run]

The format follows the file's suffix: ``.json``, ``.zip`` (CSV files) or ``.xlsx``.
``import`` merges (POST /api/v1/config) unless ``--replace`` (PUT). The token may also
come from the PYDATACOLL_TOKEN environment variable (kept out of the process list).
Exit status: 0 done, 1 refused by the API (the error is printed), 2 usage or I/O error.

A short-lived script with no reactor: it uses the standard library's blocking HTTP.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.request
from typing import Any

from pydatacoll.configio.formats import FORMATS

_SUFFIXES = {suffix: fmt for fmt, (_type, suffix) in FORMATS.items()}


def _format(path: str) -> str:
    for suffix, fmt in _SUFFIXES.items():
        if path.lower().endswith(suffix):
            return fmt
    raise SystemExit(f"error: {path}: the file name must end with .json, .zip or .xlsx")


def _request(
    args: argparse.Namespace, method: str, query: str, body: bytes | None, fmt: str
) -> tuple[int, bytes]:
    url = args.api.rstrip("/") + "/api/v1/config" + query
    request = urllib.request.Request(url, data=body, method=method)
    token = args.token or os.environ.get("PYDATACOLL_TOKEN")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    if body is not None:
        request.add_header("Content-Type", FORMATS[fmt][0])
    try:
        with urllib.request.urlopen(request, timeout=args.timeout) as response:
            return int(response.status), bytes(response.read())
    except urllib.error.HTTPError as e:
        return int(e.code), bytes(e.read())


def _refused(status: int, body: bytes) -> int:
    try:
        error = json.loads(body)
        message = error.get("message", "")
        place = ", ".join(
            f"{name} {error[name]}" for name in ("sheet", "row", "field") if error.get(name)
        )
        print(
            f"refused ({status} {error.get('error')}): {message}"
            + (f" [{place}]" if place else ""),
            file=sys.stderr,
        )
    except (ValueError, AttributeError):
        print(f"refused ({status}): {body[:300]!r}", file=sys.stderr)
    return 1


def _print_summary(summary: dict[str, Any]) -> None:
    verb = "would " if summary.get("dry_run") else ""
    for action, past in (("create", "created"), ("change", "changed"), ("delete", "deleted")):
        counts = {name: len(ids) for name, ids in summary.get(past, {}).items() if ids}
        text = ", ".join(f"{n} {name}" for name, n in counts.items()) or "nothing"
        print(f"{verb}{action}: {text}")
    unchanged = sum(summary.get("unchanged", {}).values())
    print(f"unchanged: {unchanged}; configuration version {summary.get('version') or '-'}")


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m pydatacoll.configio",
        description="Export or import the PyDataColl configuration through its REST API.",
    )
    parser.add_argument("action", choices=("export", "import"))
    parser.add_argument("file", help="FILE.json, FILE.zip (CSV files) or FILE.xlsx")
    parser.add_argument("--api", required=True, help="base URL, e.g. http://127.0.0.1:8080")
    parser.add_argument("--token", help="API token (default: $PYDATACOLL_TOKEN)")
    parser.add_argument("--replace", action="store_true", help="import: replace everything")
    parser.add_argument("--dry-run", action="store_true", help="import: change nothing")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds (default 300)")
    args = parser.parse_args(argv)
    fmt = _format(args.file)
    try:
        if args.action == "export":
            status, body = _request(args, "GET", f"?format={fmt}", None, fmt)
            if status != 200:
                return _refused(status, body)
            with open(args.file, "wb") as f:
                f.write(body)
            print(f"exported {len(body)} bytes to {args.file}")
            return 0
        with open(args.file, "rb") as f:
            content = f.read()
        query = "?dry_run=true" if args.dry_run else ""
        status, body = _request(args, "PUT" if args.replace else "POST", query, content, fmt)
    except (OSError, urllib.error.URLError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if status != 200:
        return _refused(status, body)
    _print_summary(json.loads(body))
    return 0


if __name__ == "__main__":
    sys.exit(main())
