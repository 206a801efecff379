"""The rows of the paper's Table 1 as gin variants, each end to end on the tiny config:
SFT on human solutions, ReST, RFT, STaR (greedy E-step + rationalization), distillation."""

import json
import pathlib
import shutil

import numpy as np
import pytest

from helpers import REPO, env, run

FAST = ["--gin.EMConfig.num_iterations=1"]


def _rows(path):
    return [json.loads(line) for line in pathlib.Path(path).read_text().splitlines()]


def _with_base(src, dst):
    """A variant reuses the ReST^EM run's base model (same seed, model and SFT data)."""
    dst.mkdir(parents=True)
    shutil.copytree(src / "base", dst / "base")
    return dst


def _tiny_task():
    """The task tiny_arithmetic.gin configures (its human style from arithmetic.gin)."""
    from rest_em.tasks import arithmetic

    return arithmetic.make_task(
        num_train=48, num_sft=64, num_val=16, num_test=32, verify_steps=False, human_style="spaced"
    )


@pytest.fixture(scope="module")
def restem(tmp_path_factory):
    """The reference: 2 ReST^EM iterations (also the distillation teacher)."""
    workdir = tmp_path_factory.mktemp("restem")
    run(workdir)
    return workdir


def test_sft_on_human_solutions(restem, tmp_path):
    w = _with_base(restem, tmp_path / "sft")
    run(w, "--gin_file=variants/sft_human.gin")
    task = _tiny_task()
    train = task.load("train")
    selected = _rows(w / "iter_001" / "selected.jsonl")
    assert [r["completion"] for r in selected] == [task.target(p) for p in train]
    assert not (w / "iter_001" / "samples").exists()  # no sampling at all
    m = json.loads((w / "iter_001" / "metrics.json").read_text())
    assert m["num_samples"] == 0 and m["num_selected"] == len(train)
    assert m["num_train_steps"] > 0 and 0.0 <= m["test/greedy_pass@1"] <= 1.0
    # The human solutions are spaced ("7 + 8 = 15"), not the model's "7+8=15".
    assert all(" = " in r["completion"] for r in selected)


def test_rest_continues_from_the_last_model(restem, tmp_path):
    from rest_em import checkpoints

    w = _with_base(restem, tmp_path / "rest")
    run(
        w,
        "--gin_file=variants/rest.gin",
        "--gin.rest_em.run.transfer_tasks=[@rest_em.arithmetic_transfer_task()]",
        "--gin.rest_em.arithmetic_transfer_task.num_test=16",
    )
    ref = [json.loads((restem / f"iter_00{i}" / "metrics.json").read_text()) for i in (1, 2)]
    got = [json.loads((w / f"iter_00{i}" / "metrics.json").read_text()) for i in (1, 2)]
    # Iteration 1 starts from the base either way; iteration 2 starts elsewhere.
    for k in ("num_selected", "val/greedy_pass@1", "test/greedy_pass@1"):
        assert got[0][k] == ref[0][k], k
    a = checkpoints.restore_params(restem / "iter_002" / "params")
    b = checkpoints.restore_params(w / "iter_002" / "params")
    import jax

    diffs = jax.tree.leaves(
        jax.tree.map(lambda x, y: float(np.abs(np.asarray(x) - np.asarray(y)).max()), a, b)
    )
    assert max(diffs) > 0
    assert "arithmetic_transfer/test/greedy_pass@1" in got[1]


def test_rft_one_iteration_distinct_solutions(restem, tmp_path):
    w = _with_base(restem, tmp_path / "rft")
    run(w, "--gin_file=variants/rft.gin")
    assert not (w / "iter_002").exists()
    selected = _rows(w / "iter_001" / "selected.jsonl")
    assert selected, "the tiny base model finds some correct samples"
    pairs = [(r["problem_id"], r["completion"]) for r in selected]
    assert len(pairs) == len(set(pairs))
    samples = [
        r for f in sorted((w / "iter_001" / "samples").glob("shard_*.jsonl")) for r in _rows(f)
    ]
    distinct = {(r["problem_id"], r["completion"]) for r in samples if r["status"] == "correct"}
    assert len(selected) <= len(distinct)
    # The filter's statistics reach the metrics: repeated correct completions were dropped.
    (m,) = [json.loads(x) for x in (w / "metrics.jsonl").read_text().splitlines()][1:]
    correct = [r for r in samples if r["status"] == "correct"]
    normalized = {(r["problem_id"], " ".join(r["completion"].split())) for r in correct}
    assert m["num_duplicates_dropped"] == len(correct) - len(normalized)


