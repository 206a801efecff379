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
    # The summary heads the report: one seed, so mean, min and max are its own numbers.
    assert "| | base model | after iteration 0 | gain (points) |" in text
    assert "| seed 0 | " in text and "+0.0 (+0.0 to +0.0) |" in text
    assert "## the base model per level: greedy pass@1 / pass@" in text


def _load(name: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, helpers.REPO / "experiments" / f"{name}.py")
    module = sys.modules[name] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_headline_is_the_runs_numbers_and_lands_in_the_readme_block(tmp_path):
    study, block = _load("seeds_study"), _load("readme_block")
    T = "test/greedy_pass@1"
    runs = {
        0: [
            {"iteration": 0, T: 0.50, "seconds": {"base": 120.0}},
            {
                "iteration": 1,
                T: 0.80,
                "seconds": {"generate": 50.0, "generate/sampler": 49.0, "improve": 70.0},
            },
        ],
        1: [
            {"iteration": 0, T: 0.40, "seconds": {"base": 60.0}},
            {"iteration": 1, T: 0.52, "seconds": {"improve": 60.0}},
        ],
    }
    text = study.headline(runs, "python experiments/seeds_study.py --seeds=0,1")
    assert "| mean (min to max) | 45.0 (40.0 to 50.0) | 66.0 (52.0 to 80.0) | " in text
    assert "+21.0 (+12.0 to +30.0) |" in text
    assert "| seed 0 | 50.0 | 80.0 | +30.0 |" in text and "| seed 1 | 40.0 | 52.0 | +12.0 |" in text
    assert "takes 2.0 to 4.0 min" in text  # sub-phases ("generate/sampler") not counted twice
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- demo:start -->\nold\n<!-- demo:end -->\nrest\n")
    block.replace(readme, "demo", text)
    assert (
        readme.read_text()
        == f"intro\n<!-- demo:start -->\n{text.strip()}\n<!-- demo:end -->\nrest\n"
    )
    with pytest.raises(ValueError, match="markers"):
        block.replace(readme, "other", text)
