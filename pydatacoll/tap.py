"""``twistd pydatacoll``: the command line and the service it builds."""

from __future__ import annotations

from typing import Any

from twisted.python import usage

from pydatacoll.config import CLI_OPTIONS, load_settings
from pydatacoll.errors import ConfigError, EmbeddedRedisError
from pydatacoll.processing.loader import check_plugin_options


class Options(usage.Options):
    """``twistd pydatacoll [--config FILE] [--api ENDPOINT] [--redis URL] [--data-dir DIR]
    [--api-token TOKEN] [--role all|api|collector|gateway]
    [--cluster] [--collector-id ID]``"""

    optFlags = [
        [
            "cluster",
            None,
            "Share the devices with the other collectors on this Redis, under leases "
            "([cluster] enabled = true; see docs/cluster.rst).",
        ],
    ]

    optParameters = [
        ["config", "c", None, "INI configuration file (see etc/pydatacoll.ini)."],
        ["api", None, None, "Endpoint of the REST API [default: tcp:8080:interface=127.0.0.1]."],
        [
            "redis",
            None,
            None,
            "redis://[:password@]host:port/db or unix:///path.sock?db=N "
            "[default: an embedded redis-server in --data-dir].",
        ],
        ["data-dir", None, None, "Directory of the embedded Redis [default: ./pydatacoll-data]."],
        ["api-token", None, None, "Bearer token required for changes and device commands."],
        ["role", None, None, "all, api, collector or gateway [default: all]."],
        [
            "collector-id",
            None,
            None,
            "This collector's id in the cluster ([cluster] collector_id) [default: host:pid].",
        ],
    ]

    def postOptions(self) -> None:  # noqa: N802 (Twisted API)
        """Build the settings; a bad value is a `BadConfiguration` naming its key."""
        overrides = {attribute: self[name] for name, attribute in CLI_OPTIONS.items()}
        if self["cluster"]:  # a flag: given, it turns the cluster on; absent, the INI decides
            overrides["cluster"] = "true"
        try:
            self["settings"] = load_settings(self["config"], overrides)
            check_plugin_options(self["settings"])
        except ConfigError as e:
            raise BadConfiguration(e) from None


class BadConfiguration(SystemExit):
    """A bad configuration value: the one-line error alone on stderr, exit status 1.

    twistd answers a UsageError with its whole usage text before the error, which hides
    it; ``--help`` shows the usage.
    """

    def __init__(self, error: ConfigError) -> None:
        super().__init__(f"twistd pydatacoll: {error} (twistd pydatacoll --help: the options)")
        self.key = error.key


def makeService(options: Options) -> Any:  # noqa: N802 (twistd API)
    """The root service; the only place that picks the reactor."""
    from twisted.internet import reactor

    from pydatacoll.service import make_root_service

    raise_open_files_limit()
    tune_gc()
    try:
        return make_root_service(options["settings"], reactor)
    except EmbeddedRedisError as e:
        raise usage.UsageError(str(e)) from None


def raise_open_files_limit() -> tuple[int, int]:
    """Raise the soft limit of open files (RLIMIT_NOFILE) to the hard limit; (soft, hard)
    afterwards. Each device link holds a socket: the usual soft limit of 1024 would stop
    a collector at about 1,000 links (docs/operations.rst, "Many links"); the hard limit is the
    administrator's (systemd: ``LimitNOFILE=`` in etc/pydatacoll.service)."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard and (hard == resource.RLIM_INFINITY or soft < hard):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass  # e.g. an infinite hard limit the kernel refuses as a soft one
    return soft, hard


#: The cyclic garbage collector's thresholds in the daemon (CPython's default: 700, 10,
#: 10). A collector allocates tens of thousands of short-lived objects a second (a
#: `Sample` and its tuples per point per read): with the default, a young collection
#: ran every 700 of them and the older generations, which hold the whole configuration,
#: were walked often (``bench/modbus_poll.py``: the daemon 0.389 -> 0.337 core with
#: 100,000 / 50 / 50). But every REST request leaves cyclic garbage that only the
#: collector frees (werkzeug's recursive route matcher, Klein's render closures: about
#: 30 objects a request), and a young pass over 100,000 of them held the reactor 100 to
#: 180 ms: REST p99 190 ms, and every command waiting meanwhile. 30,000 / 20 / 50 keeps
#: each young pass near 30 ms and the old generations rare (docs/benchmarks.rst).
GC_THRESHOLDS = (30_000, 20, 50)


def tune_gc() -> tuple[int, ...]:
    """Set the garbage collector's thresholds to `GC_THRESHOLDS`; the previous ones."""
    import gc

    previous = gc.get_threshold()
    gc.set_threshold(*GC_THRESHOLDS)
    return previous
