"""One plugin discovery and one duplicate policy, for drivers and processors alike."""

from __future__ import annotations

from twisted.logger import LogLevel, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from pydatacoll.devices.drivers import builtin_drivers, discover_drivers
from pydatacoll.discovery import discover
from pydatacoll.interfaces import IProtocolDriver
from pydatacoll.testing.plugins import drop_in_package

DRIVER = """
    from twisted.plugin import IPlugin
    from zope.interface import implementer
    from pydatacoll.interfaces import IProtocolDriver

    @implementer(IPlugin, IProtocolDriver)
    class {cls}:
        name = {name!r}
        description = "a drop-in driver for tests"
        default_port = 1
        def build(self, device, terms, term_items, sink, reactor, settings, frame_observer):
            raise NotImplementedError

    {instance} = {cls}()
"""

BROKEN = """
    from twisted.plugin import IPlugin
    from zope.interface import implementer
    from pydatacoll.interfaces import IProtocolDriver

    @implementer(IPlugin, IProtocolDriver)
    class Broken:
        name = "broken"   # no build, no description: refused by verifyObject

    broken = Broken()
"""


def drop_in(test: SynchronousTestCase, files: dict[str, str]) -> object:
    """An importable plugin package holding ``files``."""
    return drop_in_package(test, files, prefix="fake_drivers")


class DiscoveryTests(SynchronousTestCase):
    def test_builtins_alone(self) -> None:
        package = drop_in(self, {})
        found = discover(IProtocolDriver, package, builtins=builtin_drivers())
        self.assertEqual(sorted(found.found), ["iec104", "modbus"])
        self.assertEqual(found.refused, {})

    def test_a_drop_in_driver_is_found_and_a_broken_one_refused_with_why(self) -> None:
        package = drop_in(
            self,
            {
                "good.py": DRIVER.format(cls="Dnp3", name="dnp3", instance="dnp3"),
                "bad.py": BROKEN,
            },
        )
        found = discover(IProtocolDriver, package, builtins=builtin_drivers())
        self.assertEqual(sorted(found.found), ["dnp3", "iec104", "modbus"])
        self.assertIn("broken", found.refused)
        self.assertIn("does not provide IProtocolDriver", found.refused["broken"])

    def test_the_same_provider_twice_counts_once(self) -> None:
        builtins = builtin_drivers()
        found = discover(IProtocolDriver, drop_in(self, {}), builtins=builtins + builtins)
        self.assertEqual(sorted(found.found), ["iec104", "modbus"])
        self.assertEqual(found.refused, {})

    def test_a_name_two_providers_give_is_refused_for_both(self) -> None:
        """Drivers follow the processors' policy: a second "modbus" disables both, said
        in the refusal, rather than picking one silently."""
        package = drop_in(
            self, {"rogue.py": DRIVER.format(cls="Rogue", name="modbus", instance="rogue")}
        )
        found = discover(
            IProtocolDriver, package, builtins=builtin_drivers(), kind="protocol driver"
        )
        self.assertNotIn("modbus", found.found)
        self.assertIn("iec104", found.found)
        reason = found.refused["modbus"]
        self.assertIn("protocol driver name 'modbus' is provided more than once", reason)
        self.assertIn("pydatacoll.protocols.modbus", reason)

    def test_discover_drivers_logs_each_refusal(self) -> None:
        package = drop_in(
            self, {"rogue.py": DRIVER.format(cls="Rogue", name="modbus", instance="rogue")}
        )
        events: list[dict] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        drivers = discover_drivers(package)
        self.assertNotIn("modbus", drivers)
        errors = [e for e in events if e.get("log_level") == LogLevel.error]
        self.assertEqual([e["name"] for e in errors], ["modbus"])
