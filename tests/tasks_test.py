"""Tasks: the embedded arithmetic generator, GSM8K/MATH from JSONL, and the seqio view."""

import json
import pathlib
import subprocess
import sys

import pytest

from rest_em import errors
from rest_em.rewards.status import Status
from rest_em.tasks import DataError, arithmetic, jsonl_tasks, read_jsonl
from rest_em.tokenizers import ByteTokenizer
from tests.helpers import env

DATA = pathlib.Path(__file__).parent / "testdata"


def test_arithmetic_reference_solutions_are_correct_and_splits_disjoint():
    task = arithmetic.make_task(num_train=400, num_sft=400)
    splits = {s: task.load(s) for s in ("sft", "train", "val", "test")}
    for name, probs in splits.items():
        statuses = task.score([task.target(p) for p in probs], probs)
        assert statuses == ["correct"] * len(probs), name
        assert len({p.question for p in probs}) == len(probs), name
        assert [p.problem_id for p in probs] == list(range(len(probs)))
    assert {p.level for p in splits["sft"]} == {2, 3}
    assert {p.level for p in splits["test"]} == {2, 3, 4, 5}
    questions = {n: {p.question for p in ps} for n, ps in splits.items()}
    for held_out in ("val", "test"):
        for other in questions:
            if other != held_out:
                assert not questions[held_out] & questions[other], (held_out, other)


def test_arithmetic_is_deterministic_and_seeded():
    a = arithmetic.make_task(seed=0).load("train")[:50]
    b = arithmetic.make_task(seed=0).load("train")[:50]
    c = arithmetic.make_task(seed=1).load("train")[:50]
    assert a == b and a != c


def test_arithmetic_worked_solution_format():
    p = arithmetic.make_problem(__import__("numpy").random.default_rng(0), 3, 0)
    lines = p.solution.split("\n")
    assert len(lines) == 4 and lines[-1] == f"#### {p.answer}"
    assert arithmetic.extract("garbage") is None
    q = arithmetic.Problem(0, "1+1", "2")
    assert arithmetic.score(["1+1=2\n#### 2", "#### 3", "no"], [q] * 3) == [
        "correct",
        "incorrect",
        "no_answer",
    ]
    q = arithmetic.Problem(0, "3+4+1", "8")
    outs = ["3+4=7\n7+1=8\n#### 8", "3+4=6\n6+2=8\n#### 8", "3+5=8\n8+0=8\n#### 8", "#### 8"]
    assert arithmetic.score(outs, [q] * 4, verify_steps=True) == ["correct"] + ["incorrect"] * 3
    assert arithmetic.score(outs, [q] * 4) == ["correct"] * 4  # answer-only checking


def test_arithmetic_sft_level_weights_mix_easy_and_hard():
    # Equal weights are round-robin; a mix gives every prefix its share of each level.
    assert arithmetic.weighted_levels((2, 3, 4, 5), (1, 1, 1, 1), 8) == [2, 3, 4, 5] * 2
    mix = arithmetic.weighted_levels((2, 3, 4, 5), (0.4, 0.4, 0.1, 0.1), 1000)
    for n in (10, 100, 1000):
        assert [mix[:n].count(lv) for lv in (2, 3, 4, 5)] == [0.4 * n, 0.4 * n, 0.1 * n, 0.1 * n]
    task = arithmetic.make_task(
        num_sft=200, sft_levels=(2, 3, 4, 5), sft_level_weights=(0.4, 0.4, 0.1, 0.1)
    )
    sft = task.load("sft")
    assert [sum(p.level == lv for p in sft) for lv in (2, 3, 4, 5)] == [80, 80, 20, 20]
    assert all(task.score([task.target(p)], [p]) == ["correct"] for p in sft)
    held = {p.question for split in ("test", "val") for p in task.load(split)}
    assert not held & {p.question for p in sft}
    with pytest.raises(errors.ConfigError, match="one non-negative weight per level"):
        arithmetic.make_task(sft_levels=(2, 3), sft_level_weights=(1.0,)).load("sft")


def test_arithmetic_refuses_impossible_sizes():
    with pytest.raises(ValueError, match="too few exist"):
        arithmetic.generate("sft", num_problems=5000, levels=(2,), max_operand=2)


