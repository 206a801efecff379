"""Math answer checker: extract a final answer from a solution, compare it to the gold.

ReST^EM trains on the samples this checker accepts, so it is precision first: a false
positive puts a wrong solution into the training set, a false negative only drops one
sample. Three layers, cheapest first:

1. Normalised string match (spacing, `\\left`, `\\dfrac`, `\\text{}` units, `^\\circ`,
   thousands separators, `x =` prefixes, `\\$`).
2. Exact rational arithmetic (integers, decimals, fractions, mixed numbers, `+-*/^`):
   decides every pair of plain numbers, in process. No tolerance: 1.0001 != 1, 5 != 500.
3. Symbolic comparison with math-verify + sympy for everything else (radicals, pi,
   tuples, intervals, sets, matrices, equations). It runs in a HardTimeoutPool worker that
   is SIGKILLed on timeout, so it works from any thread and cannot hang the caller.
   math-verify's lenient parts are switched off there: decimals become exact fractions
   before parsing (no 6-digit float rounding); its numeric fallback (evalf with chop at
   ~1e-15, which equates 1/2^99 and 1/2^98) is replaced by one that calls a difference
   of constants zero only if sympy's adaptive evalf finds no significant digit in it
   (sqrt(10^100+1) != 10^50); percentages never reach it (see below).

Percentages: `%` is only meaningful when the gold is a percentage. Gold `25\\%` accepts
`25\\%` and `25` (not 0.25: no x100 leniency); a `%` answer to a gold without one is
incorrect.

Failures are never "incorrect": a verdict is CORRECT, INCORRECT, NO_ANSWER (nothing
extracted), CHECKER_ERROR (the checker could not decide, e.g. the gold does not parse)
or TIMEOUT; `check_batch` returns one per item so callers can count them apart.

This file needs only the standard library at import: sympy and math-verify load in the
pool workers, which load this file by path (so nothing here may import `rest_em`, JAX or
TensorFlow at module level; note that importing it as `rest_em.rewards.math` still runs
the `rest_em` package __init__). Self-check a dataset's golds with
`python -m rest_em.rewards.math --self_check FILE.jsonl`.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import enum
import fractions
import functools
import gzip
import json
import os
import re
import sys
import threading
from collections.abc import Callable, Sequence
from typing import Any

__all__ = [
    "STYLES",
    "SelfCheckFailure",
    "Status",
    "Verdict",
    "check",
    "check_batch",
    "extract_answer",
    "gold_answer",
    "is_correct",
    "self_check",
    "shutdown_pool",
]

DEFAULT_TIMEOUT_S = 5.0


class Status(enum.Enum):
    """Outcome of one check; only CORRECT earns a reward."""

    CORRECT = "correct"
    INCORRECT = "incorrect"
    NO_ANSWER = "no_answer"
    CHECKER_ERROR = "checker_error"
    TIMEOUT = "timeout"


@dataclasses.dataclass(frozen=True)
class Verdict:
    """A status plus what was compared and which rule decided (for audits and logs)."""

    status: Status
    answer: str | None = None  # the answer extracted from the response
    reason: str = ""

    @property
    def correct(self) -> bool:
        return self.status is Status.CORRECT


# ------------------------------------------------------------------------- extraction

_BOX_RE = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")
_GSM8K_RE = re.compile(r"####[ \t]*([^\n]*)")
_ANSWER_IS_RE = re.compile(r"answer\s+is\s*[:：]?\s*([^\n]*)", re.IGNORECASE)
_QA_RE = re.compile(r"(?:^|\n)[ \t]*A:[ \t]*([^\n]+?)\s*\Z")
_SENTENCE_END_RE = re.compile(r"\.(?:\s|$)|\s+I hope\b")


def _match_brace(s: str, start: int) -> int:
    """Index of the '}' closing the '{' at s[start], or -1; skips escaped \\{ \\}."""
    depth, i = 0, start
    while i < len(s):
        c = s[i]
        if c == "\\":
            i += 2
            continue
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    return -1


def _last_boxed(text: str) -> str | None:
    """Content of the last \\boxed{...} / \\fbox{...} (or `\\boxed 5`); None if unclosed."""
    matches = list(_BOX_RE.finditer(text))
    if not matches:
        return None
    i = matches[-1].end()
    while i < len(text) and text[i] in " \t":
        i += 1
    if i < len(text) and text[i] == "{":
        end = _match_brace(text, i)
        return text[i + 1:end] if end >= 0 else None  # truncated: no answer, not a guess
    m = re.match(r"[^\s$]+", text[i:])
    return m.group(0) if m else None


def _clean(answer: str | None) -> str | None:
    """Strips math delimiters, bold and a sentence-final period around an answer."""
    if answer is None:
        return None
    s = answer.strip()
    for _ in range(3):
        s = s.strip().strip("*").strip()
        for left, right in (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
            if s.startswith(left) and s.endswith(right) and len(s) >= len(left) + len(right):
                s = s[len(left):len(s) - len(right)].strip()
        s = re.sub(r"(?:\.|,|;|\\\.)$", "", s).strip()
    if "\\boxed" in s or "\\fbox" in s:
        s = _last_boxed(s) or s
    return s or None


def _extract_boxed(text: str) -> str | None:
    return _last_boxed(text)


def _extract_gsm8k(text: str) -> str | None:
    matches = _GSM8K_RE.findall(text)
    return matches[-1] if matches else None


def _extract_answer_is(text: str) -> str | None:
    matches = list(_ANSWER_IS_RE.finditer(text))
    if not matches:
        return None
    content = matches[-1].group(1)
    if "$" in content:  # keep periods inside math: cut after the last closing '$'
        head, _, tail = content.rpartition("$")
        return head + "$" + _SENTENCE_END_RE.split(tail, maxsplit=1)[0]
    return _SENTENCE_END_RE.split(content, maxsplit=1)[0]


def _extract_qa(text: str) -> str | None:
    m = _QA_RE.search(text)
    return m.group(1) if m else None


def _extract_raw(text: str) -> str | None:
    return text


STYLES: dict[str, Callable[[str], str | None]] = {
    "boxed": _extract_boxed,  # last \boxed{} / \fbox{} (MATH, Minerva)
    "gsm8k": _extract_gsm8k,  # last '#### N'
    "answer_is": _extract_answer_is,  # last 'The (final) answer is ...'
    "qa": _extract_qa,  # a final line 'A: N' (few-shot Q:/A: format)
    "raw": _extract_raw,  # the whole text is the answer
}
AUTO = ("boxed", "gsm8k", "answer_is", "qa")

Style = str | re.Pattern | Sequence[str | re.Pattern]


def extract_answer(text: str, style: Style = "auto") -> str | None:
    """The final answer in a model response, or None.

    `style` is a name from STYLES, "auto" (= boxed, gsm8k, answer_is, qa: the first
    style that finds something wins, so an explicit \\boxed beats prose), a compiled
    regex (its last match's group 1), or a sequence of those tried in order.
    """
    if style == "auto":
        styles: Sequence[str | re.Pattern] = AUTO
    elif isinstance(style, (str, re.Pattern)):
        styles = (style,)
    else:
        styles = style
    for st in styles:
        if isinstance(st, re.Pattern):
            found = [m.group(1) if m.groups() else m.group(0) for m in st.finditer(text)]
            answer = found[-1] if found else None
        elif st in STYLES:
            answer = STYLES[st](text)
        else:
            raise ValueError(f"unknown answer style {st!r}; expected one of {sorted(STYLES)}")
        answer = _clean(answer)
        if answer is not None:
            return answer
    return None


_TAIL_RE = re.compile(r"(?i:the) (?:final )?answer is:?[ \t]*([^\n]*)\s*\Z")


def _answer_tail(reference_solution: str) -> re.Match | None:
    """The closing line 'The answer is: X' of MetaMath/MATH-500 references, if any."""
    start = reference_solution.rfind("answer is")
    if start < 0:
        return None
    return _TAIL_RE.search(reference_solution, max(0, start - len("The final ")))


def gold_answer(reference_solution: str) -> str:
    """The final answer of a reference solution.

    GSM8K: the text after the last '####'. MATH: the last \\boxed{}, or, for the
    MetaMath/MATH-500 layout that ends in 'The answer is: X', that X.
    Raises ValueError when none is present (a dataset bug worth hearing about).
    """
    tail = _answer_tail(reference_solution)
    for candidate in (_extract_gsm8k(reference_solution), tail.group(1) if tail else None,
                      _last_boxed(reference_solution)):
        answer = _clean(candidate)
        if answer is not None:
            return answer
    raise ValueError(f"no final answer in reference solution: {reference_solution[-200:]!r}")


def _strip_answer_tail(reference_solution: str) -> str:
    """The solution without its 'The answer is: X' line, so the self-check reads the
    \\boxed{} answer of the solution itself."""
    tail = _answer_tail(reference_solution)
    if tail and _last_boxed(reference_solution[:tail.start()]) is not None:
        return reference_solution[:tail.start()]
    return reference_solution


# ---------------------------------------------------------------------- normalisation

_REMOVE_RE = re.compile(
    r"\\left\.|\\right\.|\\left(?![a-zA-Z])|\\right(?![a-zA-Z])|\\displaystyle|(?<!\\)\\!|"
    r"\^\s*\{\s*\\circ\s*\}|\^\s*\\circ|°|\\degree|\\\$|\$")
_SPACE_RE = re.compile(r"(?<!\\)\\[,;: ]|\\q?quad(?![a-zA-Z])|~")
_FRAC_RE = re.compile(r"\\[dtc]frac(?![a-zA-Z])")
_PERCENT_RE = re.compile(r"\\%|%|\\text\{\s*\\?%\s*\}|\s*\b(?:percent|percentage|pct)\b",
                         re.IGNORECASE)
_TEXT_CMD = r"\\(?:text|textrm|textnormal|textbf|textit|mbox|mathrm)"
_WHOLE_TEXT_RE = re.compile(r"^" + _TEXT_CMD + r"\s*\{([^{}]*)\}$")
_TRAILING_UNIT_RE = re.compile(  # "5 \text{ cm}^2" -> ("5", "cm")
    r"^(.*?[^\s])\s*" + _TEXT_CMD
    + r"\s*\{\s*([A-Za-z][A-Za-z .]*?)\s*\}\s*(?:\^\s*\{?\s*[23]\s*\}?)?$")
_TEXT_RE = re.compile(_TEXT_CMD + r"\s*\{([^{}]*)\}")
_PLAIN_UNIT_RE = re.compile(r"^([-+]?(?:\d[\d,]*(?:\.\d+)?|\.\d+))\s+([A-Za-z][A-Za-z .]*?)\.?$")
# Words that change the value or add structure: never strip them as "units".
_NOT_UNITS = frozenset((
    "and", "or", "to", "from", "plus", "minus", "times", "over", "by", "hundred", "hundreds",
    "thousand", "thousands", "million", "millions", "billion", "billions", "trillion",
    "dozen", "dozens", "half", "halves", "third", "thirds", "quarter", "quarters", "fourth",
    "fourths", "fifth", "fifths", "tenth", "tenths", "hundredth", "hundredths", "thousandth",
    "thousandths", "pi", "sqrt", "root", "roots", "inf", "infinity", "infty", "squared",
    "cubed", "power", "percent", "percentage", "pct", "sin", "cos", "tan", "log", "ln", "exp",
    "frac"))
_ASSIGN_RE = re.compile(  # "x = 5", "f(x) = 2x", "x \in [1,2]"
    r"^[A-Za-z](?:_\{?\w+\}?)?(?:\([A-Za-z]\))?\s*(?:=|\\in(?![A-Za-z]))\s*(.+)$")
_THOUSANDS_RE = re.compile(r"^([-+]?)(\d{1,3}(?:,\d{3})+|\d{1,3}(?: \d{3})+)(\.\d+)?$")
_SPACE_AROUND_SYMBOL_RE = re.compile(r"\s*([^\w\s\\])\s*")
_CHOICE_RE = re.compile(r"^\(([A-Ea-e])\)$")
_MACRO_RE = re.compile(r"\\(frac|sqrt)(?![a-zA-Z])")
_UNICODE = str.maketrans({"\u2212": "-", "\u2013": "-", "\u00d7": "\\times ", "\u00f7": "\\div ",
                          "\u03c0": "\\pi ", "\u221e": "\\infty ", "\u00a0": " "})


def _is_units(words: str) -> bool:
    tokens = words.replace(".", " ").lower().split()
    return bool(tokens) and all(len(t) >= 2 and t not in _NOT_UNITS for t in tokens)


def _brace_macro_args(s: str) -> str:
    """Gives \\frac and \\sqrt braced arguments with TeX's one-token rule.

    `\\frac12` -> `\\frac{1}{2}`, `\\frac{270}7` -> `\\frac{270}{7}`, `\\sqrt 23` ->
    `\\sqrt{2}3`. (math-verify's own fix reads `\\frac123` as 1/23; TeX renders 1/2 * 3.)
    """
    if "\\frac" not in s and "\\sqrt" not in s:
        return s
    out: list[str] = []
    i = 0
    while i < len(s):
        m = _MACRO_RE.match(s, i)
        if not m:
            out.append(s[i])
            i += 1
            continue
        out.append(m.group(0))
        i = m.end()
        n_args = 2 if m.group(1) == "frac" else 1
        if m.group(1) == "sqrt":
            j = i
            while j < len(s) and s[j] == " ":
                j += 1
            if j < len(s) and s[j] == "[":
                close = s.find("]", j)
                if close > 0:
                    out.append(s[j:close + 1])
                    i = close + 1
        for _ in range(n_args):
            while i < len(s) and s[i] == " ":
                i += 1
            if i >= len(s):
                break
            if s[i] == "{":
                end = _match_brace(s, i)
                if end < 0:
                    out.append(s[i:])
                    i = len(s)
                    break
                arg, i = s[i + 1:end], end + 1
            elif s[i] == "\\":
                cmd = re.match(r"\\(?:[A-Za-z]+|.)", s[i:]).group(0)
                arg, i = cmd, i + len(cmd)
            else:
                arg, i = s[i], i + 1
            out.append("{" + _brace_macro_args(arg) + "}")
    return "".join(out)


def _normalize(answer: str) -> tuple[str, bool]:
    """Canonical spelling of an answer and whether it was a percentage.

    Only rewrites that cannot merge two different values: presentation (spacing,
    delimiters, \\left/\\right, \\dfrac), trailing unit words, degree signs, thousands
    separators in a lone number. The same function runs on both sides.
    """
    s = answer.translate(_UNICODE).strip()
    if "\\boxed" in s or "\\fbox" in s:
        s = _last_boxed(s) or s
    s = _clean(s) or ""
    s = _SPACE_RE.sub(" ", s)
    s = _REMOVE_RE.sub("", s)
    s = _FRAC_RE.sub(r"\\frac", s)
    s = s.replace("{,}", ",").replace("\n", " ")
    percent = False
    if _PERCENT_RE.search(s):
        percent = True
        s = _PERCENT_RE.sub("", s)
    for _ in range(3):  # units, then a unit that was inside \text{...} of a whole-text answer
        s = s.strip()
        m = _TRAILING_UNIT_RE.match(s)
        if m and _is_units(m.group(2)):
            s = m.group(1)
            continue
        m = _PLAIN_UNIT_RE.match(s)
        if m and _is_units(m.group(2)):
            s = m.group(1)
            continue
        m = _WHOLE_TEXT_RE.match(s)
        if m:
            s = m.group(1)
            continue
        break
    s = re.sub(r"\\text\{\s*\}", "", _TEXT_RE.sub(r"\\text{\1}", s))  # one spelling
    s = re.sub(r"\s+", " ", s).strip()
    s = _SPACE_AROUND_SYMBOL_RE.sub(r"\1", s)
    try:
        s = _brace_macro_args(s)
    except RecursionError:
        pass  # absurd nesting: leave it to the parsers, which fail cleanly
    s = re.sub(r"(?:\.|,|;)$", "", s)
    m = _THOUSANDS_RE.match(s)
    if m:
        s = m.group(1) + m.group(2).replace(",", "").replace(" ", "") + (m.group(3) or "")
    m = _CHOICE_RE.match(s)
    if m:
        s = m.group(1)
    if s.startswith("+") and not s.startswith("+-"):
        s = s[1:]
    return s, percent


def _strip_assignment(s: str) -> str:
    """`x=5` -> `5`, `x\\in[1,2]` -> `[1,2]` (one variable, one relation only)."""
    m = _ASSIGN_RE.match(s)
    if m and "=" not in m.group(1):
        return m.group(1)
    return s


# ------------------------------------------------------------------ exact arithmetic

_MAX_BITS = 4096  # larger results go to the (killable) symbolic path instead
_MAX_DIGITS = 1000
_TOKEN_RE = re.compile(r"\s*(\d+\.\d*|\.\d+|\d+|\\frac|\\cdot|\\times|\\div|[-+*/^(){}\[\]])")


class _NotExact(Exception):
    pass


class _ExactParser:
    """Recursive descent over + - * / ^ ( ) {} \\frac \\cdot \\times \\div and numbers.

    Anything else (letters, radicals, implicit products other than mixed numbers) raises
    _NotExact: this path only decides what it can decide exactly.
    """

    def __init__(self, s: str):
        self.tokens: list[str] = []
        pos = 0
        while pos < len(s):
            m = _TOKEN_RE.match(s, pos)
            if not m:
                if s[pos:].strip() == "":
                    break
                raise _NotExact()
            self.tokens.append(m.group(1))
            pos = m.end()
        self.i = 0

    def parse(self) -> fractions.Fraction:
        if not self.tokens:
            raise _NotExact()
        value = self.expr()
        if self.i != len(self.tokens):
            raise _NotExact()
        return value

    def peek(self) -> str | None:
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def take(self, expected: str | None = None) -> str:
        tok = self.peek()
        if tok is None or (expected is not None and tok != expected):
            raise _NotExact()
        self.i += 1
        return tok

    def expr(self) -> fractions.Fraction:
        value = self.term()
        while self.peek() in ("+", "-"):
            op = self.take()
            rhs = self.term()
            value = value + rhs if op == "+" else value - rhs
        return value

    def term(self) -> fractions.Fraction:
        value = self.unary()
        while self.peek() in ("*", "/", "\\cdot", "\\times", "\\div"):
            op = self.take()
            rhs = self.unary()
            if op in ("/", "\\div"):
                if rhs == 0:
                    raise _NotExact()
                value = value / rhs
            else:
                value = value * rhs
            _check_size(value)
        return value

    def unary(self) -> fractions.Fraction:
        if self.peek() == "-":
            self.take()
            return -self.unary()
        if self.peek() == "+":
            self.take()
            return self.unary()
        return self.power()

    def power(self) -> fractions.Fraction:
        base = self.atom()
        if self.peek() != "^":
            return base
        self.take()
        exponent = self.unary() if self.peek() in ("-", "+") else self.atom()
        if exponent.denominator != 1:
            raise _NotExact()
        e = exponent.numerator
        bits = max(base.numerator.bit_length(), base.denominator.bit_length())
        if bits * abs(e) > _MAX_BITS or (base == 0 and e < 0):
            raise _NotExact()
        return base ** e

    def atom(self) -> fractions.Fraction:
        tok = self.take()
        if tok in ("(", "{"):
            value = self.expr()
            self.take(")" if tok == "(" else "}")
            return value
        if tok == "\\frac":
            num = self.group()
            den = self.group()
            if den == 0:
                raise _NotExact()
            return num / den
        if tok[0].isdigit() or tok[0] == ".":
            if len(tok) > _MAX_DIGITS:
                raise _NotExact()
            value = fractions.Fraction(tok)
            # Mixed number: 3\frac{1}{2} = 7/2, as written in MATH answers.
            if self.peek() == "\\frac" and value.denominator == 1 and "." not in tok:
                self.take()
                num, den = self.group(), self.group()
                if den == 0 or num.denominator != 1 or den.denominator != 1 or not 0 < num < den:
                    raise _NotExact()
                return value + num / den
            return value
        raise _NotExact()

    def group(self) -> fractions.Fraction:
        self.take("{")
        value = self.expr()
        self.take("}")
        return value


def _check_size(value: fractions.Fraction) -> None:
    if max(value.numerator.bit_length(), value.denominator.bit_length()) > _MAX_BITS:
        raise _NotExact()


def _exact_value(s: str) -> fractions.Fraction | None:
    """The exact rational value of a plain arithmetic answer, or None."""
    if not s or len(s) > 2000:
        return None
    try:
        return _ExactParser(s).parse()
    except (_NotExact, ValueError, ZeroDivisionError, OverflowError, RecursionError):
        return None


# ------------------------------------------------------------------------ comparison

_AMBIGUOUS_DIGITS_RE = re.compile(r"(?<![\w^])\d+ \.?\d")  # "2 3"; not "\\log_2 8"
_WORDS_RE = re.compile(r"^[A-Za-z][A-Za-z ]+$")
_BRACKETED_RE = re.compile(r"^[(\[].*[)\]]$")
_IN_RE = re.compile(r"\\in(?![A-Za-z])")


def _fast_compare(pred: str, gold: str) -> Verdict | tuple[str, str]:
    """A Verdict if decidable in process, else the normalised (gold, pred) for sympy."""
    g, g_pct = _normalize(gold)
    p, p_pct = _normalize(pred)
    if not g:
        return Verdict(Status.CHECKER_ERROR, pred, "empty gold answer")
    if not p:
        return Verdict(Status.NO_ANSWER, pred, "empty answer")
    if p_pct and not g_pct:
        return Verdict(Status.INCORRECT, pred, "percentage given, gold is not a percentage")
    if ("=" in g) != ("=" in p) or bool(_IN_RE.search(g)) != bool(_IN_RE.search(p)):
        g, p = _strip_assignment(g), _strip_assignment(p)
    if p == g:
        return Verdict(Status.CORRECT, pred, "string")
    if _WORDS_RE.match(g) and _WORDS_RE.match(p):
        # Words are compared as words: sympy would read "east" and "seat" as the same
        # product of symbols e*a*s*t.
        same = g.lower().replace(" ", "") == p.lower().replace(" ", "")
        return Verdict(Status.CORRECT if same else Status.INCORRECT, pred, "words")
    if "," in g and "," in p and bool(_BRACKETED_RE.match(g)) != bool(_BRACKETED_RE.match(p)):
        # "(2,4)" may be an interval or a point; "2,4" is a list: never the same answer.
        return Verdict(Status.INCORRECT, pred, "bracketed vs bare list")
    if _AMBIGUOUS_DIGITS_RE.search(g):
        return Verdict(Status.CHECKER_ERROR, pred, f"gold has space-separated digits: {g!r}")
    if _AMBIGUOUS_DIGITS_RE.search(p):
        return Verdict(Status.INCORRECT, pred, f"space-separated digits are ambiguous: {p!r}")
    gv, pv = _exact_value(g), _exact_value(p)
    if gv is not None and pv is not None:
        return Verdict(Status.CORRECT if gv == pv else Status.INCORRECT, pred, "exact")
    return g, p


# --------------------------------------------------------------- symbolic (in worker)
# Everything in this section runs inside pool workers, which load this file by path.

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
                b, (sympy.MatrixBase, sympy.MatrixExpr)):
            a, b = grader.safe_sympy_doit(a), grader.safe_sympy_doit(b)
            if isinstance(a, sympy.MatrixBase) and isinstance(b, sympy.MatrixBase):
                return a.shape == b.shape and all(
                    strict_numeric_eq(x, y, 0, 0) for x, y in zip(a.flat(), b.flat(), strict=True))
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
            basic_latex=True, units=False, malformed_operators=False, nits=False,
            boxed="all", equations=False))
    return tuple(_mv.parse("$" + _exact_decimals(s) + "$", extraction_config=[config],
                           fallback_mode="no_fallback", parsing_timeout=None,
                           raise_on_error=True))


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
    if a.free_symbols or b.free_symbols or a.has(sympy.UnevaluatedExpr) or b.has(
            sympy.UnevaluatedExpr):
        return False
    x, y = a.evalf(30), b.evalf(30)
    if not (x.is_number and y.is_number) or x.has(sympy.nan, sympy.zoo) or y.has(
            sympy.nan, sympy.zoo):
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
        return Status.CHECKER_ERROR.value, f"gold does not parse: {gold!r}"
    p = _parse(pred)
    if not p:
        return Status.INCORRECT.value, "answer does not parse"
    if _certainly_different(g[0], p[0]):
        return Status.INCORRECT.value, "symbolic (values differ)"
    same = _mv.verify(g[0], p[0], timeout_seconds=None, raise_on_error=True)
    return (Status.CORRECT if same else Status.INCORRECT).value, "symbolic"


# ------------------------------------------------------------------- pool (in caller)

_pool_lock = threading.Lock()
_pool: Any = None
_cache_lock = threading.Lock()
_cache: dict[tuple[str, str], tuple[str, str]] = {}
_CACHE_SIZE = 200_000


def _get_pool(max_workers: int | None = None):
    """The process-wide pool, created on first use (and again after a fork)."""
    global _pool
    # Imported here, on the caller side only: the workers load this file by path.
    from rest_em.rewards._pool import HardTimeoutPool

    with _pool_lock:
        if _pool is not None and (_pool._pid != os.getpid() or
                                  (max_workers and _pool.max_workers != max_workers)):
            if _pool._pid == os.getpid():
                _pool.close()
            _pool = None
        if _pool is None:
            _pool = HardTimeoutPool(
                __file__, max_workers=max_workers or max(1, min(4, os.cpu_count() or 1)),
                init="_worker_init")
        return _pool


def shutdown_pool() -> None:
    """Kills the symbolic workers (they restart on the next symbolic check)."""
    global _pool
    with _pool_lock:
        if _pool is not None and _pool._pid == os.getpid():
            _pool.close()
        _pool = None


def _symbolic_verdict(key: tuple[str, str], answer: str, timeout_s: float,
                      max_workers: int | None, use_cache: bool) -> Verdict:
    from rest_em.rewards import _pool as pool_mod

    if use_cache:
        with _cache_lock:  # another thread may be clearing it
            hit = _cache.get(key)
        if hit is not None:
            status, reason = hit
            return Verdict(Status(status), answer, reason + " (cached)")
    try:
        status, reason = _get_pool(max_workers).call(
            "_symbolic_compare", *key, timeout_s=timeout_s)
    except pool_mod.TaskTimeout as e:
        return Verdict(Status.TIMEOUT, answer, str(e))
    except pool_mod.PoolError as e:
        return Verdict(Status.CHECKER_ERROR, answer, f"{type(e).__name__}: {e}")
    if use_cache and status in (Status.CORRECT.value, Status.INCORRECT.value):
        with _cache_lock:
            if len(_cache) >= _CACHE_SIZE:
                _cache.clear()
            _cache[key] = (status, reason)
    return Verdict(Status(status), answer, reason)


# ---------------------------------------------------------------------- public checks

_MAX_ANSWER_CHARS = 2000


def _in_process(response: str, gold: str, style: Style,
                fast_path: bool) -> Verdict | tuple[tuple[str, str], str]:
    """Extraction and the fast path: a Verdict, or ((gold, answer) for sympy, answer)."""
    answer = None
    try:
        answer = extract_answer(response, style)
        if answer is None:
            return Verdict(Status.NO_ANSWER, None, "no answer found")
        if len(gold) > _MAX_ANSWER_CHARS:
            return Verdict(Status.CHECKER_ERROR, answer, "gold answer too long")
        if len(answer) > _MAX_ANSWER_CHARS:  # degenerate output; also bounds regex work
            return Verdict(Status.INCORRECT, answer, "answer too long")
        if fast_path:
            fast = _fast_compare(answer, gold)
        else:
            (g, _), (p, _) = _normalize(gold), _normalize(answer)
            fast = (g, p) if g and p else Verdict(Status.CHECKER_ERROR, answer, "empty")
    except Exception as e:  # noqa: BLE001 - a checker bug must not look like "incorrect"
        return Verdict(Status.CHECKER_ERROR, answer, f"{type(e).__name__}: {e}"[:500])
    return fast if isinstance(fast, Verdict) else (fast, answer)



def check_batch(responses: Sequence[str], golds: Sequence[str], *, style: Style = "auto",
                timeout_s: float = DEFAULT_TIMEOUT_S, max_workers: int | None = None,
                use_cache: bool = True, fast_path: bool = True) -> list[Verdict]:
    """One Verdict per (response, gold) pair; symbolic checks run in parallel workers.

    Args:
      responses: model outputs; the answer is found with `extract_answer(style=style)`.
      golds: reference final answers (see `gold_answer`), e.g. "18", "\\frac{14}{3}".
      timeout_s: per symbolic check; an overrun kills that worker and yields TIMEOUT.
      max_workers: size of the shared worker pool (default min(4, cores)).
      use_cache: remember symbolic verdicts for repeated (gold, answer) pairs.
      fast_path: False sends every pair to the symbolic checker, even identical strings
        (the self-check uses it to prove each gold parses); True is the normal mode.
    """
    if len(responses) != len(golds):
        raise ValueError(f"{len(responses)} responses but {len(golds)} golds")
    extract_answer("", style)  # a bad style is the caller's error: raise it here
    verdicts: list[Verdict | None] = [None] * len(responses)
    pending: dict[tuple[str, str], list[tuple[int, str]]] = {}
    for i, (response, gold) in enumerate(zip(responses, golds)):
        fast = _in_process(response, gold, style, fast_path)
        if isinstance(fast, Verdict):
            verdicts[i] = fast
        else:
            key, answer = fast
            pending.setdefault(key, []).append((i, answer))
    if pending:
        keys = list(pending)
        n_threads = min(len(keys), _get_pool(max_workers).max_workers)

        def run(key: tuple[str, str]) -> Verdict:
            return _symbolic_verdict(key, "", timeout_s, max_workers, use_cache)

        if n_threads == 1:
            results = [run(k) for k in keys]
        else:
            with concurrent.futures.ThreadPoolExecutor(n_threads) as ex:
                results = list(ex.map(run, keys))
        for key, result in zip(keys, results):
            for i, answer in pending[key]:
                verdicts[i] = dataclasses.replace(result, answer=answer)
    return verdicts  # type: ignore[return-value]


def check(response: str, gold: str, *, style: Style = "auto",
          timeout_s: float = DEFAULT_TIMEOUT_S) -> Verdict:
    """The Verdict for one response; see check_batch."""
    return check_batch([response], [gold], style=style, timeout_s=timeout_s)[0]


def is_correct(response: str, gold: str, *, style: Style = "auto",
               timeout_s: float = DEFAULT_TIMEOUT_S) -> bool:
    """True only when the answer is verified equal to the gold.

    Timeouts and checker errors are False here (never train on an unverified sample);
    use check / check_batch to count them apart from wrong answers.
    """
    return check(response, gold, style=style, timeout_s=timeout_s).correct


# ------------------------------------------------------------------------ self-check


@dataclasses.dataclass(frozen=True)
class SelfCheckFailure:
    line: int  # 1-based line in the JSONL file
    gold: str | None
    verdict: Verdict
    mode: str  # "reference" (solution vs gold) or "symbolic" (gold vs itself, no fast path)


def _open_text(path: str):
    return gzip.open(path, "rt", encoding="utf-8") if path.endswith(".gz") else open(
        path, encoding="utf-8")


def self_check(path: str, *, field: str = "answer", timeout_s: float = DEFAULT_TIMEOUT_S,
               max_workers: int | None = None) -> tuple[int, list[SelfCheckFailure]]:
    """Checks every gold of a JSONL dataset; returns (rows, failures).

    Per row: gold = gold_answer(row[field]); then (1) the reference solution (without its
    'The answer is:' tail) must be judged CORRECT against the gold, and (2) the gold must
    equal itself through the symbolic checker alone, which proves it parses, so that an
    answer written differently can be matched at all.
    """
    with _open_text(path) as f:
        rows = [(n, json.loads(line)) for n, line in enumerate(f, 1) if line.strip()]
    failures: list[SelfCheckFailure] = []
    refs, golds, lines = [], [], []
    for n, row in rows:
        try:
            gold = gold_answer(row[field])
        except (KeyError, ValueError, TypeError) as e:
            failures.append(SelfCheckFailure(
                n, None, Verdict(Status.CHECKER_ERROR, None, f"no gold: {e}"), "reference"))
            continue
        refs.append(_strip_answer_tail(row[field]))
        golds.append(gold)
        lines.append(n)
    by_reference = check_batch(refs, golds, timeout_s=timeout_s, max_workers=max_workers)
    by_symbols = check_batch(golds, golds, style="raw", timeout_s=timeout_s,
                             max_workers=max_workers, use_cache=False, fast_path=False)
    for n, gold, v_ref, v_sym in zip(lines, golds, by_reference, by_symbols):
        if not v_ref.correct:
            failures.append(SelfCheckFailure(n, gold, v_ref, "reference"))
        elif not v_sym.correct:
            failures.append(SelfCheckFailure(n, gold, v_sym, "symbolic"))
    return len(rows), failures


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m rest_em.rewards.math",
        description="Verify every gold answer of a JSONL dataset against its own reference.")
    parser.add_argument("--self_check", metavar="FILE", required=True,
                        help="JSONL (or .jsonl.gz) with a reference solution per line")
    parser.add_argument("--field", default="answer", help="field holding the reference")
    parser.add_argument("--timeout_s", type=float, default=DEFAULT_TIMEOUT_S)
    parser.add_argument("--max_workers", type=int, default=None)
    args = parser.parse_args(argv)
    n_rows, failures = self_check(args.self_check, field=args.field, timeout_s=args.timeout_s,
                                  max_workers=args.max_workers)
    for f in failures:
        print(f"line {f.line}: {f.verdict.status.value} [{f.mode}] gold={f.gold!r} "
              f"answer={f.verdict.answer!r} reason={f.verdict.reason}")
    ok = n_rows - len(failures)
    print(f"{ok}/{n_rows} golds verify against their references "
          f"({100.0 * ok / max(n_rows, 1):.2f}%); {len(failures)} listed above")
    shutdown_pool()
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
