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



@dataclasses.dataclass(frozen=True)
class Problem:
    """One problem. problem_id is stable (dataset index): it fixes the sampler's keys."""

    problem_id: int
    question: str
    answer: str | None           # the gold final answer; None = cannot be scored
    solution: str | None = None  # a reference (human-written) worked solution
    level: int | None = None     # difficulty, for per-level breakdowns


@dataclasses.dataclass(frozen=True)
class Task:
    """Everything task-specific the EM loop needs.

    load(split) -> problems; prompt(problem) -> text the model continues;
    target(problem) -> reference completion text (SFT); extract(completion) -> answer or
    None (for maj@k); score(completions, problems) -> one status per item: "correct",
    "incorrect", "no_answer", "checker_error" or "timeout" (only "correct" earns reward 1).
    hint_prompt(problem) (optional) -> the prompt with the gold answer given as a hint,
    for STaR's rationalization of problems the model could not solve.
    """

    name: str
    load: Callable[[str], list[Problem]]
    prompt: Callable[[Problem], str]
    target: Callable[[Problem], str]
    extract: Callable[[str], str | None]
    score: Callable[[Sequence[str], Sequence["Problem"]], list[str]]
    hint_prompt: Callable[[Problem], str] | None = None  # the prompt + gold answer (STaR)


class DataError(ValueError):
    """Bad input data; the message names the file, line and field."""


def read_jsonl(path: str | pathlib.Path, *, required: Sequence[str]) -> list[tuple[int, dict]]:
    """(line number, row) pairs of a JSONL (or .jsonl.gz) file; malformed rows fail with
    file:line: field."""
    path = pathlib.Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    rows = []
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{lineno}: invalid JSON ({e.msg} at column {e.colno})") from None
            if not isinstance(row, dict):
                raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
            for field in required:
                if field not in row:
                    raise DataError(f"{path}:{lineno}: missing field {field!r}")
                if not isinstance(row[field], str):
                    raise DataError(f"{path}:{lineno}: field {field!r} must be a string, "
                                    f"got {type(row[field]).__name__}")
            rows.append((lineno, row))
    return rows
