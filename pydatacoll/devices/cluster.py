"""Cluster mode of the device manager: a device runs here only while its lease is ours.

With ``[cluster] enabled`` the manager keeps the configuration of every stored device
(``_configs``) but starts one only when its `ClusterMember` (the named child service
``cluster``) has taken the device's lease; it stops it at once when the lease is lost,
and the member gives a lease back only once the device's link has closed (`_stop_leased`
fires then), so that two collectors never hold a link to the same RTU. The ingest path
writes each device's samples under its lease token (`token_of`): a collector that was
paused past its lease is refused by the script. Requests for a device this collector
does not run are left to its lease holder (`pydatacoll.devices.requests`).

Without the cluster (the default) none of this exists: the manager runs every device.
See docs/cluster.rst.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

from twisted.internet import defer

from pydatacoll.cluster.member import ClusterMember, default_collector_id
from pydatacoll.cluster.ownership import Ownership
from pydatacoll.cluster.rendezvous import restriction
from pydatacoll.store.cluster import ClusterStore, Lease
from pydatacoll.store.devices import DeviceConfig
from pydatacoll.store.ingest import NO_LEASE

from .base import ManagerBase

#: Seconds a device handed over waits, after its link has closed, for its last samples
#: to be written under its lease (longer: the lease is released anyway).
DRAIN_TIMEOUT = 2.0


class ClusterMode(ManagerBase):
    """The cluster part of the device manager (see the module docstring)."""

    #: The `ClusterMember` (None: not in cluster mode, every device runs here).
    member: ClusterMember | None = None
    #: This collector's id in the cluster (None: not in cluster mode).
    collector_id: str | None = None
    #: The devices whose lease is held here, for the processors (None: not in cluster
    #: mode).
    ownership: Ownership | None = None
    #: Cluster mode: every stored device's configuration, running here or not.
    _configs: dict[str, DeviceConfig]

    def _join_cluster(self, store: Any, subscribe: Any) -> None:
        """Cluster mode: the member as the child service ``cluster`` (``store``: an
        `IClusterStore`, default one on the manager's Redis; ``subscribe``: the
        subscription factory the processors' `Ownership` hands out)."""
        settings = self.settings
        self._configs = {}
        self.collector_id = settings.collector_id or default_collector_id()
        self.ownership = Ownership(self.collector_id, subscribe)
        self.member = ClusterMember(
            store if store is not None else ClusterStore(self.redis),
            self.reactor,
            self.collector_id,
            lease_seconds=settings.lease_seconds,
            heartbeat_seconds=settings.heartbeat_seconds,
            devices=self._cluster_devices,
            start_device=self._start_leased,
            stop_device=self._stop_leased,
        )
        self.member.setName("cluster")
        self.member.setServiceParent(self)

    def _cluster_devices(self) -> Mapping[str, Collection[str] | None]:
        """Every stored device, with its ``collectors`` restriction (None: any)."""
        return {
            device_id: restriction(config.device.extra.get("collectors"))
            for device_id, config in self._configs.items()
        }

    def _start_leased(self, device_id: str, lease: Lease) -> None:
        """The member took ``device_id``'s lease: run it under that lease."""
        config = self._configs.get(device_id)
        if config is None:  # deleted meanwhile: the member releases the lease
            raise KeyError(f"device {device_id} is not configured any more")
        self._leases[device_id] = lease
        if self.ownership is not None:
            self.ownership.set_owned(device_id, True, lease.token)
        if device_id in self._closing:
            # Its previous run here (a lease lost a moment ago) is still closing its link:
            # the new one opens only once that one is closed.
            self._stop(device_id).addCallback(lambda _: self._start_if_leased(device_id, lease))
        elif device_id not in self.running_devices:
            self._start(config)

    def _start_if_leased(self, device_id: str, lease: Lease) -> None:
        config = self._configs.get(device_id)
        if (
            self.running
            and config is not None
            and self._leases.get(device_id) is lease
            and device_id not in self.running_devices
        ):
            self._start(config)

    def _stop_leased(self, device_id: str) -> defer.Deferred[Any]:
        """Stop ``device_id`` now; fires once its link is closed and the samples it sent
        are written (then the member may release the lease)."""
        lease = self._leases.get(device_id)
        if lease is not None:
            self._handing_over[device_id] = lease
        if self.ownership is not None:  # nothing more is computed here for it
            self.ownership.set_owned(device_id, False)
        d = self._stop(device_id)
        d.addCallback(lambda _: self.ingest.drained(DRAIN_TIMEOUT))

        def forget(result: Any) -> Any:
            if lease is not None and self._leases.get(device_id) is lease:
                del self._leases[device_id]
            if lease is not None and self._handing_over.get(device_id) is lease:
                del self._handing_over[device_id]
            return result

        return d.addBoth(forget)

    def token_of(self, device_id: str) -> str:
        """The token the ingest path writes ``device_id``'s samples under."""
        lease = self._leases.get(device_id)
        return lease.token if lease is not None else NO_LEASE

    def _cluster_apply(self, device_id: str, config: DeviceConfig | None) -> bool:
        """Record a device's configuration; True when the caller should apply it here
        (the device runs here under its lease), False when it is not ours."""
        if config is None:
            self._configs.pop(device_id, None)
        else:
            self._configs[device_id] = config
        lease = self._leases.get(device_id)
        # A lease being given back is no longer ours to run under: a reconcile during
        # the handover (a resubscription, a change) must not reopen the link. A lease
        # taken again later is a new object, so the re-take starts the device as usual.
        ours = lease is not None and self._handing_over.get(device_id) is not lease
        if not ours and device_id in self.running_devices and device_id not in self._handing_over:
            # a device running here without its lease (never expected): stop it now
            self.log.warn(
                "device {device_id} runs without its lease: stopping it", device_id=device_id
            )
            self._stop(device_id)
        return ours

    def _cluster_reconciled(self) -> None:
        """After a reconciliation: let the member start and stop what changed at once."""
        if self.member is not None and self.member.running:
            self.member.reconcile()
