"""Math equivalence, in process: normalised spelling, then exact rational arithmetic.

`_fast_compare(answer, gold)` decides what it can without sympy and precision first (a
false positive trains on a wrong solution): the same normalised spelling (spacing,
`\\left`, `\\dfrac`, `\\text{}` units, `^\\circ`, thousands separators, `x =`
prefixes, `\\$`), words compared as words, and every pair of plain numbers (integers,
decimals, fractions, mixed numbers, `+-*/^`) by exact rational value, with no tolerance
(1.0001 != 1, 5 != 500). What it cannot decide it hands back normalised, for the
symbolic checker in the pool workers (`_math_symbolic.py`, via `math_check`).

Percentages: `%` is only meaningful when the gold is a percentage. Gold `25\\%` accepts
`25\\%` and `25` (not 0.25: no x100 leniency); a `%` answer to a gold without one is
incorrect. Standard library only.
"""

from __future__ import annotations

import dataclasses
import fractions
import re

from rest_em.rewards.math_answers import _clean, _last_boxed, _match_brace
from rest_em.rewards.status import Status

__all__ = ["Verdict"]


@dataclasses.dataclass(frozen=True)
class Verdict:
    """A status plus what was compared and which rule decided (for audits and logs)."""

    status: Status
    answer: str | None = None  # the answer extracted from the response
    reason: str = ""

    @property
    def correct(self) -> bool:
        return self.status is Status.CORRECT


# ---------------------------------------------------------------------- normalisation

_REMOVE_RE = re.compile(
    r"\\left\.|\\right\.|\\left(?![a-zA-Z])|\\right(?![a-zA-Z])|\\displaystyle|(?<!\\)\\!|"
    r"\^\s*\{\s*\\circ\s*\}|\^\s*\\circ|°|\\degree|\\\$|\$"
)
_SPACE_RE = re.compile(r"(?<!\\)\\[,;: ]|\\q?quad(?![a-zA-Z])|~")
_FRAC_RE = re.compile(r"\\[dtc]frac(?![a-zA-Z])")
_PERCENT_RE = re.compile(
    r"\\%|%|\\text\{\s*\\?%\s*\}|\s*\b(?:percent|percentage|pct)\b", re.IGNORECASE
)
_TEXT_CMD = r"\\(?:text|textrm|textnormal|textbf|textit|mbox|mathrm)"
_WHOLE_TEXT_RE = re.compile(r"^" + _TEXT_CMD + r"\s*\{([^{}]*)\}$")
_TRAILING_UNIT_RE = re.compile(  # "5 \text{ cm}^2" -> ("5", "cm")
    r"^(.*?[^\s])\s*"
    + _TEXT_CMD
    + r"\s*\{\s*([A-Za-z][A-Za-z .]*?)\s*\}\s*(?:\^\s*\{?\s*[23]\s*\}?)?$"
)
_TEXT_RE = re.compile(_TEXT_CMD + r"\s*\{([^{}]*)\}")
_PLAIN_UNIT_RE = re.compile(r"^([-+]?(?:\d[\d,]*(?:\.\d+)?|\.\d+))\s+([A-Za-z][A-Za-z .]*?)\.?$")
# Words that change the value or add structure: never strip them as "units".
_NOT_UNITS = frozenset(
    (
        "and",
        "or",
        "to",
        "from",
        "plus",
        "minus",
        "times",
        "over",
        "by",
        "hundred",
        "hundreds",
        "thousand",
        "thousands",
        "million",
        "millions",
        "billion",
        "billions",
        "trillion",
        "dozen",
        "dozens",
        "half",
        "halves",
        "third",
        "thirds",
        "quarter",
        "quarters",
        "fourth",
        "fourths",
        "fifth",
        "fifths",
        "tenth",
        "tenths",
        "hundredth",
        "hundredths",
        "thousandth",
        "thousandths",
        "pi",
        "sqrt",
        "root",
        "roots",
        "inf",
        "infinity",
        "infty",
        "squared",
        "cubed",
        "power",
        "percent",
        "percentage",
        "pct",
        "sin",
        "cos",
        "tan",
        "log",
        "ln",
        "exp",
        "frac",
    )
)
_ASSIGN_RE = re.compile(  # "x = 5", "f(x) = 2x", "x \in [1,2]"
    r"^[A-Za-z](?:_\{?\w+\}?)?(?:\([A-Za-z]\))?\s*(?:=|\\in(?![A-Za-z]))\s*(.+)$"
)
_THOUSANDS_RE = re.compile(r"^([-+]?)(\d{1,3}(?:,\d{3})+|\d{1,3}(?: \d{3})+)(\.\d+)?$")
_SPACE_AROUND_SYMBOL_RE = re.compile(r"\s*([^\w\s\\])\s*")
_CHOICE_RE = re.compile(r"^\(([A-Ea-e])\)$")
_MACRO_RE = re.compile(r"\\(frac|sqrt)(?![a-zA-Z])")
_UNICODE = str.maketrans(
    {
        "\u2212": "-",
        "\u2013": "-",
        "\u00d7": "\\times ",
        "\u00f7": "\\div ",
        "\u03c0": "\\pi ",
        "\u221e": "\\infty ",
        "\u00a0": " ",
    }
)


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
                    out.append(s[j : close + 1])
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
                arg, i = s[i + 1 : end], end + 1
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
        return base**e

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
