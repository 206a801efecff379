"""notebooks/quickstart.ipynb runs top to bottom in a fresh kernel (so it never rots), and
its numbers make sense."""

import json
import pathlib
import sys

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

REPO = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "notebooks" / "quickstart.ipynb"

# Appended after the notebook's last cell: reports what the test checks.
PROBE = """
import json, sys
print("PROBE " + json.dumps({
    "prefix": sys.prefix, "rest_em_file": rest_em.__file__,
    "num_samples": stats.num_samples, "num_positive": stats.num_positive,
    "num_selected": stats.num_selected, "num_problems_solved": stats.num_problems_solved,
    "num_selected_list": len(selected),
    "max_correct_per_problem": max(max(v) for v in num_correct.values()),
    "before": before, "after": after}))
"""


def _stream_text(cell) -> str:
    return "".join(
        o.get("text", "") for o in cell.get("outputs", []) if o["output_type"] == "stream"
    )


def test_quickstart_notebook_runs_and_reports_sane_numbers():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    assert not any(c.get("outputs") for c in nb.cells if c.cell_type == "code"), (
        "commit the notebook with its outputs cleared"
    )
    nb.cells.append(nbformat.v4.new_code_cell(PROBE))
    # Run from the repository root: `import rest_em` then finds this checkout even without
    # `pip install -e .`. The "python3" kernelspec starts the interpreter running this test
    # (jupyter_client substitutes sys.executable for "python"); checked below via sys.prefix.
    client = nbclient.NotebookClient(
        nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(REPO)}}
    )
    client.execute()  # raises CellExecutionError on the first failing cell

    line = next(x for x in _stream_text(nb.cells[-1]).splitlines() if x.startswith("PROBE "))
    probe = json.loads(line[len("PROBE ") :])
    assert probe["prefix"] == sys.prefix, "the kernel does not run this test's interpreter"
    assert pathlib.Path(probe["rest_em_file"]).resolve().is_relative_to(REPO)

    assert (
        0
        < probe["num_selected"]
        == probe["num_selected_list"]
        <= probe["num_positive"]
        <= probe["num_samples"]
    )
    assert 0 < probe["num_problems_solved"] <= probe["num_selected"]
    assert probe["max_correct_per_problem"] >= 1
    for results in (probe["before"], probe["after"]):
        for key in (
            "test/greedy_pass@1",
            "test/pass@8",
            "test/level_2/greedy_pass@1",
            "test/level_3/greedy_pass@1",
            "test/level_4/greedy_pass@1",
        ):
            assert 0.0 <= results[key] <= 1.0, key
    # The base model learned something from its SFT (else the E-step would find nothing).
    assert probe["before"]["test/level_2/greedy_pass@1"] > 0.0

    # The checker demo: only the reference solution is correct.
    demo = next(c for c in nb.cells if c.cell_type == "code" and "candidates = {" in c.source)
    assert "reference solution: correct" in _stream_text(demo)
    assert "bare answer: incorrect" in _stream_text(demo)
    # The plot cell drew a figure.
    images = [
        o
        for c in nb.cells
        if c.cell_type == "code"
        for o in c.get("outputs", [])
        if "image/png" in o.get("data", {})
    ]
    assert len(images) == 1
