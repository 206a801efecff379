"""MBPP and APPS through an imported Hugging Face checkpoint: mbpp.gin and apps.gin end
to end, with HumanEval as the transfer task.

A tiny random `LlamaForCausalLM` saved with `save_pretrained` (safetensors) plus a real
byte-level BPE `tokenizer.json` trained offline on MBPP and HumanEval text, run through
the launcher for one ReST^EM iteration. A random model writes junk, which reaches the
sandbox as programs (or is NO_ANSWER when blank) and fails its tests.
"""

import gzip
import json
import subprocess
import sys

import pytest

from helpers import REPO, env

MBPP = REPO.parent / "shared" / "data" / "mbpp" / "mbpp.jsonl"
HUMANEVAL = REPO / "tests" / "testdata" / "humaneval.jsonl.gz"
APPS = REPO / "tests" / "testdata" / "apps_rows.jsonl"
CODE_STATUSES = {"correct", "incorrect", "no_answer", "timeout"}


def _texts():
    with gzip.open(HUMANEVAL, "rt", encoding="utf-8") as f:
        humaneval = [json.loads(line) for line in f]
    mbpp = [json.loads(line) for line in MBPP.read_text().splitlines()[:200]]
    return [p["prompt"] + p["canonical_solution"] for p in humaneval] + [
        r["text"] + "\n" + r["code"] + "\n" + "\n".join(r["test_list"]) + "\n[BEGIN]\n[DONE]"
        for r in mbpp
    ]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    import hf_testing

    directory = tmp_path_factory.mktemp("hf_code_llama")
    vocab = hf_testing.write_tokenizer(directory, _texts())
    hf = hf_testing.make_hf_model(
        "Llama", vocab_size=vocab, max_position_embeddings=4096, bos_token_id=1, eos_token_id=2
    )
    hf.save_pretrained(directory, safe_serialization=True)
    return directory


_TINY = {
    "EMConfig.num_iterations": 1,
    "EMConfig.num_samples": 2,
    "EMConfig.max_new_tokens": 24,
    "EMConfig.chunk_size": 4,
    "EMConfig.eval_num_samples": 2,
    "EMConfig.eval_ks": "(1, 2)",
    "EMConfig.train_eval_size": 4,
    "FitConfig.batch_size": 4,
    "FitConfig.micro_batches": 1,
    "FitConfig.num_steps": 2,
    "FitConfig.eval_every": 2,
    "FitConfig.max_length": 4096,
    "humaneval_task.limit": 3,
    "SandboxConfig.time_limit_s": 2.0,
}


def _launch(config, workdir, overrides):
    cmd = [
        sys.executable,
        "-m",
        "rest_em.main",
        f"--gin_file={config}",
        f"--workdir={workdir}",
        *(f"--gin.{k}={v}" for k, v in {**_TINY, **overrides}.items()),
    ]
    proc = subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=900, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-6000:]
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    samples = [
        json.loads(line)
        for shard in sorted((workdir / "iter_001" / "samples").glob("shard_*.jsonl"))
        for line in shard.read_text().splitlines()
    ]
    return proc, rows, samples


def _check_code_run(proc, rows, samples, num_train):
    assert [r["iteration"] for r in rows] == [0, 1]
    it1 = rows[1]
    assert it1["num_problems"] == num_train and len(samples) == num_train * 2
    assert {s["status"] for s in samples} <= CODE_STATUSES
    sandbox = it1["sandbox"]  # programs reached the sandbox and were run there
    assert sandbox["programs"] == len(samples) and sandbox["runs"] >= 1
    assert sandbox["isolation"] and sandbox["programs_per_s"] > 0
    for r in rows:
        assert r["humaneval/test/num_problems"] == 3  # the transfer task, every iteration
        for key in ("test/greedy_pass@1", "test/pass@2", "humaneval/test/pass@2"):
            assert 0.0 <= r[key] <= 1.0, key
        assert not any("maj@" in k for k in r)  # code tasks have no answers to vote on
    assert "humaneval/test/greedy_pass@1" in proc.stdout and "code sandbox:" in proc.stdout


@pytest.mark.skipif(not MBPP.exists(), reason="needs ../shared/data/mbpp")
def test_mbpp_gin_end_to_end_with_humaneval_transfer(checkpoint, tmp_path):
    proc, rows, samples = _launch(
        "mbpp.gin",
        tmp_path / "run",
        {
            "CHECKPOINT": f"'{checkpoint}'",
            "MBPP_FILE": f"'{MBPP}'",
            "HUMANEVAL_FILE": f"'{HUMANEVAL}'",
            "mbpp_task.num_shots": 1,
            "mbpp_task.limit": 6,
        },
    )
    _check_code_run(proc, rows, samples, num_train=6)
    assert rows[0]["test/num_problems"] == 6


def test_apps_gin_end_to_end_with_humaneval_transfer(checkpoint, tmp_path):
    proc, rows, samples = _launch(
        "apps.gin",
        tmp_path / "run",
        {
            "CHECKPOINT": f"'{checkpoint}'",
            "TRAIN_FILE": f"'{APPS}'",
            "TEST_FILE": f"'{APPS}'",
            "HUMANEVAL_FILE": f"'{HUMANEVAL}'",
            "apps_task.val_size": 2,
        },
    )
    _check_code_run(proc, rows, samples, num_train=4)
    levels = {k.split("/")[1] for k in rows[0] if k.startswith("test/level_")}
    assert levels == {"level_1", "level_2", "level_3"}  # APPS difficulties
