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
