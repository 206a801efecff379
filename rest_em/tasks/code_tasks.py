"""HumanEval, MBPP and APPS: code tasks whose reward is the sandbox's verdict.

Every task here builds its problems' hidden tests (`Problem.tests`) from the data and
scores a completion by running the program in it (`programs.extract_program`) in the
`rest_em.rewards.code` sandbox (`programs.ProgramScorer`): a completion with no program
is NO_ANSWER, identical programs of one problem are run once, nothing runs in this
process. Code tasks have no answers to vote on (no maj@k); pass@k is reported.

* `humaneval_task` (Chen et al. 2021): completion mode, the program is prompt +
  completion, the prompt trusted context of the test (its helpers are the dataset's);
  a test split only, for evaluation and transfer.
* `mbpp_task` (Austin et al. 2021): prompt = the problem text and its first test, few-shot
  exemplars in the paper's `[BEGIN] ... [DONE]` format; hidden tests = all of
  `test_list` (after the trusted `test_setup_code`). Splits by task_id: 1-10 few-shot
  exemplars, 11-510 test, 511-600 val, 601-974 train.
* `apps_task` (Hendrycks et al. 2021; CodeContests-style data in the same format): the
  user's JSONL in APPS's row format, `question`, `solutions`, `input_output` (`inputs`,
  `outputs`, optional `fn_name`: call-based), optional `starter_code` and `difficulty`
  (introductory / interview / competition -> levels 1 / 2 / 3). `solutions` and
  `input_output` may be JSON-encoded strings, as in the APPS release.

A malformed row raises rest_em.errors.DataError naming file:line and the field.
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

from rest_em.errors import ConfigError, DataError
from rest_em.rewards.status import Status
from rest_em.tasks import programs
from rest_em.tasks.problems import Problem, Task, holdout, read_jsonl

__all__ = [
    "APPS_LEVELS",
    "HUMANEVAL_STOPS",
    "MBPP_SPLITS",
    "apps_task",
    "humaneval_task",
    "mbpp_task",
]

# Where a HumanEval completion's function body ends (Chen et al. 2021).
HUMANEVAL_STOPS = ("\ndef", "\nclass", "\nif", "\nprint", "\n#")


def _code_task(
    name: str,
    load,
    prompt,
    program_of,
    *,
    sandbox: programs.SandboxConfig | None,
    data_files: Sequence[str],
    stop_sequences: Sequence[str],
) -> Task:
    """The Task of a code dataset: `program_of(completion, problem)` -> program or None."""
    scorer = programs.ProgramScorer(sandbox)

    def target(p: Problem) -> str:
        if p.solution is None:
            raise ValueError(f"{name}: problem {p.problem_id} has no reference solution")
        return p.solution

    def score(completions: Sequence[str], problems: Sequence[Problem]) -> list[Status]:
        progs = [program_of(c, p) for c, p in zip(completions, problems, strict=True)]
        return scorer(progs, [p.tests for p in problems])

    return Task(
        name,
        load,
        prompt,
        target,
        extract=_no_answer,
        score=score,
        data_files=tuple(str(f) for f in data_files),
        stop_sequences=tuple(stop_sequences),
        majority_vote=False,
        scoring_stats=scorer.take_stats,
    )


def _no_answer(completion: str) -> None:
    """Code tasks have no final answer to vote on."""
    del completion


def _limited(problems: list[Problem], limit: int | None) -> list[Problem]:
    return problems if limit is None else problems[:limit]


def _field(row: Mapping[str, Any], field: str, types, where: str) -> Any:
    if field not in row:
        raise DataError(f'{where}: field "{field}" is missing')
    value = row[field]
    if not isinstance(value, types):
        names = " or ".join(t.__name__ for t in (types if isinstance(types, tuple) else (types,)))
        raise DataError(f'{where}: field "{field}" must be {names}, got {type(value).__name__}')
    return value


# --- HumanEval ---------------------------------------------------------------------------


def humaneval_task(
    *,
    path: str,
    limit: int | None = None,
    sandbox: programs.SandboxConfig | None = None,
) -> Task:
    """HumanEval (HumanEval.jsonl or .jsonl.gz, 164 problems): split "test" only.

    Args:
      path: the dataset file (task_id, prompt, entry_point, canonical_solution, test).
      limit: the first `limit` problems only (quick runs).
      sandbox: limits and isolation of the program runs.
    """
    from rest_em.rewards import code

    problems = []
    for lineno, row in read_jsonl(path, required=("task_id", "prompt", "entry_point", "test")):
        where = f"{path}:{lineno}"
        solution = _field(row, "canonical_solution", str, where)
        task_id = row["task_id"]
        try:
            problem_id = int(task_id.rsplit("/", 1)[-1])
        except ValueError:
            raise DataError(
                f'{where}: field "task_id" must end in a number, got {task_id!r}'
            ) from None
        problems.append(
            Problem(
                problem_id,
                row["prompt"],
                None,
                solution,
                tests=code.humaneval_tests(row),
            )
        )

    def load(split: str) -> list[Problem]:
        if split != "test":
            raise ConfigError(f"task 'humaneval' has only a 'test' split, not {split!r}")
        return _limited(problems, limit)

    def program_of(completion: str, p: Problem) -> str | None:
        if not completion.strip():
            return None
        fenced = programs.extract_program(completion)
        if "```" in completion and fenced is not None and f"def {p.tests.entry_point}" in fenced:
            return fenced  # a chat model wrote the whole function
        return p.question + completion

    return _code_task(
        "humaneval",
        load,
        lambda p: p.question,
        program_of,
        sandbox=sandbox,
        data_files=(path,),
        stop_sequences=HUMANEVAL_STOPS,
    )


# --- MBPP --------------------------------------------------------------------------------

MBPP_SPLITS = {"prompt": (1, 10), "test": (11, 510), "val": (511, 600), "train": (601, 974)}
_MBPP_SHOT_IDS = (2, 3, 4, 1, 5, 6, 7, 8, 9, 10)  # the MBPP paper's 3-shot prompt: 2, 3, 4
MBPP_DONE = "[DONE]"


def _mbpp_problem(row: dict, where: str) -> Problem:
    task_id = _field(row, "task_id", int, where)
    tests = _field(row, "test_list", list, where)
    if not tests or not all(isinstance(t, str) for t in tests):
        raise DataError(f'{where}: field "test_list" must be a non-empty list of strings')
    setup = row.get("test_setup_code") or ""
    if not isinstance(setup, str):
        raise DataError(f'{where}: field "test_setup_code" must be str')
    import ast
    import warnings

    from rest_em.rewards import code

    # The entry point: the first function the reference solution defines (by def) that
    # the tests call. It is the one name the sandbox may route to the program even where
    # it shadows a builtin (task 126 asks for a `sum`); other builtins stay builtins.
    test = "\n".join(tests)
    entry = None
    try:
        with warnings.catch_warnings():  # invalid escapes in old regexes ("\d")
            warnings.simplefilter("ignore")
            called = {
                n.func.id
                for n in ast.walk(ast.parse(test))
                if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)
            }
            defs = ast.parse(_normalise(row["code"])).body
    except (SyntaxError, ValueError):  # the sandbox reports a test that does not compile
        called, defs = set(), []
    for node in defs:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name in called:
            entry = node.name
            break
    return Problem(
        task_id,
        row["text"].strip(),
        None,
        _normalise(row["code"]),
        tests=code.AssertTests(test=test, entry_point=entry, context=setup),
    )


def _normalise(src: str) -> str:
    return src.replace("\r\n", "\n").replace("\r", "\n").strip("\n")


def _mbpp_question(p: Problem) -> str:
    first = p.tests.test.split("\n", 1)[0]
    return (
        f"You are an expert Python programmer, and here is your task: {p.question} "
        f"Your code should pass this test:\n\n{first}\n[BEGIN]\n"
    )


def mbpp_task(
    *,
    path: str,
    num_shots: int = 3,
    limit: int | None = None,
    sandbox: programs.SandboxConfig | None = None,
) -> Task:
    """MBPP (mbpp.jsonl, 974 problems): splits "train" (= "sft"), "val", "test" by
    task_id (`MBPP_SPLITS`); completions end at "[DONE]".

    Args:
      path: the dataset file (text, code, task_id, test_setup_code, test_list).
      num_shots: few-shot exemplars from task_ids 1-10 (3: the paper's 2, 3, 4).
      limit: the first `limit` problems of each split only (quick runs).
      sandbox: limits and isolation of the program runs.
    """
    if not 0 <= num_shots <= len(_MBPP_SHOT_IDS):
        raise ConfigError(f"mbpp: num_shots must be in 0..10, got {num_shots}")
    by_id = {}
    for lineno, row in read_jsonl(path, required=("text", "code")):
        p = _mbpp_problem(row, f"{path}:{lineno}")
        by_id[p.problem_id] = p
    shots = [by_id[i] for i in _MBPP_SHOT_IDS[:num_shots] if i in by_id]
    prefix = "".join(_mbpp_question(s) + s.solution + f"\n{MBPP_DONE}\n\n" for s in shots)

    def load(split: str) -> list[Problem]:
        split = "train" if split == "sft" else split
        if split not in ("train", "val", "test"):
            raise ConfigError(f"mbpp: unknown split {split!r} (train, sft, val, test)")
        lo, hi = MBPP_SPLITS[split]
        return _limited([p for i, p in sorted(by_id.items()) if lo <= i <= hi], limit)

    def program_of(completion: str, p: Problem) -> str | None:
        del p
        return programs.extract_program(completion, end_markers=(MBPP_DONE,))

    return _code_task(
        "mbpp",
        load,
        lambda p: prefix + _mbpp_question(p),
        program_of,
        sandbox=sandbox,
        data_files=(path,),
        stop_sequences=(MBPP_DONE,),
    )


# --- APPS --------------------------------------------------------------------------------

APPS_LEVELS = {"introductory": 1, "interview": 2, "competition": 3}


def _json_field(row: dict, field: str, types, where: str) -> Any:
    """A field that APPS stores JSON-encoded (a string) or as the value itself."""
    value = _field(row, field, (str, *types), where)
    if isinstance(value, str):
        try:
            value = json.loads(value) if value.strip() else None
        except json.JSONDecodeError as e:
            raise DataError(f'{where}: field "{field}" is not valid JSON ({e.msg})') from None
    if value is not None and not isinstance(value, types):
        raise DataError(
            f'{where}: field "{field}" must hold a {types[0].__name__}, got {type(value).__name__}'
        )
    return value


def _as_text(x: Any) -> str:
    return "\n".join(map(str, x)) if isinstance(x, list) else str(x)


def _apps_problem(index: int, row: dict, where: str) -> Problem:
    from rest_em.rewards import code

    io = _json_field(row, "input_output", (dict,), where)
    if io is None:
        raise DataError(f'{where}: field "input_output" is empty (a problem needs tests)')
    for key in ("inputs", "outputs"):
        if not isinstance(io.get(key), list):
            raise DataError(f'{where}: field "input_output.{key}" must be a list')
    if len(io["inputs"]) != len(io["outputs"]) or not io["inputs"]:
        raise DataError(
            f'{where}: field "input_output" has {len(io["inputs"])} inputs and '
            f"{len(io['outputs'])} outputs (need as many, at least one)"
        )
    fn_name = io.get("fn_name")
    if fn_name is not None and not isinstance(fn_name, str):
        raise DataError(f'{where}: field "input_output.fn_name" must be a string')
    if fn_name:
        if not all(isinstance(x, list) for x in io["inputs"]):
            raise DataError(f'{where}: field "input_output.inputs": call-based inputs are lists')
        tests = code.CallTests(fn_name, io["inputs"], io["outputs"])
    else:
        tests = code.IOTests(
            [_as_text(x) for x in io["inputs"]], [_as_text(x) for x in io["outputs"]]
        )
    solutions = _json_field(row, "solutions", (list,), where) if "solutions" in row else None
    if solutions is not None and not all(isinstance(s, str) for s in solutions):
        raise DataError(f'{where}: field "solutions" must be a list of strings')
    starter = row.get("starter_code") or ""
    if not isinstance(starter, str):
        raise DataError(f'{where}: field "starter_code" must be a string')
    difficulty = row.get("difficulty")
    if difficulty is None or isinstance(difficulty, int):
        level = difficulty
    elif isinstance(difficulty, str) and difficulty.lower() in APPS_LEVELS:
        level = APPS_LEVELS[difficulty.lower()]
    else:
        raise DataError(
            f'{where}: field "difficulty" must be one of {sorted(APPS_LEVELS)} or an int, '
            f"got {difficulty!r}"
        )
    question = _field(row, "question", str, where)
    fmt = "Use Call-Based format" if fn_name else "Use Standard Input format"
    prompt = f"\nQUESTION:\n{question}\n{starter}\n{fmt}\nANSWER:\n"
    return Problem(
        index, prompt, None, _normalise(solutions[0]) if solutions else None, level, tests
    )


def load_apps(path: str | pathlib.Path) -> list[Problem]:
    """The problems of an APPS-format JSONL file (problem_id: the row's index)."""
    path = pathlib.Path(path)
    return [
        _apps_problem(i, row, f"{path}:{lineno}")
        for i, (lineno, row) in enumerate(read_jsonl(path, required=()))
    ]


def apps_task(
    *,
    train_file: str | None = None,
    test_file: str,
    val_size: int = 100,
    limit: int | None = None,
    sandbox: programs.SandboxConfig | None = None,
) -> Task:
    """APPS-format JSONL files (APPS, CodeContests converted to it): "train" / "sft" and
    "val" (its last `val_size` rows) from `train_file`, "test" from `test_file`.

    Args:
      train_file, test_file: APPS-format JSONL (or .jsonl.gz) files.
      val_size: training rows held out as the M-step's validation split.
      limit: the first `limit` problems of each split only (quick runs).
      sandbox: limits and isolation of the program runs (per test case).
    """
    files = {"train": train_file, "test": test_file}
    cache: dict[str, list[Problem]] = {}

    def raw(which: str) -> list[Problem]:
        if files.get(which) is None:
            raise ConfigError(f"task 'apps': no file configured for split {which!r}")
        if which not in cache:
            cache[which] = load_apps(files[which])
        return cache[which]

    def load(split: str) -> list[Problem]:
        if split in ("train", "sft", "val"):
            rows = holdout(raw("train"), split, name="apps", path=train_file, val_size=val_size)
        elif split == "test":
            rows = raw("test")
        else:
            raise ConfigError(f"apps: unknown split {split!r} (train, sft, val, test)")
        return _limited(rows, limit)

    def program_of(completion: str, p: Problem) -> str | None:
        del p
        return programs.extract_program(completion)

    return _code_task(
        "apps",
        load,
        lambda p: p.question,
        program_of,
        sandbox=sandbox,
        data_files=[f for f in files.values() if f is not None],
        stop_sequences=(),
    )


GIN_CONFIGURABLES = (humaneval_task, mbpp_task, apps_task)
