"""experiments/seeds_study.py: its quick mode on each config's tiny version."""

import pathlib
import subprocess
import sys

import pytest

from tests import helpers


@pytest.mark.parametrize(
    "config, title", [("arithmetic", "arithmetic testbed"), ("embedded_code", "code task")]
)
def test_study_quick(tmp_path, config, title):
    out = tmp_path / "study.md"
    proc = subprocess.run(
        [
            sys.executable,
            str(helpers.REPO / "experiments" / "seeds_study.py"),
            f"--config={config}",
            "--quick",
            f"--root={tmp_path / 'root'}",
            f"--out={out}",
            "--gin=EMConfig.num_iterations=0",
        ],
        env=helpers.env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = pathlib.Path(out).read_text()
    assert text.startswith("# ReST^EM on the embedded " + title)
    assert "## test/greedy_pass@1" in text and "per level" in text and "wall seconds" in text
    assert "\n0 | " in text
