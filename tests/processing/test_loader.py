"""The plugin loader: discovery, checks, duplicates, failure isolation, fan-out, status."""

import json
import os
import tempfile

from twisted.internet.defer import succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from pydatacoll.config import Settings, load_settings
from pydatacoll.errors import ConfigError
from pydatacoll.model import Sample, iso_time
from pydatacoll.processing.loader import (
    PluginDirectory,
    Processors,
    check_plugin_options,
    discover,
)
from pydatacoll.tap import BadConfiguration, Options
from pydatacoll.testing.plugins import drop_in_package

ETC = os.path.join(os.path.dirname(__file__), "..", "..", "etc", "pydatacoll.ini")
PLUGINS = {
    "good.py": """
        from twisted.application.service import Service
        from twisted.plugin import IPlugin
        from zope.interface import implementer
        from pydatacoll.interfaces import IProcessor, IProcessorFactory

        @implementer(IProcessor)
        class Counter(Service):
            name = "counter"
            def __init__(self, context):
                self.context = context
                self.batches = []
                self.changes = []
            def samples_received(self, samples):
                self.batches.append(samples)
                self.context.emit([s for s in samples if s.item_id == "echo"])
            def config_changed(self, change):
                self.changes.append(change)
            def status(self):
                return {"batches": len(self.batches)}

        @implementer(IPlugin, IProcessorFactory)
        class Factory:
            description = "counts"
            def __init__(self, name, processor=Counter):
                self.name = name
                self.processor = processor
            def build(self, context):
                return self.processor(context)

        class Raising(Counter):
            def samples_received(self, samples):
                raise RuntimeError("broken handler")
            def config_changed(self, change):
                raise RuntimeError("broken handler")

        class NotStarting(Counter):
            def startService(self):
                raise RuntimeError("cannot start")

        class BadBuild(Factory):
            def build(self, context):
                raise ValueError("bad option")

        class NotAProcessor(Factory):
            def build(self, context):
                return object()

        first = Factory("first")
        second = Factory("second")
        raising = Factory("raising", Raising)
        not_starting = Factory("not_starting", NotStarting)
        bad_build = BadBuild("bad_build")
        not_a_processor = NotAProcessor("not_a_processor")
        twin = Factory("twin")
    """,
    "other.py": """
        from twisted.plugin import IPlugin
        from zope.interface import implementer
        from pydatacoll.interfaces import IProcessorFactory
        from .good import Factory

        twin = Factory("twin")

        @implementer(IPlugin, IProcessorFactory)
        class Incomplete:
            name = "incomplete"

        incomplete = Incomplete()
    """,
    "broken.py": "raise ImportError('this module is broken')\n",
}


def plugin_package(test):
    """An importable drop-in package holding PLUGINS."""
    return drop_in_package(test, PLUGINS)


class FakeRedis:
    """Records the commands; every command succeeds."""

    def __init__(self):
        self.commands = []

    def call(self, command, *args):
        self.commands.append((command, *args))
        return succeed(None)


