"""``GET /metrics``: the process's Prometheus metrics (see `pydatacoll.metrics`).

Registered on the API's route table (`pydatacoll.api.plumbing.routes`) when imported,
so it shares the API's errors and its token rule for reads.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import inlineCallbacks

from pydatacoll import errors
from pydatacoll.api.core import ApiCore
from pydatacoll.api.plumbing import routes
from pydatacoll.metrics import CONTENT_TYPE_LATEST


@routes.route("/metrics", methods=["GET"])
@inlineCallbacks
def metrics(self: ApiCore, request: Any) -> Any:
    """The Prometheus text exposition of this process (``pydatacoll_*`` families)."""
    self.check_read(request)
    if self.metrics is None:
        raise errors.Unavailable("metrics are not served by this process")
    body = yield self.metrics.exposition()
    request.setHeader(b"Content-Type", CONTENT_TYPE_LATEST.encode())
    return body
