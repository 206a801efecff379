"""Problems and tasks: what the EM loop samples for, scores and trains on.

A `Task` is plain Python (no seqio): the loop needs prompts, gold answers and a checker.
`rest_em.tasks.seqio_tasks` registers the same data as seqio Tasks for seqio pipelines.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import pathlib
from collections.abc import Callable, Sequence
from typing import Any

from rest_em.errors import ConfigError, DataError
from rest_em.rewards.status import Status

__all__ = [
    "DataError",
    "Problem",
    "Status",
    "Task",
    "holdout",
    "level_shares",
    "next_level",
    "read_jsonl",
    "weighted_levels",
]


@dataclasses.dataclass(frozen=True)
class Problem:
    """One problem. problem_id is stable (dataset index): it fixes the sampler's keys."""

    problem_id: int
    question: str
    answer: str | None  # the gold final answer (None: scored by `tests`, or not at all)
    solution: str | None = None  # a reference (human-written) worked solution
    level: int | None = None  # difficulty, for per-level breakdowns
    # Code tasks: the hidden tests (`rest_em.rewards.code` AssertTests, IOTests,
    # CallTests) the sandbox runs a sampled program against.
    tests: Any = dataclasses.field(default=None, compare=False, hash=False)

    @property
    def scorable(self) -> bool:
        """A gold answer or tests: a problem without either is skipped, never scored 0."""
        return self.tests is not None or (
            self.answer is not None and bool(str(self.answer).strip())
        )


@dataclasses.dataclass(frozen=True)
class Task:
    """Everything task-specific the EM loop needs.

    load(split) -> problems; prompt(problem) -> text the model continues;
    target(problem) -> reference completion text (SFT); extract(completion) -> answer or
    None (for maj@k); score(completions, problems) -> one `Status` per item: CORRECT,
    INCORRECT, NO_ANSWER, CHECKER_ERROR or TIMEOUT (only CORRECT earns reward 1; a
    Status is a str, equal to and written as "correct", "incorrect", ...).
    hint_prompt(problem) (optional) -> the prompt with the gold answer given as a hint,
    for STaR's rationalization of problems the model could not solve.
    majority_vote: `extract` gives answers to vote on (maj@k is reported); code tasks
    have none. scoring_stats (optional) -> the checker's counters since the last call
    (code tasks: programs run, seconds in the sandbox, isolation), for the metrics.
    """

    name: str
    load: Callable[[str], list[Problem]]
    prompt: Callable[[Problem], str]
    target: Callable[[Problem], str]
    extract: Callable[[str], str | None]
    score: Callable[[Sequence[str], Sequence[Problem]], list[Status]]
    hint_prompt: Callable[[Problem], str] | None = None  # the prompt + gold answer (STaR)
    data_files: tuple[str, ...] = ()  # files `load` reads: their hashes join the fingerprint
    # Where a completion ends (few-shot separators, HumanEval's "\ndef"): the sampler
    # stops there and the E-step stores, scores and trains on the text before it.
    stop_sequences: tuple[str, ...] = ()
    majority_vote: bool = True
    scoring_stats: Callable[[], dict[str, Any]] | None = None


def level_shares(levels: Sequence[int], weights: Sequence[float] | None) -> dict[int, float]:
    """`weights` (one per level) normalised to shares; None: equal shares."""
    if weights is None:
        weights = [1.0] * len(levels)
    if len(weights) != len(levels) or min(weights) < 0 or sum(weights) <= 0:
        raise ConfigError(
            f"level weights {tuple(weights)} must be one non-negative weight per level "
            f"{tuple(levels)}, not all zero"
        )
    return {lv: w / sum(weights) for lv, w in zip(levels, weights)}


def next_level(shares: dict[int, float], counts: dict[int, int], live: Sequence[int]) -> int:
    """The level the next problem goes to: the live level with the largest share per
    problem it already has (D'Hondt; ties to the earlier level). Equal shares give
    round-robin; a level that runs out (not live) leaves its place to the others in
    proportion to their shares."""
    return max(live, key=lambda lv: shares[lv] / (counts[lv] + 1))


def weighted_levels(levels: Sequence[int], weights: Sequence[float], n: int) -> list[int]:
    """The levels of problems 0..n-1: every prefix as close to `weights` as whole counts
    allow (`next_level`). Equal weights give round-robin in order."""
    shares = level_shares(levels, weights)
    counts = dict.fromkeys(levels, 0)
    out = []
    for _ in range(n):
        level = next_level(shares, counts, levels)
        counts[level] += 1
        out.append(level)
    return out


def read_jsonl(path: str | pathlib.Path, *, required: Sequence[str]) -> list[tuple[int, dict]]:
    """(line number, row) pairs of a JSONL (or .jsonl.gz) file.

    Raises rest_em.errors.DataError naming file:line and what is wrong with the row:
    `data.jsonl:7: field "answer" is missing`, `...: field "question" must be a string,
    got int`, `...: invalid JSON (...)`, `...: not UTF-8 text`; or `data.jsonl: no such
    file`. Blank lines are skipped (and counted).
    """
    path = pathlib.Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file")
    rows = []
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:  # bytes: a decoding error names its own line
            for lineno, raw in enumerate(f, 1):
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise DataError(
                        f"{path}:{lineno}: not UTF-8 text ({e.reason} at byte {e.start})"
                    ) from None
                if line.strip():
                    rows.append((lineno, _parse_row(path, lineno, line, required)))
    except (OSError, EOFError) as e:  # e.g. a truncated or corrupt .gz
        raise DataError(f"{path}: cannot read: {e}") from None
    return rows


def _parse_row(path: pathlib.Path, lineno: int, line: str, required: Sequence[str]) -> dict:
    where = f"{path}:{lineno}"
    try:
        row = json.loads(line)
    except json.JSONDecodeError as e:
        raise DataError(f"{where}: invalid JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(row, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(row).__name__}")
    for field in required:
        if field not in row:
            raise DataError(f"{where}: field {json.dumps(field)} is missing")
        if not isinstance(row[field], str):
            raise DataError(
                f"{where}: field {json.dumps(field)} must be a string, "
                f"got {type(row[field]).__name__}"
            )
    return row


def holdout(
    rows: Sequence[Problem],
    split: str,
    *,
    name: str,
    path: str | pathlib.Path,
    num_shots: int = 0,
    val_size: int = 0,
) -> list[Problem]:
    """A training file's split: the rows after the `num_shots` few-shot exemplars, minus
    a `val_size` tail ("train", "sft"), or that tail ("val")."""
    rest = list(rows[num_shots:])
    if val_size < 0:
        raise ConfigError(f"task {name!r}: val_size must be >= 0, got {val_size}")
    if val_size >= len(rest):
        exemplars = f", {num_shots} of them few-shot exemplars" if num_shots else ""
        raise ConfigError(
            f"task {name!r}: val_size={val_size} leaves no training problems: "
            f"{path} has {len(rows)} rows{exemplars}; use a smaller "
            f"val_size or a larger file"
        )
    cut = len(rest) - val_size
    return rest[cut:] if split == "val" else rest[:cut]