def test_gsm8k_from_jsonl():
    task = jsonl_tasks.gsm8k_task(train_file=None, test_file=str(DATA / "gsm8k_test.jsonl.gz"))
    probs = task.load("test")
    assert len(probs) == 1319
    assert all(p.answer is not None for p in probs)
    assert "<<" not in probs[0].solution  # calculator annotations stripped
    statuses = task.score([task.target(p) for p in probs[:50]], probs[:50])
    assert statuses == ["correct"] * 50
    assert task.prompt(probs[0]).startswith("Question: ")


def test_math_from_jsonl_with_few_shot_prompt(tmp_path):
    rows = [
        json.loads(line) for line in __import__("gzip").open(DATA / "math500_test.jsonl.gz", "rt")
    ][:30]
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in rows))
    task = jsonl_tasks.math_task(
        train_file=str(train), test_file=str(train), num_shots=2, val_size=5
    )
    assert len(task.load("train")) == 23 and len(task.load("val")) == 5
    prompt = task.prompt(task.load("test")[5])
    assert prompt.count("Question:") == 3 and rows[0]["question"].strip() in prompt
    # A continuation that rambles into the next question is cut there.
    p = task.load("test")[5]
    assert task.score([f"\\boxed{{{p.answer}}}\nQuestion: x \\boxed{{0}}"], [p]) == ["correct"]


def test_malformed_rows_name_file_line_and_field(tmp_path):
    assert DataError is errors.DataError and issubclass(DataError, errors.UserError)
    path = tmp_path / "bad.jsonl"
    good = '{"question": "q", "answer": "#### 1"}\n'
    cases = [
        ('{"question": "q"}\n', r'bad.jsonl:2: field "answer" is missing'),
        (
            '\n{"question": 3, "answer": "x"}\n',
            r'bad.jsonl:3: field "question" must be a string, got int',
        ),
        ("{not json\n", r"bad.jsonl:2: invalid JSON \(Expecting property name"),
        ('["q", "a"]\n', r"bad.jsonl:2: expected a JSON object, got list"),
    ]
    for rest, message in cases:
        path.write_text(good + rest)
        with pytest.raises(DataError, match=message):
            read_jsonl(path, required=("question", "answer"))
    path.write_bytes(good.encode() * 2 + b'{"question": "caf\xe9", "answer": "#### 1"}\n')
    with pytest.raises(DataError, match=r"bad.jsonl:3: not UTF-8 text"):
        read_jsonl(path, required=("question", "answer"))
    with pytest.raises(DataError, match=r"missing.jsonl: no such file"):
        read_jsonl(tmp_path / "missing.jsonl", required=("question",))
    gz = tmp_path / "bad.jsonl.gz"
    gz.write_bytes(b"not gzip")
    with pytest.raises(DataError, match=r"bad.jsonl.gz: cannot read"):
        read_jsonl(gz, required=("question",))


