"""Routes that describe the API: the route list, the OpenAPI document, the Redis keys
and the protocols."""

from __future__ import annotations

from typing import Any

from pydatacoll.api.core import ApiCore
from pydatacoll.api.openapi import document
from pydatacoll.api.plumbing import json_response, route_table, routes
from pydatacoll.protocols import TERM_PROTOCOLS, device_protocols
from pydatacoll.store import keys


@routes.route("/", methods=["GET"])
def index(self: ApiCore, request: Any) -> bytes:
    """The list of routes, as text."""
    self.check_read(request)
    request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
    base = f"{'https' if request.isSecure() else 'http'}://{request.getRequestHostname().decode()}"
    port = request.getHost().port
    base += f":{port}"
    lines = ["PyDataColl is running, available API:", ""]
    for method in ("GET", "POST", "PUT", "DELETE"):
        for path in sorted(p for m, p in route_table(self.app) if m == method):
            lines.append(f"method: {method:<8} URL: {base}{path}")
    return ("\n".join(lines) + "\n").encode()


@routes.route("/api/v1/openapi.json", methods=["GET"])
def openapi(self: ApiCore, request: Any) -> bytes:
    """The OpenAPI 3.1 document."""
    self.check_read(request)
    return json_response(request, 200, document(self.app))


@routes.route("/api/v1/redis_key", methods=["GET"])
def redis_key(self: ApiCore, request: Any) -> bytes:
    """Every Redis key and channel with its meaning."""
    self.check_read(request)
    return json_response(request, 200, keys.documentation())


@routes.route("/api/v1/device_protocols", methods=["GET"])
def get_device_protocols(self: ApiCore, request: Any) -> bytes:
    """The registered device protocols."""
    self.check_read(request)
    return json_response(request, 200, device_protocols())


@routes.route("/api/v1/term_protocols", methods=["GET"])
def get_term_protocols(self: ApiCore, request: Any) -> bytes:
    """The term protocols (informational)."""
    self.check_read(request)
    return json_response(request, 200, TERM_PROTOCOLS)
