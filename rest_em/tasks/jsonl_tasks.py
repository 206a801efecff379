"""GSM8K and MATH from JSONL files, with few-shot prompts and the math checker.

Rows are `{"question": ..., "answer": ...}` where `answer` is the reference solution
(GSM8K: ending in `#### N`; MATH: with a final `\\boxed{}`), as in ../shared/data and
the original releases. The gold final answer is read from the reference solution; a row
whose reference has no readable final answer keeps `answer=None` and is reported and
skipped by the loop, never scored 0. A malformed row raises rest_em.errors.DataError
naming file:line and the field; a val_size that leaves no training problems raises
rest_em.errors.ConfigError.
"""

from __future__ import annotations

import dataclasses
import pathlib
import re
from collections.abc import Sequence

from rest_em.errors import ConfigError
from rest_em.rewards.status import Status
from rest_em.tasks.problems import Problem, Task, holdout, read_jsonl

_CALC = re.compile(r"<<[^<>]*>>")


def gsm8k_reference(solution: str) -> str:
    """GSM8K's solution without its calculator annotations `<<48/2=24>>`."""
    return _CALC.sub("", solution)


def load_problems(
    path: str | pathlib.Path,
    *,
    style: str,
    question_field: str = "question",
    solution_field: str = "answer",
    level_field: str | None = "level",
) -> list[Problem]:
    """Problems of a JSONL file; `style` is "gsm8k" or "math" (how the gold is read)."""
    from rest_em.rewards import math as math_reward

    problems = []
    for i, (lineno, row) in enumerate(read_jsonl(path, required=(question_field, solution_field))):
        solution = row[solution_field]
        if style == "gsm8k":
            solution = gsm8k_reference(solution)
        try:
            gold = math_reward.gold_answer(solution)
        except ValueError:
            gold = None
        level = row.get(level_field) if level_field else None
        if isinstance(level, str):
            m = re.search(r"\d+", level)
            level = int(m.group()) if m else None
        problems.append(
            Problem(
                i, row[question_field], gold, solution, level if isinstance(level, int) else None
            )
        )
        del lineno
    return problems


def _few_shot_prefix(shots: Sequence[Problem], style: str) -> str:
    return "".join(_format(p, style) + _target_text(p, style) + "\n\n" for p in shots)


def _format(problem: Problem, style: str) -> str:
    # GSM8K: no trailing space after "Answer:"; the completion starts with it (" Janet"),
    # as subword tokenizers encode words with their leading space (a prompt ending in a
    # lone space token is off-distribution, and prompt + target had a double space).
    return f"Question: {problem.question.strip()}\nAnswer:" + ("" if style == "gsm8k" else "\n")


def _target_text(problem: Problem, style: str) -> str:
    return " " + problem.solution.strip() if style == "gsm8k" else problem.solution.strip()


def _make(
    name: str, style: str, files: dict[str, str | None], num_shots: int, val_size: int
) -> Task:
    from rest_em.rewards import math as math_reward

    cache: dict[str, list[Problem]] = {}

    def raw(split: str) -> list[Problem]:
        if split not in cache:
            path = files.get(split)
            if path is None:
                raise ConfigError(f"task {name!r}: no file configured for split {split!r}")
            cache[split] = load_problems(path, style=style)
        return cache[split]

    def load(split: str) -> list[Problem]:
        """train minus the few-shot exemplars and the val tail; val = that tail."""
        if split in ("train", "val", "sft") and files.get("train"):
            return holdout(
                raw("train"),
                split,
                name=name,
                path=files["train"],
                num_shots=num_shots,
                val_size=val_size,
            )
        return raw(split)

    shots = raw("train")[:num_shots] if num_shots and files.get("train") else []
    prefix = _few_shot_prefix(shots, style)

    def prompt(p: Problem) -> str:
        return prefix + _format(p, style)

    def target(p: Problem) -> str:
        if p.solution is None:
            raise ValueError(f"{name}: problem {p.problem_id} has no reference solution")
        return _target_text(p, style)

    def extract(completion: str) -> str | None:
        return math_reward.extract_answer(_first_answer(completion), style="auto")

    def score(completions: Sequence[str], problems: Sequence[Problem]) -> list[Status]:
        cut = [_first_answer(c) for c in completions]
        golds = [p.answer for p in problems]
        return [v.status for v in math_reward.check_batch(cut, golds, style="auto")]

    def hint_prompt(p: Problem) -> str:
        """STaR's rationalization: the question with its gold answer as a hint."""
        hinted = dataclasses.replace(
            p, question=f"{p.question.strip()} (Hint: the answer is {p.answer}.)"
        )
        return prefix + _format(hinted, style)

    return Task(
        name,
        load,
        prompt,
        target,
        extract,
        score,
        hint_prompt=hint_prompt,
        data_files=tuple(str(f) for f in files.values() if f is not None),
        stop_sequences=(STOP,),
    )


STOP = "\nQuestion:"  # few-shot models go on to the next question: the sampler stops there


def _first_answer(completion: str) -> str:
    """Only the first answer counts (a completion sampled elsewhere may run on)."""
    return completion.split(STOP, 1)[0]


def gsm8k_task(
    *, train_file: str | None, test_file: str, num_shots: int = 0, val_size: int = 200
) -> Task:
    """GSM8K: the gold is the number after `####`."""
    return _make("gsm8k", "gsm8k", {"train": train_file, "test": test_file}, num_shots, val_size)


def math_task(
    *, train_file: str | None, test_file: str, num_shots: int = 0, val_size: int = 200
) -> Task:
    """MATH (Hendrycks et al.): the gold is the last `\\boxed{}` of the reference."""
    return _make("math", "math", {"train": train_file, "test": test_file}, num_shots, val_size)


GIN_CONFIGURABLES = (gsm8k_task, math_task)
