"""The root service's wiring (`pydatacoll.service`)."""

from __future__ import annotations

from typing import Any

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from pydatacoll import service
from pydatacoll.config import load_settings


class CommandPriorityWiringTests(SynchronousTestCase):
    def test_one_command_priority_per_process(self) -> None:
        """In the all role the API's, the gateway's and the plugins' commands and the
        collector's requests count in one `CommandPriority`, whose holder is the device
        manager: a command of any of them holds the data of the process."""
        apps: list[Any] = []
        real = service.ApiApp

        def recording(*args: Any, **kwargs: Any) -> Any:
            apps.append(real(*args, **kwargs))
            return apps[-1]

        self.patch(service, "ApiApp", recording)
        settings = load_settings(None, {"redis": "redis://127.0.0.1:1/0", "role": "all"})
        root = service.make_root_service(settings, Clock())
        collector = root.getServiceNamed("collector")
        manager = collector.getServiceNamed("devices")
        priority = manager.priority
        self.assertEqual(priority.holders, [manager])
        self.assertEqual(priority.max_hold, settings.command_hold)
        self.assertIs(apps[0].commander.priority, priority)
        gateway = root.getServiceNamed("gateway")
        self.assertIs(gateway.commands.commander.priority, priority)
        processors = collector.getServiceNamed("processors")
        self.assertIs(processors._commander().priority, priority)
