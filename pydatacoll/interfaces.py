"""Every zope Interface of PyDataColl: protocol drivers, device runtimes, processors.

A third-party package extends PyDataColl by providing one of these through
``twisted.plugin`` in the ``pydatacoll.plugins`` drop-in package (see docs/plugins.rst).
Every implementation has a ``verifyObject`` test.
"""

from __future__ import annotations

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
        """The link state, since when, the last error and the counters, as a JSON object."""


class IProtocolDriver(Interface):
    """What the device manager needs to run devices of one protocol."""

    name = Attribute("the protocol name, the value of device.protocol")
    description = Attribute("one line for GET /api/v1/device_protocols")
    default_port = Attribute("the TCP port of a device that gives none, or None")

    def build(device, terms, term_items, sink, reactor, settings):  # type: ignore[no-untyped-def]
        """An `IDeviceRuntime` for ``device``; raise `pydatacoll.errors.ValidationError`
        when the device's settings are wrong for this protocol."""


class IProcessor(Interface):
    """A processing plugin: an `IService` that sees every sample and configuration change."""

    name = Attribute("the plugin's unique name")

    def samples_received(samples):  # type: ignore[no-untyped-def]
        """A batch of samples (never block; queue in a bounded buffer if needed)."""

    def config_changed(change):  # type: ignore[no-untyped-def]
        """A configuration change message (the JSON object of the change channels)."""

    def status():  # type: ignore[no-untyped-def]
        """The plugin's state and counters, as a JSON object."""


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


# --- i12api: the stores behind the REST API ---


class IConfigStore(Interface):
    """The configured entities (devices, terms, items, term-items, formulas, gateways)
    and their atomic changes, which also append to the change log and publish."""

    redis = Attribute("the Redis client the store runs its commands on")

    def list_ids(entity):  # type: ignore[no-untyped-def]
        """Deferred list of every id of an entity type, in natural order."""

    def get_fields(entity, entity_id):  # type: ignore[no-untyped-def]
        """Deferred stored hash (name -> JSON text) of an entity; empty when missing."""

    def get_term_item_fields(term_id, item_id):  # type: ignore[no-untyped-def]
        """Deferred stored hash of a term-item; empty when missing."""

    def exists(key):  # type: ignore[no-untyped-def]
        """Deferred bool: whether a key (of `pydatacoll.store.keys`) exists."""

    def members(owner_key, set_key):  # type: ignore[no-untyped-def]
        """Deferred members of ``set_key`` in natural order, None when ``owner_key`` is
        missing."""

    def apply(ops, *, check_only=False, expect_version=None):  # type: ignore[no-untyped-def]
        """Run configuration operations atomically; Deferred list of the stored entities,
        or failing with the `pydatacoll.errors.ApiError` of the first refused one."""


class IPointStore(Interface):
    """Points as the collector leaves them: latest values, bounded sample streams,
    device and formula statuses; and the request channels to the collectors."""

    def device_values(device_id):  # type: ignore[no-untyped-def]
        """Deferred ``{"term_id:item_id": sample}`` of a device's latest values."""

    def device_status_text(device_id):  # type: ignore[no-untyped-def]
        """Deferred status text the collector last wrote for a device, or None."""

    def formula_status_text(formula_id):  # type: ignore[no-untyped-def]
        """Deferred state text the formulas plugin last wrote for a formula, or None."""

    def read_samples(point, limit, since_ms, until_ms):  # type: ignore[no-untyped-def]
        """Deferred list of a point's samples kept in Redis, newest first, at most
        ``limit``, received in ``since_ms..until_ms`` (epoch ms, None: open)."""

    def sample_at(point, index):  # type: ignore[no-untyped-def]
        """Deferred sample at ``index`` of the newest-first order (0 newest, -1 oldest
        kept), or None."""

    def publish(channel, message):  # type: ignore[no-untyped-def]
        """Publish a JSON object; Deferred number of subscribers that got it."""


class IEventStore(Interface):
    """Events: the bounded device_ctrl audit stream and the alarms (read side)."""

    def append_audit(fields, max_length):  # type: ignore[no-untyped-def]
        """Append one audit entry (name -> text), keeping at most ``max_length``;
        Deferred entry id."""

    def read_audit(limit, since_ms, until_ms):  # type: ignore[no-untyped-def]
        """Deferred list of audit entries ``(id, fields)``, newest first."""

    def active_alarms():  # type: ignore[no-untyped-def]
        """Deferred ``{"device:term:item:kind": raise event}`` of the active alarms."""

    def alarm_history(limit, since_ms, until_ms):  # type: ignore[no-untyped-def]
        """Deferred list of alarm events (with their ``id``), newest first."""
