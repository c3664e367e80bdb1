"""Built-in processors (formulas, limit checks, history) and what every processor is given."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import attrs

from pydatacoll.config import Settings
from pydatacoll.interfaces import ICommander, IDeviceOwnership
from pydatacoll.model import Sample


@attrs.frozen
class ProcessorContext:
    """What an `IProcessorFactory.build` receives."""

    reactor: Any
    settings: Settings
    #: The plugin's own ``[plugin:NAME]`` options, as text (the plugin checks them).
    options: Mapping[str, str]
    #: The shared Redis pool (`pydatacoll.store.redis.RedisClient`).
    redis: Any
    #: Hand samples the processor produces (formula results) to the ingest path and to
    #: the other processors, exactly like samples from a device.
    emit: Callable[[Sequence[Sample]], None]
    #: A directory of the plugin's own under the data dir (created on demand).
    data_dir: str
    #: Builds an `ICommander` (device_call / device_ctrl with their audit) with a reply
    #: listener of its own, which the plugin starts and stops (``commander.replies``);
    #: None where devices cannot be commanded from here.
    commander: Callable[[], ICommander] | None = None
    #: Cluster mode: the `IDeviceOwnership` of this collector (which devices' leases it
    #: holds, and subscriptions to the devices run elsewhere); None outside cluster mode.
    cluster: IDeviceOwnership | None = None
