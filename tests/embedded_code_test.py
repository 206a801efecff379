"""The embedded code task: generation, levels, hidden tests in the real sandbox, the
tiny end-to-end loop."""

import collections

import pytest

from rest_em.rewards.status import Status
from rest_em.tasks import embedded_code as ec
from tests import helpers

TINY_CODE = helpers.REPO / "tests" / "testdata" / "tiny_embedded_code.gin"


@pytest.fixture(scope="module")
def task():
    return ec.embedded_code_task(num_train=200, num_sft=60, num_val=20, num_test=40)


def _body_lines(p):
    return [line for line in p.solution.split("\n") if line.strip()]


def test_generation_is_deterministic_and_seeded():
    a = ec.generate.__wrapped__("train", num_problems=50, levels=ec.ALL_LEVELS, seed=3)
    b = ec.generate.__wrapped__("train", num_problems=50, levels=ec.ALL_LEVELS, seed=3)
    c = ec.generate.__wrapped__("train", num_problems=50, levels=ec.ALL_LEVELS, seed=4)
    assert [(p.question, p.solution, p.tests) for p in a] == [
        (p.question, p.solution, p.tests) for p in b
    ]
    assert [p.question for p in a] != [p.question for p in c]


def test_levels_are_program_size_and_even(task):
    for split in ("sft", "train", "val", "test"):
        for p in task.load(split):
            assert len(_body_lines(p)) == p.level + 1  # one line per operation + return
            assert p.question.count(";") == p.level  # one phrase per operation
    counts = collections.Counter(p.level for p in task.load("test"))
    assert sorted(counts) == list(ec.ALL_LEVELS) and len(set(counts.values())) == 1


def test_held_out_functions_never_leak(task):
    def fns(split):
        return {p.question.split("\n")[0] for p in task.load(split)}

    full = ec.embedded_code_task(num_train=400, num_sft=100)
    held = {p.question.split("\n")[0] for s in ("val", "test") for p in full.load(s)}
    assert not held & {p.question.split("\n")[0] for p in full.load("train")}
    assert not held & {p.question.split("\n")[0] for p in full.load("sft")}
    assert not fns("val") & fns("test")
    for p in full.load("train"):
        assert not ec.HELD_OUT_PAIRS & _pairs(p)


def _pairs(p):
    kinds = []
    for line in _body_lines(p)[:-1]:
        code = line.strip()
        kinds.append(next(op.kind for op in ec.OPS if _matches(op.code, code)))
    return set(zip(kinds, kinds[1:]))


def _matches(template, code):
    import re

    pattern = re.escape(template).replace(re.escape("{k}"), r"\d+")
    return re.fullmatch(pattern, code) is not None


def test_reference_solutions_pass_in_the_sandbox(task):
    for split in ("sft", "test"):
        probs = task.load(split)
        assert task.score([p.solution for p in probs], probs) == [Status.CORRECT] * len(probs)
    stats = task.scoring_stats()
    assert stats["runs"] > 0 and stats["no_program"] == 0


def test_sft_level_weights_and_commented_style():
    # Many easy sft problems and a few hard ones; level 1 runs out of distinct functions
    # (a few dozen remain after test and val), and its place goes to the others by share.
    mixed = ec.embedded_code_task(
        num_sft=600, sft_level_weights=(0.3, 0.5, 0.1, 0.1), style="commented"
    )
    sft = mixed.load("sft")
    counts = collections.Counter(p.level for p in sft)
    assert counts[1] < 0.3 * 600 and counts[2] > 4 * counts[3]
    assert abs(counts[3] - counts[4]) <= 1 and counts[3] > 0
    plain = ec.embedded_code_task(num_sft=600, sft_level_weights=(0.3, 0.5, 0.1, 0.1))
    assert [p.question for p in plain.load("sft")] == [p.question for p in sft]
    # "commented": each clause of the description above its line; the same programs.
    for p, q in zip(sft, plain.load("sft")):
        clauses = p.question.split("\n")[0][2:].split("; ")
        lines = p.solution.split("\n")
        assert [line.strip()[2:] for line in lines[::2]] == clauses
        assert lines[1::2] == q.solution.split("\n")
    assert mixed.score([p.solution for p in sft], sft) == [Status.CORRECT] * len(sft)
    test = mixed.load("test")
    assert [p.question for p in test] == [p.question for p in plain.load("test")]
    with pytest.raises(Exception, match="style must be one of"):
        ec.embedded_code_task(style="terse").load("sft")
    with pytest.raises(Exception, match="one non-negative weight per level"):
        ec.embedded_code_task(sft_level_weights=(1.0, 2.0)).load("sft")


def test_transfer_task_composes_held_out_pairs():
    tr = ec.embedded_code_transfer_task(num_test=30)
    assert tr.name == "embedded_code_transfer"
    probs = tr.load("test")
    assert len(probs) == 30 and all(ec.HELD_OUT_PAIRS & _pairs(p) for p in probs)
    assert tr.score([p.solution for p in probs], probs) == [Status.CORRECT] * 30
    with pytest.raises(Exception, match="only a 'test' split"):
        tr.load("train")


def test_wrong_malformed_and_empty_programs(task):
    p = task.load("test")[:1] * 5
    wrong = "    return None"
    off_by_one = p[0].solution.rsplit("\n", 1)[0] + "\n    return 12345"
    statuses = task.score([wrong, off_by_one, "", "   \n", "    xs = ([\n"], p)
    assert statuses == [Status.INCORRECT, Status.INCORRECT] + [Status.NO_ANSWER] * 3


def test_hidden_tests_discriminate():
    for p in ec.generate("test", num_problems=ec.HELD_OUT["test"], levels=ec.ALL_LEVELS):
        lines = p.tests.test.split("\n")
        assert len(lines) == ec.NUM_HIDDEN
        assert len({line.split("==")[1] for line in lines}) >= 3


def test_tiny_end_to_end(tmp_path):
    helpers.run(tmp_path / "w", gin_file=TINY_CODE, timeout=300)
    rows = helpers.metrics(tmp_path / "w")
    assert [r["iteration"] for r in rows] == [0, 1]
    for r in rows:
        assert 0.0 <= r["test/greedy_pass@1"] <= 1.0
        assert "test/level_1/greedy_pass@1" in r
    assert "num_selected" in rows[1]
