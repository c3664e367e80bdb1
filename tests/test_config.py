"""Settings: defaults, INI file, command line."""

import configparser
import os
import subprocess
import sys

from twisted.trial.unittest import SynchronousTestCase

from pydatacoll.config import OPTIONS, Settings, load_settings, parse_redis_url, with_backlog
from pydatacoll.errors import ConfigError
from pydatacoll.tap import BadConfiguration, Options

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
TWISTD = "import sys; from twisted.scripts.twistd import run; sys.exit(run())"
ETC = os.path.join(os.path.dirname(__file__), "..", "etc", "pydatacoll.ini")


class ConfigTests(SynchronousTestCase):
    def test_ini_mirrors_defaults(self):
        """etc/pydatacoll.ini documents every option with its default."""
        parser = configparser.ConfigParser(interpolation=None)
        parser.read(ETC)
        for option in OPTIONS:
            self.assertEqual(parser.get(option.section, option.name), option.default, option.name)
        self.assertEqual(load_settings(ETC), Settings())
        self.assertEqual(load_settings(), Settings())

    def test_api_backlog_is_added_where_it_applies(self):
        from twisted.internet.endpoints import serverFromString
        from twisted.internet.testing import MemoryReactor

        settings = load_settings(None, {"api_endpoint": "tcp:9000:interface=127.0.0.1"})
        self.assertEqual(settings.api_listen, "tcp:9000:interface=127.0.0.1:backlog=1024")
        for endpoint, backlog, listen in (
            ("tcp:9000", 200, "tcp:9000:backlog=200"),
            ("tcp6:9000:interface=\\:\\:1", 7, "tcp6:9000:interface=\\:\\:1:backlog=7"),
            ("unix:/tmp/api.sock", 99, "unix:/tmp/api.sock:backlog=99"),
            ("tcp:9000:backlog=10", 1024, "tcp:9000:backlog=10"),  # the user's own wins
            ("systemd:domain=INET:index=0", 1024, "systemd:domain=INET:index=0"),
        ):
            self.assertEqual(with_backlog(endpoint, backlog), listen, endpoint)
        # what Twisted makes of it: a listening port with that backlog
        reactor = MemoryReactor()
        serverFromString(reactor, settings.api_listen).listen(None)
        self.assertEqual(reactor.tcpServers[0][2], 1024)
        with self.assertRaises(ConfigError) as caught:
            load_settings(None, {"api_backlog": "0"})
        self.assertEqual(caught.exception.key, "api.backlog")

    def test_default_plugins_are_formulas_and_limits(self):
        """Formulas and limit alarms work with the default configuration; history is opt-in."""
        self.assertEqual(load_settings().plugins_enabled, ("formulas", "limits"))
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("[plugins]\nenabled =\n")
        self.assertEqual(load_settings(path).plugins_enabled, ())

    def test_command_line_wins(self):
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("[api]\nendpoint = tcp:9000\ntoken = fromfile\n")
        options = Options()
        options.parseOptions(["--config", path, "--api", "tcp:9001", "--redis", "redis://h:7/2"])
        settings = options["settings"]
        self.assertEqual(settings.api_endpoint, "tcp:9001")
        self.assertEqual(settings.api_token, "fromfile")
        self.assertEqual((settings.redis.host, settings.redis.port, settings.redis.db), ("h", 7, 2))
        self.assertFalse(settings.embedded_redis)

    def test_bad_values_name_their_key(self):
        for args, key in (
            (["--api", "nonsense:1:2"], "api.endpoint"),
            (["--redis", "http://x"], "redis.url"),
            (["--api-token", "a b"], "api.token"),
        ):
            with self.assertRaises(BadConfiguration) as caught:
                Options().parseOptions(args)
            self.assertIn(key, str(caught.exception))
            self.assertEqual(caught.exception.key, key)
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("[api]\nmax_body = lots\n[nope]\n")
        with self.assertRaises(ConfigError) as caught:
            load_settings(path)
        self.assertEqual(caught.exception.key, "api.max_body")

    def test_command_hold_stays_below_one_second(self):
        """A held IEC 104 link sends no acknowledgement: t2 (10 s) + the hold must stay
        below t1 (15 s), with room to spare."""
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("[collector]\ncommand_hold = 2\n")
        with self.assertRaises(ConfigError) as caught:
            load_settings(path)
        self.assertEqual(caught.exception.key, "collector.command_hold")
        self.assertEqual(load_settings(None, {"command_hold": "1"}).command_hold, 1.0)

    def test_twistd_prints_a_bad_value_alone(self):
        """A real twistd with a bad value: the one-line error on stderr, no usage text,
        exit status 1; --help still shows the usage."""
        twistd = [sys.executable, "-c", TWISTD, "-n", "--pidfile=", "pydatacoll"]
        env = dict(os.environ, PYTHONPATH=ROOT)
        bad = subprocess.run(
            [*twistd, "--api", "nonsense:1:2"], capture_output=True, text=True, env=env, timeout=60
        )
        self.assertEqual(bad.returncode, 1)
        self.assertEqual(bad.stdout, "")
        lines = bad.stderr.strip().splitlines()
        self.assertEqual(len(lines), 1, bad.stderr)
        self.assertIn("api.endpoint: not a Twisted server endpoint string", lines[0])
        helped = subprocess.run(
            [*twistd, "--help"], capture_output=True, text=True, env=env, timeout=60
        )
        self.assertIn("--api-token", helped.stdout)

    def test_redis_urls(self):
        address = parse_redis_url("redis://:s%40cret@10.0.0.1:6380/3")
        self.assertEqual(
            (address.host, address.port, address.db, address.password),
            ("10.0.0.1", 6380, 3, "s@cret"),
        )
        unix = parse_redis_url("unix:///run/redis.sock?db=4")
        self.assertEqual((unix.path, unix.db), ("/run/redis.sock", 4))
        self.assertNotIn("cret", repr(address))
