"""Code tasks (HumanEval, MBPP, APPS-format JSONL) scored by the real sandbox."""

import gzip
import json
import os
import pathlib
import subprocess
import sys

import pytest

from rest_em import errors
from rest_em.rewards.status import Status
from rest_em.tasks import code_tasks, programs

SHARED = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data"
HUMANEVAL = pathlib.Path(__file__).parent / "testdata" / "humaneval.jsonl.gz"
MBPP = SHARED / "mbpp" / "mbpp.jsonl"
REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def humaneval():
    return code_tasks.humaneval_task(path=str(HUMANEVAL))


def test_humaneval_canonical_solutions_pass_and_return_none_fails(humaneval):
    problems = humaneval.load("test")
    assert len(problems) == 164 and [p.problem_id for p in problems] == list(range(164))
    assert humaneval.score([p.solution for p in problems], problems) == [Status.CORRECT] * 164
    wrong = humaneval.score(["    return None\n"] * 164, problems)
    assert wrong == [Status.INCORRECT] * 164
    stats = humaneval.scoring_stats()
    assert stats["programs"] == stats["runs"] == 328 and stats["isolation"]


def test_humaneval_is_completion_mode_with_its_stops(humaneval):
    p = humaneval.load("test")[0]
    assert humaneval.prompt(p) == p.question and p.question.rstrip().endswith('"""')
    assert humaneval.stop_sequences == ("\ndef", "\nclass", "\nif", "\nprint", "\n#")
    assert not humaneval.majority_vote and humaneval.extract(p.solution) is None
    assert humaneval.score(["", "   \n"], [p, p]) == [Status.NO_ANSWER] * 2
    with pytest.raises(errors.ConfigError, match="only a 'test' split"):
        humaneval.load("train")


def test_humaneval_malformed_rows_name_file_line_field(tmp_path):
    good = {"task_id": "HumanEval/0", "prompt": "def f():\n", "entry_point": "f", "test": ""}
    cases = {
        "test": ({k: v for k, v in good.items() if k != "test"}, 'field "test" is missing'),
        "canonical": (good, 'field "canonical_solution" is missing'),
        "task_id": (
            {**good, "task_id": "HumanEval/x", "canonical_solution": ""},
            'field "task_id" must end in a number',
        ),
    }
    for name, (row, message) in cases.items():
        path = tmp_path / f"{name}.jsonl"
        path.write_text("\n" + json.dumps(row) + "\n")
        with pytest.raises(errors.DataError, match=f"{path}:2: {message}"):
            code_tasks.humaneval_task(path=str(path))


def test_mbpp_splits_prompt_and_program_extraction():
    task = code_tasks.mbpp_task(path=str(MBPP))
    sizes = {s: len(task.load(s)) for s in ("train", "val", "test")}
    assert sizes == {"train": 374, "val": 90, "test": 500}
    assert task.load("sft") == task.load("train")
    p = task.load("test")[0]
    assert p.problem_id == 11
    prompt = task.prompt(p)
    first_test = json.loads(MBPP.read_text().splitlines()[10])["test_list"][0]
    assert prompt.endswith(f"Your code should pass this test:\n\n{first_test}\n[BEGIN]\n")
    assert prompt.count("[DONE]") == 3 and prompt.startswith("You are an expert Python")
    assert task.stop_sequences == ("[DONE]",) and not task.majority_vote
    assert task.score([p.solution, p.solution + "\n[DONE] trailing", "[DONE]"], [p] * 3) == [
        Status.CORRECT,
        Status.CORRECT,
        Status.NO_ANSWER,
    ]
    fenced = "Here it is:\n```python\n" + p.solution + "\n```\nDone."
    assert task.score([fenced, "def nothing(): pass"], [p, p]) == [
        Status.CORRECT,
        Status.INCORRECT,
    ]
    assert code_tasks.mbpp_task(path=str(MBPP), num_shots=0).prompt(p).startswith("You are")


