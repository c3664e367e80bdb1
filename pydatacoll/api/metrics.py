"""``GET /metrics``: the process's Prometheus metrics (see `pydatacoll.metrics`).

Registered on `pydatacoll.api.app.ApiApp.app` when imported (the last lines of app.py),
so it shares the API's errors and its token rule for reads.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import inlineCallbacks

from pydatacoll import errors
from pydatacoll.api.app import ApiApp
from pydatacoll.metrics import CONTENT_TYPE_LATEST

app = ApiApp.app


@app.route("/metrics", methods=["GET"])
@inlineCallbacks
def metrics(self: ApiApp, request: Any) -> Any:
    """The Prometheus text exposition of this process (``pydatacoll_*`` families)."""
    self._read(request)
    if self.metrics is None:
        raise errors.Unavailable("metrics are not served by this process")
    body = yield self.metrics.exposition()
    request.setHeader(b"Content-Type", CONTENT_TYPE_LATEST.encode())
    return body
