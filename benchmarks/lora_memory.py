"""Trainable parameters and M-step memory: LoRA against full fine-tuning.

What is measured, on one device, for the same model and batch:
  full      `training.make_train_step`: every weight trains (AdamW moments for all)
  lora r=R  `FitConfig.lora = LoraConfig(rank=R)` on all seven projections: the base is a
            frozen argument of the step; only the adapters have gradients and AdamW state
Per setup: trainable parameters, the real optimizer state's bytes (built with
`init_train_state`), and the compiled step's `memory_analysis()`: argument bytes (the
state, plus the frozen base for LoRA, plus the batch), output and temp bytes.

Usage:
  python benchmarks/lora_memory.py            # llama20m, batch 16 x 256 (~3 min)
  python benchmarks/lora_memory.py --quick    # a tiny model (seconds; the test runs it)
  python benchmarks/lora_memory.py --write    # also update benchmarks/RESULTS.md
"""

from __future__ import annotations

import argparse
import functools
import json
import pathlib
import shlex
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
MIB = 2.0**20

from benchmarks import _common  # noqa: E402
from benchmarks.fsdp_memory import MODELS  # noqa: E402


def measure(model: str, rank: int | None, batch: int, seq_len: int) -> dict:
    import jax
    import jax.numpy as jnp

    from rest_em import lora, training
    from rest_em import model as model_lib

    cfg = model_lib.ModelConfig(**MODELS[model])
    params = model_lib.init_params(cfg, jax.random.key(0))
    optimizer = training.make_optimizer(training.OptimizerConfig(), total_steps=100)
    batch_abs = training.TrainBatch(
        *(
            jax.ShapeDtypeStruct((1, batch, seq_len), dt)
            for dt in (jnp.int32, jnp.int32, jnp.bool_, jnp.float32)
        ),
        jax.ShapeDtypeStruct((1, batch), jnp.float32),
        jax.ShapeDtypeStruct((1, batch, seq_len), jnp.float32),
    )
    if rank is None:
        state = training.init_train_state(params, optimizer)
        compiled = training.make_train_step(cfg, optimizer, state).lower(state, batch_abs)
    else:
        lcfg = lora.LoraConfig(rank=rank, alpha=2.0 * rank)
        state = training.init_train_state(
            lora.init_adapters(params, lcfg, jax.random.key(1)), optimizer
        )
        # The step `fit` jits for LoRA: the frozen base is an argument, not donated.
        fn = functools.partial(
            training._lora_train_step, model_cfg=cfg, optimizer=optimizer, lora=lcfg
        )
        compiled = jax.jit(fn, donate_argnums=0).lower(state, params, batch_abs)
    mem = compiled.compile().memory_analysis()
    nbytes = lambda tree: sum(x.nbytes for x in jax.tree.leaves(tree))  # noqa: E731
    frozen = 0 if rank is None else nbytes(params)
    return {
        "setup": "full fine-tuning" if rank is None else f"LoRA r={rank}",
        "num_params": model_lib.count_params(params),
        "trainable": sum(x.size for x in jax.tree.leaves(state.params)),
        "opt_bytes": nbytes(state.opt_state),
        "state_bytes": nbytes(state.params) + nbytes(state.opt_state),
        "frozen_bytes": frozen,
        "argument_bytes": mem.argument_size_in_bytes,
        "output_bytes": mem.output_size_in_bytes,
        "temp_bytes": mem.temp_size_in_bytes,
    }


def report(rows: list[dict], model: str, batch: int, seq_len: int, notes: list[str]) -> str:
    full = rows[0]
    lines = [
        f"Model `{model}` ({full['num_params'] / 1e6:.1f}M parameters, f32), batch {batch} x "
        f"{seq_len}, AdamW, one device; MiB. LoRA on q/k/v/o/gate/up/down, alpha = 2r.",
        "",
        "| setup | trainable params | trainable / all | optimizer state | trained params + "
        "opt state | frozen base | compiled arguments | compiled temp |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['setup']} | {r['trainable']:,} | {r['trainable'] / r['num_params']:.4f} | "
            f"{r['opt_bytes'] / MIB:.2f} | {r['state_bytes'] / MIB:.2f} | "
            f"{r['frozen_bytes'] / MIB:.2f} | {r['argument_bytes'] / MIB:.2f} | "
            f"{r['temp_bytes'] / MIB:.2f} |"
        )
    lora_rows = rows[1:]
    if lora_rows:
        r = lora_rows[0]
        lines += [
            "",
            f"- {r['setup']}: optimizer state x{r['opt_bytes'] / full['opt_bytes']:.4f} of full "
            f"fine-tuning's; trained state + frozen base x"
            f"{(r['state_bytes'] + r['frozen_bytes']) / full['state_bytes']:.3f} of full's "
            "params + optimizer state (the base is held once, in its own dtype, with no "
            "moments).",
        ]
    lines += [f"- {note}" for note in notes]
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--ranks", default="8,16")
    p.add_argument("--write", action="store_true")
    p.add_argument("--results", default=str(REPO / "benchmarks" / "RESULTS.md"))
    p.add_argument("--json", default=None)
    args = p.parse_args()
    model = "tiny" if args.quick else "llama20m"
    batch, seq_len = (8, 32) if args.quick else (16, 256)
    loads = [_common.load_average()]
    rows = [measure(model, None, batch, seq_len)]
    rows += [measure(model, int(r), batch, seq_len) for r in args.ranks.split(",")]
    loads.append(_common.load_average())
    flags = [a for a in sys.argv[1:] if a not in ("--write",) and not a.startswith("--json")]
    command = "python benchmarks/lora_memory.py " + shlex.join(flags)
    text = report(rows, model, batch, seq_len, _common.run_notes(command.strip(), tuple(loads)))
    print(text)
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(rows, indent=1))
    if args.write:
        heading = _common.results_heading("LoRA memory", flags)
        _common.write_results(pathlib.Path(args.results), heading, text)


if __name__ == "__main__":
    main()
