"""benchmarks/training.py: the smoke run (`--quick`) completes and reports both systems.

The quick run is a tiny model, batch 4 x 32 tokens, one warm-up and one timed step per
system: it checks the benchmark still runs against the current library (it breaks when
an API it uses changes, or when the two systems stop computing the same first-step
loss), not the speed. About 20 s on 2 CPU cores.
"""

import functools
import importlib.util
import pathlib
import re
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "training.py"
SYSTEMS = (
    "PyTorch (HF Llama, AdamW)",
    "rest_em train_step (jit)",
    "rest_em train_step, bf16 compute (jit)",
    "rest_em train_step, chunked loss (jit)",
)


@functools.cache
def _load_module():
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    spec = importlib.util.spec_from_file_location("benchmarks_training", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while executing it
    spec.loader.exec_module(module)
    return module


def _table_rows(stdout: str) -> dict[str, list[str]]:
    """system -> the row's cells after the system column."""
    rows = {}
    for line in stdout.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 9 and cells[0] == "tiny":
            assert cells[1] == "4 x 32", line
            rows[cells[2]] = cells[3:]
    return rows


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    results = tmp_path_factory.mktemp("bench") / "RESULTS.md"
    results.write_text("# Benchmark results\n\n## Other section\n\nkept as is\n")
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--write", "--results", str(results)],
        check=False,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc.stdout, results


def test_quick_run_reports_both_systems(quick_run):
    stdout, _ = quick_run
    rows = _table_rows(stdout)
    assert set(rows) == set(SYSTEMS), stdout
    for system in SYSTEMS:
        tokens_per_s, ratio, ms_per_step, gflops, peak_pct, runs = rows[system]
        assert float(tokens_per_s.replace(",", "")) > 0
        assert float(ratio) > 0 and float(ms_per_step) > 0
        assert float(gflops) >= 0 and float(peak_pct) >= 0 and runs
    assert rows[SYSTEMS[0]][1] == "1.00"  # the ratio is ours / torch
    assert re.search(r"Matmul peak measured in this run .*: \d+ GFLOP/s", stdout)
    assert re.search(r"first-step losses .*tiny: ours \d+\.\d+, torch \d+\.\d+", stdout)
    # The bf16 step's loss curve, step by step against f32's (both take 2 steps: warm-up
    # and one timed run of 1 step).
    assert re.search(r"bf16 loss curve: .*tiny: \d+\.\d+% over 2 steps \(loss", stdout), stdout
    assert "Machine: " in stdout and "jax " in stdout and "torch " in stdout
    assert "Load average" in stdout


def test_quick_run_writes_its_section_only(quick_run):
    _, results = quick_run
    text = results.read_text()
    assert "## Other section\n\nkept as is\n" in text
    assert "## Train step throughput, " in text and ", `--quick`" in text
    assert "| tiny | 4 x 32 | rest_em train_step (jit) |" in text
    assert "Command: `" in text


def test_train_flops_counts_matmuls_and_causal_attention():
    bench = _load_module()
    from rest_em import model

    cfg = model.ModelConfig(
        vocab_size=10,
        hidden_size=8,
        intermediate_size=16,
        num_layers=2,
        num_heads=2,
        num_kv_heads=1,
    )
    # q (8x8) + k, v (8x4 each) + o (8x8) + gate, up, down (8x16 each), per layer; + head.
    n = 2 * (64 + 32 + 32 + 64 + 3 * 128) + 80
    assert bench.matmul_params(cfg) == n
    # 3 rows of 4 tokens: positions see 1 + 2 + 3 + 4 = 10 keys per row.
    assert bench.train_flops(cfg, 3, 4) == 6 * n * 12 + 12 * 2 * 8 * 3 * 10


def test_make_workload_rows_are_unpadded_with_a_prompt():
    bench = _load_module()
    batch = bench.make_workload(batch=5, seq_len=16, vocab=50, seed=0)
    assert batch.inputs_BxL.shape == (5, 16)
    assert batch.valid_BxL.all()  # no padding: every position is computed by both systems
    mask = batch.loss_mask_BxL
    assert (mask[:, -1] == 1).all() and (mask[:, 0] == 0).all()
    assert ((batch.inputs_BxL >= 3) & (batch.inputs_BxL < 50)).all()


def test_loss_memory_quick(tmp_path):
    """benchmarks/loss_memory.py --quick: the compiled step's temp memory with the chunked
    loss is well below the plain loss's where the logits dominate (vocab 4096), and the
    table names every (vocab, loss) pair."""
    import json

    out = tmp_path / "rows.json"
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "loss_memory.py"), "--quick", f"--json={out}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {(r["vocab"], r["setup"]): r for r in json.loads(out.read_text())}
    assert set(rows) == {(256, "plain"), (256, "chunk=8"), (4096, "plain"), (4096, "chunk=8")}
    plain, chunked = rows[4096, "plain"], rows[4096, "chunk=8"]
    assert plain["argument_bytes"] == chunked["argument_bytes"]  # same state, same batch
    # 0.77 measured: the plain loss forms no [B, L, V] log-softmax (losses.token_logprobs),
    # so what chunking saves is the logits and their gradient.
    assert chunked["temp_bytes"] < 0.85 * plain["temp_bytes"]
    assert "| 4,096 | 0.6M | chunk=8 |" in proc.stdout