def test_mbpp_malformed_rows_name_file_line_field(tmp_path):
    row = json.loads(MBPP.read_text().splitlines()[0])
    for field, value, message in (
        ("test_list", "assert f()", 'field "test_list" must be list, got str'),
        ("test_list", [], 'field "test_list" must be a non-empty list of strings'),
        ("task_id", "1", 'field "task_id" must be int, got str'),
        ("text", None, 'field "text" must be a string, got NoneType'),
    ):
        path = tmp_path / "mbpp.jsonl"
        path.write_text(json.dumps(row) + "\n" + json.dumps({**row, field: value}) + "\n")
        with pytest.raises(errors.DataError, match=f"{path}:2: {message}"):
            code_tasks.mbpp_task(path=str(path))


# APPS rows as the APPS release stores them: solutions and input_output JSON-encoded.
_STDIN = {
    "question": "Read two integers and print their sum.",
    "solutions": json.dumps(["a, b = map(int, input().split())\nprint(a + b)\n"]),
    "input_output": json.dumps({"inputs": ["1 2\n", "10 -3\n"], "outputs": ["3\n", "7\n"]}),
    "difficulty": "introductory",
    "starter_code": "",
}
_CALL = {
    "question": "Return the number of vowels in s.",
    "solutions": [
        "class Solution:\n    def count(self, s):\n        return sum(c in 'aeiou' for c in s)\n"
    ],
    "input_output": {"fn_name": "count", "inputs": [["hello"], ["sky"]], "outputs": [2, 0]},
    "difficulty": "interview",
    "starter_code": "class Solution:\n    def count(self, s):\n",
}
_FUNC = {
    "question": "Return the list reversed.",
    "solutions": json.dumps(["def rev(xs):\n    return xs[::-1]\n"]),
    "input_output": json.dumps(
        {"fn_name": "rev", "inputs": [[[1, 2, 3]]], "outputs": [[[3, 2, 1]]]}
    ),
    "difficulty": "competition",
}


