"""Find, check, build and run the processor plugins; fan samples and changes out to them.

The device manager owns one `Processors` (a `MultiService`, one child per running plugin)
and calls `Processors.samples_received` for every sample batch and
`Processors.config_changed` for every configuration change message. A plugin that is
broken (fails `verifyObject`, shares its name, raises in ``build`` or ``startService``)
is reported in `Processors.status` and in ``HS:PLUGIN_STATUS`` and left out; a plugin
that raises while handling samples is logged and counted, and the others go on.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from twisted.application.service import IService, MultiService, Service
from twisted.internet.defer import Deferred, DeferredList, gatherResults, maybeDeferred, succeed
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from zope.interface.verify import verifyObject

from pydatacoll.config import PLUGIN_SECTION, Settings
from pydatacoll.discovery import discover as discover_plugins
from pydatacoll.errors import ConfigError
from pydatacoll.interfaces import ICommander, IDeviceOwnership, IProcessor, IProcessorFactory
from pydatacoll.model import Sample
from pydatacoll.processing import ProcessorContext
from pydatacoll.store.plugins import PluginStatusStore

#: Plugin states, as reported by `Processors.status` and GET /api/v1/plugins.
RUNNING, FAILED, DISABLED, DUPLICATE, NOT_INSTALLED, STOPPED = (
    "running",
    "failed",
    "disabled",
    "duplicate",
    "not_installed",
    "stopped",
)


def discover(package: Any = None) -> tuple[dict[str, Any], dict[str, str]]:
    """The installed processor factories by name, and the refused ones (name -> reason),
    under the one discovery policy of `pydatacoll.discovery` (shared with the protocol
    drivers): checked with ``verifyObject``; a name two providers give is refused for
    both (which one is meant cannot be known)."""
    if package is None:
        import pydatacoll.plugins as package
    discovered = discover_plugins(IProcessorFactory, package, kind="processor plugin")
    return discovered.found, discovered.refused


def check_plugin_options(settings: Settings, package: Any = None) -> None:
    """Refuse a ``[plugin:NAME]`` section naming no installed plugin, or a key the plugin
    does not declare in its factory's ``options`` (a factory without ``options`` checks
    its own); `ConfigError` names the key, like an unknown key of a core section."""
    if not settings.plugin_options:
        return
    factories, refused = discover(package)
    for name, options in sorted(settings.plugin_options.items()):
        section = PLUGIN_SECTION + name
        factory = factories.get(name)
        if factory is None:
            if name in refused:
                continue  # reported by the loader with its reason
            installed = ", ".join(sorted(factories)) or "none"
            raise ConfigError(
                section, f"no installed plugin is named {name} (installed: {installed})"
            )
        declared = getattr(factory, "options", None)
        if declared is None:
            continue
        for key in sorted(options):
            if key not in declared:
                known = ", ".join(sorted(declared)) or "none"
                raise ConfigError(f"{section}.{key}", f"unknown option (known: {known})")


class Processors(MultiService):
    """The running processor plugins, one named child each, and their states.

    ``emit`` takes the samples a plugin produces (formula results) to the ingest path;
    ``commander`` (a factory of `ICommander`) and ``cluster`` (the collector's
    `IDeviceOwnership` in cluster mode) are handed to the plugins in their context;
    each plugin may emit at most ``emit_per_second`` samples per second (a bucket
    refilled continuously), beyond that its samples are dropped and counted, so that a
    loop of processors feeding each other cannot run away.
    """

    log = Logger()

    def __init__(
        self,
        settings: Settings,
        reactor: Any,
        redis: Any,
        emit: Callable[[Sequence[Sample]], None],
        *,
        commander: Callable[[], ICommander] | None = None,
        cluster: IDeviceOwnership | None = None,
        package: Any = None,
        status_interval: float = 10.0,
        emit_per_second: float = 10000.0,
    ) -> None:
        super().__init__()
        self.settings = settings
        self._commander = commander
        self._cluster = cluster
        self.reactor = reactor
        self.redis = redis
        self.store = PluginStatusStore(redis)
        self._emit = emit
        self._package = package
        self._status_interval = status_interval
        self._emit_rate = emit_per_second
        self._entries: dict[str, dict[str, Any]] = {}
        self._buckets: dict[str, list[float]] = {}
        self._loaded = False
        self._status_loop: LoopingCall | None = None
        self._status_ever_written = False
        self._status_retry: Any = None
        #: This collector's id in the ``HS:PLUGIN_RUNNING:{name}`` heartbeats.
        self.instance = uuid.uuid4().hex[:16]
        self._reported: set[str] = set()

    # -- loading ------------------------------------------------------------------------
    def load(self) -> None:
        """Discover the installed plugins and build the enabled ones (once)."""
        if self._loaded:
            return
        self._loaded = True
        enabled = set(self.settings.plugins_enabled)
        try:
            factories, refused = discover(self._package)
        except Exception as e:
            self.log.failure("plugin discovery failed")
            factories, refused = {}, {}
            for name in enabled:
                self._entry(name, "", name in enabled, FAILED, f"discovery failed: {e}")
        for name, reason in refused.items():
            self.log.error("plugin {name} refused: {reason}", name=name, reason=reason)
            self._entry(
                name,
                "",
                name in enabled,
                DUPLICATE if "more than once" in reason else FAILED,
                reason,
            )
        for name, factory in sorted(factories.items()):
            description = str(getattr(factory, "description", ""))
            if name not in enabled:
                self._entry(name, description, False, DISABLED, None)
                continue
            self._build(name, factory, description)
        for name in self.settings.plugins_enabled:
            if name not in self._entries:
                self.log.error("plugin {name} is enabled but not installed", name=name)
                self._entry(name, "", True, NOT_INSTALLED, "enabled but not installed")

    def _entry(
        self, name: str, description: str, enabled: bool, state: str, error: str | None
    ) -> None:
        self._entries[name] = {
            "name": name,
            "description": description,
            "enabled": enabled,
            "state": state,
            "error": error,
            "errors": 0,
            "emitted": 0,
            "emit_dropped": 0,
        }

    def _build(self, name: str, factory: Any, description: str) -> None:
        data_dir = os.path.join(self.settings.data_dir, "plugins", name)
        context = ProcessorContext(
            reactor=self.reactor,
            settings=self.settings,
            options=dict(self.settings.plugin_options.get(name, {})),
            redis=self.redis,
            emit=lambda samples: self._emit_from(name, samples),
            data_dir=data_dir,
            commander=self._commander,
            cluster=self._cluster,
        )
        try:
            processor = factory.build(context)
            verifyObject(IProcessor, processor)
            verifyObject(IService, processor)
        except Exception as e:
            self.log.failure("plugin {name} could not be built", name=name)
            self._entry(name, description, True, FAILED, _describe(e))
            return
        self._entry(name, description, True, STOPPED, None)
        processor.setName(name)
        processor.setServiceParent(self)

    # -- service ------------------------------------------------------------------------
    def startService(self) -> None:
        """Start every built plugin; one that raises is reported and removed."""
        self.load()
        Service.startService(self)
        for child in list(self):
            name = child.name
            try:
                child.startService()
            except Exception as e:
                self.log.failure("plugin {name} failed to start", name=name)
                self._entries[name].update(state=FAILED, error=_describe(e))
                self._drop(child)
                continue
            self._entries[name]["state"] = RUNNING
            self.log.info("plugin {name} running", name=name)
        self._status_loop = LoopingCall(self._publish_status)
        self._status_loop.clock = self.reactor
        self._status_loop.start(self._status_interval, now=False)
        # The first write as soon as Redis is connected (then retried every second until
        # it works), not a failure logged while the pool is still connecting.
        self.store.when_connected().addCallback(
            lambda _: self._publish_status() if self.running else None
        )

    def _drop(self, child: Any) -> None:
        d = maybeDeferred(child.stopService)
        d.addErrback(lambda f: self.log.failure("stopping failed plugin {n}", f, n=child.name))
        self.services.remove(child)
        self.namedServices.pop(child.name, None)
        child.parent = None

    def stopService(self) -> Deferred[Any]:
        """Stop every plugin (in reverse order); fires when all have stopped."""
        if self._status_loop is not None and self._status_loop.running:
            self._status_loop.stop()
        if self._status_retry is not None and self._status_retry.active():
            self._status_retry.cancel()
        self._status_retry = None
        d: Deferred[Any] = maybeDeferred(MultiService.stopService, self)

        def stopped(result: Any) -> Any:
            for child in self:
                self._entries[child.name]["state"] = STOPPED
            # Waited for: the Redis pool closes after the collector has stopped.
            writes = [self._publish_status()]
            if self._reported:
                names, self._reported = sorted(self._reported), set()
                withdrawn = self.store.withdraw(names, self.instance)
                writes.append(withdrawn.addErrback(lambda f: None))  # heartbeats age out
            return DeferredList(writes, consumeErrors=True).addBoth(lambda _: result)

        return d.addBoth(stopped)

    # -- fan-out --------------------------------------------------------------------------
    def samples_received(self, samples: Sequence[Sample]) -> None:
        """Hand a batch to every running plugin; a plugin's exception stays its own."""
        for child in list(self):
            try:
                child.samples_received(samples)
            except Exception:
                self._entries[child.name]["errors"] += 1
                self.log.failure("plugin {name} failed on a sample batch", name=child.name)

    def config_changed(self, change: Any) -> None:
        """Hand a configuration change message to every running plugin."""
        for child in list(self):
            try:
                child.config_changed(change)
            except Exception:
                self._entries[child.name]["errors"] += 1
                self.log.failure("plugin {name} failed on a config change", name=child.name)

    def _emit_from(self, name: str, samples: Sequence[Sample]) -> None:
        now = self.reactor.seconds()
        bucket = self._buckets.setdefault(name, [self._emit_rate, now])
        bucket[0] = min(self._emit_rate, bucket[0] + (now - bucket[1]) * self._emit_rate)
        bucket[1] = now
        entry = self._entries[name]
        allowed = int(bucket[0])
        if allowed < len(samples):
            entry["emit_dropped"] += len(samples) - allowed
            self.log.warn(
                "plugin {name} emits over {rate}/s: {dropped} samples dropped",
                name=name,
                rate=self._emit_rate,
                dropped=len(samples) - allowed,
            )
            samples = samples[:allowed]
        if not samples:
            return
        bucket[0] -= len(samples)
        entry["emitted"] += len(samples)
        self._emit(samples)

    # -- status ---------------------------------------------------------------------------
    def status(self) -> dict[str, dict[str, Any]]:
        """Plugin name -> its entry (name, description, enabled, state, error, counters,
        and the plugin's own ``status()`` as ``detail`` while it runs)."""
        result = {}
        for name, entry in sorted(self._entries.items()):
            body = dict(entry)
            child = self.namedServices.get(name)
            if child is not None and entry["state"] == RUNNING:
                try:
                    body["detail"] = child.status()
                except Exception as e:
                    body["detail"] = {"error": _describe(e)}
            result[name] = body
        return result

    def _publish_status(self) -> Deferred[Any]:
        try:
            fields = {
                name: json.dumps(body, ensure_ascii=False, default=str)
                for name, body in self.status().items()
            }
            if not fields:
                return succeed(None)
            d = self.store.write_status(fields)
        except Exception:
            self.log.failure("building the plugin status")
            return succeed(None)
        d.addCallbacks(self._status_written, self._status_failed)
        running = self.running_names() if self.running else []
        if running:
            self._reported.update(running)
            beat = self.store.report_running(running, self.instance, self.reactor.seconds())
            beat.addErrback(lambda f: None)  # the status write above reports the outage
        return d

    def running_names(self) -> list[str]:
        """The plugins running in this process."""
        return sorted(n for n, e in self._entries.items() if e["state"] == RUNNING)

    def _status_written(self, _: Any) -> None:
        self._status_ever_written = True

    def _status_failed(self, failure: Any) -> None:
        self.log.warn("plugin status not written: {e}", e=failure.getErrorMessage())
        # Until it is written once (Redis may still be starting), try every second rather
        # than at the next status interval, so GET /api/v1/plugins is not empty for long.
        if not self._status_ever_written and self.running and self._status_retry is None:
            self._status_retry = self.reactor.callLater(1.0, self._retry_status)

    def _retry_status(self) -> None:
        self._status_retry = None
        if self.running:
            self._publish_status()


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"[:500]


