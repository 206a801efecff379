"""The embedded task: multi-step integer arithmetic with worked, checkable solutions.

A level-L problem chains L additions/subtractions (L in 2..5) of numbers in [1, 9], the
running value kept within [0, 19]:

    prompt:    "Q: 41+7-19\n"
    solution:  "41+7=48\n48-19=29\n#### 29"

The solution works left to right, one step per line, and ends with the GSM8K-style
"#### N" the checker reads. Problems come from a seeded generator; no test or val
question appears in another split. Why this task: answers are exactly verifiable, difficulty is a
dial (the number of steps), and a byte-level model of a few million parameters learns it
on a CPU in minutes, so the whole ReST^EM loop can be watched end to end.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Sequence

import numpy as np

from rest_em.errors import ConfigError
from rest_em.rewards.status import Status
from rest_em.tasks.problems import Problem, Task, weighted_levels

ANSWER_RE = re.compile(r"####\s*(-?\d+)\s*$")
_SPLIT_OFFSETS = {"test": 0, "val": 1, "train": 2, "sft": 3}


def make_problem(
    rng: np.random.Generator,
    level: int,
    problem_id: int,
    max_operand: int = 9,
    max_value: int | None = 19,
    style: str = "chain",
    first_max: int | None = None,
) -> Problem:
    """A level-`level` problem. With `max_value`, each operator is chosen so the running
    value stays within [0, max_value] (small facts, long chains); None: any sign.

    style "chain": one "a+b=c" line per step; "rewrite": each line is the expression
    left after evaluating its first operation (local steps that extend to any length).
    """
    if style not in ("chain", "rewrite"):
        raise ValueError(f"style={style!r}; expected 'chain' or 'rewrite'")
    nums = [int(x) for x in rng.integers(1, max_operand + 1, size=level + 1)]
    if first_max is not None:  # a larger first number: a wide answer range, few lucky guesses
        nums[0] = int(rng.integers(10, first_max + 1))
    value, steps, question, ops = nums[0], [], str(nums[0]), []
    for n in nums[1:]:
        op = "+" if rng.random() < 0.5 else "-"
        if max_value is not None:
            if value + n > max_value:
                op = "-"
            elif value - n < 0:
                op = "+"
        new = value + n if op == "+" else value - n
        steps.append(f"{value}{op}{n}={new}")
        question += f"{op}{n}"
        ops.append(op)
        value = new
    if style == "rewrite":
        steps, acc = [], nums[0]
        for i, (op, n) in enumerate(zip(ops, nums[1:])):
            acc = acc + n if op == "+" else acc - n
            steps.append(str(acc) + "".join(f"{o}{m}" for o, m in zip(ops[i + 1 :], nums[i + 2 :])))
    solution = "\n".join(steps) + f"\n#### {value}"
    return Problem(problem_id, question, str(value), solution, level)


@functools.lru_cache(maxsize=32)
def generate(
    split: str,
    *,
    num_problems: int,
    levels: tuple[int, ...],
    seed: int = 0,
    max_operand: int = 9,
    style: str = "chain",
    level_weights: tuple[float, ...] | None = None,
) -> tuple[Problem, ...]:
    """`num_problems` problems spread evenly over `levels`, deterministic in (split, seed).

    Held-out questions (test, then val, and the transfer task's) never appear in a later
    split; sft and train may share questions (as human solutions and model samples of
    the same problems do).
    `level_weights` (one per level) spreads them in those proportions instead, levels
    interleaved (`weighted_levels`).
    """
    if split not in _SPLIT_OFFSETS:
        raise ValueError(f"unknown split {split!r}; expected one of {list(_SPLIT_OFFSETS)}")
    taken: set[str] = set()
    for earlier, offset in _SPLIT_OFFSETS.items():
        if offset >= _SPLIT_OFFSETS[split]:
            break
        taken |= _questions(earlier, seed, max_operand)
    if split in ("train", "sft"):
        taken |= {p.question for p in generate_transfer(seed=seed)}
    rng = np.random.default_rng([seed, _SPLIT_OFFSETS[split]])
    schedule = (
        None if level_weights is None else weighted_levels(levels, level_weights, num_problems)
    )
    out, seen = [], set()
    i = 0
    while len(out) < num_problems:
        if i > 50 * num_problems + 1000:
            raise ValueError(
                f"cannot draw {num_problems} distinct {split} problems of levels "
                f"{levels} with max_operand={max_operand}: too few exist"
            )
        level = levels[i % len(levels)] if schedule is None else schedule[len(out)]
        p = make_problem(rng, level, len(out), max_operand, style=style)
        i += 1
        if p.question in taken or p.question in seen:
            continue
        seen.add(p.question)
        out.append(p)
    return tuple(out)


# Sizes of the held-out splits; fixed so that train problems never collide with them.
HELD_OUT = {"test": 500, "val": 200}
ALL_LEVELS = (2, 3, 4, 5)


@functools.lru_cache(maxsize=8)
def _questions(split: str, seed: int, max_operand: int) -> frozenset[str]:
    if split in HELD_OUT:
        return frozenset(
            p.question
            for p in generate(
                split,
                num_problems=HELD_OUT[split],
                levels=ALL_LEVELS,
                seed=seed,
                max_operand=max_operand,
            )
        )
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


_LINE_RE = re.compile(r"^(-?\d+)((?:[+-]\d+)+)=(-?\d+)$")
_OP_RE = re.compile(r"([+-])(\d+)")
_WORDS = {"+": " plus ", "-": " minus ", "=": " is "}  # `human_solution`'s style


def _unword(line: str) -> str:
    """A worded or spaced line ("7 plus 8 is 15", "7 + 8 = 15": `human_solution`'s
    styles) in symbols ("7+8=15")."""
    for sym, word in _WORDS.items():
        line = line.replace(word, sym)
    return line.replace(" ", "")


def steps_are_correct(completion: str, question: str) -> bool:
    """Every written line applies the question's next operation(s), in order, to the
    running value with true arithmetic ("7+8=15", "7 plus 8 is 15", "7 + 8 = 15" or, tersely,
    "7+8-3=12"), and the
    lines use up the question: a verifier of the whole solution, not just its answer."""
    ops = _OP_RE.findall(question[len(question.split("+")[0].split("-")[0]) :])
    value = int(re.match(r"\d+", question).group())
    lines = completion.strip().split("\n")[:-1]
    if not lines:
        return False
    i = 0
    for line in lines:
        m = _LINE_RE.match(_unword(line.strip()))
        if m is None or int(m[1]) != value:
            return False
        line_ops = _OP_RE.findall(m[2])
        if [(o, n) for o, n in line_ops] != ops[i : i + len(line_ops)]:
            return False
        for o, n in line_ops:
            value = value + int(n) if o == "+" else value - int(n)
        i += len(line_ops)
        if int(m[3]) != value:
            return False
    return i == len(ops)


_STEP_RE = re.compile(r"^(-?\d+)([+-])(\d+)=(-?\d+)$")


HUMAN_STYLES = {
    "worded": lambda a, op, b, c: f"{a}{_WORDS[op]}{b}{_WORDS['=']}{c}",  # 41 plus 7 is 48
    "spaced": lambda a, op, b, c: f"{a} {op} {b} = {c}",  # 41 + 7 = 48
}


def human_solution(problem: Problem, style: str = "worded") -> str:
    """A "human-written" solution: one operation per line, like the worked solutions,
    but written as people write it by hand ("spaced": "41 + 7 = 48") or in words
    ("worded": "41 plus 7 is 48") where the model's own style writes "41+7=48".

    This is the data of the SFT-on-human-solutions baseline (the paper's Table 1
    "SFT"): correct and learnable, in a style the model did not produce itself. The
    checker (`steps_are_correct`) reads every style. `problem.solution`: chain style.
    """
    if style not in HUMAN_STYLES:
        raise ConfigError(f"human_style={style!r}; expected one of {list(HUMAN_STYLES)}")
    *steps, answer = target(problem).split("\n")
    lines = [HUMAN_STYLES[style](*_STEP_RE.match(step).groups()) for step in steps]
    return "\n".join([*lines, answer])


def hint_prompt(problem: Problem) -> str:
    """The prompt with the gold answer as a hint (STaR's rationalization)."""
    return f"Q: {problem.question} (answer {problem.answer})\n"


NUM_TRANSFER = 300  # fixed, like HELD_OUT: train and sft never hold these questions


@functools.lru_cache(maxsize=8)
def generate_transfer(*, seed: int = 0, levels: tuple[int, ...] = (2, 3, 4)) -> tuple[Problem, ...]:
    """The transfer task's problems: levels 2-4 like the test split's, none of them a
    test, val, train or sft question (train and sft exclude them)."""
    held = _questions("test", seed, 9) | _questions("val", seed, 9)
    rng = np.random.default_rng([seed, 5])
    out: list[Problem] = []
    seen: set[str] = set()
    i = 0
    while len(out) < NUM_TRANSFER:
        p = make_problem(rng, levels[i % len(levels)], len(out))
        i += 1
        if p.question not in held and p.question not in seen:
            seen.add(p.question)
            out.append(p)
    return tuple(out)


def transfer_prompt(problem: Problem) -> str:
    """The same arithmetic asked another way ("Question: 41+7-19" where every other split
    asks "Q: 41+7-19"): held out, related, and within reach of the base model. Measured
    on a base of the default testbed: unseen digits (two-digit operands, values 20-29),
    spaces around the operators and worded operators all score 0; this one does not."""
    return f"Question: {problem.question}\n"


def score(
    completions: Sequence[str], problems: Sequence[Problem], *, verify_steps: bool = False
) -> list[Status]:
    """Exact integer match of the final answer; in-process (integers need no sandbox).

    verify_steps (chain style) also checks every written step against the question, so
    a right answer reached through compensating mistakes is not a positive.
    """
    out = []
    for c, p in zip(completions, problems, strict=True):
        a = extract(c)
        if a is None:
            out.append(Status.NO_ANSWER)
        elif int(a) != int(p.answer) or (verify_steps and not steps_are_correct(c, p.question)):
            out.append(Status.INCORRECT)
        else:
            out.append(Status.CORRECT)
    return out


def make_task(
    *,
    num_train: int = 2000,
    sft_levels: tuple[int, ...] = (2, 3),
    num_sft: int = 300,
    sft_level_weights: tuple[float, ...] | None = None,
    levels: tuple[int, ...] = ALL_LEVELS,
    seed: int = 0,
    max_operand: int = 9,
    num_val: int | None = None,
    num_test: int | None = None,
    style: str = "chain",
    verify_steps: bool = True,
    human_style: str = "worded",
    sft_human_share: float = 0.0,
) -> Task:
    """The task with splits: sft (worked solutions of easy problems: the base model's
    data), train (all levels, with "human-written" solutions in `human_style`: the E-step's
    problems and the human-data SFT baseline), val (checkpoint selection) and test (the
    transfer problems are `make_transfer_task`'s). num_val / num_test take a prefix of the
    fixed held-out splits (small test runs). sft_level_weights (one per sft level, e.g.
    many easy and a few hard worked solutions, as a pretrained model has seen) replaces
    the even spread of sft problems over sft_levels; `sft_human_share` of the sft
    solutions are in `human_style` (the base has read human writing, as a pretrained
    model has)."""
    if verify_steps and style != "chain":
        raise ConfigError("verify_steps checks chain-style solutions; use style='chain'")
    sizes = {"val": num_val, "test": num_test}
    if not set(levels) <= set(ALL_LEVELS) or not set(sft_levels) <= set(ALL_LEVELS):
        raise ConfigError(f"levels must be within {ALL_LEVELS}")

    def humanized(p: Problem) -> Problem:
        return dataclasses.replace(p, solution=human_solution(p, human_style))

    def load(split: str) -> list[Problem]:
        if split == "sft":
            probs = generate(
                "sft",
                num_problems=num_sft,
                levels=sft_levels,
                seed=seed,
                max_operand=max_operand,
                style=style,
                level_weights=sft_level_weights,
            )
            # A pretrained model has read people's solutions too: a share in human style.
            human = np.random.default_rng([seed, 7]).random(len(probs)) < sft_human_share
            return [humanized(p) if h else p for p, h in zip(probs, human)]
        if split == "train":
            probs = generate(
                "train",
                num_problems=num_train,
                levels=levels,
                seed=seed,
                max_operand=max_operand,
                style=style,
            )
            if style != "chain":
                return list(probs)
            return [humanized(p) for p in probs]
        if split in HELD_OUT:
            held = generate(
                split,
                num_problems=HELD_OUT[split],
                levels=ALL_LEVELS,
                seed=seed,
                max_operand=max_operand,
                style=style,
            )
            return [p for p in held if p.level in levels][: sizes[split]]
        if split == "transfer":
            raise ConfigError(
                "the arithmetic transfer problems are a task of their own "
                "(arithmetic_transfer_task, for run.transfer_tasks): they are asked another way"
            )
        raise ConfigError(f"unknown split {split!r}; expected sft, train, val or test")

    return Task(
        "arithmetic",
        load,
        prompt,
        target,
        extract,
        functools.partial(score, verify_steps=verify_steps),
        hint_prompt=hint_prompt,
    )


def make_transfer_task(*, seed: int = 0, num_test: int | None = None) -> Task:
    """The transfer task ("arithmetic_transfer", for `transfer_tasks`): a "test" split of
    held-out problems asked another way (`transfer_prompt`), scored like the task's."""
    task = make_task(seed=seed)

    def load(split: str) -> list[Problem]:
        if split != "test":
            raise ConfigError(f"task 'arithmetic_transfer' has only a 'test' split, not {split!r}")
        return list(generate_transfer(seed=seed))[:num_test]

    return dataclasses.replace(
        task, name="arithmetic_transfer", load=load, prompt=transfer_prompt, hint_prompt=None
    )