def _apps_file(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_apps_rows_pass_with_their_solutions_and_fail_with_wrong_ones(tmp_path):
    test_file = _apps_file(tmp_path / "test.jsonl", [_STDIN, _CALL, _FUNC])
    task = code_tasks.apps_task(test_file=test_file)
    problems = task.load("test")
    assert [p.level for p in problems] == [1, 2, 3]
    assert "Use Standard Input format" in task.prompt(problems[0])
    assert "Use Call-Based format" in task.prompt(problems[1])
    assert _CALL["starter_code"] in task.prompt(problems[1])
    assert task.score([p.solution for p in problems], problems) == [Status.CORRECT] * 3
    wrong = [
        "a, b = map(int, input().split())\nprint(a - b)\n",
        "class Solution:\n    def count(self, s):\n        return len(s)\n",
        "def rev(xs):\n    return xs\n",
    ]
    assert task.score(wrong, problems) == [Status.INCORRECT] * 3
    hang = "while True:\n    pass\n"
    fast = programs.SandboxConfig(time_limit_s=1.0)
    slow_task = code_tasks.apps_task(test_file=test_file, sandbox=fast)
    assert slow_task.score([hang, "", "```python\n```"], problems) == [
        Status.TIMEOUT,
        Status.NO_ANSWER,
        Status.NO_ANSWER,
    ]


def test_apps_train_val_split_and_gz(tmp_path):
    rows = [dict(_STDIN, question=f"q{i}") for i in range(5)]
    train = tmp_path / "train.jsonl.gz"
    with gzip.open(train, "wt") as f:
        f.write("".join(json.dumps(r) + "\n" for r in rows))
    task = code_tasks.apps_task(
        train_file=str(train), test_file=_apps_file(tmp_path / "t.jsonl", [_CALL]), val_size=2
    )
    assert [p.question.split("\n")[2] for p in task.load("train")] == ["q0", "q1", "q2"]
    assert len(task.load("val")) == 2 and task.load("sft") == task.load("train")
    assert set(task.data_files) == {str(train), str(tmp_path / "t.jsonl")}


@pytest.mark.parametrize(
    "change, message",
    [
        ({"input_output": "{not json"}, 'field "input_output" is not valid JSON'),
        ({"input_output": json.dumps({"inputs": ["1"]})}, 'field "input_output.outputs" must'),
        (
            {"input_output": json.dumps({"inputs": ["1", "2"], "outputs": ["1"]})},
            'field "input_output" has 2 inputs and 1 outputs',
        ),
        ({"difficulty": "hard"}, 'field "difficulty" must be one of'),
        ({"solutions": json.dumps([1])}, 'field "solutions" must be a list of strings'),
        ({"question": 3}, 'field "question" must be str, got int'),
        ({"input_output": ""}, 'field "input_output" is empty'),
    ],
)
def test_apps_malformed_rows_name_file_line_field(tmp_path, change, message):
    path = _apps_file(tmp_path / "apps.jsonl", [_STDIN, {**_STDIN, **change}])
    with pytest.raises(errors.DataError, match=f"{path}:2: {message}"):
        code_tasks.apps_task(test_file=path).load("test")


def test_identical_programs_run_once_and_no_program_never_runs():
    scorer = programs.ProgramScorer(programs.SandboxConfig(max_workers=2))
    from rest_em.rewards import code

    tests = code.AssertTests("assert f(2) == 4")
    other = code.AssertTests("assert f(3) == 9")
    progs = ["def f(x):\n    return x * x\n"] * 6 + ["def f(x):\n    return x + 2\n"] * 3 + [None]
    statuses = scorer(progs, [tests] * 9 + [other])
    assert statuses == [Status.CORRECT] * 9 + [Status.NO_ANSWER]
    assert scorer(progs[:2], [tests, other]) == [Status.CORRECT] * 2  # tests differ: 2 runs
    stats = scorer.take_stats()
    assert (stats["programs"], stats["no_program"], stats["runs"]) == (12, 1, 4)
    assert scorer.take_stats()["programs"] == 0  # counters start afresh


def test_extract_program():
    assert programs.extract_program("x = 1\n[DONE]junk", end_markers=("[DONE]",)) == "x = 1\n"
    assert programs.extract_program("Sure:\n```py\nprint(1)\n```\n```\nnot this\n```") == (
        "print(1)\n"
    )
    assert programs.extract_program("```python\nprint(2)") == "print(2)"  # unterminated
    assert programs.extract_program("  \n") is None


_DEGRADED = """
import os
os.environ["REST_EM_SANDBOX_NAMESPACES"] = "0"
os.environ["REST_EM_SANDBOX_LANDLOCK"] = "0"
from rest_em.rewards import code
from rest_em.tasks import programs
{setup}
scorer = programs.ProgramScorer(programs.SandboxConfig(max_workers=1{extra}))
try:
    print(scorer(["def f():\\n    return 1\\n"], [code.AssertTests("assert f() == 1")]))
    stats = scorer.take_stats()
    print("ISOLATION", stats["isolation"])
except programs.SandboxNotIsolated as e:
    print("REFUSED", e)
"""


@pytest.mark.parametrize("how", ["config", "environment", "off"])
def test_require_isolation_refuses_a_degraded_sandbox(how):
    setup = 'os.environ["REST_EM_REQUIRE_ISOLATION"] = "1"' if how == "environment" else ""
    extra = ", require_isolation=True" if how == "config" else ""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("REST_EM_REQUIRE_ISOLATION", None)
    out = subprocess.run(
        [sys.executable, "-c", _DEGRADED.format(setup=setup, extra=extra)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    ).stdout
    if how == "off":  # degraded but allowed: the stats say what is in effect
        assert "ISOLATION" in out and "netns" not in out and "landlock" not in out, out
    else:
        assert "REFUSED require_isolation is set" in out and "netns, pidns, landlock" in out, out
