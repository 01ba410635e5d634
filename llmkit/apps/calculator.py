"""The calculator tool: arithmetic parsed by Python's own `ast`, then evaluated node by node over a
short list of allowed operations — never `eval`, so a model's input cannot reach names, attributes,
calls of its choosing or imports. Powers and factorials are bounded so that `9**9**9` is an error,
not a machine that stops answering."""

from __future__ import annotations

import ast
import math
import operator
from typing import Callable

MAX_EXPONENT = 10_000  # |b| in a ** b; beyond, integer powers grow to millions of digits
MAX_DIGITS = 1_000  # integer results longer than this are refused (printing them would flood the context)
MAX_LENGTH = 1_000  # characters of an expression

_BINARY: dict[type, Callable] = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
                                 ast.Div: operator.truediv, ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod,
                                 ast.Pow: operator.pow}
_UNARY: dict[type, Callable] = {ast.UAdd: operator.pos, ast.USub: operator.neg}
_FUNCTIONS: dict[str, Callable] = {
    "sqrt": math.sqrt, "exp": math.exp, "log": math.log, "log2": math.log2, "log10": math.log10,
    "sin": math.sin, "cos": math.cos, "tan": math.tan, "asin": math.asin, "acos": math.acos, "atan": math.atan,
    "abs": abs, "round": round, "floor": math.floor, "ceil": math.ceil, "factorial": math.factorial,
    "gcd": math.gcd, "min": min, "max": max,
}
_CONSTANTS = {"pi": math.pi, "e": math.e, "tau": math.tau}


class CalculatorError(ValueError):
    """The expression is not arithmetic the calculator accepts; the message says what and where."""


def calculate(expression: str) -> int | float:
    """The value of an arithmetic `expression`: numbers, + - * / // % ** and parentheses, the
    constants pi, e, tau and the functions sqrt, exp, log, log2, log10, sin, cos, tan, asin, acos,
    atan, abs, round, floor, ceil, factorial, gcd, min, max (e.g. ``"2 * (3 + 4) ** 2"``, ``"sqrt(2)"``)."""
    if not isinstance(expression, str) or not expression.strip():
        raise CalculatorError("the expression is empty: give arithmetic such as 2 * (3 + 4)")
    if len(expression) > MAX_LENGTH:
        raise CalculatorError(f"the expression is {len(expression)} characters long; the calculator reads at most "
                              f"{MAX_LENGTH}")
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except SyntaxError as e:
        raise CalculatorError(f"cannot parse {expression!r} as arithmetic (column {e.offset}): {e.msg}") from None
    try:
        value = _evaluate(tree.body)
    except (ZeroDivisionError, OverflowError) as e:
        raise CalculatorError(f"{expression!r}: {e}") from None
    except (ValueError, TypeError) as e:
        if isinstance(e, CalculatorError):
            raise
        raise CalculatorError(f"{expression!r}: {e}") from None
    if isinstance(value, complex):  # (-8) ** 0.5
        raise CalculatorError(f"{expression!r} has no real value")
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10 ** MAX_DIGITS:
        raise CalculatorError(f"{expression!r} has more than {MAX_DIGITS} digits")
    return value


def _evaluate(node: ast.AST) -> int | float:
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return node.value
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _evaluate(node.left), _evaluate(node.right)
        if isinstance(node.op, ast.Pow) and abs(left) > 1:
            if abs(right) > MAX_EXPONENT:
                raise CalculatorError(f"the exponent {right} is too large (at most {MAX_EXPONENT})")
            if isinstance(left, int) and isinstance(right, int) and left.bit_length() * right > 4 * MAX_DIGITS:
                # an integer power's digits are known before computing it: refuse instead of computing for hours
                raise CalculatorError(f"{left} ** {right} would have about {int(left.bit_length() * right * 0.30103)} "
                                      f"digits (at most {MAX_DIGITS})")
        return _BINARY[type(node.op)](left, right)
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_evaluate(node.operand))
    if isinstance(node, ast.Name) and node.id in _CONSTANTS:
        return _CONSTANTS[node.id]
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _FUNCTIONS \
            and not node.keywords:
        args = [_evaluate(a) for a in node.args]
        if node.func.id == "factorial" and args and isinstance(args[0], (int, float)) and args[0] > 1000:
            raise CalculatorError(f"factorial({args[0]}) is too large (at most factorial(1000))")
        return _FUNCTIONS[node.func.id](*args)
    where = f" at column {node.col_offset + 1}" if hasattr(node, "col_offset") else ""
    if isinstance(node, ast.Name):
        raise CalculatorError(f"unknown name {node.id!r}{where}: the calculator knows "
                              f"{', '.join(sorted(_CONSTANTS))} and the functions {', '.join(sorted(_FUNCTIONS))}")
    raise CalculatorError(f"{type(node).__name__}{where} is not arithmetic the calculator accepts: use numbers, "
                          "+ - * / // % **, parentheses and its functions")