class LoaderTests(SynchronousTestCase):
    def setUp(self):
        self.package = plugin_package(self)
        self.clock = Clock()
        self.redis = FakeRedis()
        self.emitted = []

    def processors(self, *enabled):
        settings = Settings(plugins_enabled=enabled, data_dir=tempfile.mkdtemp())
        processors = Processors(
            settings, self.clock, self.redis, self.emitted.extend, package=self.package
        )
        processors.startService()
        self.addCleanup(processors.stopService)
        return processors

    def test_discovery_checks_and_refuses_duplicates(self):
        factories, refused = discover(self.package)
        self.assertIn("first", factories)
        self.assertNotIn("twin", factories)
        self.assertIn("more than once", refused["twin"])
        self.assertIn("does not provide IProcessorFactory", refused["incomplete"])
        self.flushLoggedErrors()  # the broken module is logged by getPlugins

    def test_states(self):
        processors = self.processors(
            "first", "twin", "bad_build", "not_starting", "not_a_processor", "missing"
        )
        self.flushLoggedErrors()
        status = processors.status()
        self.assertEqual(status["first"]["state"], "running")
        self.assertEqual(status["first"]["detail"], {"batches": 0})
        self.assertEqual(status["second"]["state"], "disabled")
        self.assertFalse(status["second"]["enabled"])
        self.assertEqual(status["twin"]["state"], "duplicate")
        self.assertEqual(
            (status["bad_build"]["state"], status["bad_build"]["error"]),
            ("failed", "ValueError: bad option"),
        )
        self.assertEqual(status["not_starting"]["state"], "failed")
        self.assertIn("cannot start", status["not_starting"]["error"])
        self.assertEqual(status["not_a_processor"]["state"], "failed")
        self.assertEqual(status["missing"]["state"], "not_installed")
        self.assertEqual([child.name for child in processors], ["first"])
        [(command, key, fields)] = [c for c in self.redis.commands if c[0] == "hmset"]
        self.assertEqual((command, key), ("hmset", "HS:PLUGIN_STATUS"))
        self.assertEqual(json.loads(fields["first"])["state"], "running")

    def test_running_plugins_beat_and_withdraw(self):
        """A running plugin's heartbeat carries this collector's instance and an ISO time;
        stopping removes it, so no later reader takes this process for running it."""
        processors = self.processors("first", "second_missing")
        self.flushLoggedErrors()
        beats = [c for c in self.redis.commands if c[0] == "hset"]
        self.assertEqual(
            beats, [("hset", "HS:PLUGIN_RUNNING:first", processors.instance, iso_time(0))]
        )
        self.redis.commands.clear()
        processors.stopService()
        self.assertIn(
            ("hdel", "HS:PLUGIN_RUNNING:first", [processors.instance]), self.redis.commands
        )

    def test_a_failed_plugin_is_named_as_the_reason(self):
        processors = self.processors("bad_build")
        self.flushLoggedErrors()
        directory = PluginDirectory(
            processors.settings, self.redis, self.clock, processors=processors
        )
        reason = directory.not_running_reason("bad_build")
        self.assertIn("enabled but failed: ValueError: bad option", reason)

    def test_directory_lists_this_process_states(self):
        """With a collector in this process, the API lists its states, enabled or not."""
        processors = self.processors("first")
        self.flushLoggedErrors()
        directory = PluginDirectory(
            processors.settings, self.redis, self.clock, processors=processors
        )
        self.redis.call = lambda command, *args: succeed({})
        entries = {e["name"]: e for e in self.successResultOf(directory.list())}
        self.assertEqual(
            (entries["first"]["state"], entries["first"]["collectors"]), ("running", 1)
        )
        self.assertEqual(
            (entries["second"]["state"], entries["second"]["collectors"]), ("disabled", 0)
        )
        self.assertEqual(entries["first"]["detail"], {"batches": 0})
        self.assertTrue(self.successResultOf(directory.runs_somewhere("first")))
        self.assertFalse(self.successResultOf(directory.runs_somewhere("second")))

    def test_unknown_plugin_options_are_refused_naming_the_key(self):
        """Like a core section, a [plugin:NAME] key the plugin does not declare is refused."""
        settings = Settings(plugin_options={"formulas": {"time_budjet": "0.1"}})
        with self.assertRaises(ConfigError) as caught:
            check_plugin_options(settings)
        self.assertEqual(caught.exception.key, "plugin:formulas.time_budjet")
        self.assertIn("time_budget", str(caught.exception))
        for section, key in (("limits", "chek_interval"), ("history", "tabel")):
            with self.assertRaises(ConfigError) as caught:
                check_plugin_options(Settings(plugin_options={section: {key: "1"}}))
            self.assertEqual(caught.exception.key, f"plugin:{section}.{key}")
        with self.assertRaises(ConfigError) as caught:
            check_plugin_options(Settings(plugin_options={"formula": {"max_formulas": "1"}}))
        self.assertEqual(caught.exception.key, "plugin:formula")
        good = {
            "formulas": {"time_budget": "0.1", "max_formulas": "5"},
            "limits": {"check_interval": "2"},
            "history": {"url": ""},
        }
        check_plugin_options(Settings(plugin_options=good))
        check_plugin_options(load_settings(ETC))  # the shipped file passes its own check
        self.flushLoggedErrors()

    def test_twistd_refuses_an_unknown_plugin_option(self):
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("[plugin:formulas]\ntime_budjet = 0.1\n")
        with self.assertRaises(BadConfiguration) as caught:
            Options().parseOptions(["--config", path])
        self.assertIn("plugin:formulas.time_budjet", str(caught.exception))

    def test_a_raising_plugin_does_not_disturb_others(self):
        processors = self.processors("first", "raising")
        self.flushLoggedErrors()
        batch = [Sample("1", "10", "1000", 1.0)]
        processors.samples_received(batch)
        processors.config_changed({"entity": "device", "op": "add"})
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 2)
        first = processors.getServiceNamed("first")
        self.assertEqual(first.batches, [batch])
        self.assertEqual(len(first.changes), 1)
        self.assertEqual(processors.status()["raising"]["errors"], 2)
        self.assertEqual(processors.status()["raising"]["state"], "running")

    def test_emit_is_bounded(self):
        settings = Settings(plugins_enabled=("first",), data_dir=tempfile.mkdtemp())
        processors = Processors(
            settings,
            self.clock,
            self.redis,
            self.emitted.extend,
            package=self.package,
            emit_per_second=10,
        )
        processors.startService()
        self.addCleanup(processors.stopService)
        self.flushLoggedErrors()
        echo = [Sample("1", "10", "echo", n) for n in range(25)]
        processors.samples_received(echo)
        self.assertEqual(len(self.emitted), 10)
        self.assertEqual(processors.status()["first"]["emit_dropped"], 15)
        self.clock.advance(1)
        processors.samples_received(echo[:5])
        self.assertEqual(len(self.emitted), 15)

    def test_status_is_written_periodically_and_on_stop(self):
        processors = self.processors("first")
        self.flushLoggedErrors()
        count = len(self.redis.commands)
        self.clock.advance(10)
        # the status, and the heartbeat of the running plugin
        self.assertEqual(len(self.redis.commands), count + 2)
        processors.stopService()
        _command, _key, fields = [c for c in self.redis.commands if c[0] == "hmset"][-1]
        self.assertEqual(json.loads(fields["first"])["state"], "stopped")