def test_jsonl_task_reports_a_bad_row_as_data_error(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text(
        '{"question": "a", "answer": "so #### 4"}\n{"question": "b", "solution": "#### 5"}\n'
    )
    task = jsonl_tasks.gsm8k_task(train_file=None, test_file=str(path))
    with pytest.raises(errors.DataError, match=r'train.jsonl:2: field "answer" is missing'):
        task.load("test")


def test_val_size_must_leave_training_problems(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text(
        "".join(json.dumps({"question": f"q{i}", "answer": f"#### {i}"}) + "\n" for i in range(6))
    )
    task = jsonl_tasks.gsm8k_task(
        train_file=str(path), test_file=str(path), num_shots=2, val_size=3
    )
    assert (len(task.load("train")), len(task.load("val"))) == (1, 3)
    for val_size in (4, 10):
        task = jsonl_tasks.gsm8k_task(
            train_file=str(path), test_file=str(path), num_shots=2, val_size=val_size
        )
        for split in ("train", "val", "sft"):
            with pytest.raises(
                errors.ConfigError,
                match=rf"val_size={val_size} leaves no training problems: "
                rf".*train.jsonl has 6 rows, 2 of them few-shot exemplars",
            ):
                task.load(split)
        assert len(task.load("test")) == 6  # other splits still load
    with pytest.raises(errors.ConfigError, match=r"val_size must be >= 0, got -1"):
        jsonl_tasks.math_task(train_file=str(path), test_file=str(path), val_size=-1).load("val")


def test_scores_are_statuses():
    q = arithmetic.Problem(0, "1+1", "2")
    statuses = arithmetic.score(["1+1=2\n#### 2", "#### 3", "no"], [q] * 3)
    assert statuses == [Status.CORRECT, Status.INCORRECT, Status.NO_ANSWER]
    assert all(type(s) is Status for s in statuses)
    assert json.dumps(statuses) == '["correct", "incorrect", "no_answer"]'
    task = jsonl_tasks.gsm8k_task(train_file=None, test_file=str(DATA / "gsm8k_test.jsonl.gz"))
    p = task.load("test")[0]
    statuses = task.score([task.target(p), "#### -1", "no idea"], [p] * 3)
    assert statuses == ["correct", "incorrect", "no_answer"]
    assert all(type(s) is Status for s in statuses)


def test_problems_without_gold_are_kept_unscored(tmp_path):
    path = tmp_path / "g.jsonl"
    path.write_text(
        '{"question": "a", "answer": "so #### 4"}\n{"question": "b", "answer": "no answer"}\n'
    )
    probs = jsonl_tasks.gsm8k_task(train_file=None, test_file=str(path)).load("test")
    assert probs[0].answer == "4" and probs[1].answer is None


def test_seqio_task_matches_the_loop_view():
    from rest_em.tasks import seqio_tasks  # imports seqio + TensorFlow: only here

    task = arithmetic.make_task(num_train=20, num_sft=20, num_val=4, num_test=8)
    st = seqio_tasks.register(task, name="rest_em_arithmetic_test")
    tok = ByteTokenizer()
    examples = list(st.get_dataset(split="test", shuffle=False).as_numpy_iterator())
    probs = task.load("test")
    assert len(examples) == len(probs) == 8
    for ex, p in zip(examples, probs):
        assert ex["inputs"].tolist() == tok.encode(task.prompt(p))
        assert ex["targets"].tolist() == tok.encode(task.target(p)) + [tok.eos_id]
        assert ex["answer"].decode() == p.answer and int(ex["problem_id"]) == p.problem_id


def test_arithmetic_human_solutions_worded_and_checked():
    task = arithmetic.make_task(num_train=400)
    train = task.load("train")
    # Worded: one operation per line, in another phrasing than the model's "a+b=c"
    # (no line of the model's own style); every one verified step by step.
    for p in train:
        lines = task.target(p).split("\n")
        assert len(lines) == p.level + 1 and not any("=" in line for line in lines[:-1])
        assert all(" is " in line for line in lines[:-1])
    assert task.score([task.target(p) for p in train], train) == ["correct"] * len(train)
    gen = arithmetic.generate("train", num_problems=400, levels=arithmetic.ALL_LEVELS)
    assert train[0].solution == arithmetic.human_solution(gen[0])  # from the worked one
    q = arithmetic.Problem(0, "3+4+1-2", "6")
    outs = [
        "3+4+1=8\n8-2=6\n#### 6",  # two operations folded into one line: fine
        "3+4+1-2=6\n#### 6",  # the whole chain in one line: fine
        "3 plus 4 is 7\n7 plus 1 is 8\n8 minus 2 is 6\n#### 6",  # worded: fine
        "3+4+1=9\n9-2=6\n#### 6",  # a false line
        "3 plus 4 is 7\n7 minus 1 is 6\n6 minus 2 is 4\n#### 6",  # a wrong operation
        "3+4=7\n7-2=5\n#### 6",  # skips an operation
        "3+4+1=8\n#### 6",
    ]  # stops early
    expected = ["correct"] * 3 + ["incorrect"] * 4
    assert arithmetic.score(outs, [q] * 7, verify_steps=True) == expected


def test_arithmetic_human_styles_verify_and_the_sft_share_is_seeded():
    """Every human style is checked correct step by step; sft_human_share puts that share
    of the sft solutions in the human style (the rest stay the model's), seeded."""
    for style in arithmetic.HUMAN_STYLES:
        task = arithmetic.make_task(num_train=200, human_style=style)
        train = task.load("train")
        assert task.score([task.target(p) for p in train], train) == ["correct"] * len(train)
    spaced = arithmetic.make_task(num_train=8, human_style="spaced").load("train")[0]
    assert " + " in spaced.solution or " - " in spaced.solution
    mixed = arithmetic.make_task(num_sft=1000, human_style="spaced", sft_human_share=0.25)
    sft = mixed.load("sft")
    human = [" = " in p.solution for p in sft]
    assert 0.2 < sum(human) / len(sft) < 0.3
    assert mixed.score([p.solution for p in sft], sft) == ["correct"] * len(sft)
    assert [p.question for p in sft] == [
        p.question for p in arithmetic.make_task(num_sft=1000).load("sft")
    ]
    again = arithmetic.make_task(num_sft=1000, human_style="spaced", sft_human_share=0.25)
    assert again.load("sft") == sft
    with pytest.raises(errors.ConfigError, match="human_style"):
        arithmetic.make_task(num_train=8, human_style="typed").load("train")


def test_arithmetic_transfer_task_is_asked_another_way_and_held_out():
    tr = arithmetic.make_transfer_task(num_test=100)
    transfer = tr.load("test")
    assert tr.name == "arithmetic_transfer" and len(transfer) == 100
    assert {p.level for p in transfer} == {2, 3, 4}
    assert all(tr.prompt(p) == f"Question: {p.question}\n" for p in transfer)
    assert tr.score([tr.target(p) for p in transfer], transfer) == ["correct"] * 100
    # Held out from every split of the task, whatever their sizes.
    task = arithmetic.make_task(num_train=3000, num_sft=3000)
    others = {p.question for s in ("sft", "train", "val", "test") for p in task.load(s)}
    assert not others & {p.question for p in arithmetic.generate_transfer(seed=0)}
    assert task.prompt(transfer[0]) == f"Q: {transfer[0].question}\n"
    assert (
        task.hint_prompt(transfer[0])
        == f"Q: {transfer[0].question} (answer {transfer[0].answer})\n"
    )
    with pytest.raises(errors.ConfigError, match="arithmetic_transfer_task"):
        task.load("transfer")
    with pytest.raises(errors.ConfigError, match="only a 'test' split"):
        tr.load("train")


def test_the_shipped_testbed_has_what_its_studies_need():
    """gin_configs/arithmetic.gin as bound (fresh process): the base model sees worked
    solutions of every level it is trained and tested on (a few dozen of the hard ones),
    the human solutions verify and are in another style than the base's own (the base
    has read a fifth of its solutions in it, as a pretrained model has read people's
    writing), and the transfer task is held out from every split and within the levels
    the base has seen (so it is solvable, and never trained on)."""
    code = (
        "import json; from rest_em import main\n"
        "main.parse_gin(['arithmetic.gin'], [])\n"
        "task = main._CONFIGURED['arithmetic_task']()\n"
        "transfer = main._CONFIGURED['arithmetic_transfer_task']()\n"
        "splits = {s: task.load(s) for s in ('sft', 'train', 'val', 'test')}\n"
        "train = splits['train']\n"
        "out = {s: [p.level for p in ps] for s, ps in splits.items()}\n"
        "out['human_ok'] = task.score([task.target(p) for p in train], train)\n"
        "out['human'] = [task.target(p) for p in train[:3]]\n"
        "out['worked'] = [p.solution for p in splits['sft']]\n"
        "qs = {p.question for ps in splits.values() for p in ps}\n"
        "tr = transfer.load('test')\n"
        "out['transfer_levels'] = [p.level for p in tr]\n"
        "out['transfer_shared'] = sum(p.question in qs for p in tr)\n"
        "out['transfer_prompt'] = transfer.prompt(tr[0]); out['prompt'] = task.prompt(tr[0])\n"
        "print(json.dumps(out))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env(), capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    sft, levels = out["sft"], set(out["train"]) | set(out["test"]) | set(out["val"])
    assert levels == set(sft) == {2, 3, 4, 5}
    assert min(sft.count(lv) for lv in levels) >= 50
    assert out["human_ok"] == ["correct"] * len(out["train"])
    assert all(" + " in h or " - " in h for h in out["human"])  # another style...
    own = [w for w in out["worked"] if " = " not in w]  # ...than the base model's own,
    assert all("=" in w for w in own)  # which it mostly reads,
    assert 0.15 < 1 - len(own) / len(out["worked"]) < 0.25  # and a fifth in human style
    assert set(out["transfer_levels"]) <= set(sft) and out["transfer_shared"] == 0
    assert out["transfer_prompt"].startswith("Question: ") and out["prompt"].startswith("Q: ")
