"""The command line of the IEC 104 RTU simulator: its demo station and help text
(``python -m pydatacoll.testing.iec104_sim``, whose ``main`` is in `iec104_sim`)."""

from __future__ import annotations

import argparse

from pydatacoll.protocols.iec104.asdu import (
    TypeId,
)
from pydatacoll.protocols.iec104.link import LinkParams
from pydatacoll.testing.iec104_sim_config import (
    CommandPoint,
    FloodConfig,
    MonitorPoint,
    SimulatorConfig,
    StationConfig,
)

#: Demo command points of the command line station: (command IOA, type, monitor IOA, type).
DEMO_COMMANDS = (
    (20001, TypeId.C_SC_NA_1, 10001, TypeId.M_SP_NA_1),
    (20002, TypeId.C_DC_NA_1, 10002, TypeId.M_DP_NA_1),
    (20003, TypeId.C_SE_NC_1, 10003, TypeId.M_ME_NC_1),
)


def demo_config(
    common_address: int = 1,
    points: int = 100,
    flood: FloodConfig | None = None,
    link: LinkParams | None = None,
    end_of_init: int | None = None,
) -> SimulatorConfig:
    """The command line station: float points at IOAs 1..points, three demo commands."""
    monitor = [
        MonitorPoint(ioa, TypeId.M_ME_NC_1, float(ioa), groups=(1,)) for ioa in range(1, points + 1)
    ]
    commands = []
    for cmd_ioa, cmd_type, mon_ioa, mon_type in DEMO_COMMANDS:
        monitor.append(MonitorPoint(mon_ioa, mon_type, 1 if mon_type == TypeId.M_DP_NA_1 else 0))
        commands.append(CommandPoint(cmd_ioa, cmd_type, monitor_ioa=mon_ioa))
    station = StationConfig(common_address, tuple(monitor), tuple(commands), end_of_init)
    return SimulatorConfig((station,), link or LinkParams(), flood=flood)


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Keeps the point table's layout and shows every option's default."""


def points_help() -> str:
    """The points of the command line station, for ``--help`` (and README)."""
    lines = [
        "points of the station (common address --ca):",
        "  IOA 1..N (--points)  M_ME_NC_1 (13) short float, value = IOA, group 1",
    ]
    for cmd_ioa, cmd_type, mon_ioa, mon_type in DEMO_COMMANDS:
        lines.append(
            f"  IOA {cmd_ioa}  {cmd_type.name} ({int(cmd_type)}, or {int(cmd_type) + 13} with "
            f"time tag) command; an accepted execute sets IOA {mon_ioa} {mon_type.name} "
            f"({int(mon_type)}) and sends it (COT 11)"
        )
    lines.append(
        "commands are direct or select-before-operate, confirmed (ACT_CON) then\n"
        "terminated (ACT_TERM); a command to another IOA is refused (COT 47)"
    )
    return "\n".join(lines)


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pydatacoll.testing.iec104_sim",
        description="An IEC 60870-5-104 controlled station (RTU simulator).",
        epilog=points_help(),
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--interface", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=2404, help="TCP port (0 = a free one)")
    parser.add_argument(
        "--ports",
        type=int,
        default=1,
        help="listen on N consecutive ports from --port (which must not be 0 then), one "
        "station each (for many links in one process)",
    )
    parser.add_argument("--ca", type=int, default=1, help="common address")
    parser.add_argument("--points", type=int, default=100, help="float points at IOA 1..N")
    parser.add_argument("--flood", action="store_true", help="flood SQ=1 float frames")
    parser.add_argument("--flood-frames", type=int, default=0, help="stop after N (0: never)")
    parser.add_argument("--flood-duration", type=float, default=0.0, help="stop after S s")
    parser.add_argument("--flood-delay", type=float, default=0.0, help="start S s after STARTDT")
    parser.add_argument(
        "--spontaneous-interval", type=float, default=0.0, help="change a point every S s"
    )
    parser.add_argument("--end-of-init", type=int, default=None, help="send M_EI_NA_1, COI")
    parser.add_argument("-k", type=int, default=12, help="k: unacknowledged I-frames")
    parser.add_argument("-w", type=int, default=8, help="w: I-frames before an S-frame")
    parser.add_argument("--debug", action="store_true", help="log at debug level")
    return parser
