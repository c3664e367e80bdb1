"""The root service tree: wiring only (the composition root; only `tap` imports it)."""

from __future__ import annotations

from typing import Any

from twisted.application import strports
from twisted.application.service import MultiService

from pydatacoll.api.app import ApiApp
from pydatacoll.api.stream import StreamHub
from pydatacoll.config import Settings
from pydatacoll.control.commander import make_commander
from pydatacoll.control.priority import CommandPriority
from pydatacoll.control.replies import ReplyListener
from pydatacoll.devices.collector import make_collector
from pydatacoll.metrics import ProcessMetrics, metrics_site
from pydatacoll.ordered import OrderedService
from pydatacoll.processing.history import history_reader
from pydatacoll.processing.loader import PluginDirectory
from pydatacoll.store.commands import CommandStore
from pydatacoll.store.config import ConfigStore
from pydatacoll.store.config_cache import ConfigCache, redis_subscription
from pydatacoll.store.embedded import DataDirLock, EmbeddedRedis, find_redis_server
from pydatacoll.store.redis import RedisClient


def make_root_service(settings: Settings, reactor: Any) -> MultiService:
    """Children in start order: ``redis-server`` (embedded only), ``redis``,
    ``command-redis`` (roles all, api and gateway: the commands' own connection), then
    ``collector`` (roles all and collector), ``replies``, ``stream``, ``config-cache`` and
    ``api`` (roles all and api), or ``metrics`` (role collector with ``[collector]
    metrics_endpoint``), then ``gateway-replies`` and ``gateway`` (roles all and
    gateway)."""
    root = OrderedService()
    embedded = None
    if settings.embedded_redis:
        binary = find_redis_server(settings.redis_server)
        # Locked now, before twistd daemonizes: a second daemon on this data dir exits
        # with the message (EmbeddedRedisError) and the first is left untouched.
        lock = DataDirLock(settings.data_dir)
        lock.acquire()
        embedded = EmbeddedRedis(reactor, binary, settings.data_dir, lock=lock)
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
    command_redis = None
    if settings.runs_api or settings.runs_gateway:
        # Commands on a connection of their own: never queued behind other traffic.
        command_redis = client.dedicated()
        command_redis.setName("command-redis")
        command_redis.setServiceParent(root)
    processors = None
    metrics = ProcessMetrics(reactor)
    # One per process: a command of the API (or a gateway) holds this process's data back
    # while it is in flight, as a command the collector part answers does.
    priority = CommandPriority(reactor, settings.command_hold)
    if settings.runs_collector:
        collector = make_collector(settings, reactor, client, priority)
        collector.setName("collector")
        collector.setServiceParent(root)
        processors = collector.getServiceNamed("processors")
        metrics.watch_collector(collector.getServiceNamed("devices"), processors)
    else:
        metrics.watch_redis(client)
    if settings.runs_api:
        _add_api(
            root, settings, reactor, client, embedded, processors, metrics, command_redis, priority
        )
    elif settings.metrics_endpoint and settings.runs_collector:
        token = settings.api_token if settings.protect_reads else None
        listener = strports.service(
            settings.metrics_endpoint, metrics_site(metrics, token), reactor=reactor
        )
        listener.setName("metrics")
        listener.setServiceParent(root)
    if settings.runs_gateway:
        _add_gateway(root, settings, reactor, client, embedded, command_redis, priority)
    return root


def _add_gateway(
    root: MultiService,
    settings: Settings,
    reactor: Any,
    client: RedisClient,
    embedded: Any,
    command_redis: Any,
    priority: CommandPriority,
) -> None:
    """The northbound gateways, with a reply listener of their own for commands."""
    from pydatacoll.gateway.service import GatewayService

    replies = ReplyListener(
        reactor, settings.redis, address_source=embedded, connect_timeout=settings.redis_timeout
    )
    replies.setName("gateway-replies")
    replies.setServiceParent(root)
    commander = make_commander(
        client, settings, reactor, replies, command_redis=command_redis, priority=priority
    )
    gateway = GatewayService(client, reactor, commander=commander)
    gateway.setName("gateway")
    gateway.setServiceParent(root)


def _add_api(
    root: MultiService,
    settings: Settings,
    reactor: Any,
    client: RedisClient,
    embedded: Any,
    processors: Any,
    metrics: ProcessMetrics,
    command_redis: Any,
    priority: CommandPriority,
) -> None:
    """The reply listener of device_call/device_ctrl, the event stream and the REST API."""
    replies = ReplyListener(
        reactor, settings.redis, address_source=embedded, connect_timeout=settings.redis_timeout
    )
    replies.setName("replies")
    replies.setServiceParent(root)
    hub = StreamHub(reactor, client, max_clients=settings.stream_clients)
    hub.setName("stream")
    hub.setServiceParent(root)
    metrics.watch_stream(hub)
    cache: ConfigCache[bytes] = ConfigCache(
        client, redis_subscription(client, reactor), settings.config_cache, reactor
    )
    cache.setName("config-cache")
    cache.setServiceParent(root)
    metrics.watch_config_cache(cache)
    api = ApiApp(
        ConfigStore(client),
        settings,
        replies=replies,
        clock=reactor,
        history=history_reader(settings, reactor),
        plugins=PluginDirectory(settings, client, reactor, processors=processors),
        stream_hub=hub,
        metrics=metrics,
        config_cache=cache,
        commands=CommandStore(command_redis),
        priority=priority,
    )
    api_service = strports.service(settings.api_listen, api.site(), reactor=reactor)
    api_service.setName("api")
    api_service.setServiceParent(root)
