"""End to end: a tiny 2-iteration run through the launcher, and resume after SIGKILL in
the E-step and in the M-step giving the same final metrics as an uninterrupted run."""

import json
import shutil
import signal
import subprocess
import sys
import time

import pytest

from helpers import REPO, cmd, env, launch, metrics, run, tree_hashes


def _kill_when(workdir, ready, timeout=600):
    """Starts the run and SIGKILLs it as soon as `ready(workdir)` holds."""
    proc = subprocess.Popen(
        cmd(workdir), env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if ready(workdir):
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return True
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    return False


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("full")
    proc = run(workdir)
    return workdir, proc


def test_end_to_end_writes_every_artifact(uninterrupted):
    workdir, proc = uninterrupted
    rows = metrics(workdir)
    assert [r["iteration"] for r in rows] == [0, 1, 2]
    for key in (
        "train/greedy_pass@1",
        "test/greedy_pass@1",
        "test/pass@1",
        "test/pass@4",
        "test/maj@4",
    ):
        assert all(0.0 <= r[key] <= 1.0 for r in rows), key
    for r in rows[1:]:
        assert r["num_samples"] == 48 * 4
        assert 0 <= r["num_selected"] <= r["num_correct"] <= r["num_samples"]
    for name in (
        "config.gin",
        "operative_config.gin",
        "accuracy.png",
        "base",
        "iter_001/samples/manifest.json",
        "iter_001/selected.jsonl",
        "iter_002/eval_test.json",
    ):
        assert (workdir / name).exists(), name
    assert list((workdir / "tensorboard").glob("events.out.tfevents.*"))
    assert "test/greedy_pass@1" in proc.stdout  # the final table


def test_same_seed_same_metrics_and_samples(uninterrupted, tmp_path):
    workdir, _ = uninterrupted
    run(tmp_path)
    assert metrics(tmp_path) == metrics(workdir)
    assert (tmp_path / "iter_002/selected.jsonl").read_text() == (
        workdir / "iter_002/selected.jsonl"
    ).read_text()


@pytest.mark.parametrize("phase", ["e_step", "m_step"])
def test_resume_after_sigkill_equals_uninterrupted(uninterrupted, tmp_path, phase):
    workdir, _ = uninterrupted
    if phase == "e_step":
        # Killed between E-step shards of iteration 1 (one shard written, more to come).
        def ready(w):
            return (w / "iter_001/samples/shard_00000.jsonl").exists()
    else:
        # Killed after the first M-step checkpoint of iteration 1.
        def ready(w):
            return any((w / "iter_001/mstep").glob("[0-9]*"))

    assert _kill_when(tmp_path, ready), f"the run finished before reaching the {phase}"
    assert not (tmp_path / "iter_002/metrics.json").exists()
    run(tmp_path)
    assert metrics(tmp_path) == metrics(workdir)


def test_unknown_gin_binding_fails_before_any_work(tmp_path):
    proc = launch(tmp_path / "w", "--gin.EMConfig.num_iteratons=2", timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "num_iteratons" in proc.stderr
    assert not (tmp_path / "w").exists()


REQUIRED = {  # the values each shipped config marks %gin.REQUIRED
    "gsm8k.gin": ["CHECKPOINT", "TRAIN_FILE", "TEST_FILE"],
    "gsm8k_instruct.gin": ["CHECKPOINT", "TRAIN_FILE", "TEST_FILE"],
    "math.gin": ["CHECKPOINT", "TRAIN_FILE", "TEST_FILE"],
    "arithmetic_distill.gin": ["TEACHER_WORKDIR"],
    "variants/distill.gin": ["TEACHER_WORKDIR"],
    "mbpp.gin": ["CHECKPOINT", "MBPP_FILE", "HUMANEVAL_FILE"],
    "mbpp_instruct.gin": ["CHECKPOINT", "MBPP_FILE", "HUMANEVAL_FILE"],
    "apps.gin": ["CHECKPOINT", "TRAIN_FILE", "TEST_FILE", "HUMANEVAL_FILE"],
}
SHIPPED = sorted(
    str(p.relative_to(REPO / "gin_configs")) for p in (REPO / "gin_configs").rglob("*.gin")
)


@pytest.mark.parametrize("config", SHIPPED)
def test_shipped_gin_configs_parse(config):
    """Every shipped config binds only names that exist, and names what it needs
    (parsed in a fresh process; a variant on top of arithmetic.gin)."""
    files = ["arithmetic.gin", config] if config.startswith("variants/") else [config]
    required = REQUIRED.get(config, [])
    code = (
        "import sys; from rest_em import main, errors\n"
        "try:\n"
        f"    main.parse_gin({files!r}, [])\n"
        "except errors.ConfigError as e:\n"
        "    print('needs', e)\n"
        "import gin; gin.clear_config()\n"
        f"main.parse_gin({files!r}, {[f'{m} = {chr(39)}x{chr(39)}' for m in required]!r})\n"
        "print('ok')\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env(), capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr[-3000:]
    for m in required:
        assert f"--gin.{m}=" in proc.stdout
    assert ("needs" in proc.stdout) == bool(required)


def test_problems_without_gold_are_reported_and_skipped(caplog):
    from rest_em import em
    from rest_em.tasks import Problem

    probs = [Problem(0, "q", "1"), Problem(1, "q", None), Problem(2, "q", " ")]
    with caplog.at_level("WARNING"):
        kept = em.with_gold(probs, "train")
    assert [p.problem_id for p in kept] == [0]
    assert "2 problems have no gold answer" in caplog.text and "[1, 2]" in caplog.text


def test_changed_num_samples_is_refused_and_nothing_changes(uninterrupted):
    workdir, _ = uninterrupted
    before = tree_hashes(workdir)
    proc = launch(workdir, "--gin.EMConfig.num_samples=8", timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert 'EMConfig.num_samples: "4" -> "8"' in proc.stderr
    assert "--on_config_change=continue" in proc.stderr
    assert tree_hashes(workdir) == before


def test_continue_with_a_changed_config_is_recorded(uninterrupted, tmp_path):
    workdir, _ = uninterrupted
    copy = tmp_path / "copy"
    shutil.copytree(workdir, copy)
    run(copy, "--gin.EMConfig.temperature=0.5", "--on_config_change=continue")
    (entry,) = [json.loads(x) for x in (copy / "fingerprint_history.jsonl").read_text().split("\n")
                if x]  # fmt: skip
    (change,) = entry["changes"]
    assert change.endswith('EMConfig.temperature: "1.0" -> "0.5"')
    assert metrics(copy) == metrics(workdir)  # every iteration was done: nothing recomputed
    run(copy, "--gin.EMConfig.temperature=0.5")  # the new config is now the workdir's


def test_more_iterations_continue_and_keep_finished_files(uninterrupted, tmp_path):
    workdir, _ = uninterrupted
    run(tmp_path, "--gin.EMConfig.num_iterations=1")
    done = {k: v for k, v in tree_hashes(tmp_path).items() if k.startswith(("base", "iter_"))}
    assert any(k.startswith("iter_001/") for k in done)
    run(tmp_path)  # tiny_arithmetic.gin: 2 iterations
    after = tree_hashes(tmp_path)
    assert {k: after.get(k) for k in done} == done
    assert metrics(tmp_path) == metrics(workdir)  # as if it had run 2 iterations at once
    (entry,) = [
        json.loads(x) for x in (tmp_path / "fingerprint_history.jsonl").read_text().splitlines()
    ]
    (extension,) = entry["extensions"]
    assert entry["changes"] == [] and extension.endswith('EMConfig.num_iterations: "1" -> "2"')


def test_sampling_defaults_are_the_papers():
    """EMConfig decodes as the paper does (temperature 0.7, top-k 40); the embedded config
    samples the whole byte vocabulary, as its results were measured."""
    from rest_em import em

    assert (em.EMConfig().temperature, em.EMConfig().top_k) == (0.7, 40)
    assert "rest_em.EMConfig.top_k = 0" in (REPO / "gin_configs" / "arithmetic.gin").read_text()


def test_outputs_are_written_once_per_new_iteration(tmp_path, monkeypatch):
    """metrics.jsonl, TensorBoard and the plot are rebuilt once per finished iteration, and
    once when a finished run is rerun (not twice at the end)."""
    import jax

    from rest_em import em, metrics, model, tokenizers
    from rest_em.tasks import arithmetic

    calls = []
    monkeypatch.setattr(metrics.MetricsWriter, "write_all", lambda self, h: calls.append(len(h)))
    task = arithmetic.make_task(num_train=4, num_sft=4, num_val=2, num_test=2)
    tok = tokenizers.ByteTokenizer()
    cfg = model.ModelConfig(vocab_size=259, hidden_size=16, intermediate_size=32, num_layers=1,
                            num_heads=2, num_kv_heads=1, max_seq_len=96)  # fmt: skip
    kwargs = dict(task=task, tokenizer=tok, model_cfg=cfg, workdir=tmp_path,
                  make_base_params=lambda: model.init_params(cfg, jax.random.key(0)),
                  cfg=em.EMConfig(num_iterations=0, eval_num_samples=2, eval_ks=(1, 2),
                                  max_new_tokens=8, train_eval_size=2))  # fmt: skip
    em.run(**kwargs)
    assert calls == [1]
    em.run(**kwargs)
    assert calls == [1, 1]
