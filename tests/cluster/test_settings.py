"""Settings of issue 14: ``sentinel://`` Redis addresses and the ``[cluster]`` section."""

from twisted.trial.unittest import SynchronousTestCase

from pydatacoll.config import load_settings, parse_redis_url
from pydatacoll.errors import ConfigError


class SentinelUrlTests(SynchronousTestCase):
    def test_sentinel_url(self):
        address = parse_redis_url("sentinel://:pw@10.0.0.1:26379,h2:26380,[::1]:5/mymaster?db=3")
        self.assertEqual(address.sentinels, (("10.0.0.1", 26379), ("h2", 26380), ("::1", 5)))
        self.assertEqual((address.master_name, address.db, address.password), ("mymaster", 3, "pw"))
        self.assertEqual((address.host, address.port, address.path), (None, None, None))
        self.assertEqual(
            address.describe(), "sentinel://10.0.0.1:26379,h2:26380,::1:5/mymaster?db=3"
        )
        self.assertNotIn("pw", repr(address))

    def test_bad_sentinel_urls(self):
        for url in (
            "sentinel://h1:26379/",
            "sentinel://h1/mymaster",
            "sentinel://h1:0/mymaster",
            "sentinel://h1:26379,:5/mymaster",
            "sentinel://h1:26379/my master",
            "sentinel://h1:26379/m?db=x",
        ):
            with self.assertRaises(ValueError, msg=url):
                parse_redis_url(url)

    def test_sentinel_url_in_settings(self):
        settings = load_settings(None, {"redis": "sentinel://a:1,b:2,c:3/m"})
        self.assertEqual(settings.redis.master_name, "m")
        self.assertFalse(settings.embedded_redis)
        with self.assertRaises(ConfigError) as caught:
            load_settings(None, {"redis": "sentinel://a/m"})
        self.assertIn("redis.url", str(caught.exception))

    def test_cluster_options(self):
        self.assertEqual((load_settings().cluster, load_settings().collector_id), (False, None))
        settings = load_settings(None, {"collector_id": "site-a:1", "lease_seconds": "4"})
        self.assertEqual(
            (settings.cluster, settings.collector_id, settings.lease_seconds),
            (False, "site-a:1", 4.0),
        )
        self.assertTrue(load_settings(None, {"cluster": "yes"}).cluster)
        with self.assertRaises(ConfigError) as caught:
            load_settings(None, {"cluster": "maybe"})
        self.assertIn("cluster.enabled", str(caught.exception))
        with self.assertRaises(ConfigError):
            load_settings(None, {"collector_id": "two words"})

    def test_collector_id_on_the_command_line(self):
        from pydatacoll.tap import BadConfiguration, Options

        path = self.mktemp()
        with open(path, "w") as f:
            f.write("[cluster]\nenabled = true\ncollector_id = from-file\n")
        options = Options()
        options.parseOptions(["--config", path, "--collector-id", "site-b:2"])
        settings = options["settings"]
        self.assertEqual((settings.cluster, settings.collector_id), (True, "site-b:2"))
        with self.assertRaises(BadConfiguration) as caught:
            Options().parseOptions(["--collector-id", "two words"])
        self.assertEqual(caught.exception.key, "cluster.collector_id")

    def test_cluster_flag_on_the_command_line(self):
        from pydatacoll.tap import Options

        options = Options()
        options.parseOptions(["--cluster", "--collector-id", "c1"])
        self.assertEqual(
            (options["settings"].cluster, options["settings"].collector_id), (True, "c1")
        )
        options = Options()
        options.parseOptions([])
        self.assertFalse(options["settings"].cluster)  # absent: the INI (default false) decides
