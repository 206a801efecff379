"""benchmarks/sampling.py: the smoke run (`--quick`) completes and reports every row.

The quick run is a tiny model, batches 1 and 4, 16 new tokens, one timed round per
system: it checks the benchmark still runs against the current library (it breaks
when an API it uses changes), not the speed. About 40-60 s on 2 CPU cores.
"""

import functools
import importlib.util
import pathlib
import re
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "sampling.py"
SYSTEMS = ("HF generate (KV cache)", "rest_em (KV cache)", "rest_em (no cache, recompute)")


@functools.cache
def _load_module():
    spec = importlib.util.spec_from_file_location("benchmarks_sampling", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while executing it
    spec.loader.exec_module(module)
    return module


def _table_rows(stdout: str) -> dict[tuple[str, str, str], list[str]]:
    """(precision, batch, system) -> the row's remaining cells."""
    rows = {}
    for line in stdout.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 9 and cells[0] == "tiny":
            rows[(cells[1], cells[2], cells[3])] = cells[4:]
    return rows


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    results = tmp_path_factory.mktemp("bench") / "RESULTS.md"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--write", "--results", str(results)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=1800,
    )  # generous: shared CI machines
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc.stdout, results


def test_quick_run_reports_every_row(quick_run):
    stdout, _ = quick_run
    rows = _table_rows(stdout)
    for precision in ("f32", "bf16"):
        for batch in ("1", "4"):
            for system in SYSTEMS:
                cells = rows.get((precision, batch, system))
                assert cells is not None, f"missing row {precision} {batch} {system}:\n{stdout}"
                tokens_per_s, ratio, gflops, peak_pct, _ = cells
                assert float(tokens_per_s.replace(",", "")) > 0
                assert float(ratio) > 0 and float(gflops) >= 0 and float(peak_pct) >= 0
    assert re.search(r"Matmul peak measured in this run .*f32: \d+ GFLOP/s", stdout)
    assert "Machine: " in stdout and "jax " in stdout and "transformers " in stdout


def test_quick_run_writes_results(quick_run):
    stdout, results = quick_run
    text = results.read_text()
    assert "## Sampling throughput, " in text and ", `--quick`" in text
    assert "| tiny | bf16 | 4 | rest_em (KV cache) |" in text
    assert "Command: `" in text


def test_write_results_replaces_same_heading(tmp_path):
    bench = _load_module()
    path = tmp_path / "RESULTS.md"
    bench.write_results(path, "## A", "first\n")
    bench.write_results(path, "## B", "other\n")
    bench.write_results(path, "## A", "second\n")
    text = path.read_text()
    assert "first" not in text and "second" in text and "other" in text
    assert text.index("## A") < text.index("## B")  # replaced in place, not re-appended


def test_results_heading_ignores_output_flags():
    bench = _load_module()
    heading = bench.results_heading(["--quick", "--write", "--results", "x.md", "--repeats", "5"])
    assert heading.startswith("## Sampling throughput, 20")
    assert heading.endswith(", `--quick --repeats 5`")
    assert "," not in bench.results_heading(["--write", "--results=x.md"]).split(", ", 1)[1]


def test_generation_flops_counts_matmuls_and_attention():
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
    per_layer = 64 + 32 + 32 + 64 + 3 * 128
    assert bench.matmul_params(cfg) == 2 * per_layer + 80
    # One row, prompt 3, 2 new tokens: contexts 3 and 4.
    expected = 2 * bench.matmul_params(cfg) * 2 + 4 * 2 * 8 * (3 + 4)
    assert bench.generation_flops(cfg, [3], 2) == expected