def test_star_greedy_estep_and_rationalization(restem, tmp_path):
    w = _with_base(restem, tmp_path / "star")
    run(w, "--gin_file=variants/star.gin", *FAST)
    samples = [
        r for f in sorted((w / "iter_001" / "samples").glob("shard_*.jsonl")) for r in _rows(f)
    ]
    task = _tiny_task()
    assert sorted(r["problem_id"] for r in samples) == [p.problem_id for p in task.load("train")]
    assert {r["sample_index"] for r in samples} == {0}  # one greedy solution per problem
    solved = {r["problem_id"] for r in samples if r["status"] == "correct"}
    hinted = [
        r for f in sorted((w / "iter_001" / "rationalized").glob("shard_*.jsonl")) for r in _rows(f)
    ]
    assert {r["problem_id"] for r in hinted} == {p.problem_id for p in task.load("train")} - solved
    m = json.loads((w / "iter_001" / "metrics.json").read_text())
    assert m["num_rationalized"] == sum(r["status"] == "correct" for r in hinted)
    by_id = {p.problem_id: p for p in task.load("train")}
    for r in _rows(w / "iter_001" / "selected.jsonl"):
        assert r["prompt"] == task.prompt(by_id[r["problem_id"]])  # trained without the hint
    # Greedy decoding: the E-step equals the base model's greedy evaluation on train.
    base_eval = json.loads((restem / "iter_000" / "eval_train.json").read_text())
    first16 = [r for r in samples if r["problem_id"] < 16]
    assert np.isclose(
        sum(r["status"] == "correct" for r in first16) / 16, base_eval["train/greedy_pass@1"]
    )


def test_distillation_samples_come_from_the_teacher(restem, tmp_path):
    import jax

    from rest_em import em, sampling
    from rest_em.model import ModelConfig
    from rest_em.tokenizers import ByteTokenizer

    w = tmp_path / "student"
    run(
        w,
        "--gin_file=variants/distill.gin",
        f"--gin.TEACHER_WORKDIR='{restem}'",
        "--gin.rest_em.run.teacher_model=@teacher/rest_em.ModelConfig()",
        "--gin.teacher/rest_em.ModelConfig.hidden_size=32",
        "--gin.teacher/rest_em.ModelConfig.intermediate_size=64",
        "--gin.rest_em.ModelConfig.hidden_size=16",
        "--gin.rest_em.ModelConfig.intermediate_size=32",
    )
    # The E-step samples equal the teacher's last model sampled with the run's keys.
    teacher_cfg = ModelConfig(
        vocab_size=259,
        hidden_size=32,
        intermediate_size=64,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        max_seq_len=128,
    )
    params = em.final_params(restem, teacher_cfg)
    task, tok = _tiny_task(), ByteTokenizer()
    train = task.load("train")[:16]
    cfg = sampling.SamplingConfig(
        num_samples=4,
        temperature=1.0,
        top_k=0,
        max_new_tokens=32,
        eos_id=tok.eos_id,
        pad_id=tok.pad_id,
    )
    key = jax.random.fold_in(jax.random.fold_in(jax.random.key(0), 1), 0)
    want = em.generate_and_score(
        params,
        train,
        task=task,
        tokenizer=tok,
        model_cfg=teacher_cfg,
        sampling_cfg=cfg,
        key=key,
        chunk_size=16,
    )
    got = _rows(w / "iter_001" / "samples" / "shard_00000.jsonl")
    assert [r["completion"] for r in got] == [c for s in want for c in s.completions]
    student = json.loads((w / "iter_001" / "metrics.json").read_text())
    assert "test/greedy_pass@1" in student
    from rest_em import checkpoints

    shapes = {
        x.shape for x in jax.tree.leaves(checkpoints.restore_params(w / "iter_001" / "params"))
    }
    assert (259, 16) in shapes or (16, 259) in shapes  # the student is the small model


def test_step_negatives_mode(restem, tmp_path):
    """Positives + per-step weighted negatives: the rollouts' dataset is a file, the
    positives keep weight 1, the negatives' weights vary by step, and all of it trains."""
    w = _with_base(restem, tmp_path / "neg")
    run(
        w,
        "--gin_file=variants/step_negatives.gin",
        "--gin.StepNegativesConfig.num_rollouts=2",
        "--gin.StepNegativesConfig.max_per_problem=2",
        *FAST,
    )
    rows = _rows(w / "iter_001" / "step_dataset.jsonl")
    stats = rows.pop()["stats"]
    selected = _rows(w / "iter_001" / "selected.jsonl")
    assert stats["num_positives"] == len(selected) and stats["num_negatives"] > 0
    assert len(rows) == len(selected) + stats["num_negatives"]
    uniform = [r for r in rows if set(r["token_weights"]) == {1.0}]
    assert len(uniform) >= len(selected)
    assert any(len(set(r["token_weights"])) > 1 for r in rows)  # per-step weights
    for r in rows:
        assert len(r["token_weights"]) == len(r["completion_ids"])
        assert all(0.0 <= x <= 10.0 for x in r["token_weights"])
    m = json.loads((w / "iter_001" / "metrics.json").read_text())
    assert m["negatives/num_rollouts"] == stats["num_rollouts"] > 0
    assert "step_values" in m["seconds"] and m["num_train_steps"] > 0


