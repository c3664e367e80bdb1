"""The package's shape: no import cycles, Redis only in the store, layers, module sizes.

The checks read ``pydatacoll/`` with `ast` (nothing is imported) and the layer table
of ``docs/architecture.rst`` (so the document and the check cannot drift apart).

`KNOWN_VIOLATIONS` lists the violations the package still has. It may only shrink: a
listed violation that is gone fails the test too, so remove its entry with the fix.
"""

from __future__ import annotations

import ast
import fnmatch
import functools
import re
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

import attrs
from twisted.trial.unittest import SynchronousTestCase

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "pydatacoll"
ARCHITECTURE = ROOT / "docs" / "architecture.rst"

#: Longest module (lines) before it should be split along its seams.
MAX_LINES = 550

#: Modules allowed over `MAX_LINES`, each with the reason; an entry under the limit fails.
SIZE_ALLOWLIST: dict[str, str] = {}

#: Packages where Redis commands may be issued: the store, and the test fakes and
#: fixtures (``pydatacoll.testing``), which drive real and in-memory servers directly.
REDIS_ALLOWED = ("pydatacoll.store", "pydatacoll.testing")

#: Redis commands, as sent through ``RedisClient.call("<command>", ...)`` or called as
#: txredisapi / redis-py methods. Names that are also common Python (or MQTT) methods
#: (get, set, append, publish, eval, ...) are recognised only as the first argument of
#: ``.call(...)``, where they can mean nothing else.
REDIS_METHODS = frozenset(
    """
    bitcount blpop brpop decr decrby evalsha execute_command expire expireat
    flushall flushdb getrange getset hdel hexists hget hgetall hincrby hincrbyfloat hkeys
    hlen hmget hmset hscan hset hsetnx hvals incr incrby incrbyfloat linsert llen lpop
    lpush lrange lrem lset ltrim mget mset msetnx persist pexpire psetex psubscribe pttl
    punsubscribe rpop rpoplpush rpush sadd scard script_load sdiff sinter sismember
    smembers smove spop srandmember srem sscan sunion setex setnx xack xadd xdel xgroup
    xinfo xlen xrange xread xreadgroup xrevrange xtrim zadd zcard zcount zincrby zrange
    zrangebyscore zrank zrem zremrangebyscore zrevrange zrevrangebyscore zscore
    """.split()
)
REDIS_CALL_ONLY = frozenset(
    "append del delete eval exec exists get keys multi pipeline publish scan set ttl type watch"
    "".split()
)
REDIS_CLIENT_MODULES = ("txredisapi", "redis")
LUA_CALL = re.compile(r"\bredis\.p?call\s*\(")

#: Violations tolerated for now, one entry each (see the module docstring). Empty since
#: issue 12 landed: a new violation fails, and so would an entry left here once fixed.
#:
#: - ``("cycle", importer, imported)``: an import between two modules of one cycle;
#: - ``("redis", module, command)``: a Redis command (or client import, ``import:<name>``,
#:   or Lua text, ``lua``) outside `REDIS_ALLOWED`;
#: - ``("layer", importer, imported)``: an import up the layer order;
#: - ``("size", module, "")``: a module over `MAX_LINES`.
KNOWN_VIOLATIONS: frozenset[tuple[str, str, str]] = frozenset()


# --- reading the package ---------------------------------------------------------------


@attrs.frozen
class Import:
    """One import statement's target, as seen in ``importer`` at ``line``."""

    importer: str
    imported: str
    line: int


def module_sources(root: Path = ROOT, package: str = PACKAGE) -> dict[str, tuple[Path, str]]:
    """Every module of ``package`` under ``root``: dotted name -> (path, source)."""
    modules = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = (path, path.read_text(encoding="utf-8"))
    return modules


@functools.lru_cache(maxsize=1024)
def _parse(source: str, filename: str) -> ast.Module:
    return ast.parse(source, filename)


def _is_type_checking(test: ast.expr) -> bool:
    if isinstance(test, ast.Name):
        return test.id == "TYPE_CHECKING"
    return isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"


def _runtime_nodes(tree: ast.AST) -> Iterator[ast.AST]:
    """Every node of ``tree`` except the bodies of ``if TYPE_CHECKING:``."""
    stack: list[ast.AST] = [tree]
    while stack:
        node = stack.pop()
        yield node
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.append(node.test)
            stack.extend(node.orelse)
            continue
        stack.extend(ast.iter_child_nodes(node))


