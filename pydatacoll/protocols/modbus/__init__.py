"""Modbus TCP master: framing, pymodbus PDUs, point codec, poll planning, link, client, poller.

Modules, in the vocabulary both stacks share: pure codecs `framing` (MBAP), `pdu`
(pymodbus request/response PDUs) and `codec` (data types, byte orders, scaling);
`config` (a device's settings and points from the model); `planner` (merged reads);
`link` (`ModbusLink`, the protocol of one connection); `client` (`ModbusClient`, the
supervised connection with reconnect); `poller` (`ModbusPoller`, the per-device polling
engine); `runtime` (`ModbusRuntime`, the `IDeviceRuntime`, and `driver`, the
`IProtocolDriver` plugin). `driver.py` is only the old path of the poller. This package
imports nothing itself.
"""
