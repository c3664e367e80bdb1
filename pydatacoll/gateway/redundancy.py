"""Redundancy groups: the connections of one logical master share one event queue."""

from __future__ import annotations

from twisted.logger import Logger

from pydatacoll.protocols.iec104.station import Event, EventQueue, Iec104Outstation


class RedundancyGroup:
    """Connections of one logical master: at most one is STARTDT-active; one event queue.

    Events wait in the group's queue (bounded by the gateway's ``event_queue``, oldest
    dropped) while no connection of the group is active, and go out on the next STARTDT.
    Events a connection sent but its master did not acknowledge before it stopped, was
    deactivated or was lost go back to the front of the queue (sent again, not lost).
    """

    log = Logger()

    def __init__(self, key: str, size: int, configured: bool) -> None:
        self.key = key
        self.queue = EventQueue(size)
        self.configured = configured
        self.connections: list[Iec104Outstation] = []
        self.active: Iec104Outstation | None = None

    def transfer(self, conn: Iec104Outstation, started: bool) -> None:
        """STARTDT (or STOPDT) on ``conn``: it becomes (or stops being) the active one."""
        if started:
            for other in self.connections:
                if other is not conn:
                    other.deactivate()
            self.active = conn
        elif self.active is conn:
            self.active = None

    def lost(self, conn: Iec104Outstation) -> None:
        """``conn`` is gone."""
        if conn in self.connections:
            self.connections.remove(conn)
        if self.active is conn:
            self.active = None

    def post(self, events: list[Event]) -> None:
        """Queue events for the group; the active connection sends what its window allows."""
        dropped = self.queue.extend(events)
        if dropped:
            self.log.warn(
                "redundancy group {key}: event queue full ({size}): {dropped} oldest dropped",
                key=self.key,
                size=self.queue.size,
                dropped=dropped,
            )
        if self.active is not None:
            self.active.pump()
