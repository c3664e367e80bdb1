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
    # SynchronousTestCases: no reactor runs in them (the daemon under test is a process
    # of its own, driven over HTTP and observed in Redis), so their redis-py client
    # blocks no reactor thread
    "integration/test_faults.py",
    "integration/test_mqtt_e2e.py",
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


def offences(
    source: str,
    filename: str = "<test>",
    inherited: frozenset[str] = frozenset(),
    attributes: set[str] | None = None,
) -> list[str]:
    """Every blocking redis-py creation or use in ``source``, as "line: what".

    ``inherited``: attributes (``self.sync``) that modules ``source`` imports from bind
    to a redis-py client (a test class built on another module's base class).
    ``attributes``, when given, receives the ``self.*`` attributes ``source`` binds to one.
    """
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
    clients: set[str] = set(inherited - _bound_here(tree))
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
    if attributes is not None:
        attributes |= {name for name in clients if name.startswith("self.")}
    return found


def _bound_here(tree: ast.AST) -> set[str]:
    """The ``self.*`` attributes a module assigns itself (they hide inherited ones)."""
    bound = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, ast.AnnAssign):
            targets = [node.target]
        else:
            continue
        bound |= {n for n in map(_name, targets) if n is not None and n.startswith("self.")}
    return bound


def _imported_tests(source: str) -> set[str]:
    """The modules of tests/ that ``source`` imports from (``tests.x.y``)."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("tests."):
            found.add(node.module or "")
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("tests.")}
    return found


def scan(root: Path) -> dict[str, list[str]]:
    """The offences of every module under ``root`` (tests/), by path relative to it;
    attributes bound to a client in a module count in the modules importing it."""
    sources = {
        path.relative_to(root).as_posix(): path.read_text(encoding="utf-8")
        for path in sorted(root.rglob("*.py"))
    }
    attributes: dict[str, set[str]] = {}
    for name, source in sources.items():
        attributes[name] = set()
        offences(source, name, attributes=attributes[name])
    by_module = {
        "tests." + name.removesuffix(".py").replace("/", "."): found
        for name, found in attributes.items()
    }
    result = {}
    for name, source in sources.items():
        inherited = frozenset().union(
            *(by_module.get(module, set()) for module in _imported_tests(source))
        )
        found = offences(source, name, inherited)
        if found:
            result[name] = found
    return result


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

    def test_a_client_attribute_of_an_imported_base_class_counts(self):
        base = (
            "import redis\nclass Base:\n    def setUp(self):\n        self.sync = redis.Redis()\n"
        )
        attributes: set[str] = set()
        offences(base, attributes=attributes)
        self.assertEqual(attributes, {"self.sync"})
        child = "from tests.base import Base\nclass T(Base):\n    def test(self):\n"
        child += "        self.sync.keys('*')\n"
        self.assertEqual(offences(child), [])
        self.assertEqual(
            offences(child, inherited=frozenset(attributes)),
            ["4: a redis-py call (self.sync.keys)"],
        )
        # a module that binds the attribute itself (to something else) is not affected
        other = "class U:\n    def setUp(self):\n        self.sync = View()\n"
        other += "        self.sync.keys('*')\n"
        self.assertEqual(offences(other, inherited=frozenset(attributes)), [])

    def test_scan_follows_imports_between_test_modules(self):
        root = Path(self.mktemp())
        (root / "integration").mkdir(parents=True)
        (root / "integration" / "base.py").write_text(
            "import redis\nclass Base:\n    def setUp(self):\n        self.sync = redis.Redis()\n"
        )
        (root / "integration" / "child.py").write_text(
            "from tests.integration.base import Base\n"
            "class T(Base):\n    def test(self):\n        self.sync.flushall()\n"
        )
        self.assertEqual(
            scan(root),
            {
                "integration/base.py": ["4: creates a redis-py client (redis.Redis)"],
                "integration/child.py": ["4: a redis-py call (self.sync.flushall)"],
            },
        )


class NoBlockingRedisTests(SynchronousTestCase):
    def test_no_blocking_redis_py_call_in_tests(self):
        """Every module of tests/ outside `ALLOWED` is clean, and every allowed one still
        needs its place (the list only shrinks)."""
        offending = scan(TESTS)
        self.assertEqual(
            {name: found for name, found in offending.items() if name not in ALLOWED}, {}
        )
        self.assertEqual(sorted(ALLOWED - set(offending)), [], "clean now: drop from ALLOWED")
