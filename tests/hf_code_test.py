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


@pytest.fixture(scope="module")
def instruct_checkpoint(tmp_path_factory):
    """A tiny random Llama with ChatML's template: samples end at `<|im_end|>`. (Not a
    Qwen2: transformers 5 picks Qwen2Tokenizer from config.json, which imposes Qwen's own
    pre-tokenizer on this generic tokenizer.json; a real Qwen tokenizer.json has it.)"""
    import hf_testing

    directory = tmp_path_factory.mktemp("hf_code_instruct")
    hf_tok = hf_testing.write_chat_tokenizer(directory, "chatml", _texts())
    hf = hf_testing.make_hf_model(
        "Llama",
        vocab_size=len(hf_tok),
        max_position_embeddings=4096,
        eos_token_id=hf_tok.convert_tokens_to_ids("<|im_end|>"),
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


@pytest.mark.skipif(not MBPP.exists(), reason="needs ../shared/data/mbpp")
def test_mbpp_instruct_gin_end_to_end_with_humaneval_transfer(instruct_checkpoint, tmp_path):
    """mbpp_instruct.gin: MBPP and HumanEval as user turns of the checkpoint's template,
    zero-shot, through the launcher; a prompt's ids are transformers' for the same turn."""
    proc, rows, samples = _launch(
        "mbpp_instruct.gin",
        tmp_path / "run",
        {
            "CHECKPOINT": f"'{instruct_checkpoint}'",
            "MBPP_FILE": f"'{MBPP}'",
            "HUMANEVAL_FILE": f"'{HUMANEVAL}'",
            "mbpp_task.limit": 6,
        },
    )
    _check_code_run(proc, rows, samples, num_train=6)

    # The prompt the launcher sampled from is the template's turn, ids as transformers'.
    import re

    import transformers

    import hf_testing
    from rest_em import estep, experiment
    from rest_em.tasks import code_tasks

    config = (REPO / "gin_configs" / "mbpp_instruct.gin").read_text()
    system = re.search(r'^rest_em\.chat_task\.system = "(.*)"$', config, re.M).group(1)
    plain = code_tasks.mbpp_task(path=str(MBPP), num_shots=0, limit=6)
    task = experiment.chat_task(task=plain, checkpoint_dir=str(instruct_checkpoint), system=system)
    tok = experiment.hf_tokenizer(checkpoint_dir=str(instruct_checkpoint), chat=True)
    problem = task.load("train")[0]
    hf_tok = transformers.AutoTokenizer.from_pretrained(instruct_checkpoint)
    messages = [
        {"role": "system", "content": system},
        {"role": "user", "content": plain.prompt(problem)},
    ]
    want = hf_testing.chat_ids(hf_tok, messages)
    assert estep.prompt_ids(task, tok, problem) == want


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
