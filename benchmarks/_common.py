"""Helpers shared by the benchmark scripts (not a benchmark itself).

  usable_cores, machine_description, load_average, run_notes
                          what every RESULTS.md section says about the machine and run
  matmul_peak             the machine's measured matmul FLOP/s, the "% of peak" denominator
  matmul_params           weights used in a matmul per token (the N of 2N / 6N FLOP counts)
  time_interleaved        warm-up, then repeats rounds in a rotated order, so drift in a
                          shared machine hits every system alike
  results_heading, write_results
                          one RESULTS.md section per (script, day, flags), replaced in place

Imports jax but neither torch nor transformers at module level; `machine_description`
names their versions only if the calling script has imported them.
"""

from __future__ import annotations

import datetime
import os
import pathlib
import platform
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import tqdm

from rest_em import model as model_lib

PEAK_SIZE = 2048

# A runner does one timed unit of work for a seed and returns how many tokens it handled
# (checked by the runner, so a run that does less cannot look fast).
Runner = Callable[[int], int]


# --- machine --------------------------------------------------------------------------


def usable_cores() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def machine_description() -> str:
    """CPU model, cores, library versions: enough to compare runs across machines."""
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        model = next(
            (
                line.split(":", 1)[1].strip()
                for line in lscpu.splitlines()
                if line.startswith("Model name")
            ),
            "unknown",
        )
    except (OSError, subprocess.CalledProcessError):
        model = platform.processor() or "unknown"
    cores = usable_cores()
    import flax  # only for its version

    text = (
        f"{model}, {cores} cores usable (os.cpu_count()={os.cpu_count()}); "
        f"jax {jax.__version__} ({jax.default_backend()}), flax {flax.__version__}"
    )
    torch = sys.modules.get("torch")
    if torch is not None:
        text += f", torch {torch.__version__} ({torch.get_num_threads()} threads)"
    transformers = sys.modules.get("transformers")
    if transformers is not None:
        text += f", transformers {transformers.__version__}"
    return text + f", python {platform.python_version()}"


def load_average() -> tuple[float, ...]:
    return tuple(round(x, 2) for x in os.getloadavg())


def run_notes(command: str, loads: tuple[tuple[float, ...], ...]) -> list[str]:
    """The first notes of every section: command, machine, load before and after."""
    return [
        f"Command: `{command}`",
        f"Machine: {machine_description()}",
        (
            f"Load average (1/5/15 min) before the run {loads[0]}, after it {loads[1]}: "
            "a figure well above 0 before the run means other work shared the machine."
        ),
    ]


# --- FLOPs ------------------------------------------------------------------------------


def matmul_peak(precision: str, size: int = PEAK_SIZE, runs: int = 9) -> float:
    """Median FLOP/s of a jitted size^3 matmul: f32 x f32, or bf16 x bf16 -> f32."""
    dtype = jnp.float32 if precision == "f32" else jnp.bfloat16
    ka, kb = jax.random.split(jax.random.key(0))
    a = jax.random.normal(ka, (size, size), jnp.float32).astype(dtype)
    b = jax.random.normal(kb, (size, size), jnp.float32).astype(dtype)
    matmul = jax.jit(lambda x, y: jnp.matmul(x, y, preferred_element_type=jnp.float32))
    matmul(a, b).block_until_ready()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        matmul(a, b).block_until_ready()
        times.append(time.perf_counter() - start)
    return 2.0 * size**3 / statistics.median(times)


def matmul_params(cfg: model_lib.ModelConfig) -> int:
    """Weights used in a matmul per token: all layers' projections + the LM head.

    The input-embedding lookup and the norm scales are not matmuls (with tied embeddings
    the head still is one, so it counts either way).
    """
    d, f, hd = cfg.hidden_size, cfg.intermediate_size, cfg.resolved_head_dim
    h, k = cfg.num_heads, cfg.num_kv_heads
    per_layer = d * (h + 2 * k) * hd + h * hd * d + 3 * d * f
    return cfg.num_layers * per_layer + d * cfg.vocab_size


# --- timing -----------------------------------------------------------------------------


def time_call(fn: Runner, seed: int) -> tuple[float, int]:
    """(wall seconds, tokens) of one run."""
    start = time.perf_counter()
    tokens = fn(seed)
    return time.perf_counter() - start, tokens


def time_interleaved(
    runners: dict[str, Runner], repeats: int, progress: tqdm.tqdm
) -> dict[str, list[tuple[float, int]]]:
    """One warm-up per system, then `repeats` rounds; the order rotates per round."""
    names = list(runners)
    for name in names:
        progress.set_postfix_str(f"warm-up {name}")
        runners[name](0)
        progress.update()
    timings: dict[str, list[tuple[float, int]]] = {name: [] for name in names}
    for r in range(repeats):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            progress.set_postfix_str(f"round {r + 1}/{repeats} {name}")
            timings[name].append(time_call(runners[name], r + 1))
            progress.update()
    return timings


# --- RESULTS.md -------------------------------------------------------------------------


def results_heading(title: str, flags: Sequence[str]) -> str:
    """`## <title>, <date>[, `<flags>`]`: one section per (script, day, flags), so a rerun
    with the same flags replaces its section. Output-only flags are left out."""
    kept, skip_next = [], False
    for flag in flags:
        if skip_next:
            skip_next = False
        elif flag == "--results":
            skip_next = True
        elif flag != "--write" and not flag.startswith("--results="):
            kept.append(flag)
    suffix = f", `{shlex.join(kept)}`" if kept else ""
    return f"## {title}, {datetime.date.today().isoformat()}{suffix}"


def write_results(path: pathlib.Path, heading: str, body: str) -> None:
    """Replaces the section under `heading` in `path` if present, else appends it.

    A section runs from its heading to the next "## " line; other sections are kept
    byte for byte.
    """
    text = (
        path.read_text(encoding="utf-8")
        if path.exists()
        else (
            "# Benchmark results\n\nWritten by `benchmarks/*.py --write`; newest sections last.\n"
        )
    )
    section = f"{heading}\n\n{body}"
    lines = text.splitlines(keepends=True)
    start = next((i for i, line in enumerate(lines) if line.rstrip("\n") == heading), None)
    if start is None:
        text = text.rstrip("\n") + "\n\n" + section
    else:
        end = next(
            (i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines)
        )
        text = (
            "".join(lines[:start])
            + section
            + ("\n" if end < len(lines) else "")
            + "".join(lines[end:])
        )
    path.write_text(text, encoding="utf-8")
