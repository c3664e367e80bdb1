"""The store contracts: the zope Interfaces of the objects in ``pydatacoll.store``.

Everything above the store (the API, the device manager, the processors, the gateway,
the cluster) talks to Redis through objects declared here; each has a Redis
implementation in ``pydatacoll.store`` and runs over ``pydatacoll.testing.memory`` in
unit tests, and one contract suite per interface runs against both (``tests/store``,
``tests/integration/test_store_contract*.py``). The extension points (drivers,
runtimes, processors, sinks) are in ``pydatacoll.interfaces``.
"""

from __future__ import annotations

from twisted.application.service import IService
from zope.interface import Attribute, Interface


class IClusterStore(Interface):
    """Collectors' heartbeats and device leases with fencing epochs, in Redis
    (`pydatacoll.store.cluster.ClusterStore`). Every method returns a Deferred and fails
    with `StoreUnavailable` while Redis cannot be reached."""

    def when_connected():  # type: ignore[no-untyped-def]
        """Fires when Redis can be reached (at once if it can)."""

    def heartbeat(collector_id, *, devices, started_ms, ttl):  # type: ignore[no-untyped-def]
        """Write the collector's heartbeat (alive ``ttl`` seconds); fires with the
        server's time in ms."""

    def collectors():  # type: ignore[no-untyped-def]
        """The live collectors, a list of `CollectorInfo` sorted by id."""

    def leave(collector_id):  # type: ignore[no-untyped-def]
        """Remove the collector's heartbeat now (a clean stop)."""

    def acquire(device_id, collector_id, seconds):  # type: ignore[no-untyped-def]
        """Take the device's lease with a new epoch: a `Lease`, or None if another
        collector holds it."""

    def renew(lease, seconds):  # type: ignore[no-untyped-def]
        """Extend the lease if it is still exactly this one: True, else False."""

    def release(lease):  # type: ignore[no-untyped-def]
        """Give the lease back if it is still exactly this one: True, else False."""

    def is_current(lease):  # type: ignore[no-untyped-def]
        """Whether ``lease`` (epoch and holder) is its device's lease now."""

    def holders(device_ids):  # type: ignore[no-untyped-def]
        """``{device_id: Lease}`` for the devices among ``device_ids`` that are held."""


class IPointConfigStore(Interface):
    """What the processors read about points: term-item attributes and stored samples
    (`pydatacoll.store.processing.PointConfigStore`)."""

    def when_connected():  # type: ignore[no-untyped-def]
        """Deferred firing once the store can be used (at once when it can)."""

    def term_items():  # type: ignore[no-untyped-def]
        """Deferred dict ``(term_id, item_id) -> decoded fields`` of every term-item."""

    def term_item(term_id, item_id):  # type: ignore[no-untyped-def]
        """Deferred decoded fields of one term-item ({} when there is none)."""

    def latest_sample(point):  # type: ignore[no-untyped-def]
        """Deferred newest stored sample (a JSON object) of ``(device, term, item)``, or
        None."""

    def latest_value(point):  # type: ignore[no-untyped-def]
        """Deferred latest value of ``(device, term, item)`` as the value hash holds it
        (a JSON object, not-topical mark included), or None."""

    def sample_window(point, since, limit):  # type: ignore[no-untyped-def]
        """Deferred list of the point's stored samples since ``since`` (epoch seconds),
        oldest first, at most ``limit`` (the newest ones)."""


class IFormulaStore(Interface):
    """The formula definitions and the formulas processor's status
    (`pydatacoll.store.processing.FormulaStore`)."""

    def formulas(limit):  # type: ignore[no-untyped-def]
        """Deferred dict ``id -> decoded fields`` of at most ``limit`` formulas."""

    def formula_status(formula_id):  # type: ignore[no-untyped-def]
        """Deferred status object the processor last wrote for a formula, or None."""

    def write_formula_status(statuses):  # type: ignore[no-untyped-def]
        """Store ``{formula_id: status object}``; a Deferred."""

    def delete_formula_status(formula_id):  # type: ignore[no-untyped-def]
        """Forget a formula's status; a Deferred."""


class IAlarmStore(Interface):
    """The active alarms, the alarm log and the alarm channel
    (`pydatacoll.store.alarms.AlarmStore`)."""

    def active_alarms():  # type: ignore[no-untyped-def]
        """Deferred dict ``"device:term:item:kind" -> raise event`` of the active alarms."""

    def record_event(event, log_length, token=None):  # type: ignore[no-untyped-def]
        """Log a raise or clear event, update the active alarms and publish it, at once;
        with a lease ``token`` (cluster mode) only while it is the device's current lease
        and the device still configured (fires with 0 when not)."""

    def clear_orphan(event, log_length):  # type: ignore[no-untyped-def]
        """Cluster mode: clear the alarm of a device no longer configured, once (fires
        with 1 when written, 0 when the device exists or the alarm is not active)."""


