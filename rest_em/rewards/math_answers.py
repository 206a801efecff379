"""Math answers: find the final answer in a model response or a reference solution.

`extract_answer(text, style)` reads what a response claims (the last `\\boxed{}`, GSM8K's
`#### N`, "The answer is ...", a final `A: N` line, or a regex of your own);
`gold_answer(solution)` reads the gold from a reference solution (GSM8K, MATH, and the
MetaMath/MATH-500 layout ending in "The answer is: X"). Nothing here compares answers:
see `rest_em.rewards.math_equivalence`. Standard library only.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

__all__ = ["AUTO", "STYLES", "Style", "extract_answer", "gold_answer"]

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
        return text[i + 1 : end] if end >= 0 else None  # truncated: no answer, not a guess
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
                s = s[len(left) : len(s) - len(right)].strip()
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
    for candidate in (
        _extract_gsm8k(reference_solution),
        tail.group(1) if tail else None,
        _last_boxed(reference_solution),
    ):
        answer = _clean(candidate)
        if answer is not None:
            return answer
    raise ValueError(f"no final answer in reference solution: {reference_solution[-200:]!r}")


def _strip_answer_tail(reference_solution: str) -> str:
    """The solution without its 'The answer is: X' line, so the self-check reads the
    \\boxed{} answer of the solution itself."""
    tail = _answer_tail(reference_solution)
    if tail and _last_boxed(reference_solution[: tail.start()]) is not None:
        return reference_solution[: tail.start()]
    return reference_solution
