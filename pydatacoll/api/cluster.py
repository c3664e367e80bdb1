"""``GET /api/v1/collectors``: the live collectors of the cluster (docs/cluster.rst)."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import inlineCallbacks

from pydatacoll.api.core import ApiCore
from pydatacoll.api.plumbing import json_response, routes
from pydatacoll.store.cluster import ClusterStore


@routes.route("/api/v1/collectors", methods=["GET"])
@inlineCallbacks
def get_collectors(self: ApiCore, request: Any) -> Any:
    """The collectors whose heartbeat is alive, by id: how many devices each runs, the
    age of its last heartbeat. Empty when no collector runs in cluster mode."""
    self.check_read(request)
    collectors = yield ClusterStore(self.store.redis).collectors()
    body = sorted((c.to_json() for c in collectors), key=lambda c: c["collector"])
    return json_response(request, 200, body)
