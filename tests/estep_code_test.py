"""The E-step with a code task: scoring overlaps sampling, hostile programs cost only
their limits, and transfer tasks are evaluated each iteration."""

import dataclasses
import json
import threading
import time

import jax
import pytest

from helpers import TINY, metrics, run
from rest_em import em, estep, sampling, training
from rest_em import model as model_lib
from rest_em.rewards import code
from rest_em.rewards.status import Status
from rest_em.tasks import arithmetic, code_tasks, programs
from rest_em.tasks.problems import Problem
from rest_em.tokenizers import ByteTokenizer

CFG = model_lib.ModelConfig(
    vocab_size=ByteTokenizer().vocab_size,
    hidden_size=32,
    intermediate_size=64,
    num_layers=2,
    num_heads=4,
    num_kv_heads=2,
    max_seq_len=128,
)
TOK = ByteTokenizer()


def _sampling(num_samples=3):
    return sampling.SamplingConfig(
        num_samples=num_samples,
        temperature=1.0,
        top_k=0,
        max_new_tokens=12,
        eos_id=TOK.eos_id,
        pad_id=TOK.pad_id,
    )


def test_scoring_runs_in_the_background_while_the_next_chunk_samples():
    task = arithmetic.make_task(num_train=12, num_sft=4, num_val=2, num_test=2)
    problems = task.load("train")[:12]
    events = []

    def prompt(p):  # called when the sampler starts a chunk
        events.append(("sample", time.monotonic(), threading.current_thread().name))
        return task.prompt(p)

    def score(completions, probs):
        t = time.monotonic()
        time.sleep(0.5)
        events.append(("score", t, time.monotonic(), threading.current_thread().name))
        return task.score(completions, probs)

    slow = dataclasses.replace(task, prompt=prompt, score=score)
    params = model_lib.init_params(CFG, jax.random.key(0))
    kwargs = dict(tokenizer=TOK, model_cfg=CFG, sampling_cfg=_sampling(), key=jax.random.key(1))
    seconds = {}
    chunked = estep.generate_and_score(
        params, problems, task=slow, chunk_size=4, seconds=seconds, **kwargs
    )
    scores = [e for e in events if e[0] == "score"]
    starts = sorted({e[1] for e in events if e[0] == "sample"})
    chunk_starts = [starts[0]] + [t for a, t in zip(starts, starts[1:]) if t - a > 1e-3]
    assert len(scores) == 3 and all(e[3].startswith("rest_em-score") for e in scores)
    # The sampler started chunk k+1 before the checker finished chunk k.
    assert chunk_starts[1] < scores[0][2] and chunk_starts[2] < scores[1][2]
    assert set(seconds) == {"sampler", "scoring", "scoring_wait"}
    assert seconds["scoring"] >= 1.5 > seconds["scoring_wait"]
    # Chunking and overlap change nothing: one chunk gives the same samples and statuses.
    whole = estep.generate_and_score(params, problems, task=task, chunk_size=12, **kwargs)
    assert [(s.completions, s.statuses) for s in chunked] == [
        (s.completions, s.statuses) for s in whole
    ]


# Sampled programs replaced by hostile ones: the sampler and the E-step are real, the
# programs reaching the sandbox fork forever, sleep forever, or are correct.
_HOSTILE = {
    0: "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n",
    1: "import time\ntime.sleep(10 ** 6)\n",
    2: "def f(x):\n    return x + 1\n",
}


def _hostile_task():
    problems = [
        Problem(i, f"f({i}) = ", None, "def f(x):\n    return x + 1\n", tests=_tests(i))
        for i in range(4)
    ]

    def program_of(completion, p):
        return _HOSTILE[sum(completion.encode()) % 3]

    return code_tasks._code_task(
        "hostile",
        lambda split: problems,
        lambda p: p.question,
        program_of,
        sandbox=programs.SandboxConfig(time_limit_s=1.0, max_processes=8),
        data_files=(),
        stop_sequences=(),
    )


def _tests(i):
    return code.AssertTests(f"assert f({i}) == {i + 1}")


def test_fork_bombs_and_sleepers_in_a_real_loop_cost_their_limits(tmp_path):
    task = _hostile_task()
    cfg = em.EMConfig(
        num_iterations=1,
        num_samples=4,
        chunk_size=4,
        max_new_tokens=8,
        eval_num_samples=2,
        eval_ks=(1, 2),
        train_eval_size=4,
        val_size=4,
        temperature=1.0,
        top_k=0,
        fit=training.FitConfig(batch_size=4, num_steps=2, eval_every=2),
    )
    t0 = time.monotonic()
    history = em.run(
        task=task,
        tokenizer=TOK,
        model_cfg=CFG,
        make_base_params=lambda: model_lib.init_params(CFG, jax.random.key(0)),
        workdir=tmp_path / "run",
        cfg=cfg,
    )
    elapsed = time.monotonic() - t0
    rows = [
        json.loads(line)
        for line in (tmp_path / "run" / "iter_001" / "samples" / "shard_00000.jsonl")
        .read_text()
        .splitlines()
    ]
    kinds = {sum(r["completion"].encode()) % 3: r["status"] for r in rows}
    assert kinds.get(0) in (Status.TIMEOUT, Status.INCORRECT) and kinds.get(1) == Status.TIMEOUT
    assert kinds.get(2, Status.CORRECT) == Status.CORRECT
    assert len(history) == 2 and "test/greedy_pass@1" in history[1]
    sandbox = history[1]["sandbox"]
    assert sandbox["programs"] == 16 and sandbox["runs"] <= 12  # identical programs: once
    assert "pidns" in sandbox["isolation"] or sandbox["degraded"]
    # 16 samples, at most 3 distinct programs per problem, 1 s each on 2 workers: the
    # limits bound the cost (with the evaluations, far below a hung E-step).
    assert elapsed < 240, elapsed
    assert "code sandbox: isolation" in em.final_table(history)


@pytest.fixture(scope="module")
def extended(tmp_path_factory):
    """A 1-iteration run, then extended to 2 iterations with a transfer task."""
    wd = tmp_path_factory.mktemp("transfer") / "run"
    run(wd, "--gin.EMConfig.num_iterations=1")
    proc = run(
        wd,
        "--gin.rest_em.run.transfer_tasks=[@rest_em.arithmetic_transfer_task()]",
        "--gin.rest_em.arithmetic_transfer_task.num_test=8",
        gin_file=TINY,
    )
    return wd, proc


def test_transfer_tasks_are_evaluated_each_new_iteration(extended):
    wd, proc = extended
    m = metrics(wd)
    assert [r["iteration"] for r in m] == [0, 1, 2]
    assert "arithmetic_transfer/test/greedy_pass@1" not in m[1]  # done before it was added
    r = m[2]
    assert r["arithmetic_transfer/test/num_problems"] == 8
    for k in ("greedy_pass@1", "pass@1", "pass@4", "maj@4"):
        assert 0.0 <= r[f"arithmetic_transfer/test/{k}"] <= 1.0
    assert (wd / "iter_002" / "eval_arithmetic_transfer.test.json").exists()
    assert "arithmetic_transfer/test/greedy_pass@1" in proc.stdout  # the final table
    history = (wd / "fingerprint_history.jsonl").read_text()
    assert "transfer_tasks" in history and "num_iterations" in history
