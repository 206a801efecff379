"""The embedded code task: write a short Python list function, graded by hidden tests.

The code twin of the embedded arithmetic task (`rest_em.tasks.arithmetic`): problems
are generated from a seed, difficulty is a dial, and a byte-level model trained from
scratch on a CPU is the "base model". A level-L problem composes L list operations
(keep the even numbers, add 3 to each, sort, drop the first 2, ...) and a final
reduction (the list itself, its sum or its length); the prompt states them in words,
and the reference solution writes one line per operation (no input/output example in
the prompt: bytes are the CPU budget):

    prompt:    "# keep the odd numbers; multiply each by 3; return the sum\\n"
               "# f([4, 1, 7, 2]) == 24\\n"
               "def f(xs):\\n"
    solution:  "    xs = [x for x in xs if x % 2 == 1]\\n"
               "    xs = [x * 3 for x in xs]\\n"
               "    return sum(xs)"

The program is prompt + completion (HumanEval's completion mode). Hidden tests: bare
asserts on `NUM_HIDDEN` random lists (`rest_em.rewards.code.
AssertTests`), run by the real sandbox through `programs.ProgramScorer` (via
`code_tasks._code_task`); nothing a model writes runs in this process. The expected
values come from this module's own interpreter of the operation grammar (`evaluate`),
never from executing a program. A completion that is blank or does not parse (checked
with `ast.parse`, which runs nothing) is NO_ANSWER.

Splits: test and val are fixed held-out sets (`HELD_OUT`); train and sft never contain
a held-out function (a function is its description: same operations, same constants);
sft and train may share functions. The transfer task ("embedded_code_transfer") holds
problems whose operations include an adjacent pair that no other split ever composes
(`HELD_OUT_PAIRS`: e.g. "sort them" right before "keep the first K"): the same
operations in unseen combinations.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
from collections.abc import Callable, Sequence

import numpy as np

from rest_em.errors import ConfigError
from rest_em.tasks.problems import Problem, Task, level_shares, next_level

__all__ = [
    "ALL_LEVELS",
    "HELD_OUT",
    "HELD_OUT_PAIRS",
    "OPS",
    "REDUCERS",
    "evaluate",
    "generate",
    "embedded_code_task",
    "embedded_code_transfer_task",
]

NUM_HIDDEN = 6  # hidden test lists
ALL_LEVELS = (1, 2, 3, 4)
_SPLIT_OFFSETS = {"test": 0, "val": 1, "train": 2, "sft": 3}
HELD_OUT = {"test": 200, "val": 80}  # fixed sizes (evenly over ALL_LEVELS)
STOPS = ("\ndef", "\n#", "\nprint", "\nassert", "\nif")


@dataclasses.dataclass(frozen=True)
class Op:
    """One list operation: its words, its line of code, what it does (on a list)."""

    kind: str
    args: tuple[int, ...]  # the constants the operation may take (one drawn)
    words: str  # with "{k}" for the constant
    code: str
    fn: Callable[[list[int], int], list[int]]


OPS = (
    Op("even", (0,), "keep the even numbers", "xs = [x for x in xs if x % 2 == 0]",
       lambda xs, k: [x for x in xs if x % 2 == 0]),
    Op("odd", (0,), "keep the odd numbers", "xs = [x for x in xs if x % 2 == 1]",
       lambda xs, k: [x for x in xs if x % 2 == 1]),
    Op("gt", tuple(range(1, 7)), "keep those above {k}", "xs = [x for x in xs if x > {k}]",
       lambda xs, k: [x for x in xs if x > k]),
    Op("lt", tuple(range(3, 9)), "keep those below {k}", "xs = [x for x in xs if x < {k}]",
       lambda xs, k: [x for x in xs if x < k]),
    Op("add", tuple(range(1, 10)), "add {k} to each", "xs = [x + {k} for x in xs]",
       lambda xs, k: [x + k for x in xs]),
    Op("sub", tuple(range(1, 10)), "subtract {k} from each", "xs = [x - {k} for x in xs]",
       lambda xs, k: [x - k for x in xs]),
    Op("mul", tuple(range(2, 6)), "multiply each by {k}", "xs = [x * {k} for x in xs]",
       lambda xs, k: [x * k for x in xs]),
    Op("sq", (0,), "square each", "xs = [x * x for x in xs]", lambda xs, k: [x * x for x in xs]),
    Op("sort", (0,), "sort them", "xs = sorted(xs)", lambda xs, k: sorted(xs)),
    Op("rev", (0,), "reverse them", "xs = xs[::-1]", lambda xs, k: xs[::-1]),
    Op("drop", (1, 2, 3), "drop the first {k}", "xs = xs[{k}:]", lambda xs, k: xs[k:]),
    Op("take", (1, 2, 3, 4), "keep the first {k}", "xs = xs[:{k}]", lambda xs, k: xs[:k]),
)  # fmt: skip
REDUCERS = {
    "list": ("return them", "return xs", lambda xs: list(xs)),
    "sum": ("return the sum", "return sum(xs)", sum),
    "len": ("return the count", "return len(xs)", len),
}
_OP_BY_KIND = {op.kind: op for op in OPS}
# Adjacent (first, second) operation pairs that only the transfer task composes.
HELD_OUT_PAIRS = frozenset({("sort", "take"), ("odd", "mul"), ("rev", "drop"), ("add", "sq")})

Step = tuple[str, int]  # (op kind, constant)


def evaluate(steps: Sequence[Step], reducer: str, xs: Sequence[int]):
    """What the described function returns for `xs` (the grammar's own interpreter)."""
    out = list(xs)
    for kind, k in steps:
        out = _OP_BY_KIND[kind].fn(out, k)
    return REDUCERS[reducer][2](out)


def describe(steps: Sequence[Step], reducer: str) -> str:
    words = [_OP_BY_KIND[kind].words.format(k=k) for kind, k in steps]
    return "; ".join([*words, REDUCERS[reducer][0]])


STYLES = ("plain", "commented")


def reference_solution(steps: Sequence[Step], reducer: str, style: str = "plain") -> str:
    """One line per operation; style "commented" puts each clause of the description,
    as a comment, above its line (the model copies a clause, then translates it)."""
    lines = [_OP_BY_KIND[kind].code.format(k=k) for kind, k in steps] + [REDUCERS[reducer][1]]
    if style == "commented":
        clauses = describe(steps, reducer).split("; ")
        lines = [f"# {clause}\n    {line}" for clause, line in zip(clauses, lines)]
    return "\n".join("    " + line for line in lines)


def _random_list(rng: np.random.Generator) -> list[int]:
    return [int(x) for x in rng.integers(0, 10, size=int(rng.integers(4, 8)))]


def _draw(rng: np.random.Generator, level: int, pairs: str) -> tuple[list[Step], str] | None:
    """Random steps of `level` operations (no operation twice in a row). pairs: "avoid"
    the held-out adjacent pairs, or "need" one of them (the transfer family)."""
    steps: list[Step] = []
    for _ in range(level):
        choices = [op for op in OPS if not steps or op.kind != steps[-1][0]]
        op = choices[int(rng.integers(len(choices)))]
        steps.append((op.kind, int(op.args[int(rng.integers(len(op.args)))])))
    reducer = list(REDUCERS)[int(rng.integers(len(REDUCERS)))]
    adjacent = {(a[0], b[0]) for a, b in zip(steps, steps[1:])}
    held = bool(adjacent & HELD_OUT_PAIRS)
    if (pairs == "avoid" and held) or (pairs == "need" and not held):
        return None
    return steps, reducer


def make_problem(
    rng: np.random.Generator,
    level: int,
    problem_id: int,
    *,
    pairs: str = "avoid",
    style: str = "plain",
) -> Problem | None:
    """A level-`level` problem, or None when the draw is rejected (a held-out pair where
    pairs="avoid" or none where "need"; or hidden tests that cannot tell outputs apart:
    every input gives the same answer, e.g. an always-empty list)."""
    from rest_em.rewards import code

    drawn = _draw(rng, level, pairs)
    if drawn is None:
        return None
    steps, reducer = drawn
    inputs = [_random_list(rng) for _ in range(NUM_HIDDEN)]
    outputs = [evaluate(steps, reducer, xs) for xs in inputs]
    if len({repr(o) for o in outputs}) < 3:
        return None
    desc = describe(steps, reducer)
    question = f"# {desc}\ndef f(xs):\n"
    test = "\n".join(f"assert f({xs}) == {out}" for xs, out in zip(inputs, outputs))
    return Problem(
        problem_id,
        question,
        None,
        reference_solution(steps, reducer, style),
        level,
        code.AssertTests(test=test, entry_point=None),
    )


def _function(p: Problem) -> str:
    """The function a problem asks for (its description line): the unit of held-out-ness."""
    return p.question.split("\n", 1)[0]


@functools.lru_cache(maxsize=32)
def generate(
    split: str,
    *,
    num_problems: int,
    levels: tuple[int, ...],
    seed: int = 0,
    level_weights: tuple[float, ...] | None = None,
    style: str = "plain",
) -> tuple[Problem, ...]:
    """`num_problems` problems spread evenly over `levels` (or in the proportions
    `level_weights`, interleaved), deterministic in (split, seed).

    Held-out functions (test, then val) never appear in a later split; within a split
    functions are distinct. Train and sft: a level whose distinct functions run out
    (level 1 has a few hundred) gives fewer problems, the others fill the rest. `style`
    changes only the reference solutions (`reference_solution`), never the problems.
    """
    if split not in _SPLIT_OFFSETS:
        raise ValueError(f"unknown split {split!r}; expected one of {list(_SPLIT_OFFSETS)}")
    if not set(levels) <= set(ALL_LEVELS) or not levels:
        raise ConfigError(f"levels must be a non-empty subset of {ALL_LEVELS}, got {levels}")
    if style not in STYLES:
        raise ConfigError(f"embedded_code: style must be one of {STYLES}, got {style!r}")
    shares = level_shares(levels, level_weights)
    taken: set[str] = set()
    for earlier, offset in _SPLIT_OFFSETS.items():
        if offset >= _SPLIT_OFFSETS[split]:
            break
        taken |= _held_out_functions(earlier, seed)
    rng = np.random.default_rng([seed, 11, _SPLIT_OFFSETS[split]])
    out: list[Problem] = []
    seen: set[str] = set()
    misses = dict.fromkeys(levels, 0)
    count = dict.fromkeys(levels, 0)
    while len(out) < num_problems:
        live = [lv for lv in levels if misses[lv] < 2000 and shares[lv] > 0]
        if not live:
            raise ValueError(
                f"cannot draw {num_problems} distinct {split} problems of levels {levels}"
            )
        level = next_level(shares, count, live)
        p = make_problem(rng, level, len(out), style=style)
        if p is None or _function(p) in taken or _function(p) in seen:
            misses[level] += 1
            continue
        seen.add(_function(p))
        count[level] += 1
        out.append(p)
    return tuple(out)


@functools.lru_cache(maxsize=8)
def _held_out_functions(split: str, seed: int) -> frozenset[str]:
    if split in HELD_OUT:
        probs = generate(split, num_problems=HELD_OUT[split], levels=ALL_LEVELS, seed=seed)
        return frozenset(_function(p) for p in probs)
    return frozenset()


@functools.lru_cache(maxsize=8)
def generate_transfer(
    *, num_problems: int, levels: tuple[int, ...] = (2, 3, 4), seed: int = 0
) -> tuple[Problem, ...]:
    """The transfer family: every problem composes a held-out adjacent pair."""
    rng = np.random.default_rng([seed, 11, 9])
    out: list[Problem] = []
    seen: set[str] = set()
    i = 0
    while len(out) < num_problems:
        if i > 200 * num_problems + 1000:
            raise ValueError(f"cannot draw {num_problems} distinct transfer problems")
        p = make_problem(rng, levels[i % len(levels)], len(out), pairs="need")
        i += 1
        if p is None or _function(p) in seen:
            continue
        seen.add(_function(p))
        out.append(p)
    return tuple(out)


def prompt(problem: Problem) -> str:
    return problem.question


def program_of(completion: str, problem: Problem) -> str | None:
    """prompt + completion; None (NO_ANSWER) when the completion is blank or the
    program does not parse (`ast.parse` only: nothing runs here)."""
    if not completion.strip():
        return None
    program = problem.question + completion
    try:
        ast.parse(program)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None
    return program


def _task(name: str, load, sandbox) -> Task:
    from rest_em.tasks import code_tasks

    return code_tasks._code_task(
        name,
        load,
        prompt,
        program_of,
        sandbox=sandbox,
        data_files=(),
        stop_sequences=STOPS,
    )


def embedded_code_task(
    *,
    num_train: int = 1500,
    num_sft: int = 300,
    sft_levels: tuple[int, ...] = ALL_LEVELS,
    sft_level_weights: tuple[float, ...] | None = None,
    levels: tuple[int, ...] = ALL_LEVELS,
    style: str = "plain",
    seed: int = 0,
    num_val: int | None = None,
    num_test: int | None = None,
    sandbox=None,
) -> Task:
    """The embedded code task "embedded_code": splits sft (reference solutions: the base
    model's data), train (the E-step's problems, with reference solutions for the
    human-data SFT baseline), val (checkpoint selection) and test (a prefix of each via
    num_val / num_test, for small runs; `levels` filters them), all generated from
    `seed`. sft_level_weights: the sft split's mix over sft_levels (None: even), e.g.
    many easy problems and a few hard ones, as a pretrained model has seen. style: the
    reference solutions' format (`reference_solution`). sandbox: a
    `programs.SandboxConfig` (None: the defaults)."""
    if not set(levels) <= set(ALL_LEVELS) or not set(sft_levels) <= set(ALL_LEVELS):
        raise ConfigError(f"embedded_code: levels must be within {ALL_LEVELS}")
    sizes = {"val": num_val, "test": num_test}

    def load(split: str) -> list[Problem]:
        if split == "sft":
            return list(
                generate(
                    "sft",
                    num_problems=num_sft,
                    levels=sft_levels,
                    seed=seed,
                    level_weights=sft_level_weights,
                    style=style,
                )
            )
        if split == "train":
            return list(
                generate("train", num_problems=num_train, levels=levels, seed=seed, style=style)
            )
        if split in HELD_OUT:
            held = generate(
                split, num_problems=HELD_OUT[split], levels=ALL_LEVELS, seed=seed, style=style
            )
            return [p for p in held if p.level in levels][: sizes[split]]
        raise ConfigError(f"embedded_code: unknown split {split!r} (sft, train, val, test)")

    return _task("embedded_code", load, sandbox)


def embedded_code_transfer_task(
    *,
    num_test: int = 120,
    levels: tuple[int, ...] = (2, 3, 4),
    seed: int = 0,
    sandbox=None,
) -> Task:
    """The transfer task "embedded_code_transfer": a "test" split only, of problems
    that compose an operation pair no other split composes (`HELD_OUT_PAIRS`)."""
    if not set(levels) <= set(ALL_LEVELS) - {1}:
        raise ConfigError(f"embedded_code_transfer: levels must be within 2..4, got {levels}")

    def load(split: str) -> list[Problem]:
        if split != "test":
            raise ConfigError(
                f"task 'embedded_code_transfer' has only a 'test' split, not {split!r}"
            )
        return list(generate_transfer(num_problems=num_test, levels=levels, seed=seed))

    return _task("embedded_code_transfer", load, sandbox)


GIN_CONFIGURABLES = (embedded_code_task, embedded_code_transfer_task)
