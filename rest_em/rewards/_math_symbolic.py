"""Symbolic math equivalence, run inside HardTimeoutPool workers (math-verify + sympy).

`math_check` sends the pairs that `math_equivalence._fast_compare` could not decide,
already normalised, to `_symbolic_compare` here; a call that overruns its timeout gets
its worker SIGKILLed, so a sympy power tower cannot hang the caller, from any thread.
math-verify's lenient parts are switched off: decimals become exact fractions before
parsing (no 6-digit float rounding); its numeric fallback (evalf with chop at ~1e-15,
which equates 1/2^99 and 1/2^98) is replaced by one that calls a difference of
constants zero only if sympy's adaptive evalf finds no significant digit in it
(sqrt(10^100+1) != 10^50).

The workers load this file by path and alone (see `_pool.py`): it imports only the
standard library at its top, and sympy / math-verify in `_worker_init`.
"""

from __future__ import annotations

import functools
import re
from typing import Any

# The values of rest_em.rewards.status.Status that a comparison can give (this file is
# loaded alone, so it cannot import that module); math_check turns them back into Status.
_CORRECT, _INCORRECT, _CHECKER_ERROR = "correct", "incorrect", "checker_error"

_DECIMAL_RE = re.compile(r"(?<![\d.])(\d*)\.(\d+)(?![\d.])")
_mv: Any = None


def _worker_init() -> None:
    """Imports math-verify and makes it strict; runs once per worker process."""
    global _mv
    import logging

    import math_verify
    import sympy
    from math_verify import grader

    logging.getLogger("math_verify").setLevel(logging.ERROR)
    logging.getLogger("latex2sympy2_extended").setLevel(logging.ERROR)

    def strict_numeric_eq(a, b, float_rounding, numeric_precision):
        """Replaces math-verify's tolerant numeric test (float rounding, evalf chop)."""
        if isinstance(a, (sympy.MatrixBase, sympy.MatrixExpr)) and isinstance(
            b, (sympy.MatrixBase, sympy.MatrixExpr)
        ):
            a, b = grader.safe_sympy_doit(a), grader.safe_sympy_doit(b)
            if isinstance(a, sympy.MatrixBase) and isinstance(b, sympy.MatrixBase):
                return a.shape == b.shape and all(
                    strict_numeric_eq(x, y, 0, 0) for x, y in zip(a.flat(), b.flat(), strict=True)
                )
            return False
        if not isinstance(a, sympy.Expr) or not isinstance(b, sympy.Expr):
            return False
        if a.free_symbols or b.free_symbols:
            return False  # symbolic equality decides expressions with variables
        if a.has(sympy.Float) or b.has(sympy.Float):
            return False  # decimals were made exact before parsing; a Float is a leak
        diff = grader.safe_sympy_doit(a - b)
        if diff.is_Rational:
            return diff == 0
        # Zero only if evalf finds no significant digit at all (it raises the working
        # precision up to maxn digits to get past cancellation): sqrt(10^100+1) - 10^50
        # (5e-51) is not zero, atan(1/2)+atan(1/3)-pi/4 is.
        value = diff.evalf(30, maxn=3000)
        if not value.is_number:
            return False
        parts = value.as_real_imag()
        return all(p == 0 or (isinstance(p, sympy.Float) and p._prec <= 1) for p in parts)

    grader.sympy_numeric_eq = strict_numeric_eq
    _mv = math_verify
    _parse("1")  # build the parser (ANTLR tables) now, not in the first call


def _exact_decimals(s: str) -> str:
    """`1.25` -> `\\frac{125}{100}`: sympy then compares exactly, never at 6 digits."""

    def repl(m: re.Match) -> str:
        whole, frac = m.group(1) or "0", m.group(2)
        out = f"\\frac{{{int(whole + frac)}}}{{{10 ** len(frac)}}}"
        # A bare group {..} would parse as a set; only exponents and subscripts need one.
        return "{" + out + "}" if m.start() > 0 and s[m.start() - 1] in "^_" else out

    return _DECIMAL_RE.sub(repl, s)


@functools.lru_cache(maxsize=8192)
def _parse(s: str) -> tuple:
    """math-verify's parse of one normalised answer; cached (a gold recurs per sample)."""
    from latex2sympy2_extended.latex2sympy2 import NormalizationConfig

    config = _mv.LatexExtractionConfig(
        boxed_match_priority=0,
        normalization_config=NormalizationConfig(
            basic_latex=True,
            units=False,
            malformed_operators=False,
            nits=False,
            boxed="all",
            equations=False,
        ),
    )
    return tuple(
        _mv.parse(
            "$" + _exact_decimals(s) + "$",
            extraction_config=[config],
            fallback_mode="no_fallback",
            parsing_timeout=None,
            raise_on_error=True,
        )
    )


def _clear_caches() -> None:
    """Forgets parsed answers (benchmarks measure cold parses with this)."""
    _parse.cache_clear()


def _certainly_different(a: Any, b: Any) -> bool:
    """Cheap rejections that spare sympy's simplify; never accepts anything.

    A matrix never equals a scalar; two constants (no variables) whose values differ in
    the 20th significant digit are different.
    """
    import sympy

    a_matrix, b_matrix = (isinstance(x, (sympy.MatrixBase, sympy.MatrixExpr)) for x in (a, b))
    if a_matrix != b_matrix:
        return isinstance(a, sympy.Expr) or isinstance(b, sympy.Expr)
    if not (isinstance(a, sympy.Expr) and isinstance(b, sympy.Expr)):
        return False
    if (
        a.free_symbols
        or b.free_symbols
        or a.has(sympy.UnevaluatedExpr)
        or b.has(sympy.UnevaluatedExpr)
    ):
        return False
    x, y = a.evalf(30), b.evalf(30)
    if (
        not (x.is_number and y.is_number)
        or x.has(sympy.nan, sympy.zoo)
        or y.has(sympy.nan, sympy.zoo)
    ):
        return False
    if not all(v.is_finite for v in (x, y)):
        return False
    scale = max(abs(x), abs(y))
    return bool(abs(x - y) > scale * sympy.Float(1e-20, 30))


def _symbolic_compare(gold: str, pred: str) -> tuple[str, str]:
    """(status value, reason) for two normalised answers, by math-verify + sympy."""
    if _mv is None:
        _worker_init()
    g = _parse(gold)
    if not g:
        return _CHECKER_ERROR, f"gold does not parse: {gold!r}"
    p = _parse(pred)
    if not p:
        return _INCORRECT, "answer does not parse"
    if _certainly_different(g[0], p[0]):
        return _INCORRECT, "symbolic (values differ)"
    same = _mv.verify(g[0], p[0], timeout_seconds=None, raise_on_error=True)
    return (_CORRECT if same else _INCORRECT), "symbolic"
