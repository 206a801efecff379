"""The embedded task: multi-step integer arithmetic with worked, checkable solutions.

A level-L problem chains L additions/subtractions of numbers in [1, 99]:

    prompt:    "Q: 41+7-19\n"
    solution:  "41+7=48\n48-19=29\n#### 29"

The solution works left to right, one step per line, and ends with the GSM8K-style
"#### N" the checker reads. Problems come from a seeded generator; train / val / test
never share a question. Why this task: answers are exactly verifiable, difficulty is a
dial (the number of steps), and a byte-level model of a few million parameters learns it
on a CPU in minutes, so the whole ReST^EM loop can be watched end to end.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence

import numpy as np

from rest_em.tasks.problems import Problem, Task

ANSWER_RE = re.compile(r"####\s*(-?\d+)\s*$")
_SPLIT_OFFSETS = {"test": 0, "val": 1, "train": 2, "sft": 3}


def make_problem(rng: np.random.Generator, level: int, problem_id: int,
                 max_operand: int = 9, max_value: int | None = 19) -> Problem:
    """A level-`level` problem. With `max_value`, each operator is chosen so the running
    value stays within [0, max_value] (small facts, long chains); None: any sign."""
    nums = rng.integers(1, max_operand + 1, size=level + 1)
    value, steps, question = int(nums[0]), [], str(nums[0])
    for n in (int(x) for x in nums[1:]):
        op = "+" if rng.random() < 0.5 else "-"
        if max_value is not None:
            if value + n > max_value:
                op = "-"
            elif value - n < 0:
                op = "+"
        new = value + n if op == "+" else value - n
        steps.append(f"{value}{op}{n}={new}")
        question += f"{op}{n}"
        value = new
    solution = "\n".join(steps) + f"\n#### {value}"
    return Problem(problem_id, question, str(value), solution, level)


@functools.lru_cache(maxsize=32)
def generate(split: str, *, num_problems: int, levels: tuple[int, ...], seed: int = 0,
             max_operand: int = 9) -> tuple[Problem, ...]:
    """`num_problems` problems spread evenly over `levels`, deterministic in (split, seed).

    Questions of earlier splits in the order test, val, train, sft are excluded from
    later ones, so no split leaks into another.
    """
    if split not in _SPLIT_OFFSETS:
        raise ValueError(f"unknown split {split!r}; expected one of {list(_SPLIT_OFFSETS)}")
    taken: set[str] = set()
    for earlier, offset in _SPLIT_OFFSETS.items():
        if offset >= _SPLIT_OFFSETS[split]:
            break
        taken |= _questions(earlier, seed, max_operand)
    rng = np.random.default_rng([seed, _SPLIT_OFFSETS[split]])
    out, seen = [], set()
    i = 0
    while len(out) < num_problems:
        level = levels[i % len(levels)]
        p = make_problem(rng, level, len(out), max_operand)
        i += 1
        if p.question in taken or p.question in seen:
            continue
        seen.add(p.question)
        out.append(p)
    return tuple(out)


# Sizes of the held-out splits; fixed so that train problems never collide with them.
HELD_OUT = {"test": 500, "val": 200}
ALL_LEVELS = (1, 2, 3, 4)


@functools.lru_cache(maxsize=8)
def _questions(split: str, seed: int, max_operand: int) -> frozenset[str]:
    if split in HELD_OUT:
        return frozenset(p.question for p in generate(split, num_problems=HELD_OUT[split],
                                                       levels=ALL_LEVELS, seed=seed,
                                                       max_operand=max_operand))
    return frozenset()


def prompt(problem: Problem) -> str:
    return f"Q: {problem.question}\n"


def target(problem: Problem) -> str:
    if problem.solution is None:
        raise ValueError(f"problem {problem.problem_id} has no reference solution")
    return problem.solution


def extract(completion: str) -> str | None:
    """The integer after the last '####' (the completion's end), else None."""
    m = ANSWER_RE.search(completion.strip())
    return m.group(1) if m else None


def score(completions: Sequence[str], golds: Sequence[str]) -> list[str]:
    """Exact integer match; in-process (integers need no sandbox or timeout)."""
    out = []
    for c, g in zip(completions, golds, strict=True):
        a = extract(c)
        out.append("no_answer" if a is None else "correct" if int(a) == int(g) else "incorrect")
    return out


def make_task(*, num_train: int = 2000, sft_levels: tuple[int, ...] = (1, 2),
              num_sft: int = 300, levels: tuple[int, ...] = ALL_LEVELS, seed: int = 0,
              max_operand: int = 9, num_val: int | None = None,
              num_test: int | None = None) -> Task:
    """The task with splits: sft (worked solutions of easy problems: the base model's
    data), train (all levels: the E-step's problems), val (checkpoint selection), test.
    num_val / num_test take a prefix of the fixed held-out splits (small test runs)."""
    sizes = {"val": num_val, "test": num_test}
    if not set(levels) <= set(ALL_LEVELS) or not set(sft_levels) <= set(ALL_LEVELS):
        raise ValueError(f"levels must be within {ALL_LEVELS}")

    def load(split: str) -> list[Problem]:
        if split == "sft":
            return list(generate("sft", num_problems=num_sft, levels=sft_levels, seed=seed,
                                 max_operand=max_operand))
        if split == "train":
            return list(generate("train", num_problems=num_train, levels=levels, seed=seed,
                                 max_operand=max_operand))
        if split in HELD_OUT:
            held = generate(split, num_problems=HELD_OUT[split], levels=ALL_LEVELS, seed=seed,
                            max_operand=max_operand)
            return [p for p in held if p.level in levels][: sizes[split]]
        raise ValueError(f"unknown split {split!r}; expected sft, train, val or test")

    return Task("arithmetic", load, prompt, target, extract, score)