class IPluginStatusStore(Interface):
    """Which collectors run which processor plugins, and the plugins' status
    (`pydatacoll.store.plugins.PluginStatusStore`)."""

    def when_connected():  # type: ignore[no-untyped-def]
        """Deferred firing once the store can be used (at once when it can)."""

    def write_status(statuses):  # type: ignore[no-untyped-def]
        """Store ``{plugin name: status JSON text}`` in the plugin status hash."""

    def report_running(names, instance, now):  # type: ignore[no-untyped-def]
        """Say that ``instance`` runs the plugins ``names`` at ``now``."""

    def withdraw(names, instance):  # type: ignore[no-untyped-def]
        """Say that ``instance`` no longer runs the plugins ``names``."""

    def running_instances(name, now, max_age, exclude=None):  # type: ignore[no-untyped-def]
        """Deferred sorted list of the instances that reported running ``name`` less
        than ``max_age`` seconds ago (``exclude`` left out)."""


class IRedisClient(Interface):
    """The shared Redis client the stores run their commands on
    (`pydatacoll.store.redis.RedisClient`; in tests `pydatacoll.testing.memory.MemoryRedis`)."""

    connected = Attribute("whether a connection to Redis is up now")
    address = Attribute("the `RedisAddress` of the server (known once it is ready)")

    def call(command, *args, **kwargs):  # type: ignore[no-untyped-def]
        """Run one command: a Deferred, failing at once with `StoreUnavailable` while
        Redis cannot be reached."""

    def call_encoded(command):  # type: ignore[no-untyped-def]
        """Run one command given whole in RESP form (bytes), as `call` runs it."""

    def when_connected():  # type: ignore[no-untyped-def]
        """A Deferred that fires when a connection is up (at once if one is)."""

    def when_ready():  # type: ignore[no-untyped-def]
        """A Deferred that fires when the server can be reached (the embedded one started)."""

    def dedicated():  # type: ignore[no-untyped-def]
        """A client whose commands run in the order they were sent (the ingest path)."""


class IDeviceStore(Interface):
    """What the device manager reads and writes in Redis besides the configuration
    entities (`pydatacoll.store.devices.DeviceStore`)."""

    connected = Attribute("whether the store can be reached now")

    def when_connected():  # type: ignore[no-untyped-def]
        """A Deferred that fires when the store can be reached (at once if it can)."""

    def config_version():  # type: ignore[no-untyped-def]
        """Deferred text of the configuration version, or None before the first change."""

    def device_ids():  # type: ignore[no-untyped-def]
        """Deferred set of every configured device id."""

    def read_device_config(device_id):  # type: ignore[no-untyped-def]
        """Deferred `DeviceConfig` of a device with its terms and term-items (one round
        trip), or None when the device is not stored."""

    def write_statuses(statuses):  # type: ignore[no-untyped-def]
        """Write and publish each device's JSON status text (``{device_id: text}``)."""

    def append_frames(device_id, frames, keep):  # type: ignore[no-untyped-def]
        """Append lines to a device's frame log, keeping its last ``keep`` lines."""

    def write_fenced(entries, keep):  # type: ignore[no-untyped-def]
        """Cluster mode: ``{device_id: (token, JSON status or None, frame lines)}``, each
        device's written only while ``token`` is its current lease (``keep``: frame log
        length); fires with ``[statuses written, devices refused]``."""

    def publish_reply(channel, body, device_id=None, token=None):  # type: ignore[no-untyped-def]
        """Publish the JSON answer ``body`` (a dict) to a request's ``reply_to``; with a
        lease ``token`` only while it is ``device_id``'s current lease (else -1)."""

    def answer_ctrl(
        request_id, channel, body, audit, max_length, device_id=None, token=None, done_ttl_ms=60000
    ):  # type: ignore[no-untyped-def]
        """`publish_reply` of a device_ctrl's answer with its audit entry ``audit``
        (name -> text) in one round trip, the entry written only if the API has not
        settled the request as timed out first."""


class ISubscriber(IService):
    """A pub/sub subscription kept up across store restarts, a service.

    After every (re)subscription it calls its ``on_subscribed`` callback: messages sent
    while it was down are lost and its owner catches up."""

    subscribed = Attribute("whether every channel and pattern is subscribed now")
    channels = Attribute("the channels subscribed (a list)")
    patterns = Attribute("the patterns subscribed (a list)")

    def update_channels(channels):  # type: ignore[no-untyped-def]
        """Subscribe exactly ``channels`` from now on; a Deferred fired once done."""

    def resubscribe():  # type: ignore[no-untyped-def]
        """Drop the connection: the next one subscribes again and calls ``on_subscribed``."""