def test_step_dpo_mode(restem, tmp_path):
    """Per-step DPO: the M-step fits the positives, then DPO on first-pit pairs whose
    prompt extends the problem's prompt; D_val never gets worse than the positives' model."""
    from rest_em import em
    from rest_em.tokenizers import ByteTokenizer

    w = _with_base(restem, tmp_path / "dpo")
    run(
        w,
        "--gin_file=variants/step_dpo.gin",
        "--gin.StepNegativesConfig.num_rollouts=2",
        "--gin.StepNegativesConfig.max_per_problem=2",
        *FAST,
    )
    pairs = _rows(w / "iter_001" / "step_pairs.jsonl")
    stats = _rows(w / "iter_001" / "step_dataset.jsonl")[-1]["stats"]
    assert 0 < len(pairs) == stats["num_pairs"] <= stats["num_negatives"]
    task, tok = _tiny_task(), ByteTokenizer()
    prompts = [em.prompt_ids(task, tok, p) for p in task.load("train")]
    for q in pairs:
        assert any(q["prompt_ids"][: len(p)] == p for p in prompts)
        assert q["chosen_ids"] != q["rejected_ids"] and q["rejected_ids"]
        assert q["chosen_ids"][-1] == tok.eos_id  # a finished, correct continuation
    m = json.loads((w / "iter_001" / "metrics.json").read_text())
    assert m["dpo/num_train_steps"] > 0 and "dpo" in m["seconds"]
    assert m["val/greedy_pass@1"] >= m["dpo/start_val_pass@1"]
    assert (w / "iter_001" / "dpo").is_dir()  # resumable DPO checkpoints


def test_lora_m_steps(restem, tmp_path):
    """variants/lora.gin: the base SFT stays full (it is the reference run's), each M-step
    trains adapters from the base, and the iteration's params differ from the base only in
    the target kernels, by a low-rank update; the same samples as ReST^EM's iteration 1."""
    import jax

    from rest_em import checkpoints

    w = _with_base(restem, tmp_path / "lora")
    run(w, "--gin_file=variants/lora.gin", "--gin.LoraConfig.rank=2", *FAST)
    m = json.loads((w / "iter_001" / "metrics.json").read_text())
    ref = json.loads((restem / "iter_001" / "metrics.json").read_text())
    assert m["num_selected"] == ref["num_selected"] and m["num_train_steps"] > 0
    base = checkpoints.restore_params(w / "base")
    new = checkpoints.restore_params(w / "iter_001" / "params")
    moved = []
    for (path, x), y in zip(jax.tree_util.tree_flatten_with_path(base)[0], jax.tree.leaves(new)):
        d = np.asarray(y) - np.asarray(x)
        if np.abs(d).max() > 0:
            moved.append(name := jax.tree_util.keystr(path))
            rows = d.reshape(-1, d.shape[-1]) if "o_kernel" in name else d.reshape(d.shape[0], -1)
            assert np.linalg.matrix_rank(rows, tol=1e-6) <= 2, name
    assert moved and all("kernel" in name for name in moved)
    assert not any("norm" in name or "embedding" in name for name in moved)
    # The adapters alone (PEFT files) are kept beside the merged params, and are them.
    from rest_em import lora

    adapters, cfg = lora.load_peft(w / "iter_001" / "adapter")
    assert cfg.rank == 2
    for x, y in zip(jax.tree.leaves(lora.merge(base, adapters, cfg)), jax.tree.leaves(new)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=1e-6, rtol=0)


def test_every_shipped_variant_parses_on_the_default_task():
    """Each gin_configs/variants/*.gin binds only names that exist (one fresh process)."""
    import subprocess
    import sys

    variants = sorted(p.name for p in (REPO / "gin_configs" / "variants").glob("*.gin"))
    assert {
        "sft_human.gin",
        "rest.gin",
        "rft.gin",
        "star.gin",
        "distill.gin",
        "step_negatives.gin",
        "step_dpo.gin",
    } <= set(variants)
    code = (
        "import gin; from rest_em import main\n"
        f"for v in {variants!r}:\n"
        "    gin.clear_config()\n"
        "    main.parse_gin(['arithmetic.gin', 'variants/' + v], [\"TEACHER_WORKDIR='t'\"])\n"
        "    print('ok', v)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env(), capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("ok ") == len(variants)
