"""The Klein REST API, composed: `ApiApp` is `ApiCore` with every route module's routes.

Each module under `pydatacoll.api` registers its routes on the one route table
(`pydatacoll.api.plumbing.routes`) when imported; this module imports them all, so it
is the only one that knows the whole API (nothing in `pydatacoll.api` imports it).
"""

from __future__ import annotations

from pydatacoll.api import (
    catalogue,
    cluster,
    commands,
    configio,
    data,
    entities,
    gateways,
    metrics,
    processing,
    stream,
    ui,
)
from pydatacoll.api.core import ApiCore, batch_put_ops, entity_op
from pydatacoll.api.plumbing import (
    MAX_BATCH,
    MAX_INDEX,
    MAX_SAMPLES,
    LimitedRequest,
    parse_time,
    route_table,
)

#: The route modules this app is made of (imported for their registrations).
ROUTE_MODULES = (
    catalogue,
    entities,
    data,
    cluster,
    commands,
    processing,
    configio,
    gateways,
    metrics,
    stream,
    ui,
)

__all__ = [
    "MAX_BATCH",
    "MAX_INDEX",
    "MAX_SAMPLES",
    "ApiApp",
    "LimitedRequest",
    "batch_put_ops",
    "parse_time",
    "route_table",
]

#: Old name of `pydatacoll.api.core.entity_op` (`pydatacoll.configio.plan` imports it).
_op = entity_op


class ApiApp(ApiCore):
    """The REST API bound to its stores and the settings (see `ApiCore`)."""
