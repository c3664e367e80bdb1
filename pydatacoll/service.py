"""The root service tree: wiring only."""

from __future__ import annotations

from typing import Any

from twisted.application import strports
from twisted.application.service import MultiService

from pydatacoll.api.app import ApiApp
from pydatacoll.config import Settings
from pydatacoll.store.config import ConfigStore
from pydatacoll.store.embedded import EmbeddedRedis, find_redis_server
from pydatacoll.store.redis import RedisClient


def make_root_service(settings: Settings, reactor: Any) -> MultiService:
    """Children in start order: ``redis-server`` (embedded only), ``redis``, ``api``."""
    root = MultiService()
    embedded = None
    if settings.embedded_redis:
        embedded = EmbeddedRedis(
            reactor, find_redis_server(settings.redis_server), settings.data_dir
        )
        embedded.setName("redis-server")
        embedded.setServiceParent(root)
    client = RedisClient(
        settings.redis,
        timeout=settings.redis_timeout,
        pool_size=settings.redis_pool_size,
        address_source=embedded,
    )
    client.setName("redis")
    client.setServiceParent(root)
    api = ApiApp(ConfigStore(client), settings)
    api_service = strports.service(settings.api_endpoint, api.site(), reactor=reactor)
    api_service.setName("api")
    api_service.setServiceParent(root)
    return root
