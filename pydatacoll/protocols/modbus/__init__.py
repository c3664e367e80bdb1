"""Modbus TCP master: framing, pymodbus PDUs, point codec, poll planning, client, driver.

Modules: `framing` (MBAP), `pdu` (pymodbus request/response PDUs), `codec` (data types,
byte orders, scaling), `config` (settings and points from the model), `planner` (merged
reads), `client` (the Twisted protocol), `link` (supervised connection), `driver` (the
per-device poller the device manager runs). This package imports nothing itself, so that
`pydatacoll.model` can use the pure `codec` without loading Twisted or pymodbus.
"""