class IGatewayStore(Interface):
    """The gateways' configuration, the devices' latest values and states they serve, the
    gateways' statuses (`pydatacoll.store.gateway.GatewayStore`; their commands go
    through the `ICommander`)."""

    def when_connected():  # type: ignore[no-untyped-def]
        """Deferred that fires once Redis can be used (at once when it can)."""

    def gateway_ids():  # type: ignore[no-untyped-def]
        """Deferred list of every gateway id, in natural order."""

    def gateway(gateway_id):  # type: ignore[no-untyped-def]
        """Deferred ``(gateway fields, [point fields, ...])`` (hashes of JSON texts, the
        points in natural IOA order), or None when the gateway does not exist."""

    def point_ioas(gateway_id):  # type: ignore[no-untyped-def]
        """Deferred list of the IOAs (ints) of a gateway's points, ascending."""

    def point_fields(gateway_id, ioa):  # type: ignore[no-untyped-def]
        """Deferred hash of one gateway point (field -> JSON text); empty when missing."""

    def device_values(device_ids):  # type: ignore[no-untyped-def]
        """Deferred ``{device_id: {"term_id:item_id": sample}}`` of the latest samples
        (unreadable ones left out)."""

    def device_states(device_ids):  # type: ignore[no-untyped-def]
        """Deferred ``{device_id: state or None}`` as the collectors last wrote them."""

    def device_protocols(device_ids):  # type: ignore[no-untyped-def]
        """Deferred ``{device_id: protocol name or None}`` (None: no such device)."""

    def write_statuses(statuses):  # type: ignore[no-untyped-def]
        """Store ``{gateway_id: status object}`` in the gateway status hash."""

    def forget_statuses(gateway_ids):  # type: ignore[no-untyped-def]
        """Remove the stored statuses of ``gateway_ids``."""

    def read_status(gateway_id):  # type: ignore[no-untyped-def]
        """Deferred stored status of a gateway (a dict), or None."""


class ISnapshotReader(Interface):
    """The whole configuration read at once (`pydatacoll.store.snapshot.SnapshotReader`)."""

    def read():  # type: ignore[no-untyped-def]
        """Deferred `ConfigSnapshot`: every device, term, item, term-item and formula hash
        (field -> JSON text) and the configuration version, in one atomic read."""


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

    def entity_exists(entity, entity_id):  # type: ignore[no-untyped-def]
        """Deferred bool: whether an entity (device, term, item, formula, gateway) is
        stored."""

    def child_ids(entity, entity_id):  # type: ignore[no-untyped-def]
        """Deferred ids hanging on an entity in natural order (a device's terms, a term's
        items), None when the entity is missing."""

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


class ICommandStore(Interface):
    """The command path's writes: a request sent in one round trip, and its audit."""

    def send_request(ids, channel, message):  # type: ignore[no-untyped-def]
        """Publish ``message`` on ``channel`` if the point ``ids`` exists: Deferred
        ``(None, subscribers)``, or ``(field, 0)`` naming the first id not stored."""

    def settle(request_id):  # type: ignore[no-untyped-def]
        """The wait for a device_ctrl's answer timed out: Deferred None (the caller audits
        the timeout) or the collector's JSON answer that came first (audited already)."""

    def append_audit(fields, max_length):  # type: ignore[no-untyped-def]
        """Append one audit entry (name -> text), keeping at most ``max_length``;
        Deferred entry id."""


class ILiveStore(Interface):
    """The live views' reads: the event stream's catch-up and the metrics' statuses."""

    def server_time_ms():  # type: ignore[no-untyped-def]
        """Deferred Redis clock in epoch ms (the clock of every stream entry id)."""

    def last_entry_id(key):  # type: ignore[no-untyped-def]
        """Deferred id of a stream's newest entry, or None."""

    def entries_from(key, start, limit):  # type: ignore[no-untyped-def]
        """Deferred newest ``limit`` entries at or after ``start``, oldest first."""

    def device_ids():  # type: ignore[no-untyped-def]
        """Deferred sorted list of every configured device id."""

    def point_ids(device_id):  # type: ignore[no-untyped-def]
        """Deferred list of (term_id, item_id) of a device's points that have a value."""

    def statuses(device_ids):  # type: ignore[no-untyped-def]
        """Deferred device id -> the status object the collector last wrote."""

    def plugin_statuses():  # type: ignore[no-untyped-def]
        """Deferred plugin name -> the state its collector last wrote."""
