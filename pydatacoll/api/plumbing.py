"""HTTP plumbing of the REST API: the one Klein route table, JSON out, query arguments,
the body size limit and the route listing.

Every route module registers on `routes` (``@routes.route(...)``); `pydatacoll.api.app`
imports them all and binds the table to `ApiApp`.
"""

from __future__ import annotations

import re
import time
from datetime import datetime
from typing import Any

from klein import Klein
from klein._resource import KleinResource, URLDecodeError, extractURLparts
from twisted.web.server import Request

from pydatacoll import errors
from pydatacoll.api.jsonbody import dumps

#: The route table of the whole API (bound to `pydatacoll.api.app.ApiApp`).
routes = Klein()

#: Most elements of one v2 batch.
MAX_BATCH = 10000
#: Most samples (or audit entries) one read returns.
MAX_SAMPLES = 10000
#: Largest |index| of GET .../datas/{index}.
MAX_INDEX = 10**9
INTEGER = re.compile(r"^-?[0-9]{1,19}$")
#: An RFC 3339 date-time (what OpenAPI's ``format: date-time`` means); the seconds may be
#: left out (``2026-01-31T08:00Z``).
_RFC3339 = re.compile(
    r"^(?P<year>[0-9]{4})-(?P<month>[0-9]{2})-(?P<day>[0-9]{2})[Tt ]"
    r"(?P<hour>[0-9]{2}):(?P<minute>[0-9]{2})(:(?P<second>[0-9]{2})(?P<fraction>\.[0-9]+)?)?"
    r"(?P<zone>[Zz]|[+-][0-9]{2}:[0-9]{2})$"
)


def json_response(request: Any, status: int, body: Any) -> bytes:
    """Set ``status`` and the JSON content type; the body as strict JSON bytes."""
    request.setResponseCode(status)
    request.setHeader(b"Content-Type", b"application/json; charset=utf-8")
    return dumps(body)


def error_response(request: Any, status: int, error: errors.ApiError | dict[str, Any]) -> bytes:
    """An error answer in the one JSON error shape (`errors.error_body`)."""
    body = error.to_json() if isinstance(error, errors.ApiError) else error
    return json_response(request, status, body)


class LimitedRequest(Request):
    """A request that keeps at most ``max_body`` bytes of its body and flags the rest."""

    max_body = 1048576
    #: The limit of configuration imports (``[api] max_import_body``).
    max_import_body = 1048576
    body_too_large = False

    def gotLength(self, length: int | None) -> None:  # noqa: N802 (Twisted API)
        # Request.path is set only after the body; HTTP/1.1 channels know it from the
        # request line already, before the headers (HTTP/2 streams keep max_body).
        path = getattr(self.channel, "_path", None) or b""
        if path.split(b"?")[0] == b"/api/v1/config":
            self.max_body = self.max_import_body
        if length is not None and length > self.max_body:
            self.body_too_large = True
        super().gotLength(length)

    def handleContentChunk(self, data: bytes) -> None:  # noqa: N802 (Twisted API)
        content: Any = self.content
        if self.body_too_large or content.tell() + len(data) > self.max_body:
            self.body_too_large = True
            return
        super().handleContentChunk(data)


class ApiResource(KleinResource):
    """Klein's resource, with a URL that is not UTF-8 answered in the JSON error shape.

    Klein itself answers it with a plain-text 400 and logs a traceback.
    """

    def render(self, request: Any) -> Any:
        try:
            extractURLparts(request)
        except URLDecodeError:
            body = errors.error_body("invalid", "the URL path is not valid UTF-8", "path")
            return error_response(request, 400, body)
        return super().render(request)


class WallClock:
    """``seconds()`` from `time.time`, for an API built without a reactor."""

    @staticmethod
    def seconds() -> float:
        return time.time()


def client_address(request: Any) -> str:
    """The client's host (or the kind of its address), for the audit log."""
    address = request.getClientAddress()
    return str(getattr(address, "host", None) or type(address).__name__)


def batch_elements(body: Any) -> list[Any]:
    """The elements of a v2 batch body (one object counts as a batch of one)."""
    elements = body if isinstance(body, list) else [body]
    if len(elements) > MAX_BATCH:
        raise errors.ValidationError(f"at most {MAX_BATCH} elements per batch")
    return elements


def int_arg(request: Any, name: str, default: int, low: int, high: int) -> int:
    """Query parameter ``name`` as an integer in ``low..high`` (``default`` when absent)."""
    values = request.args.get(name.encode())
    if not values:
        return default
    if not INTEGER.match(values[0].decode("latin-1")):
        raise errors.ValidationError(f"{name} must be an integer", field=name)
    value = int(values[0])
    if not low <= value <= high:
        raise errors.ValidationError(f"{name} must be from {low} to {high}", field=name)
    return value


def time_arg(request: Any, name: str) -> int | None:
    """Query parameter ``name`` as epoch milliseconds (None when absent)."""
    values = request.args.get(name.encode())
    if not values:
        return None
    return parse_time(values[0].decode("latin-1"), name)


def parse_time(text: str, name: str) -> int:
    """An RFC 3339 time (``2026-12-03T10:00:00Z``, with a zone) as epoch milliseconds.

    Years before 1970 are refused with a 400 naming ``name`` (Redis stream ids start at
    the epoch); a time in the first hours of 1970 that is before the epoch in UTC counts
    from the epoch. A leap second (``:60``) counts as the last millisecond before it.
    """
    match = _RFC3339.match(text)
    if match is None:
        raise errors.ValidationError(
            f"{name} must be an RFC 3339 time with a zone, e.g. 2026-01-31T08:00:00Z",
            field=name,
        )
    if int(match["year"]) < 1970:
        raise errors.ValidationError(f"{name} must be in 1970 or later", field=name)
    second = int(match["second"] or 0)
    try:
        moment = datetime.fromisoformat(
            f"{match['year']}-{match['month']}-{match['day']}T{match['hour']}:"
            f"{match['minute']}:{min(second, 59):02d}"
            + ("+00:00" if match["zone"] in "Zz" else match["zone"])
        )
    except ValueError:
        raise errors.ValidationError(f"{name} is not a valid date and time", field=name) from None
    if second > 60:
        raise errors.ValidationError(f"{name} is not a valid date and time", field=name)
    fraction = float("0" + match["fraction"]) if match["fraction"] else 0.0
    if second == 60:
        fraction = 0.999
    milliseconds = int(moment.timestamp()) * 1000 + int(fraction * 1000)
    return max(milliseconds, 0)


def route_table(app: Klein) -> list[tuple[str, str]]:
    """Every (method, path template) the app serves, paths in OpenAPI form."""
    table = []
    for rule in app.url_map.iter_rules():
        expanded = _expand(rule.rule)
        for method in sorted(rule.methods or ()):
            if method in ("HEAD", "OPTIONS"):
                continue
            for p in expanded:
                table.append((method, p))
    return sorted(set(table))


def _expand(path: str) -> list[str]:
    match = re.search(r"<any\(([^)]*)\):\w+>", path)
    if match is None:
        return [re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", path)]
    results = []
    for option in match.group(1).split(","):
        results.extend(_expand(path[: match.start()] + option.strip() + path[match.end() :]))
    return results
