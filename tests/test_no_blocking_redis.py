"""No blocking redis-py call on the reactor thread in any test (issue 12).

An AST scan of every module under tests/: a redis-py client may be created
(``redis.Redis(``, ``redis_py.Redis(``, ``StrictRedis(``, any alias of the ``redis``
module) or used (a method call on a name or attribute bound to one, ``.pubsub(``,
`pydatacoll.testing.redis.digest`) only inside a function handed to
``deferToThread`` / ``deferToThreadPool`` / ``callInThread`` (or in that call's own
arguments). On the reactor, tests use `pydatacoll.testing.redis.RedisView` over the
project's `RedisClient`, and `pydatacoll.store.subscriber.Subscriber` to listen.
"""

from __future__ import annotations

import ast
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

TESTS = Path(__file__).resolve().parent

#: Modules (relative to tests/) still allowed a blocking redis-py client. The list can
#: only shrink: an entry that no longer offends fails the test too.
ALLOWED = {
    # to convert: trial tests on the reactor (setUp, hget, xrange, pubsub on self.sync)
    "integration/test_faults.py",
    # to convert: trial test on the reactor (self.sync.xrange)
    "integration/test_mqtt_e2e.py",
    # a SynchronousTestCase: no reactor runs in it (the daemon under test is a process
    # of its own), so its redis-py client blocks no reactor thread
    "integration/test_daemon.py",
}

#: Calls whose function arguments run in a thread of the reactor's pool.
THREAD_CALLS = {"deferToThread", "deferToThreadPool", "callInThread"}
#: Blocking helpers of the project over a redis-py client.
BLOCKING_HELPERS = {"digest"}
CLIENT_CLASSES = {"Redis", "StrictRedis"}


def _name(node: ast.AST) -> str | None:
    """``a.b.c`` for a Name/Attribute chain, else None."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _name(node.value)
        return None if base is None else f"{base}.{node.attr}"
    return None


def offences(source: str, filename: str = "<test>") -> list[str]:
    """Every blocking redis-py creation or use in ``source``, as "line: what"."""
    tree = ast.parse(source, filename)
    modules: set[str] = set()  # names bound to the redis module
    classes = set()  # names bound to redis.Redis / StrictRedis
    helpers = set()  # names bound to pydatacoll.testing.redis.digest
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "redis":
                    modules.add(alias.asname or "redis")
        elif isinstance(node, ast.ImportFrom):
            for alias in node.names:
                if node.module == "redis" and alias.name in CLIENT_CLASSES:
                    classes.add(alias.asname or alias.name)
                if node.module == "pydatacoll.testing.redis" and alias.name in BLOCKING_HELPERS:
                    helpers.add(alias.asname or alias.name)

    def creates(call: ast.Call) -> bool:
        name = _name(call.func)
        if name is None:
            return False
        head, _, last = name.rpartition(".")
        if name in classes or last == "StrictRedis":
            return True
        return last in CLIENT_CLASSES and head in modules

    # names (``sync``, ``self.sync``) bound to a client somewhere in the module
    clients: set[str] = set()
    for node in ast.walk(tree):
        targets: list[ast.AST] = []
        value = None
        if isinstance(node, ast.Assign):
            targets, value = list(node.targets), node.value
        elif isinstance(node, ast.AnnAssign | ast.NamedExpr):
            targets, value = [node.target], node.value
        if isinstance(value, ast.Call) and creates(value):
            clients |= {n for n in map(_name, targets) if n is not None}
        elif isinstance(node, ast.withitem) and isinstance(node.context_expr, ast.Call):
            if creates(node.context_expr) and node.optional_vars is not None:
                bound = _name(node.optional_vars)
                if bound is not None:
                    clients.add(bound)

    # functions handed to a thread: by name, and everything inside such a call
    threaded_names: set[str] = set()
    threaded_nodes: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            name = _name(node.func)
            if name is not None and name.rpartition(".")[2] in THREAD_CALLS:
                for argument in [*node.args, *(k.value for k in node.keywords)]:
                    bound = _name(argument)
                    if bound is not None:
                        threaded_names.add(bound.rpartition(".")[2])
                    threaded_nodes |= {id(n) for n in ast.walk(argument)}

    found: list[str] = []

    def visit(node: ast.AST, in_thread: bool) -> None:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            name = getattr(node, "name", None)
            in_thread = in_thread or name in threaded_names
        in_thread = in_thread or id(node) in threaded_nodes
        if isinstance(node, ast.Call) and not in_thread:
            name = _name(node.func) or ""
            head, _, last = name.rpartition(".")
            if creates(node):
                found.append(f"{node.lineno}: creates a redis-py client ({name})")
            elif isinstance(node.func, ast.Attribute) and node.func.attr == "pubsub":
                found.append(f"{node.lineno}: redis-py pub/sub (.pubsub())")
            elif head and head in clients:
                found.append(f"{node.lineno}: a redis-py call ({name})")
            elif name in helpers:
                found.append(f"{node.lineno}: a blocking redis-py helper ({name})")
        for child in ast.iter_child_nodes(node):
            visit(child, in_thread)

    visit(tree, False)
    return found


class ScannerTests(SynchronousTestCase):
    """The scan finds what it must and lets the non-blocking forms through."""

    def test_finds_creation_use_pubsub_and_the_blocking_digest(self):
        source = "\n".join(
            [
                "import redis as redis_py",
                "from redis import StrictRedis",
                "from pydatacoll.testing.redis import digest",
                "class T:",
                "    def setUp(self):",
                "        self.sync = redis_py.Redis(port=1)",
                "        self.sync.flushall()",
                "        other = StrictRedis()",
                "        p = other.pubsub()",
                "        digest(self.sync)",
            ]
        )
        self.assertEqual(
            [line.split(":")[0] for line in offences(source)], ["6", "7", "8", "9", "10"]
        )

    def test_plain_module_name_and_context_manager(self):
        source = "import redis\nwith redis.Redis() as r:\n    r.get('k')\n"
        self.assertEqual([line.split(":")[0] for line in offences(source)], ["2", "3"])

    def test_thread_functions_and_reactor_clients_pass(self):
        source = "\n".join(
            [
                "import redis",
                "from twisted.internet import threads",
                "from twisted.internet.threads import deferToThread",
                "from pydatacoll.testing.redis import RedisView, digest",
                "def blocking(port):",
                "    client = redis.Redis(port=port)",
                "    return digest(client), client.hgetall('k')",
                "class T:",
                "    def test(self):",
                "        yield deferToThread(blocking, 1)",
                "        yield threads.deferToThread(lambda: redis.Redis().flushall())",
                "        view = RedisView(self.client)",
                "        yield view.hgetall('k')",
                "        yield view.digest()",
            ]
        )
        self.assertEqual(offences(source), [])


class NoBlockingRedisTests(SynchronousTestCase):
    def test_no_blocking_redis_py_call_in_tests(self):
        """Every module of tests/ outside `ALLOWED` is clean, and every allowed one still
        needs its place (the list only shrinks)."""
        offending = {}
        for path in sorted(TESTS.rglob("*.py")):
            found = offences(path.read_text(encoding="utf-8"), str(path))
            if found:
                offending[path.relative_to(TESTS).as_posix()] = found
        self.assertEqual(
            {name: found for name, found in offending.items() if name not in ALLOWED}, {}
        )
        self.assertEqual(sorted(ALLOWED - set(offending)), [], "clean now: drop from ALLOWED")
