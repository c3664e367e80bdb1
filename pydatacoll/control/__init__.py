"""The control-command path: device_call / device_ctrl requests to the collector running
a device and their replies, shared by the REST API, the gateways and the MQTT plugin.

It sits above `pydatacoll.store` and below `pydatacoll.devices`, `pydatacoll.processing`,
`pydatacoll.api` and `pydatacoll.gateway`, which all use it; it imports none of them.
"""
