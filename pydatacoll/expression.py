"""The formula language: one Python expression over point values, in a sandbox.

Two layers. `compile_expression` checks the parsed tree against a whitelist (numbers,
arithmetic, comparisons, ``and``/``or``/``not``, ``x if c else y``, calls of the
functions in `FUNCTIONS` by bare name, the parameters ``p1..pN``): no attribute access,
no indexing, no strings except a window argument, no comprehensions, lambdas, imports
or names starting with ``_``. `evaluate` then runs the checked tree with simpleeval
(a well-kept evaluator that has its own guards) restricted further: every step counts
against a step and a time budget, integers are kept under `MAX_INT_BITS`, and every
arithmetic error becomes an `ExpressionError` with a message for the user.

Window functions (``avg(p1, '15m')``, ``min``, ``max``, ``delta``, ``sum``, ``count``)
take a parameter and a literal duration; the caller reads those samples beforehand
(`Expression.windows`) so that evaluation itself never waits.
"""

from __future__ import annotations

import ast
import math
import operator
import re
import time
from collections.abc import Collection, Mapping, Sequence
from typing import Any

import attrs
import simpleeval

#: Longest accepted expression, in characters.
MAX_LENGTH = 1024
#: Most syntax-tree nodes in one expression.
MAX_NODES = 400
#: Most evaluation steps (nodes visited) in one evaluation.
MAX_STEPS = 10_000
#: Wall-clock budget of one evaluation, in seconds.
MAX_SECONDS = 0.05
#: Largest integer (in bits) any step may produce.
MAX_INT_BITS = 4096
#: Longest window: one week.
MAX_WINDOW_SECONDS = 7 * 86400
#: Parameter names.
PARAM_PATTERN = re.compile(r"^p[0-9]{1,3}$")
_WINDOW_TEXT = re.compile(r"^([0-9]{1,7})(s|m|h|d)$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


class ExpressionError(Exception):
    """An expression is refused or failed; ``message`` says why, for the user."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@attrs.frozen
class Window:
    """A window argument: the samples of ``param`` over the last ``seconds``."""

    param: str
    seconds: int
    text: str


@attrs.frozen
class Expression:
    """A checked expression: its text and tree, the parameters and windows it uses."""

    text: str
    tree: ast.expr = attrs.field(eq=False, repr=False)
    params: frozenset[str]
    windows: tuple[Window, ...]


def parse_window(text: str) -> int:
    """A window such as ``'15m'`` in seconds (s, m, h, d units; at most a week)."""
    match = _WINDOW_TEXT.match(text)
    if match is None:
        raise ExpressionError(f"{text!r} is not a window: use a number and s, m, h or d ('15m')")
    seconds = int(match.group(1)) * _UNITS[match.group(2)]
    if not 0 < seconds <= MAX_WINDOW_SECONDS:
        raise ExpressionError(f"a window must be from 1s to 7d, not {text!r}")
    return seconds


# -- safe arithmetic -------------------------------------------------------------------
def _check_int(value: Any) -> Any:
    if isinstance(value, int) and value.bit_length() > MAX_INT_BITS:
        raise ExpressionError(f"a number larger than {MAX_INT_BITS} bits was refused")
    return value


def _power(base: Any, exponent: Any) -> Any:
    if isinstance(base, int) and isinstance(exponent, int) and exponent > 0 and abs(base) > 1:
        if exponent * math.log2(abs(base)) > MAX_INT_BITS:
            raise ExpressionError(
                f"a power was refused: the result would exceed {MAX_INT_BITS} bits"
            )
    elif isinstance(exponent, int) and abs(exponent) > 100_000:
        raise ExpressionError(f"the exponent {exponent} is too large")
    return base**exponent


def _multiply(a: Any, b: Any) -> Any:
    if isinstance(a, int) and isinstance(b, int):
        if a.bit_length() + b.bit_length() > MAX_INT_BITS + 1:
            raise ExpressionError(f"a product larger than {MAX_INT_BITS} bits was refused")
    return a * b


def _left_shift(a: Any, b: Any) -> Any:
    if isinstance(b, int) and (b > MAX_INT_BITS or abs(a).bit_length() + b > MAX_INT_BITS):
        raise ExpressionError(f"a shift beyond {MAX_INT_BITS} bits was refused")
    return a << b


def _round(value: Any, digits: Any = None) -> Any:
    if digits is None:
        return round(value)
    if not isinstance(digits, int) or abs(digits) > 30:
        raise ExpressionError("round() takes at most 30 digits")
    return round(value, digits)


OPERATORS: dict[type, Any] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: _multiply,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: _power,
    ast.LShift: _left_shift,
    ast.RShift: operator.rshift,
    ast.BitAnd: operator.and_,
    ast.BitOr: operator.or_,
    ast.BitXor: operator.xor,
    ast.USub: operator.neg,
    ast.UAdd: operator.pos,
    ast.Not: operator.not_,
    ast.Invert: operator.invert,
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
}

#: Functions an expression may call (by bare name).
FUNCTIONS: dict[str, Any] = {
    "abs": abs,
    "round": _round,
    "int": int,
    "float": float,
    "min": min,
    "max": max,
    "sqrt": math.sqrt,
    "exp": math.exp,
    "log": math.log,
    "log10": math.log10,
    "sin": math.sin,
    "cos": math.cos,
    "tan": math.tan,
    "asin": math.asin,
    "acos": math.acos,
    "atan": math.atan,
    "atan2": math.atan2,
    "hypot": math.hypot,
    "floor": math.floor,
    "ceil": math.ceil,
}
#: Functions over a window of samples: ``avg(p1, '15m')``; min and max also take numbers.
WINDOW_FUNCTIONS = ("avg", "min", "max", "delta", "sum", "count")
#: Names of constants.
CONSTANTS: dict[str, float] = {"pi": math.pi, "e": math.e}

_ALLOWED = (
    ast.Expression,
    ast.BinOp,
    ast.UnaryOp,
    ast.BoolOp,
    ast.Compare,
    ast.IfExp,
    ast.Call,
    ast.Name,
    ast.Load,
    ast.Constant,
    ast.operator,
    ast.unaryop,
    ast.cmpop,
    ast.boolop,
)
_REFUSED = {
    ast.Subscript: "indexing is not allowed: p1 is the latest value, use avg/min/max/delta "
    "for history",
    ast.Lambda: "lambda is not allowed",
    ast.ListComp: "comprehensions are not allowed",
    ast.SetComp: "comprehensions are not allowed",
    ast.DictComp: "comprehensions are not allowed",
    ast.GeneratorExp: "comprehensions are not allowed",
    ast.JoinedStr: "f-strings are not allowed",
    ast.NamedExpr: "assignment (:=) is not allowed",
    ast.Starred: "* arguments are not allowed",
    ast.List: "lists are not allowed",
    ast.Tuple: "tuples are not allowed",
    ast.Dict: "dicts are not allowed",
    ast.Set: "sets are not allowed",
    ast.Await: "await is not allowed",
    ast.Yield: "yield is not allowed",
    ast.YieldFrom: "yield is not allowed",
}
_REFUSED_OPS = (ast.In, ast.NotIn, ast.Is, ast.IsNot, ast.MatMult)


def compile_expression(text: str, params: Collection[str]) -> Expression:
    """Check ``text`` against the whitelist; `ExpressionError` says what is refused."""
    if not isinstance(text, str):
        raise ExpressionError("the formula must be a string")
    if len(text) > MAX_LENGTH:
        raise ExpressionError(f"the formula is longer than {MAX_LENGTH} characters")
    if not text.strip():
        raise ExpressionError("the formula is empty")
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as e:
        if "import" in text and re.search(r"\bimport\b", text):
            raise ExpressionError("import is not allowed") from None
        raise ExpressionError(f"syntax error at column {e.offset}: {e.msg}") from None
    except (ValueError, MemoryError, RecursionError) as e:
        raise ExpressionError(f"the formula cannot be parsed ({type(e).__name__})") from None
    windows: list[Window] = []
    used: set[str] = set()
    window_args: set[int] = set()
    callees: set[int] = set()
    nodes = []
    for node in ast.walk(tree):
        nodes.append(node)
        if len(nodes) > MAX_NODES:
            raise ExpressionError(f"the formula has more than {MAX_NODES} parts")
        if isinstance(node, ast.Name) and node.id.startswith("_"):
            raise ExpressionError(f"names starting with _ are not allowed ({node.id})")
        if isinstance(node, ast.Attribute):
            raise ExpressionError(f"attribute access (.{node.attr}) is not allowed")
        if isinstance(node, _REFUSED_OPS):
            raise ExpressionError(f"the operator {type(node).__name__} is not allowed")
        if not isinstance(node, _ALLOWED):
            message = _REFUSED.get(type(node), f"{type(node).__name__} is not allowed")
            raise ExpressionError(message)
    for node in nodes:
        if isinstance(node, ast.Name):
            if id(node) in callees:
                continue
            _check_name(node.id, params)
            if node.id in params:
                used.add(node.id)
        elif isinstance(node, ast.Call):
            window = _check_call(node, params)
            callees.add(id(node.func))
            if window is not None:
                windows.append(window)
                used.add(window.param)
                window_args.add(id(node.args[1]))
        elif isinstance(node, ast.Constant):
            _check_constant(node, id(node) in window_args)
    return Expression(text, tree.body, frozenset(used), tuple(dict.fromkeys(windows)))


def _check_name(name: str, params: Collection[str]) -> None:
    if name.startswith("_"):
        raise ExpressionError(f"names starting with _ are not allowed ({name})")
    if name in params or name in CONSTANTS:
        return
    if name in FUNCTIONS or name in WINDOW_FUNCTIONS:
        raise ExpressionError(f"{name} is a function: call it, {name}(...)")
    if PARAM_PATTERN.match(name):
        raise ExpressionError(f"name {name!r} is not defined: add the parameter {name}")
    raise ExpressionError(f"name {name!r} is not defined")


def _check_call(node: ast.Call, params: Collection[str]) -> Window | None:
    if not isinstance(node.func, ast.Name):
        raise ExpressionError("only the listed functions may be called, by name")
    name = node.func.id
    if node.keywords:
        raise ExpressionError(f"{name}() takes no keyword arguments")
    args = node.args
    is_window = (
        name in WINDOW_FUNCTIONS
        and len(args) == 2
        and isinstance(args[1], ast.Constant)
        and isinstance(args[1].value, str)
    )
    if is_window:
        if not (isinstance(args[0], ast.Name) and args[0].id in params):
            raise ExpressionError(f"{name}(pN, '15m'): the first argument must be a parameter")
        window_text = args[1].value  # type: ignore[attr-defined]  # a Constant, checked above
        assert isinstance(window_text, str)
        return Window(args[0].id, parse_window(window_text), window_text)
    if name in WINDOW_FUNCTIONS and name not in FUNCTIONS:
        raise ExpressionError(f"{name} takes a parameter and a window: {name}(p1, '15m')")
    if name not in FUNCTIONS:
        if name.startswith("_"):
            raise ExpressionError(f"names starting with _ are not allowed ({name})")
        raise ExpressionError(f"unknown function {name!r}")
    if not args:
        raise ExpressionError(f"{name}() needs arguments")
    return None


def _check_constant(node: ast.Constant, window_arg: bool) -> None:
    value = node.value
    if isinstance(value, str):
        if not window_arg:
            raise ExpressionError("text is only allowed as a window argument ('15m')")
    elif isinstance(value, bool) or value is None:
        return
    elif isinstance(value, int):
        _check_int(value)
    elif not isinstance(value, float):
        raise ExpressionError(f"{type(value).__name__} constants are not allowed")


# -- evaluation ------------------------------------------------------------------------
def _reduce(function: str, values: Sequence[float], window: Window) -> Any:
    if function == "count":
        return len(values)
    if not values:
        raise ExpressionError(f"no samples of {window.param} in the last {window.text}")
    if function == "avg":
        return math.fsum(values) / len(values)
    if function == "sum":
        return math.fsum(values)
    if function == "min":
        return min(values)
    if function == "max":
        return max(values)
    return values[-1] - values[0]  # delta: newest minus oldest


class _Evaluator(simpleeval.SimpleEval):  # type: ignore[misc]
    """simpleeval with a node whitelist, a step and time budget and window calls."""

    def __init__(
        self,
        names: Mapping[str, Any],
        windows: Mapping[Window, Sequence[float]],
        budget: float,
    ) -> None:
        super().__init__(operators=OPERATORS, functions=dict(FUNCTIONS), names=dict(names))
        self.nodes = {
            ast.Name: self._eval_name,
            ast.UnaryOp: self._eval_unaryop,
            ast.BinOp: self._eval_binop,
            ast.BoolOp: self._eval_boolop,
            ast.Compare: self._eval_compare,
            ast.IfExp: self._eval_ifexp,
            ast.Call: self._eval_call,
            ast.Constant: self._eval_constant,
        }
        self._windows = windows
        self._steps = 0
        self._deadline = time.perf_counter() + budget

    def _eval(self, node: ast.AST) -> Any:
        self._steps += 1
        if self._steps > MAX_STEPS:
            raise ExpressionError(f"the formula took more than {MAX_STEPS} steps")
        if time.perf_counter() > self._deadline:
            raise ExpressionError("the formula ran over its time budget")
        return _check_int(super()._eval(node))

    def _eval_call(self, node: ast.Call) -> Any:
        name = node.func.id  # type: ignore[attr-defined]  # checked by compile_expression
        args = node.args
        if (
            name in WINDOW_FUNCTIONS
            and len(args) == 2
            and isinstance(args[1], ast.Constant)
            and isinstance(args[1].value, str)
        ):
            param = args[0].id  # type: ignore[attr-defined]
            window = Window(param, parse_window(args[1].value), args[1].value)
            return _reduce(name, self._windows.get(window, ()), window)
        return super()._eval_call(node)


def evaluate(
    expression: Expression,
    values: Mapping[str, Any],
    windows: Mapping[Window, Sequence[float]] | None = None,
    budget: float = MAX_SECONDS,
) -> int | float:
    """The value of a checked expression, a finite number; `ExpressionError` otherwise."""
    missing = sorted(p for p in expression.params if p not in values)
    if missing:
        raise ExpressionError(f"no value for {', '.join(missing)}")
    names = {**CONSTANTS, **{name: values[name] for name in expression.params if name in values}}
    evaluator = _Evaluator(names, windows or {}, budget)
    try:
        result = evaluator._eval(expression.tree)
    except ExpressionError:
        raise
    except simpleeval.InvalidExpression as e:
        raise ExpressionError(str(e)) from None
    except ZeroDivisionError:
        raise ExpressionError("division by zero") from None
    except OverflowError:
        raise ExpressionError("a number is too large (overflow)") from None
    except RecursionError:
        raise ExpressionError("the formula is nested too deeply") from None
    except (ArithmeticError, ValueError, TypeError) as e:
        raise ExpressionError(f"{type(e).__name__}: {e}"[:300]) from None
    return _result(result)


def _result(value: Any) -> int | float:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        if value.bit_length() <= 63:
            return value
        try:
            return float(value)
        except OverflowError:
            raise ExpressionError("the result is too large for a number") from None
    if isinstance(value, float):
        if math.isnan(value):
            raise ExpressionError("the result is not a number (NaN)")
        if math.isinf(value):
            raise ExpressionError("the result is infinite")
        return value
    raise ExpressionError(f"the result must be a number, not {type(value).__name__}")
