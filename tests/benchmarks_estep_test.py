"""benchmarks/estep_overlap.py: the smoke run (`--quick`) completes and reports both rows.

The quick run is the tiny embedded code config (a few base-model steps), 16 problems, one
round: it checks the benchmark still runs against the current library, not the speed.
"""

import pathlib
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_quick_run_reports_both_rows_and_the_skipped_share(tmp_path):
    results = tmp_path / "RESULTS.md"
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "benchmarks" / "estep_overlap.py"),
            "--quick",
            f"--workdir={tmp_path / 'base'}",
            "--write",
            "--results",
            str(results),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    text = results.read_text()
    assert "## E-step: overlapped sampling and sandbox scoring" in text
    for row in ("| overlapped (the loop) | ", "| score, then sample | "):
        line = next(line for line in text.splitlines() if line.startswith(row))
        assert float(line.split("|")[3].replace(",", "")) > 0  # samples/s
    assert "skipped as identical" in text and "isolation" in text


def test_estep_heavy_tailed_quick(tmp_path):
    """benchmarks/estep.py --quick: every system (HF `generate` too) runs at both caps,
    the f32 ones sample the same tokens (the script checks it), EOS-biased lengths end
    early, and the section lands in the results file."""
    results = tmp_path / "RESULTS.md"
    cmd = [sys.executable, str(REPO / "benchmarks" / "estep.py"), "--quick", "--write"]
    proc = subprocess.run(
        [*cmd, f"--results={results}"], cwd=REPO, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    for cap in (16, 96):
        for system in (
            "static",
            "buckets",
            "continuous",
            "continuous-buckets",
            "continuous-bf16",
            "hf",
        ):
            line = next(
                x for x in proc.stdout.splitlines() if x.startswith(f"| {cap} | {system} |")
            )
            cells = [c.strip() for c in line.split("|")]
            assert float(cells[3].replace(",", "")) > 0  # kept tokens/s
            assert 0 < float(cells[6]) <= 1  # useful-step fraction
            assert float(cells[7]) < cap  # EOS ends rows before the cap on average
    assert "identical tokens at every cap (checked)" in proc.stdout
    assert "## E-step decoding, heavy-tailed lengths" in results.read_text()


def test_gpu_benchmark_smoke_runs_on_cpu(tmp_path):
    """benchmarks/gpu.py --smoke: both rows on a tiny model, on whatever backend CI has."""
    results = tmp_path / "RESULTS.md"
    cmd = [sys.executable, str(REPO / "benchmarks" / "gpu.py"), "--smoke", "--write"]
    proc = subprocess.run(
        [*cmd, f"--results={results}"], cwd=REPO, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    for row in ("| E-step (continuous, bf16 weights + KV cache) |", "| train step (bf16"):
        line = next(x for x in proc.stdout.splitlines() if x.startswith(row))
        assert float(line.split("|")[3].replace(",", "")) > 0  # tokens/s
    assert "## E-step and train step on one chip" in results.read_text()