def _resolve(module: str, is_package: bool, level: int, target: str | None) -> str:
    """The absolute name of a (possibly relative) ``from`` import's module."""
    if level == 0:
        return target or ""
    base = module.split(".")
    if not is_package:
        base.pop()
    if level > 1:
        base = base[: len(base) - (level - 1)]
    return ".".join(base + ([target] if target else []))


def _known(name: str, modules: Mapping[str, object]) -> str | None:
    """The longest prefix of ``name`` that is one of ``modules``."""
    parts = name.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in modules:
            return candidate
        parts.pop()
    return None


def imports(sources: Mapping[str, tuple[Path, str]], package: str = PACKAGE) -> list[Import]:
    """Every run-time import (module level or in a function) of one module by another.

    ``from package import name`` imports ``package.name`` when that is a module, else
    ``package`` (whose ``__init__`` re-exports the name).
    """
    found = []
    for module, (path, source) in sources.items():
        is_package = path.name == "__init__.py"
        for node in _runtime_nodes(_parse(source, str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(module, is_package, node.level, node.module)
                for alias in node.names:
                    submodule = f"{base}.{alias.name}"
                    targets.append(submodule if submodule in sources else base)
            for target in targets:
                if target != package and not target.startswith(package + "."):
                    continue
                imported = _known(target, sources)
                if imported is not None and imported != module:
                    found.append(Import(module, imported, node.lineno))  # type: ignore[attr-defined]
    return found


def foreign_imports(sources: Mapping[str, tuple[Path, str]]) -> Iterator[tuple[str, str, int]]:
    """(module, top-level name, line) of every run-time import of another distribution."""
    for module, (path, source) in sources.items():
        for node in _runtime_nodes(_parse(source, str(path))):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    yield module, alias.name.split(".")[0], node.lineno
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                yield module, node.module.split(".")[0], node.lineno


# --- cycles ------------------------------------------------------------------------------


def strongly_connected(graph: Mapping[str, Iterable[str]]) -> list[set[str]]:
    """The strongly connected components of ``graph`` with more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components = []
    for start in sorted(graph):
        if start in index:
            continue
        # Iterative depth-first search: (node, iterator over its successors).
        work = [(start, iter(sorted(graph.get(start, ()))))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, successors = work[-1]
            for successor in successors:
                if successor not in index:
                    index[successor] = low[successor] = len(index)
                    stack.append(successor)
                    on_stack.add(successor)
                    work.append((successor, iter(sorted(graph.get(successor, ())))))
                    break
                if successor in on_stack:
                    low[node] = min(low[node], index[successor])
            else:
                work.pop()
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[node])
                if low[node] == index[node]:
                    component = set()
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.add(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        components.append(component)
    return components


def _ancestors(module: str) -> list[str]:
    parts = module.split(".")
    return [".".join(parts[:n]) for n in range(1, len(parts))]


def cycle_violations(found: Iterable[Import]) -> dict[tuple[str, str, str], str]:
    """Every import between two modules of one import cycle, with the cycle's members.

    Importing ``a.b.c`` runs the ``__init__`` of ``a`` and ``a.b`` first, so it counts as
    importing those packages too (except the importer's own ancestors, already running).
    """
    graph: dict[str, set[str]] = {}
    for imp in found:
        edges = graph.setdefault(imp.importer, set())
        edges.add(imp.imported)
        own = {imp.importer, *_ancestors(imp.importer)}
        edges.update(a for a in _ancestors(imp.imported) if a not in own)
    violations = {}
    for component in strongly_connected(graph):
        members = ", ".join(sorted(component))
        for importer in sorted(component):
            for imported in sorted(graph[importer] & component):
                violations[("cycle", importer, imported)] = f"in the cycle of {members}"
    return violations


# --- Redis outside the store -------------------------------------------------------------


def _inside(module: str, packages: Iterable[str]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in packages)


def redis_violations(
    sources: Mapping[str, tuple[Path, str]],
    lua_files: Iterable[tuple[str, str]] = (),
    allowed: Iterable[str] = REDIS_ALLOWED,
) -> dict[tuple[str, str, str], str]:
    """Redis commands, client imports and Lua scripts outside `REDIS_ALLOWED`.

    ``lua_files``: (pseudo module name, text) of the ``*.lua`` files of the package.
    """
    violations: dict[tuple[str, str, str], str] = {}

    def add(module: str, what: str, line: int | str) -> None:
        violations.setdefault(("redis", module, what), f"line {line}")

    for module, (path, source) in sources.items():
        if _inside(module, allowed):
            continue
        for node in _runtime_nodes(_parse(source, str(path))):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                name = node.func.attr
                if name in REDIS_METHODS:
                    add(module, name.lower(), node.lineno)
                elif name == "call" and node.args:
                    first = node.args[0]
                    if isinstance(first, ast.Constant) and isinstance(first.value, str):
                        command = first.value.lower()
                        if command in REDIS_METHODS or command in REDIS_CALL_ONLY:
                            add(module, command, node.lineno)
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                if LUA_CALL.search(node.value):
                    add(module, "lua", node.lineno)
        for importer, name, line in foreign_imports({module: (path, source)}):
            if name in REDIS_CLIENT_MODULES:
                add(importer, f"import:{name}", line)
    for module, text in lua_files:
        if not _inside(module, allowed) and LUA_CALL.search(text):
            add(module, "lua", "(script file)")
    return violations


def package_lua_files(root: Path = ROOT, package: str = PACKAGE) -> list[tuple[str, str]]:
    """(dotted path, text) of every Lua script in the package."""
    return [
        (".".join(path.relative_to(root).with_suffix("").parts), path.read_text("utf-8"))
        for path in sorted((root / package).rglob("*.lua"))
    ]


# --- layers ------------------------------------------------------------------------------


@attrs.frozen
class Layer:
    """One row of the layer table: its rank (0 is the bottom), name and module patterns."""

    rank: int
    name: str
    patterns: tuple[str, ...]


def parse_layers(text: str) -> list[Layer]:
    """The layer table of ``docs/architecture.rst``: the simple table after the
    ``.. layer-table`` comment, columns rank, name and module patterns (in ````literals````;
    a row whose first column is blank continues the row above)."""
    lines = text.splitlines()
    try:
        start = next(i for i, line in enumerate(lines) if line.strip() == ".. layer-table")
    except StopIteration:
        raise ValueError("no '.. layer-table' comment in the document") from None
    borders = [i for i in range(start, len(lines)) if re.fullmatch(r"=+( +=+)+", lines[i].strip())]
    if len(borders) < 3:
        raise ValueError("the layer table is not a simple table (3 '===' borders)")
    rows: list[list[str]] = []
    for line in lines[borders[1] + 1 : borders[2]]:
        if not line.strip():
            continue
        rank, _, rest = line.partition("  ")
        if rank.strip():
            name, _, patterns = rest.strip().partition("  ")
            rows.append([rank.strip(), name.strip(), patterns])
        elif rows:
            rows[-1][2] += " " + rest
    layers = []
    for rank, name, patterns in rows:
        layers.append(Layer(int(rank), name, tuple(re.findall(r"``([^`]+)``", patterns))))
    return layers


def layer_of(module: str, layers: Iterable[Layer]) -> Layer | None:
    """The layer of the most specific pattern matching ``module`` (an exact name wins,
    then the longest pattern)."""
    best: tuple[int, int, Layer] | None = None
    for layer in layers:
        for pattern in layer.patterns:
            if fnmatch.fnmatchcase(module, pattern):
                key = (int(pattern == module), len(pattern), layer)
                if best is None or key[:2] > best[:2]:
                    best = key
    return None if best is None else best[2]


def layer_violations(
    found: Iterable[Import], modules: Iterable[str], layers: list[Layer]
) -> tuple[dict[tuple[str, str, str], str], list[str]]:
    """Imports up the layer order, and the modules the table does not place."""
    placed = {module: layer_of(module, layers) for module in modules}
    unplaced = sorted(module for module, layer in placed.items() if layer is None)
    violations = {}
    for imp in found:
        low, high = placed.get(imp.importer), placed.get(imp.imported)
        if low is not None and high is not None and high.rank > low.rank:
            violations[("layer", imp.importer, imp.imported)] = (
                f"line {imp.line}: {low.name} ({low.rank}) imports {high.name} ({high.rank})"
            )
    return violations, unplaced


# --- sizes -------------------------------------------------------------------------------


def size_violations(
    sources: Mapping[str, tuple[Path, str]], limit: int = MAX_LINES
) -> dict[tuple[str, str, str], str]:
    """Modules over ``limit`` lines."""
    violations = {}
    for module, (_, source) in sources.items():
        count = len(source.splitlines())
        if count > limit:
            violations[("size", module, "")] = f"{count} lines"
    return violations


# --- the tests ---------------------------------------------------------------------------


@functools.cache
def _package() -> tuple[dict[str, tuple[Path, str]], list[Import]]:
    """The package's modules and imports, read once for all the tests."""
    sources = module_sources()
    return sources, imports(sources)


class StructureTests(SynchronousTestCase):
    """The package as it is, against the rules and `KNOWN_VIOLATIONS`."""

    def setUp(self) -> None:
        self.sources, self.imports = _package()

    def check(self, kind: str, violations: Mapping[tuple[str, str, str], str]) -> None:
        known = {v for v in KNOWN_VIOLATIONS if v[0] == kind}
        new = sorted(set(violations) - known)
        gone = sorted(known - set(violations))
        report = [f"new: {v!r}  # {violations[v]}" for v in new]
        report += [f"fixed, remove from KNOWN_VIOLATIONS: {v!r}" for v in gone]
        if report:
            self.fail("\n".join([f"{kind} violations:"] + report))

    def test_no_import_cycles(self) -> None:
        """No module reaches itself through run-time imports (function level included)."""
        self.check("cycle", cycle_violations(self.imports))

    def test_redis_only_in_the_store(self) -> None:
        """Redis commands, Redis clients and Lua scripts live in the store (or testing)."""
        self.check("redis", redis_violations(self.sources, package_lua_files()))

    def test_imports_follow_the_layers(self) -> None:
        """Every module is placed in docs/architecture.rst and imports nothing above it."""
        layers = parse_layers(ARCHITECTURE.read_text(encoding="utf-8"))
        violations, unplaced = layer_violations(self.imports, self.sources, layers)
        self.assertEqual(unplaced, [], "modules missing from the layer table")
        self.check("layer", violations)

    def test_module_sizes(self) -> None:
        """No module over MAX_LINES lines, except the commented allowlist."""
        violations = size_violations(self.sources)
        for module in SIZE_ALLOWLIST:
            self.assertIn(("size", module, ""), violations, f"{module} is short now")
            del violations[("size", module, "")]
        self.check("size", violations)


# --- the checker's own tests, on small made-up packages ----------------------------------


def _sources(**modules: str) -> dict[str, tuple[Path, str]]:
    """Made-up modules: ``pkg__a="..."`` is ``pkg.a``; ``pkg__init`` is package ``pkg``."""
    result = {}
    for key, source in modules.items():
        parts = key.split("__")
        if parts[-1] == "init":
            result[".".join(parts[:-1])] = (Path("/".join(parts[:-1]) + "/__init__.py"), source)
        else:
            result[".".join(parts)] = (Path("/".join(parts) + ".py"), source)
    return result


class CheckerTests(SynchronousTestCase):
    """The analysis functions on made-up packages (the checks must catch what they claim)."""

    def test_function_level_imports_count_type_checking_ones_do_not(self) -> None:
        sources = _sources(
            pkg__init="",
            pkg__a="from typing import TYPE_CHECKING\n"
            "if TYPE_CHECKING:\n    from pkg import b\n"
            "def f():\n    from pkg.c import thing\n",
            pkg__b="",
            pkg__c="",
        )
        found = {(i.importer, i.imported) for i in imports(sources, "pkg")}
        self.assertEqual(found, {("pkg.a", "pkg.c")})

    def test_relative_imports_and_reexports(self) -> None:
        sources = _sources(
            pkg__init="from .a import thing\n",
            pkg__a="from . import b\nfrom .. import outside\n",
            pkg__b="from pkg import thing\nimport pkg.a as a\n",
        )
        found = {(i.importer, i.imported) for i in imports(sources, "pkg")}
        self.assertEqual(
            found,
            {("pkg", "pkg.a"), ("pkg.a", "pkg.b"), ("pkg.b", "pkg"), ("pkg.b", "pkg.a")},
        )
        # pkg -> pkg.a -> pkg.b -> pkg: the re-export through __init__ closes a cycle.
        self.assertEqual(
            set(cycle_violations(imports(sources, "pkg"))),
            {
                ("cycle", "pkg", "pkg.a"),
                ("cycle", "pkg.a", "pkg.b"),
                ("cycle", "pkg.b", "pkg"),
                ("cycle", "pkg.b", "pkg.a"),
            },
        )

    def test_importing_a_submodule_runs_its_package(self) -> None:
        sources = _sources(
            pkg__init="",
            pkg__model="def check():\n    from pkg.proc.expr import compile\n",
            pkg__proc__init="from pkg.model import Sample\n",
            pkg__proc__expr="",
        )
        self.assertEqual(
            set(cycle_violations(imports(sources, "pkg"))),
            {("cycle", "pkg.model", "pkg.proc"), ("cycle", "pkg.proc", "pkg.model")},
        )

    def test_no_cycle_in_a_tree(self) -> None:
        graph = {"a": {"b", "c"}, "b": {"c"}, "c": set()}
        self.assertEqual(strongly_connected(graph), [])
        graph["c"] = {"a"}
        self.assertEqual(strongly_connected(graph), [{"a", "b", "c"}])

    def test_redis_calls_clients_and_lua(self) -> None:
        sources = _sources(
            pkg__init="",
            pkg__store__init="",
            pkg__store__x='import txredisapi\nr.call("hgetall", k)\n',
            pkg__api='import txredisapi\nd = r.call("HGETALL", k)\nr.hset(k, f, v)\n'
            'S = """redis.call(\'XADD\', KEYS[1])"""\nd = {}.get(k)\nr.call(f)\n'
            'e.eval("1")\nr.call("execute_command", "XREVRANGE", k)\n',
        )
        lua = [("pkg.x", "redis.call('GET', KEYS[1])"), ("pkg.store.y", "redis.call('GET')")]
        found = redis_violations(sources, lua, allowed=("pkg.store",))
        self.assertEqual(
            set(found),
            {
                ("redis", "pkg.api", "import:txredisapi"),
                ("redis", "pkg.api", "hgetall"),
                ("redis", "pkg.api", "hset"),
                ("redis", "pkg.api", "lua"),
                ("redis", "pkg.api", "execute_command"),
                ("redis", "pkg.x", "lua"),
            },
        )

    def test_layer_table_and_upward_imports(self) -> None:
        text = (
            "Layers\n------\n\n.. layer-table\n\n"
            "====  =========  ==========================\n"
            "Rank  Name       Modules\n"
            "====  =========  ==========================\n"
            "0     bottom     ``pkg``, ``pkg.errors``,\n"
            "                 ``pkg.store.keys``\n"
            "1     store      ``pkg.store``, ``pkg.store.*``\n"
            "2     api        ``pkg.api.*``\n"
            "====  =========  ==========================\n"
        )
        layers = parse_layers(text)
        self.assertEqual(
            [(layer.rank, layer.name, layer.patterns) for layer in layers],
            [
                (0, "bottom", ("pkg", "pkg.errors", "pkg.store.keys")),
                (1, "store", ("pkg.store", "pkg.store.*")),
                (2, "api", ("pkg.api.*",)),
            ],
        )
        self.assertEqual(layer_of("pkg.store.keys", layers).rank, 0)  # type: ignore[union-attr]
        self.assertEqual(layer_of("pkg.store.redis", layers).rank, 1)  # type: ignore[union-attr]
        found = [
            Import("pkg.store.keys", "pkg.store.redis", 3),
            Import("pkg.api.app", "pkg.store.keys", 4),
            Import("pkg.store.redis", "pkg.gateway", 5),
        ]
        violations, unplaced = layer_violations(
            found, ["pkg.store.keys", "pkg.store.redis", "pkg.api.app", "pkg.gateway"], layers
        )
        self.assertEqual(set(violations), {("layer", "pkg.store.keys", "pkg.store.redis")})
        self.assertEqual(unplaced, ["pkg.gateway"])

    def test_sizes(self) -> None:
        sources = _sources(pkg__a="x = 1\n" * 5, pkg__b="x = 1\n" * 6)
        self.assertEqual(set(size_violations(sources, limit=5)), {("size", "pkg.b", "")})


def current_violations() -> dict[tuple[str, str, str], str]:
    """Every violation of the package as it is now (for `KNOWN_VIOLATIONS`)."""
    sources = module_sources()
    found = imports(sources)
    layers = parse_layers(ARCHITECTURE.read_text(encoding="utf-8"))
    violations = cycle_violations(found)
    violations.update(redis_violations(sources, package_lua_files()))
    violations.update(layer_violations(found, sources, layers)[0])
    violations.update(
        (key, why) for key, why in size_violations(sources).items() if key[1] not in SIZE_ALLOWLIST
    )
    return violations


if __name__ == "__main__":
    # ``python -m tests.test_structure``: today's violations, as entries for the list.
    for entry, why in sorted(current_violations().items()):
        print(f"        {entry!r},  # {why}")
