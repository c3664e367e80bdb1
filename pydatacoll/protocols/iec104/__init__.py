"""IEC 60870-5-104 controlling station (master): pure codecs, link protocol, services.

Modules, in the vocabulary both stacks share: pure codecs `apci` (APCI framing) and
`asdu` (ASDUs, with `timetags` and `types`); `config` (a device's settings from the
model); `link` (`Iec104Link`, the protocol of one connection, which `master` extends
for our controlling station and `station` for the controlled station of the gateway and
the RTU simulator); `commands` (request and result values); `client` (`Iec104Client`,
the supervised connection with reconnect); `tls` (IEC 62351-3); `runtime`
(`Iec104Runtime`, the `IDeviceRuntime`, and `driver`, the `IProtocolDriver` plugin).
"""
