"""User errors through the launcher: exit status 2, one line on stderr that says what to
do, no traceback, nothing written (`python -m rest_em.main`)."""

import pytest

from helpers import launch


def _good_jsonl(path):
    path.write_text('{"question": "1+1?", "answer": "so #### 2"}\n' * 4)
    return path


def _cases(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "1+1?", "answer": "#### 2"}\n{"question": "2+2?"}\n')
    empty_ckpt = tmp_path / "ckpt"
    empty_ckpt.mkdir()
    good = _good_jsonl(tmp_path / "good.jsonl")
    hf = ("--gin_file=gsm8k.gin", f"--gin.TRAIN_FILE='{good}'", f"--gin.TEST_FILE='{good}'")
    gsm8k_task = (
        "--gin.rest_em.run.task=@rest_em.gsm8k_task()",
        f"--gin.rest_em.gsm8k_task.train_file='{bad}'",
        f"--gin.rest_em.gsm8k_task.test_file='{good}'",
    )
    return {
        "missing gin file": (("--gin_file=no_such.gin",), "no_such.gin' not found"),
        "unknown binding": (("--gin.EMConfig.num_iteratons=2",), "num_iteratons"),
        "required value unset": (("--gin_file=gsm8k.gin",), "--gin.CHECKPOINT="),
        "bad checkpoint": ((*hf, f"--gin.CHECKPOINT='{empty_ckpt}'"), str(empty_ckpt)),
        "bad data row": (gsm8k_task, 'bad.jsonl:2: field "answer" is missing'),
        "teacher not a finished run": (
            ("--gin_file=arithmetic_distill.gin", f"--gin.TEACHER_WORKDIR='{tmp_path / 'no'}'"),
            "no completed iteration or base params",
        ),
    }


CASES = ["missing gin file", "unknown binding", "required value unset", "bad checkpoint",
         "bad data row", "teacher not a finished run"]  # fmt: skip


@pytest.mark.parametrize("case", CASES)
def test_user_error_is_one_line_and_exit_2(case, tmp_path):
    extra, expected = _cases(tmp_path)[case]
    workdir = tmp_path / "w"
    proc = launch(workdir, *extra, timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and expected in last, proc.stderr[-3000:]
    assert "In call to configurable" not in last  # gin's suffix is dropped
    assert not workdir.exists() or not any(workdir.iterdir()), sorted(workdir.iterdir())


def test_traceback_on_request(tmp_path):
    proc = launch(tmp_path / "w", "--gin_file=no_such.gin", "--verbosity=1", timeout=300)
    assert proc.returncode == 2 and "Traceback" in proc.stderr
