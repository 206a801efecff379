"""What the end-to-end tests share: the repository, the tiny config, the launcher's
environment and command, and a run's metrics without their wall-clock seconds."""

import json
import os
import pathlib
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]
TINY = REPO / "tests" / "testdata" / "tiny_arithmetic.gin"
SINGLE_THREAD = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"


def env(devices: int | None = None) -> dict[str, str]:
    """The launcher's environment: this checkout first on the path, CPU, one thread (so
    two runs compare bit for bit), `devices` simulated host devices if given."""
    e = dict(os.environ)
    e["PYTHONPATH"] = str(REPO) + os.pathsep + e.get("PYTHONPATH", "")
    e["JAX_PLATFORMS"] = "cpu"
    flags = f"--xla_force_host_platform_device_count={devices} " if devices else ""
    e["XLA_FLAGS"] = flags + SINGLE_THREAD
    return e


def cmd(workdir, *extra, gin_file=TINY) -> list[str]:
    return [
        sys.executable,
        "-m",
        "rest_em.main",
        f"--gin_file={gin_file}",
        f"--workdir={workdir}",
        *extra,
    ]


def launch(workdir, *extra, gin_file=TINY, timeout=900) -> subprocess.CompletedProcess:
    """Runs the launcher; returns the finished process whatever its exit status."""
    return subprocess.run(
        cmd(workdir, *extra, gin_file=gin_file),
        env=env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def run(workdir, *extra, gin_file=TINY, timeout=900) -> subprocess.CompletedProcess:
    """Runs the launcher and asserts it succeeded."""
    proc = launch(workdir, *extra, gin_file=gin_file, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def metrics(workdir) -> list[dict]:
    """metrics.jsonl without "seconds" and "sandbox" (the fields two identical runs differ
    in: wall time, and a code task's sandbox work, which a resumed E-step does only for
    the chunks it scores)."""
    path = pathlib.Path(workdir) / "metrics.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    for r in rows:
        r.pop("seconds")
        r.pop("sandbox", None)
    return rows


def tree_hashes(root) -> dict[str, str]:
    """Every file under `root` by relative path -> content hash (to assert nothing moved)."""
    import hashlib

    root = pathlib.Path(root)
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def tiny_model_cfg():
    """The 2-layer model of the training tests (vocab 32, EOS 2)."""
    from rest_em import model

    return model.ModelConfig(
        vocab_size=32,
        hidden_size=32,
        intermediate_size=64,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        max_seq_len=64,
    )


def token_data(n: int = 8, seed: int = 0) -> tuple[list[list[int]], list[list[int]]]:
    """`n` random (prompt, completion ending in EOS 2) token rows for `tiny_model_cfg`."""
    import numpy as np

    rng = np.random.default_rng(seed)
    prompts = [rng.integers(3, 32, size=rng.integers(2, 6)).tolist() for _ in range(n)]
    comps = [rng.integers(3, 32, size=rng.integers(1, 8)).tolist() + [2] for _ in range(n)]
    return prompts, comps


def token_pairs(n: int = 4, seed: int = 5):
    """`n` random (prompt, chosen ending in EOS, rejected) rows: DPO data."""
    import numpy as np

    rng = np.random.default_rng(seed)
    prompts = [rng.integers(3, 32, size=rng.integers(2, 5)).tolist() for _ in range(n)]
    chosen = [rng.integers(3, 32, size=rng.integers(1, 6)).tolist() + [2] for _ in range(n)]
    rejected = [rng.integers(3, 32, size=rng.integers(1, 4)).tolist() for _ in range(n)]
    return prompts, chosen, rejected


def assert_trees_equal(a, b, **tolerance) -> None:
    """Two pytrees have one structure and equal leaves: bit for bit (with shape and dtype),
    or within `tolerance` (np.testing.assert_allclose's rtol / atol)."""
    import jax
    import numpy as np

    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        x, y = np.asarray(x), np.asarray(y)
        if tolerance:
            np.testing.assert_allclose(x, y, **tolerance)
        else:
            assert x.dtype == y.dtype and x.shape == y.shape
            np.testing.assert_array_equal(x, y)
