"""Every zope Interface of PyDataColl: protocol drivers, device runtimes, processors.

A third-party package extends PyDataColl by providing one of these through
``twisted.plugin`` in the ``pydatacoll.plugins`` drop-in package (see docs/plugins.rst).
Every implementation has a ``verifyObject`` test. The store contracts (the interfaces
of the objects in ``pydatacoll.store``) are in ``pydatacoll.store_interfaces``.
"""

from __future__ import annotations

from twisted.application.service import IService
from zope.interface import Attribute, Interface


class ISampleSink(Interface):
    """Where samples go: the ingest path (Redis) and the processors."""

    def samples_received(samples):  # type: ignore[no-untyped-def]
        """Take a batch of `pydatacoll.model.Sample` (one frame or scan); never block."""


class IDeviceRuntime(Interface):
    """A running device: an `IService` holding its link, built by its protocol driver."""

    device_id = Attribute("the device's id")

    def update_points(terms, term_items):  # type: ignore[no-untyped-def]
        """Take a new point configuration (terms, term-items) without dropping the link."""

    def read_point(term_id, item_id):  # type: ignore[no-untyped-def]
        """Read a point now: a Deferred firing with a `Sample`, or failing with a
        `pydatacoll.errors.DeviceError` (offline, refused, timeout)."""

    def control_point(term_id, item_id, value, select):  # type: ignore[no-untyped-def]
        """Command a point: a Deferred firing with a `ControlOutcome`."""

    def status():  # type: ignore[no-untyped-def]
        """The link state, since when, the last error and the counters, as a JSON object.

        A runtime may also have ``link_state()``, the ``state`` of this object alone,
        cheaply: the device manager looks at every device's state four times a second,
        and uses it when present (it builds the whole status otherwise)."""

    def pause_input():  # type: ignore[no-untyped-def]
        """Stop taking new data from the device (the sample pipeline is congested):
        a pushing protocol stops reading its link, a polling one skips its polls."""

    def resume_input():  # type: ignore[no-untyped-def]
        """Take data again after `pause_input` (a no-op when not paused)."""

    # Optional: ``lossless_pause = True`` says `pause_input` loses nothing (an IEC 104
    # link stops reading; the RTU keeps its data). Only such devices are held back while
    # a command is in flight (`pydatacoll.control.priority`); a polling runtime whose
    # pause skips scans leaves it out (false).


class IProtocolDriver(Interface):
    """What the device manager needs to run devices of one protocol."""

    name = Attribute("the protocol name, the value of device.protocol")
    description = Attribute("one line for GET /api/v1/device_protocols")
    default_port = Attribute("the TCP port of a device that gives none, or None")

    def build(device, terms, term_items, sink, reactor, settings, frame_observer):  # type: ignore[no-untyped-def]
        """An `IDeviceRuntime` for ``device``; raise `pydatacoll.errors.ValidationError`
        when the device's settings are wrong for this protocol.

        ``frame_observer`` is None (the frame log is off) or a callable
        ``(direction, frame)`` the runtime calls with ``"tx"`` or ``"rx"`` and the bytes
        of every protocol frame it sends or receives."""


class IProcessor(Interface):
    """A processing plugin: an `IService` that sees every sample and configuration change."""

    name = Attribute("the plugin's unique name")

    def samples_received(samples):  # type: ignore[no-untyped-def]
        """A batch of samples (never block; queue in a bounded buffer if needed)."""

    def config_changed(change):  # type: ignore[no-untyped-def]
        """A configuration change message (the JSON object of the change channels)."""

    def status():  # type: ignore[no-untyped-def]
        """The plugin's state and counters, as a JSON object."""


class IDeviceOwnership(Interface):
    """Cluster mode: which devices this collector holds the lease of, handed to the
    processors (`pydatacoll.cluster.ownership.Ownership`; None outside cluster mode)."""

    collector_id = Attribute("this collector's id in the cluster")

    def owns(device_id):  # type: ignore[no-untyped-def]
        """Whether this collector holds ``device_id``'s lease now."""

    def token(device_id):  # type: ignore[no-untyped-def]
        """The token of ``device_id``'s lease held here ("EPOCH COLLECTOR_ID"), or None."""

    def watch(callback):  # type: ignore[no-untyped-def]
        """Call ``callback(device_id, owned)`` on every change of ownership."""

    def unwatch(callback):  # type: ignore[no-untyped-def]
        """Stop calling ``callback``."""

    def subscribe(handler, channels, on_subscribed, name):  # type: ignore[no-untyped-def]
        """An `ISubscriber` service (not started) delivering ``handler(channel, text)``."""


