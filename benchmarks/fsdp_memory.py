"""Per-device memory of the M-step train step under FSDP / tensor parallelism and remat.

What is measured: for one model and batch, the compiled `rest_em.training.make_train_step`
(forward, backward, AdamW, the state donated) on several meshes of simulated CPU devices,
each in its own process (`XLA_FLAGS=--xla_force_host_platform_device_count=N` must be set
before JAX starts):

  1 device              the reference
  data=8                pure data parallelism: every device holds everything (contrast)
  fsdp=8                parameters AND optimizer state split over 8 devices (ZeRO-3)
  fsdp=4 x tensor=2     FSDP over 4, Megatron-style tensor parallelism over 2
  ... with remat        `ModelConfig.remat="block"`: each decoder layer recomputed in the
                        backward pass (activations: temp memory)
  ... bf16              the bf16 M-step, `ModelConfig(dtype="bfloat16")`: bf16
                        activations and matmuls, f32 params and optimizer state

Compiled with XLA:CPU's memory-minimising scheduler (XLA_FLAGS
--xla_cpu_enable_concurrency_optimized_scheduler=false), the kind of schedule XLA uses
for GPU / TPU under a memory limit. The CPU default (concurrency-optimised) computes the
rematerialised layers right after the forward pass, which keeps every activation alive:
two rows measure that default (remat then saves nothing).

Per configuration, per device:
  params, opt state     bytes of the device's shards of the REAL train state built by
                        `init_params(mesh=...)` + `init_train_state` (each leaf is also
                        checked to carry the sharding `train_state_shardings` prescribes)
  compiled arguments    `jax.jit(...).lower(...).compile().memory_analysis()`:
                        argument bytes (state + batch shard), of which the state is the
                        argument bytes minus the batch shard; output, temp (activations,
                        gradients, workspace) and alias (donated outputs) bytes
The headline ratio (the bar of issue 7: <= 1/6) is the per-device params + optimizer
state from the compiled arguments, fsdp=8 over 1 device.

Simulated devices share one CPU: this measures where memory goes, not speed.

Usage:
  python benchmarks/fsdp_memory.py            # llama20m, batch 16 x 256: 10 compiles (~25 min)
  python benchmarks/fsdp_memory.py --quick    # a tiny model (~2 min; the test runs 2 setups)
  python benchmarks/fsdp_memory.py --write    # also update benchmarks/RESULTS.md
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import pathlib
import shlex
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]
MIB = 2.0**20

MODELS = {
    # The sampling / training benchmarks' llama20m (22.7M parameters).
    "llama20m": dict(
        vocab_size=32000,
        hidden_size=256,
        intermediate_size=768,
        num_layers=8,
        num_heads=8,
        num_kv_heads=4,
        max_seq_len=512,
    ),
    # --quick: every sharded dimension still divides 8 ways.
    "tiny": dict(
        vocab_size=256,
        hidden_size=64,
        intermediate_size=128,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        max_seq_len=64,
    ),
}


@dataclasses.dataclass(frozen=True)
class Setup:
    name: str
    devices: int
    mesh: tuple[int, int, int]  # (data, fsdp, tensor)
    remat: str = "none"
    scheduler: str = "memory"  # XLA:CPU's: "memory" (minimising) or "default" (concurrency)
    dtype: str = "float32"  # compute dtype (params and optimizer state stay float32)


SETUPS = [
    Setup("1 device", 1, (1, 1, 1)),
    Setup("1 device remat", 1, (1, 1, 1), "block"),
    Setup("data=8", 8, (8, 1, 1)),
    Setup("fsdp=8", 8, (1, 8, 1)),
    Setup("fsdp=8 remat", 8, (1, 8, 1), "block"),
    Setup("fsdp=4 x tensor=2", 8, (1, 4, 2)),
    Setup("1 device bf16", 1, (1, 1, 1), dtype="bfloat16"),
    Setup("fsdp=8 bf16", 8, (1, 8, 1), dtype="bfloat16"),
    # Where activations, not the logits, dominate: attention grows with the length.
    Setup("1 device cpu-default-schedule", 1, (1, 1, 1), scheduler="default"),
    Setup("1 device remat cpu-default-schedule", 1, (1, 1, 1), "block", scheduler="default"),
]
MEMORY_SCHEDULER_FLAG = "--xla_cpu_enable_concurrency_optimized_scheduler=false"


# --- one configuration (runs in a child process) -------------------------------------


def measure(model: str, setup: Setup, batch: int, seq_len: int) -> dict:
    """Builds the real sharded train state and compiles one train step; returns bytes."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from rest_em import model as model_lib
    from rest_em import partitioning, training

    assert jax.device_count() == setup.devices, (jax.device_count(), setup)
    cfg = model_lib.ModelConfig(**MODELS[model], remat=setup.remat, dtype=setup.dtype)
    mesh = partitioning.make_mesh(*setup.mesh)
    optimizer = training.make_optimizer(training.OptimizerConfig(), total_steps=100)
    expected = training.train_state_shardings(cfg, optimizer, mesh)

    state = training.init_train_state(
        model_lib.init_params(cfg, jax.random.key(0), mesh), optimizer
    )
    fsdp = "fsdp" if mesh.shape["fsdp"] > 1 else None

    def per_device(tree, sh_tree):
        total = matrices = split = 0
        for x, sh in zip(jax.tree.leaves(tree), jax.tree.leaves(sh_tree)):
            assert x.sharding.is_equivalent_to(sh, x.ndim), (x.shape, x.sharding, sh)
            total += x.addressable_shards[0].data.nbytes
            if x.ndim >= 2:
                matrices += 1
                split += bool(fsdp) and any(
                    fsdp == a or (isinstance(a, tuple) and fsdp in a) for a in sh.spec
                )
        return total, matrices, split

    params_b, p_mat, p_split = per_device(state.params, expected.params)
    opt_b, o_mat, o_split = per_device(state.opt_state, expected.opt_state)
    step_b, *_ = per_device(state.step, expected.step)

    a, b, t = 1, batch, seq_len  # micro-batches x batch x time
    batch_abs = training.TrainBatch(
        *(
            jax.ShapeDtypeStruct((a, b, t), dt)
            for dt in (jnp.int32, jnp.int32, jnp.bool_, jnp.float32)
        ),
        jax.ShapeDtypeStruct((a, b), jnp.float32),
        jax.ShapeDtypeStruct((a, b, t), jnp.float32),
    )
    step_fn = training.make_train_step(cfg, optimizer, state, mesh)
    compiled = step_fn.lower(state, batch_abs).compile()
    mem = compiled.memory_analysis()
    # The batch's shard per device, from the shardings the compiled step expects.
    batch_sh = compiled.input_shardings[0][1]
    batch_b = sum(
        math.prod(sh.shard_shape(x.shape)) * np.dtype(x.dtype).itemsize
        for x, sh in zip(jax.tree.leaves(batch_abs), jax.tree.leaves(batch_sh))
    )
    return {
        "setup": setup.name,
        "devices": setup.devices,
        "mesh": setup.mesh,
        "remat": setup.remat,
        "batch": batch,
        "seq_len": seq_len,
        "scheduler": setup.scheduler,
        "dtype": setup.dtype,
        "num_params": model_lib.count_params(state.params),
        "params_bytes": params_b,
        "opt_bytes": opt_b,
        "step_bytes": step_b,
        "matrix_leaves": {"params": p_mat, "opt_state": o_mat},
        "fsdp_split_leaves": {"params": p_split, "opt_state": o_split},
        "batch_bytes": batch_b,
        "argument_bytes": mem.argument_size_in_bytes,
        "state_argument_bytes": mem.argument_size_in_bytes - batch_b,
        "output_bytes": mem.output_size_in_bytes,
        "alias_bytes": mem.alias_size_in_bytes,
        "temp_bytes": mem.temp_size_in_bytes,
    }


