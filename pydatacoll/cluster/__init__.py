"""Many collectors on one Redis: membership, device assignment, leases (docs/cluster.rst).

Layer: above `pydatacoll.store` (it calls `pydatacoll.store.cluster.ClusterStore`), beside
the device manager, which it serves; it imports nothing from devices, api or service.
"""
