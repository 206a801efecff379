"""benchmarks/fsdp_memory.py --quick: under FSDP over 8 simulated devices, each device
holds at most 1/6 of the params + optimizer state of a single device, and every weight
matrix and every optimizer-state matrix is really split over the `fsdp` axis (checked on
the real arrays of `init_train_state`, and in the compiled train step's arguments).

Two child processes (1 device, 8 devices), a tiny model: about 1 minute on 2 busy cores.
"""

import json
import pathlib
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "fsdp_memory.py"


def test_quick_fsdp_memory_ratio_and_sharding(tmp_path):
    results = tmp_path / "RESULTS.md"
    results.write_text("# Benchmark results\n\n## Other section\n\nkept as is\n")
    out = tmp_path / "rows.json"
    proc = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--quick",
            "--setups",
            "1 device,fsdp=8,1 device bf16",
            "--json",
            str(out),
            "--write",
            "--results",
            str(results),
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    data = json.loads(out.read_text())
    rows = {r["setup"]: r for r in data["rows"]}
    assert set(rows) == {"1 device", "fsdp=8", "1 device bf16"}
    one, fsdp, bf16 = rows["1 device"], rows["fsdp=8"], rows["1 device bf16"]
    # The bf16 M-step keeps f32 master weights and optimizer state: the same state bytes.
    assert (bf16["params_bytes"], bf16["opt_bytes"]) == (one["params_bytes"], one["opt_bytes"])
    assert bf16["dtype"] == "bfloat16" and "bf16_temp_ratio_1" in data["summary"]

    # The bar of issue 7, from the compiled step's arguments and from the real shards.
    assert data["summary"]["state_ratio_compiled"] <= 1 / 6
    assert data["summary"]["state_ratio_shards"] <= 1 / 6
    # The two accounts agree: the compiled arguments are the state plus the batch shard.
    for r in (one, fsdp):
        assert (
            abs(r["state_argument_bytes"] - (r["params_bytes"] + r["opt_bytes"] + r["step_bytes"]))
            <= 64
        ), r
    # Adam's two moments (twice the params) and two int32 step counts, on every device.
    assert fsdp["opt_bytes"] == 2 * fsdp["params_bytes"] + 8
    # Every matrix of params and optimizer state is split over fsdp (norm scales and
    # counts are the only whole leaves).
    assert fsdp["fsdp_split_leaves"] == fsdp["matrix_leaves"]
    assert fsdp["matrix_leaves"]["opt_state"] == 2 * fsdp["matrix_leaves"]["params"] > 0
    # Donation: the new state reuses the old state's buffers.
    assert fsdp["alias_bytes"] >= fsdp["params_bytes"] + fsdp["opt_bytes"]

    text = results.read_text()
    assert "## Other section\n\nkept as is\n" in text
    assert "## FSDP memory, " in text and "| fsdp=8 | float32 | none |" in text
    assert "| 1 device | bfloat16 | none |" in text and "- bf16 M-step" in text
    assert "python benchmarks/fsdp_memory.py --quick" in text