# --- the driver -------------------------------------------------------------------------


def run_setup(model: str, setup: Setup, batch: int, seq_len: int) -> dict:
    env = dict(os.environ)
    flags = [env.get("XLA_FLAGS", ""), f"--xla_force_host_platform_device_count={setup.devices}"]
    if setup.scheduler == "memory":
        flags.append(MEMORY_SCHEDULER_FLAG)
    env["XLA_FLAGS"] = " ".join(flags).strip()
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    child = json.dumps(
        {"model": model, "setup": dataclasses.asdict(setup), "batch": batch, "seq_len": seq_len}
    )
    proc = subprocess.run(
        [sys.executable, __file__, "--child", child],
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{setup.name}: the measuring process failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _mesh_name(mesh) -> str:
    parts = [f"{axis}={n}" for axis, n in zip(("data", "fsdp", "tensor"), mesh) if n > 1]
    return " x ".join(parts) or "1 device"


def summary(rows: list[dict]) -> dict:
    by = {r["setup"]: r for r in rows}
    one, fsdp = by["1 device"], by["fsdp=8"]
    out = {
        "state_ratio_compiled": fsdp["state_argument_bytes"] / one["state_argument_bytes"],
        "state_ratio_shards": (
            (fsdp["params_bytes"] + fsdp["opt_bytes"]) / (one["params_bytes"] + one["opt_bytes"])
        ),
    }
    if "1 device remat" in by:
        out["remat_temp_ratio_1"] = by["1 device remat"]["temp_bytes"] / one["temp_bytes"]
    if "fsdp=8 remat" in by:
        out["remat_temp_ratio_fsdp8"] = by["fsdp=8 remat"]["temp_bytes"] / fsdp["temp_bytes"]
    for name, ref in (("1 device bf16", one), ("fsdp=8 bf16", fsdp)):
        if name in by:
            key = "bf16_temp_ratio_" + ("1" if ref is one else "fsdp8")
            out[key] = by[name]["temp_bytes"] / ref["temp_bytes"]
    a, b = "1 device cpu-default-schedule", "1 device remat cpu-default-schedule"
    if a in by and b in by:
        out["remat_temp_ratio_1_cpu_default"] = by[b]["temp_bytes"] / by[a]["temp_bytes"]
    return out


def report(
    rows: list[dict], summ: dict, notes: list[str], model: str, batch: int, seq_len: int
) -> str:
    n = rows[0]["num_params"]
    lines = [
        f"Model `{model}` ({n / 1e6:.1f}M parameters, f32 params), batch {batch} x {seq_len} "
        "tokens, "
        "AdamW; MiB per device. params / opt state: the device's shards of the real state; "
        "the other columns: the compiled train step's `memory_analysis()` (state args = "
        "arguments minus the batch shard).",
        "",
        "| mesh | compute | remat | XLA:CPU schedule | params | opt state | state args | "
        "arguments | output | temp | state vs 1 device |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    one = next(r for r in rows if r["setup"] == "1 device")
    for r in rows:
        lines.append(
            f"| {_mesh_name(r['mesh'])} | {r.get('dtype', 'float32')} | {r['remat']} | "
            f"{r['scheduler']} | "
            f"{r['params_bytes'] / MIB:.2f} | {r['opt_bytes'] / MIB:.2f} | "
            f"{r['state_argument_bytes'] / MIB:.2f} | {r['argument_bytes'] / MIB:.2f} | "
            f"{r['output_bytes'] / MIB:.2f} | {r['temp_bytes'] / MIB:.2f} | "
            f"{r['state_argument_bytes'] / one['state_argument_bytes']:.3f} |"
        )
    fs = next(r for r in rows if r["setup"] == "fsdp=8")
    lines += [
        "",
        f"- **FSDP over 8 devices: params + optimizer state per device = "
        f"{summ['state_ratio_compiled']:.3f} of one device's** "
        f"(1/{1 / summ['state_ratio_compiled']:.2f}; "
        f"the bar is 1/6 = 0.167). From the shards of the real state: "
        f"{summ['state_ratio_shards']:.3f}. Split over `fsdp`: "
        f"{fs['fsdp_split_leaves']['params']}/{fs['matrix_leaves']['params']} weight matrices "
        f"and {fs['fsdp_split_leaves']['opt_state']}/{fs['matrix_leaves']['opt_state']} "
        "optimizer-state matrices; what stays whole is the norm scales and step counts.",
    ]
    if "remat_temp_ratio_1" in summ:
        lines.append(
            f'- Remat (`ModelConfig.remat="block"`): temp memory x'
            f"{summ['remat_temp_ratio_1']:.2f} on 1 device"
            + (
                f", x{summ['remat_temp_ratio_fsdp8']:.2f} under fsdp=8"
                if "remat_temp_ratio_fsdp8" in summ
                else ""
            )
            + " (what remains: the logits and the loss's buffers over the "
            "vocabulary, outside the decoder layers, and the optimizer update)"
            + (
                f"; x{summ['remat_temp_ratio_1_cpu_default']:.2f} under XLA:CPU's "
                "default concurrency-optimised schedule"
                if "remat_temp_ratio_1_cpu_default" in summ
                else ""
            )
            + "."
        )
    if "bf16_temp_ratio_1" in summ:
        lines.append(
            '- bf16 M-step (`ModelConfig.dtype="bfloat16"`, f32 master weights and AdamW '
            f"state, so params and opt state are unchanged): temp memory x"
            f"{summ['bf16_temp_ratio_1']:.2f} on 1 device"
            + (
                f", x{summ['bf16_temp_ratio_fsdp8']:.2f} under fsdp=8"
                if "bf16_temp_ratio_fsdp8" in summ
                else ""
            )
            + " (activations in bf16; gradients are accumulated in f32)."
        )
    lines += [f"- {note}" for note in notes]
    lines.append(
        "- Gin: `rest_em.run.mesh_shape = (1, 8, 1)` (data, fsdp, tensor) shards "
        "sampling and training by `partitioning.LOGICAL_AXIS_RULES`; "
        '`rest_em.ModelConfig.remat = "block"` turns remat on.'
    )
    return "\n".join(lines) + "\n"


def _drop_output_flags(argv: list[str]) -> list[str]:
    """The flags that change the measurement (not --write / --results / --json)."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg in ("--results", "--json"):
            skip = True
        elif arg != "--write" and not arg.startswith(("--results=", "--json=")):
            out.append(arg)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="a tiny model, batch 8 x 32")
    p.add_argument("--model", default=None, choices=sorted(MODELS))
    p.add_argument("--batch_size", type=int, default=None)
    p.add_argument("--seq_len", type=int, default=None)
    p.add_argument("--write", action="store_true", help="update benchmarks/RESULTS.md")
    p.add_argument("--results", default=str(REPO / "benchmarks" / "RESULTS.md"))
    p.add_argument(
        "--setups",
        default=None,
        help="comma-separated subset of: "
        + ", ".join(x.name for x in SETUPS)
        + " (default: all; '1 device' and 'fsdp=8' are always measured)",
    )
    p.add_argument("--json", default=None, help="also write the raw rows here")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()

    if args.child:
        c = json.loads(args.child)
        s = c["setup"]
        setup = Setup(**{**s, "mesh": tuple(s["mesh"])})
        print(json.dumps(measure(c["model"], setup, c["batch"], c["seq_len"])))
        return

    sys.path.insert(0, str(REPO / "benchmarks"))
    import _common

    model = args.model or ("tiny" if args.quick else "llama20m")
    batch = args.batch_size or (8 if args.quick else 16)
    seq_len = args.seq_len or (32 if args.quick else 256)
    loads = [_common.load_average()]
    wanted = {"1 device", "fsdp=8"} | (
        {x.strip() for x in args.setups.split(",")} if args.setups else {x.name for x in SETUPS}
    )
    unknown = wanted - {x.name for x in SETUPS}
    if unknown:
        p.error(f"unknown setups {sorted(unknown)}")
    rows = []
    for setup in (x for x in SETUPS if x.name in wanted):
        print(f"measuring {setup.name} ...", file=sys.stderr, flush=True)
        rows.append(run_setup(model, setup, batch, seq_len))
    loads.append(_common.load_average())
    summ = summary(rows)
    flags = _drop_output_flags(sys.argv[1:])
    command = "python benchmarks/fsdp_memory.py " + shlex.join(flags)
    text = report(
        rows, summ, _common.run_notes(command.strip(), tuple(loads)), model, batch, seq_len
    )
    print(text)
    print("SUMMARY " + json.dumps(summ))
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps({"rows": rows, "summary": summ}, indent=1))
    if args.write:
        heading = _common.results_heading("FSDP memory", flags)
        _common.write_results(pathlib.Path(args.results), heading, text)


if __name__ == "__main__":
    main()
