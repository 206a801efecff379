"""Solution steps: split a completion into steps, its prefixes, and the tokens of each step.

Per-step credit assignment (Setlur et al. 2024, arXiv 2406.14532) values every prefix
y_{1:i} of a sampled solution and puts each step's advantage on that step's tokens. This
module holds the text side of that: which characters form step i, and which completion
tokens they are. Steps keep the exact text (whitespace and newlines included), so
`"".join(steps) == completion` always holds and prefixes are plain string prefixes.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

MODES = ("newline", "sentence")

# A sentence ends at . ! or ? (optionally followed by closing quotes/brackets) and the
# whitespace after it; "3.5" or "e.g.," never split (no whitespace follows the period).
_SENTENCE_END = re.compile(r"[.!?][\"')\]]*\s+")


def _lines(text: str) -> list[str]:
    """Lines with their newline; whitespace-only lines join the previous line (or the
    next, at the very start), so a blank line is never a step of its own."""
    out: list[str] = []
    pending = ""
    for line in text.splitlines(keepends=True):
        if line.strip():
            out.append(pending + line)
            pending = ""
        elif out:
            out[-1] += line
        else:
            pending += line
    if pending:  # the text is whitespace only
        out.append(pending)
    return out


def _sentences(line: str) -> list[str]:
    """A line cut after each sentence end; the whitespace after it stays with the sentence."""
    out, start = [], 0
    for m in _SENTENCE_END.finditer(line):
        if line[m.end() :].strip():  # a trailing sentence end is the line's own end
            out.append(line[start : m.end()])
            start = m.end()
    out.append(line[start:])
    return out


def split_steps(
    completion: str, *, mode: str = "newline", max_steps: int | None = None
) -> list[str]:
    """The steps of `completion`, exact text: `"".join(split_steps(c)) == c`.

    mode "newline": one step per non-blank line (its newline included; blank lines join
    the step before them). The embedded arithmetic task and GSM8K-style solutions write
    one step per line. mode "sentence": each line further cut after ". ", "! ", "? "
    (MATH-style prose). With `max_steps`, the steps beyond it merge into the last one, so
    the number of prefixes to value (and the Monte-Carlo cost) is bounded.
    An empty completion has no steps.
    """
    if mode not in MODES:
        raise ValueError(f"mode={mode!r}; expected one of {MODES}")
    if max_steps is not None and max_steps < 1:
        raise ValueError(f"max_steps must be >= 1, got {max_steps}")
    if not completion:
        return []
    steps = _lines(completion)
    if mode == "sentence":
        steps = [s for line in steps for s in _sentences(line)]
        # A whitespace-only piece (cannot arise from _sentences, kept for safety) joins the
        # step before it.
        merged: list[str] = []
        for s in steps:
            if merged and not s.strip():
                merged[-1] += s
            else:
                merged.append(s)
        steps = merged
    if max_steps is not None and len(steps) > max_steps:
        steps = steps[: max_steps - 1] + ["".join(steps[max_steps - 1 :])]
    return steps


def prefixes(steps: Sequence[str]) -> list[str]:
    """`T + 1` prefixes of T steps: index i is steps 1..i ("" = the problem alone,
    index T = the whole completion). Q_i in `rest_em.step_values` is the value of prefix i."""
    out = [""]
    for s in steps:
        out.append(out[-1] + s)
    return out


def token_spans(
    steps: Sequence[str], completion_ids: Sequence[int], decode: Callable[[Sequence[int]], str]
) -> list[tuple[int, int]]:
    """`[start, end)` token ranges of each step in `completion_ids` (the tokens of
    `"".join(steps)`): where per-step advantages go on tokens.

    A token belongs to the step that holds its LAST character: with BPE a token such as
    " The" that starts with the space after a sentence counts for the next sentence, and a
    token "\\n" for the line it ends. Found by decoding token prefixes (binary search per
    step boundary, O(T log n) decodes), so any tokenizer with `decode` works; tokens that
    add no characters (special tokens, partial UTF-8) stay with the step before them.
    Spans are contiguous and cover all tokens; a step lying entirely inside a token of the
    next step gets an empty span. Raises ValueError when `decode(completion_ids)` is not
    the completion (a tokenizer that does not round-trip this text).
    """
    text = "".join(steps)
    n = len(completion_ids)
    if decode(list(completion_ids)) != text:
        raise ValueError(
            "decode(completion_ids) differs from the joined steps: the tokenizer "
            "does not round-trip this completion, so steps cannot be mapped to tokens"
        )
    if not steps:
        if n:
            raise ValueError("no steps but completion_ids is not empty")
        return []
    ends_cache: dict[int, int] = {}

    def chars_through(j: int) -> int:
        """Characters decoded from tokens 0..j (inclusive)."""
        if j not in ends_cache:
            ends_cache[j] = len(decode(list(completion_ids[: j + 1])))
        return ends_cache[j]

    starts = []
    pos = 0
    for s in steps:
        starts.append(pos)
        pos += len(s)
    # First token of step i (i >= 1): the first j whose last character is at or after
    # the step's first character, i.e. chars_through(j) > starts[i].
    first = [0]
    for i in range(1, len(steps)):
        lo, hi = first[-1], n
        while lo < hi:
            mid = (lo + hi) // 2
            if chars_through(mid) > starts[i]:
                hi = mid
            else:
                lo = mid + 1
        first.append(lo)
    return [(first[i], first[i + 1] if i + 1 < len(steps) else n) for i in range(len(steps))]


__all__ = ["MODES", "prefixes", "split_steps", "token_spans"]
