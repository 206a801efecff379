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
or TIMEOUT (`rest_em.rewards.status.Status`, a str enum); `check_batch` returns one per
item so callers can count them apart.

This module is the public face of the checker; the parts live one concept per file:

  math_answers.py      extract_answer, gold_answer (finding the final answer)
  math_equivalence.py  Verdict; normalisation and exact arithmetic (layers 1 and 2)
  _math_symbolic.py    layer 3, loaded by path inside the pool workers
  math_check.py        check_batch / check / is_correct, the worker pool and its cache

None of them imports sympy, math-verify, JAX or TensorFlow in the caller's process.
Self-check a dataset's golds with `python -m rest_em.rewards.math --self_check FILE.jsonl`.
"""

from __future__ import annotations

import argparse
import dataclasses
import gzip
import json
import sys
from collections.abc import Sequence

from rest_em.rewards.math_answers import STYLES, _strip_answer_tail, extract_answer, gold_answer
from rest_em.rewards.math_check import (
    DEFAULT_TIMEOUT_S,
    check,
    check_batch,
    is_correct,
    shutdown_pool,
)
from rest_em.rewards.math_equivalence import Verdict
from rest_em.rewards.status import Status

__all__ = [
    "DEFAULT_TIMEOUT_S",
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


@dataclasses.dataclass(frozen=True)
class SelfCheckFailure:
    line: int  # 1-based line in the JSONL file
    gold: str | None
    verdict: Verdict
    mode: str  # "reference" (solution vs gold) or "symbolic" (gold vs itself, no fast path)


def _open_text(path: str):
    return (
        gzip.open(path, "rt", encoding="utf-8")
        if path.endswith(".gz")
        else open(path, encoding="utf-8")
    )


def self_check(
    path: str,
    *,
    field: str = "answer",
    timeout_s: float = DEFAULT_TIMEOUT_S,
    max_workers: int | None = None,
) -> tuple[int, list[SelfCheckFailure]]:
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
            failures.append(
                SelfCheckFailure(
                    n, None, Verdict(Status.CHECKER_ERROR, None, f"no gold: {e}"), "reference"
                )
            )
            continue
        refs.append(_strip_answer_tail(row[field]))
        golds.append(gold)
        lines.append(n)
    by_reference = check_batch(refs, golds, timeout_s=timeout_s, max_workers=max_workers)
    by_symbols = check_batch(
        golds,
        golds,
        style="raw",
        timeout_s=timeout_s,
        max_workers=max_workers,
        use_cache=False,
        fast_path=False,
    )
    for n, gold, v_ref, v_sym in zip(lines, golds, by_reference, by_symbols):
        if not v_ref.correct:
            failures.append(SelfCheckFailure(n, gold, v_ref, "reference"))
        elif not v_sym.correct:
            failures.append(SelfCheckFailure(n, gold, v_sym, "symbolic"))
    return len(rows), failures


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m rest_em.rewards.math",
        description="Verify every gold answer of a JSONL dataset against its own reference.",
    )
    parser.add_argument(
        "--self_check",
        metavar="FILE",
        required=True,
        help="JSONL (or .jsonl.gz) with a reference solution per line",
    )
    parser.add_argument("--field", default="answer", help="field holding the reference")
    parser.add_argument("--timeout_s", type=float, default=DEFAULT_TIMEOUT_S)
    parser.add_argument("--max_workers", type=int, default=None)
    args = parser.parse_args(argv)
    n_rows, failures = self_check(
        args.self_check, field=args.field, timeout_s=args.timeout_s, max_workers=args.max_workers
    )
    for f in failures:
        print(
            f"line {f.line}: {f.verdict.status.value} [{f.mode}] gold={f.gold!r} "
            f"answer={f.verdict.answer!r} reason={f.verdict.reason}"
        )
    ok = n_rows - len(failures)
    print(
        f"{ok}/{n_rows} golds verify against their references "
        f"({100.0 * ok / max(n_rows, 1):.2f}%); {len(failures)} listed above"
    )
    shutdown_pool()
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
