"""A Modbus TCP device simulator for demos, tests and benchmarks: pymodbus' own server.

Run ``python -m pydatacoll.testing.modbus_sim --port 5020`` and poll it. Every unit has
coils, discrete inputs, holding and input registers at addresses 0 to ``--size`` - 1
(addresses beyond answer exception 2). ``--map FILE`` sets initial values::

    {"1": {"holding": {"0": [100, 200, 16712, 0]}, "coil": {"3": [true, false]}},
     "*": {"input": {"10": [7]}}}

(unit ids, or ``*`` for every unit; then table, start address, values). With ``--tick
S`` the first ``--changing N`` input registers of each unit count up and the first N
discrete inputs toggle every S seconds. With ``--control`` the process reads commands on
stdin and answers each with one JSON line on stdout, so a test can look into the
datastore without going through Modbus::

    get UNIT TABLE ADDRESS COUNT      -> {"values": [...]}
    set UNIT TABLE ADDRESS JSON-LIST  -> {"ok": true}

When every port listens it prints ``listening HOST PORT [PORT...]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from typing import Any

from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

#: table name -> (position in SimDevice's tuple, function code used to get and set it).
TABLES = {
    "coil": (0, 1),
    "discrete_input": (1, 2),
    "holding": (2, 3),
    "input": (3, 4),
}


def build_devices(units: list[int], size: int) -> list[SimDevice]:
    """One simulated device per unit id, all four tables ``size`` entries long."""
    devices = []
    for unit in units:
        simdata = tuple(
            [
                SimData(
                    0,
                    count=size,
                    values=False if position < 2 else 0,
                    datatype=DataType.BITS if position < 2 else DataType.REGISTERS,
                )
            ]
            for position in range(4)
        )
        # four tables, as SimDevice wants them (its annotation asks for a fixed 4-tuple)
        devices.append(SimDevice(id=unit, simdata=simdata, use_bit_addressing=True))  # type: ignore[arg-type]
    return devices


async def set_values(
    server: ModbusTcpServer, unit: int, table: str, address: int, values: list
) -> None:
    """Write ``values`` into the datastore (any table, read-only ones included)."""
    function = TABLES[table][1]
    if table in ("coil", "discrete_input"):
        values = [bool(v) for v in values]
    result = await server.context.async_setValues(unit, function, address, values)
    if result:
        raise ValueError(f"cannot set {table} {address}+{len(values)}: {result!r}")


async def get_values(
    server: ModbusTcpServer, unit: int, table: str, address: int, count: int
) -> list:
    """Values from the datastore."""
    result = await server.context.async_getValues(unit, TABLES[table][1], address, count)
    if not isinstance(result, list):
        raise ValueError(f"cannot get {table} {address}+{count}: {result!r}")
    return [bool(v) if table in ("coil", "discrete_input") else int(v) for v in result]


async def apply_map(server: ModbusTcpServer, units: list[int], mapping: dict[str, Any]) -> None:
    """Load a register map (see the module docstring) into a server's datastore."""
    for unit_key, tables in mapping.items():
        targets = units if unit_key == "*" else [int(unit_key)]
        for unit in targets:
            for table, blocks in tables.items():
                for address, values in blocks.items():
                    await set_values(server, unit, table, int(address), list(values))


async def tick(
    servers: list[ModbusTcpServer], units: list[int], period: float, changing: int
) -> None:
    """Make the first ``changing`` input registers count and discrete inputs toggle."""
    step = 0
    while True:
        await asyncio.sleep(period)
        step += 1
        for server in servers:
            for unit in units:
                registers = await get_values(server, unit, "input", 0, changing)
                await set_values(server, unit, "input", 0, [(r + 1) & 0xFFFF for r in registers])
                await set_values(server, unit, "discrete_input", 0, [step % 2 == 1] * changing)


async def control(server: ModbusTcpServer) -> None:
    """Answer ``get``/``set`` commands from stdin, one JSON line each."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := await reader.readline():
        words = line.decode().split(maxsplit=4)
        try:
            if words[0] == "get":
                values = await get_values(
                    server, int(words[1]), words[2], int(words[3]), int(words[4])
                )
                answer: dict[str, Any] = {"values": values}
            elif words[0] == "set":
                await set_values(
                    server, int(words[1]), words[2], int(words[3]), json.loads(words[4])
                )
                answer = {"ok": True}
            else:
                answer = {"error": f"unknown command {words[0]}"}
        except (IndexError, KeyError, ValueError) as e:
            answer = {"error": str(e)}
        print(json.dumps(answer), flush=True)


async def main(args: argparse.Namespace) -> None:
    """Start the servers, load the map and run until killed."""
    units = [int(u) for u in args.units.split(",")]
    mapping = json.loads(open(args.map).read()) if args.map else {}
    servers = []
    ports = list(range(args.port, args.port + args.port_count))
    for port in ports:
        server = ModbusTcpServer(build_devices(units, args.size), address=(args.host, port))
        await server.serve_forever(background=True)
        await apply_map(server, units, mapping)
        servers.append(server)
    print("listening", args.host, *ports, flush=True)
    tasks = []
    if args.tick > 0:
        tasks.append(asyncio.create_task(tick(servers, units, args.tick, args.changing)))
    if args.control:
        tasks.append(asyncio.create_task(control(servers[0])))
    await asyncio.gather(*tasks, *(s.serving for s in servers))


class _HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Keeps the map format's layout and shows every option's default."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(
        prog="python -m pydatacoll.testing.modbus_sim",
        description=__doc__,
        formatter_class=_HelpFormatter,
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=5020, help="TCP port")
    parser.add_argument("--port-count", type=int, default=1, help="listen on PORT..PORT+N-1")
    parser.add_argument("--units", default="1", help="unit ids, comma-separated")
    parser.add_argument("--size", type=int, default=4096, help="entries per table")
    parser.add_argument("--map", help="JSON register map file (format above)")
    parser.add_argument("--tick", type=float, default=0.0, help="seconds between changes")
    parser.add_argument("--changing", type=int, default=10, help="registers that change")
    parser.add_argument("--control", action="store_true", help="get/set commands on stdin")
    parser.add_argument("--verbose", action="store_true", help="pymodbus' own log")
    return parser.parse_args(argv)


if __name__ == "__main__":
    arguments = parse_args()
    logging.basicConfig(level=logging.INFO if arguments.verbose else logging.CRITICAL)
    logging.getLogger("pymodbus").setLevel(logging.INFO if arguments.verbose else logging.CRITICAL)
    try:
        asyncio.run(main(arguments))
    except KeyboardInterrupt:
        pass
