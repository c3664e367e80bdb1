"""The formula sandbox: what it computes, and every escape it refuses."""

from twisted.trial.unittest import SynchronousTestCase

from pydatacoll.expression import (
    MAX_LENGTH,
    ExpressionError,
    Window,
    compile_expression,
    evaluate,
    parse_window,
)

PARAMS = ("p1", "p2")


def run(text, values=None, windows=None, budget=0.05):
    expression = compile_expression(text, PARAMS)
    return evaluate(expression, values or {"p1": 3, "p2": 4.5}, windows, budget)


class EvaluationTests(SynchronousTestCase):
    def test_arithmetic_and_functions(self):
        self.assertEqual(run("p1 + p2"), 7.5)
        self.assertEqual(run("max(p1, p2) * 2"), 9.0)
        self.assertEqual(run("p1 if p1 > 2 else p2"), 3)
        self.assertEqual(run("round(sqrt(p1 ** 2 + 16), 3)"), 5.0)
        self.assertEqual(run("p1 > 2 and p2 < 5"), 1)
        self.assertEqual(run("abs(-p1) // 2 % 5"), 1)

    def test_parameters_used_and_windows_are_listed(self):
        expression = compile_expression("avg(p1, '15m') + delta(p2, '1h') + p1", PARAMS)
        self.assertEqual(expression.params, {"p1", "p2"})
        self.assertEqual(expression.windows, (Window("p1", 900, "15m"), Window("p2", 3600, "1h")))

    def test_window_functions(self):
        windows = {Window("p1", 900, "15m"): [1.0, 2.0, 6.0]}
        self.assertEqual(run("avg(p1, '15m')", windows=windows), 3.0)
        self.assertEqual(run("min(p1, '15m')", windows=windows), 1.0)
        self.assertEqual(run("max(p1, '15m')", windows=windows), 6.0)
        self.assertEqual(run("delta(p1, '15m')", windows=windows), 5.0)
        self.assertEqual(run("sum(p1, '15m')", windows=windows), 9.0)
        self.assertEqual(run("count(p1, '15m')", windows=windows), 3)
        self.assertEqual(run("count(p1, '15m')"), 0)
        with self.assertRaises(ExpressionError) as caught:
            run("avg(p1, '15m')")
        self.assertIn("no samples of p1", caught.exception.message)

    def test_windows_are_checked(self):
        self.assertEqual(parse_window("2d"), 172800)
        for text, message in [
            ("avg(p1, '99d')", "from 1s to 7d"),
            ("avg(p1, 'soon')", "not a window"),
            ("avg(p1)", "takes a parameter and a window"),
            ("avg(3, '1m')", "first argument must be a parameter"),
        ]:
            with self.assertRaises(ExpressionError) as caught:
                compile_expression(text, PARAMS)
            self.assertIn(message, caught.exception.message, text)

    def test_runtime_errors_are_messages(self):
        for text, message in [
            ("p1 / 0", "division by zero"),
            ("sqrt(-1)", "math domain error"),
            ("exp(1000)", "too large"),
            ("1e400", "infinite"),
            ("max(p1)", "TypeError"),
        ]:
            with self.assertRaises(ExpressionError) as caught:
                run(text)
            self.assertIn(message, caught.exception.message, text)

    def test_missing_value(self):
        with self.assertRaises(ExpressionError) as caught:
            run("p1 + p2", values={"p1": 1})
        self.assertEqual(caught.exception.message, "no value for p2")

    def test_non_numeric_result_refused(self):
        with self.assertRaises(ExpressionError):
            run("p1", values={"p1": "text", "p2": 1})


class EscapeTests(SynchronousTestCase):
    """Each escape is refused with a message that says what is not allowed."""

    def refused(self, text, message):
        with self.assertRaises(ExpressionError) as caught:
            run(text)
        self.assertIn(message, caught.exception.message, text)

    def test_imports(self):
        self.refused("import os", "import is not allowed")
        self.refused("__import__('os')", "names starting with _ are not allowed (__import__)")
        self.refused("__import__('os').system('id')", "attribute access (.system)")

    def test_dunder_and_attribute_access(self):
        self.refused("p1.__class__", "attribute access")
        self.refused("().__class__.__bases__[0].__subclasses__()", "attribute access (.__")
        self.refused("(1).__class__", "attribute access")
        self.refused("_secret", "names starting with _")
        self.refused("p1.real", "attribute access")

    def test_builtins_are_not_reachable(self):
        for name in ("open", "exec", "eval", "compile", "getattr", "globals", "type", "vars"):
            self.refused(f"{name}('x')", "unknown function")
        self.refused("open", "not defined")

    def test_huge_numbers(self):
        self.refused("9**9**9", "power was refused")
        self.refused("2**5000", "power was refused")
        self.refused("10**1000*10**1000*10**1000*10**1000*10**1000", "product")
        self.refused("1 << 10**9", "shift")
        self.refused("round(p1, 10**9)", "at most 30 digits")

    def test_loops_and_comprehensions(self):
        self.refused("[x for x in range(10**9)]", "comprehensions are not allowed")
        self.refused("sum(x for x in range(10**9))", "comprehensions are not allowed")
        self.refused("{x: 1 for x in p1}", "comprehensions are not allowed")
        self.refused("(lambda: 1)()", "lambda is not allowed")
        self.refused("(y := 1)", "assignment")

    def test_huge_strings(self):
        self.refused("'a' * 10**9", "text is only allowed as a window")
        self.refused("'x' * 100", "text is only allowed as a window")
        self.refused("b'x'", "bytes constants")
        self.refused("f'{p1}'", "f-strings")
        self.refused("p1 + " * 300 + "1", "longer than")
        self.refused("+".join(["1"] * 450), "more than")

    def test_length_limit(self):
        with self.assertRaises(ExpressionError) as caught:
            compile_expression("1" * (MAX_LENGTH + 1), PARAMS)
        self.assertIn("longer than", caught.exception.message)

    def test_indexing_and_containers(self):
        self.refused("p1[0]", "indexing is not allowed")
        self.refused("[1, 2]", "lists")
        self.refused("(1, 2)", "tuples")
        self.refused("p1 in p2", "In is not allowed")

    def test_step_and_time_budget(self):
        # A budget of zero: the first step is already over it.
        with self.assertRaises(ExpressionError) as caught:
            run("p1 + p2", budget=-1)
        self.assertIn("time budget", caught.exception.message)

    def test_syntax_errors(self):
        self.refused("p1 +", "syntax error")
        self.refused("", "empty")
        self.refused("p3 + 1", "add the parameter p3")