class IProcessorFactory(Interface):
    """A ``twisted.plugin`` provider that builds one `IProcessor`."""

    name = Attribute("the plugin's unique name, used in [plugins] enabled")
    description = Attribute("one line for GET /api/v1/plugins")

    def build(context):  # type: ignore[no-untyped-def]
        """The processor service, given a `pydatacoll.processing.ProcessorContext`."""


class IStationDatabase(Interface):
    """What an IEC 104 controlled station (`pydatacoll.protocols.iec104.station`) serves:
    its points, their current values, and what to do with clock syncs and commands."""

    common_address = Attribute("the station's common address")

    def station_points():  # type: ignore[no-untyped-def]
        """The points by IOA: ``{ioa: StationPoint}``."""

    def current(ioa):  # type: ignore[no-untyped-def]
        """A point's current `PointValue` (NT|IV when none is known)."""

    def clock_sync(when, peer):  # type: ignore[no-untyped-def]
        """A clock synchronisation from ``peer``: True to accept, False to refuse."""

    def can_command(point):  # type: ignore[no-untyped-def]
        """None when a command for ``point`` could run now, else why not (text)."""

    def execute(request):  # type: ignore[no-untyped-def]
        """Run a `CommandRequest` on the field device: a Deferred firing with a
        `CommandAnswer` (positive only when the device confirmed)."""


class IHistoryReader(Interface):
    """Read access to the history database, for the REST API's ranges older than Redis
    holds. Provided by the history plugin's package (`history_reader(settings, reactor)`);
    the API depends on this interface only, never on the plugin's modules."""

    def read_samples(point, since_ms, until_ms, limit):  # type: ignore[no-untyped-def]
        """Deferred list of the point's stored samples (``point`` is
        ``(device_id, term_id, item_id)``) with ``since_ms <= receive time <= until_ms``
        (epoch milliseconds, None: open), newest first, at most ``limit``, each already in
        the API's JSON sample shape (`Sample.to_json`)."""


# --- i12dev: the collector's stores, subscriptions and sinks ---


class IConfigSink(ISampleSink):
    """A sink the device manager also tells about configuration changes (the processors)."""

    def config_changed(change):  # type: ignore[no-untyped-def]
        """A configuration change message (the JSON object of the change channels)."""


class IIngest(ISampleSink, IService):
    """The ingest path, a service: samples into the store in batches
    (`pydatacoll.store.ingest`); stopping it writes what waits."""

    settled_version = Attribute(
        "the configuration version every running point is known to match ('' while catching up)"
    )
    unsettled = Attribute(
        "ids of devices whose points may have changed since (their samples' owners are checked)"
    )
    congested = Attribute("whether the devices' input is paused because the store lags")

    def mark_not_topical(device_id):  # type: ignore[no-untyped-def]
        """Flag the latest value of each of the device's points NT, in sample order."""

    def hold(holding):  # type: ignore[no-untyped-def]
        """Send nothing new to the store while ``holding`` (a command is in flight);
        samples keep being queued, within the buffer's bound."""

    def status():  # type: ignore[no-untyped-def]
        """The counters (written, skipped, dropped, buffered...) as a JSON object."""


# --- i12cmd: the one command path (device_call / device_ctrl) ---


class ICommander(Interface):
    """device_call / device_ctrl to the collector running a device, with the audit of
    every command: the one path of the REST API, the gateways and the MQTT plugin."""

    replies = Attribute(
        "The reply listener (`pydatacoll.control.replies.ReplyListener`) the collector's "
        "answers arrive at, or None (every request answered unavailable)"
    )

    def device_call(request_id, ids):  # type: ignore[no-untyped-def]
        """Read a point now (``ids``: device_id, term_id, item_id): Deferred `DeviceAnswer`
        (2xx), or failing with it or with the `errors.ApiError` refusing the request."""

    def device_ctrl(request_id, ids, body, client, token_id, refused=None, timeout=None):  # type: ignore[no-untyped-def]
        """Validate, send and audit one command (``body``: value, select); Deferred
        `DeviceAnswer` (2xx), or failing with it or with the `errors.ApiError` refusing
        it; ``refused`` (a reason) audits it as refused without sending it; ``timeout``
        (default: the device timeout) bounds the wait for the reply."""