class PluginDirectory:
    """What the REST API says about the processor plugins.

    Every installed plugin (from this process's discovery, enabled or not) with this
    process's state: the in-process `Processors` when this process is a collector; else
    ``running`` when some collector reports running it, ``not_running`` otherwise.
    ``collectors`` counts the collectors that reported running it within ``max_age``
    seconds (see `pydatacoll.store.plugins`).
    """

    def __init__(
        self,
        settings: Settings,
        redis: Any,
        clock: Any,
        *,
        processors: Processors | None = None,
        package: Any = None,
        max_age: float = 30.0,
    ) -> None:
        self.settings = settings
        self.redis = redis
        self.store = PluginStatusStore(redis)
        self.clock = clock
        self.processors = processors
        self._package = package
        self.max_age = max_age
        self._discovered: dict[str, dict[str, Any]] | None = None

    def _local(self) -> dict[str, dict[str, Any]]:
        if self.processors is not None:
            self.processors.load()
            return self.processors.status()
        if self._discovered is None:
            try:
                factories, refused = discover(self._package)
            except Exception as e:
                factories, refused = {}, {"*": f"discovery failed: {e}"}
            enabled = set(self.settings.plugins_enabled)
            found: dict[str, dict[str, Any]] = {}
            for name, reason in refused.items():
                state = DUPLICATE if "more than once" in reason else FAILED
                found[name] = _api_entry(name, "", name in enabled, state, reason)
            for name, factory in factories.items():
                description = str(getattr(factory, "description", ""))
                found[name] = _api_entry(name, description, name in enabled, None, None)
            for name in self.settings.plugins_enabled:
                if name not in found:
                    found[name] = _api_entry(
                        name, "", True, NOT_INSTALLED, "enabled but not installed"
                    )
            self._discovered = found
        return {name: dict(entry) for name, entry in self._discovered.items()}

    def runs_here(self, name: str) -> bool:
        """Whether this process runs the plugin ``name``."""
        return self.processors is not None and name in self.processors.running_names()

    def collectors(self, name: str) -> Deferred[int]:
        """How many collectors run ``name`` now (this one included)."""
        exclude = self.processors.instance if self.processors is not None else None
        d = self.store.running_instances(name, self.clock.seconds(), self.max_age, exclude=exclude)
        return d.addCallback(lambda others: len(others) + (1 if self.runs_here(name) else 0))

    def runs_somewhere(self, name: str) -> Deferred[bool]:
        """Whether any collector runs ``name`` (this process first, then the heartbeats)."""
        if self.runs_here(name):
            return succeed(True)
        return self.collectors(name).addCallback(bool)

    def not_running_reason(self, name: str) -> str:
        """Why a feature of plugin ``name`` does nothing, for a status or a warning."""
        entry = self._local().get(name)
        if (
            entry is not None
            and entry["enabled"]
            and entry["state"]
            in (
                FAILED,
                DUPLICATE,
                NOT_INSTALLED,
            )
        ):
            return (
                f"the {name} plugin is enabled but {entry['state']}: {entry['error']} "
                "(GET /api/v1/plugins shows the plugin states)"
            )
        return (
            f"the {name} plugin runs in no collector: add {name} to [plugins] enabled "
            "and restart the collector (GET /api/v1/plugins shows the plugin states)"
        )

    def list(self) -> Deferred[list[dict[str, Any]]]:
        """Every installed plugin with its state and ``collectors``, by name."""
        entries = self._local()
        names = sorted(entries)
        # Redis away: the local states still answer, ``collectors`` is null.
        counts = [self.collectors(name).addErrback(lambda f: None) for name in names]
        d = gatherResults(counts)

        def merge(counts: list[int | None]) -> list[dict[str, Any]]:
            result = []
            for name, count in zip(names, counts, strict=True):
                entry = entries[name]
                if entry["state"] is None:
                    entry["state"] = UNKNOWN if count is None else RUNNING if count else NOT_RUNNING
                entry["collectors"] = count
                # a plugin's own status() may hold anything: JSON as the status hash has it
                result.append(json.loads(json.dumps(entry, ensure_ascii=False, default=str)))
            return result

        return d.addCallback(merge)


#: The state the API gives a plugin that runs in no collector (roles ``api``).
NOT_RUNNING = "not_running"
#: ... and while Redis cannot be asked.
UNKNOWN = "unknown"


def _api_entry(
    name: str, description: str, enabled: bool, state: str | None, error: str | None
) -> dict[str, Any]:
    return {
        "name": name,
        "description": description,
        "enabled": enabled,
        "state": state,
        "error": error,
    }
