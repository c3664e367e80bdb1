"""Every built-in plugin is discovered and provides its interfaces."""

from twisted.application.service import IService
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from pydatacoll.errors import ConfigError
from pydatacoll.interfaces import IProcessor, IProcessorFactory
from pydatacoll.plugins import pydatacoll_processors
from pydatacoll.processing.loader import discover
from tests.processing.support import context


class BuiltinPluginTests(SynchronousTestCase):
    def setUp(self):
        self.client = None

    def test_factories_and_processors_provide_their_interfaces(self):
        for factory in (pydatacoll_processors.formulas, pydatacoll_processors.limits):
            self.assertTrue(verifyObject(IProcessorFactory, factory))
            processor = factory.build(context(self, Clock()))
            self.assertTrue(verifyObject(IProcessor, processor))
            self.assertTrue(verifyObject(IService, processor))
            self.assertEqual(processor.name, factory.name)
            self.assertIsInstance(processor.status(), dict)

    def test_discovered(self):
        factories, refused = discover()
        self.assertIn("formulas", factories)
        self.assertIn("limits", factories)
        self.assertEqual(refused, {})

    def test_bad_options_fail_the_build(self):
        for factory, option in (
            (pydatacoll_processors.formulas, {"max_formulas": "lots"}),
            (pydatacoll_processors.formulas, {"time_budget": "9"}),
            (pydatacoll_processors.limits, {"check_interval": "0"}),
        ):
            with self.assertRaises(ConfigError):
                factory.build(context(self, Clock(), option))
