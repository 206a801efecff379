"""Train-step memory at large vocabularies: the plain loss against the chunked loss.

What is measured, on one device, for llama20m's body with its vocabulary set to 32,000
(Llama 2 / Mistral) and 256,000 (Gemma): the compiled train step's `memory_analysis()`
(arguments = params + AdamW state + batch, outputs, temp) with
  plain     `ModelConfig(loss_chunk=None)`: the whole `[B, L, V]` float32 logits, their
            log-softmax and their gradient exist at once;
  chunk=C   `ModelConfig(loss_chunk=C)`: the LM head and log-softmax run C positions at a
            time and are recomputed in the backward pass (`losses.chunked_weighted_nll`).
Nothing runs: params are abstract (`jax.eval_shape`), the step is only compiled, so a
256k vocabulary costs no RAM here. Temp is the working memory the loss chunking bounds.

Usage:
  python benchmarks/loss_memory.py            # llama20m body, batch 8 x 256 (~3 min)
  python benchmarks/loss_memory.py --quick    # a tiny model (seconds; the test runs it)
  python benchmarks/loss_memory.py --write    # also update benchmarks/RESULTS.md
"""

from __future__ import annotations

import argparse
import json
import pathlib
import shlex
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
MIB = 2.0**20

from benchmarks import _common  # noqa: E402
from benchmarks.fsdp_memory import MODELS  # noqa: E402


def measure(model: str, vocab: int, chunk: int | None, batch: int, seq_len: int) -> dict:
    import jax
    import jax.numpy as jnp

    from rest_em import model as model_lib
    from rest_em import training

    cfg = model_lib.ModelConfig(**{**MODELS[model], "vocab_size": vocab}, loss_chunk=chunk)
    optimizer = training.make_optimizer(training.OptimizerConfig(), total_steps=100)
    params = model_lib.abstract_params(cfg)
    state = training.TrainState(
        jax.ShapeDtypeStruct((), jnp.int32), params, jax.eval_shape(optimizer.init, params)
    )
    batch_abs = training.TrainBatch(
        *(
            jax.ShapeDtypeStruct((1, batch, seq_len), dt)
            for dt in (jnp.int32, jnp.int32, jnp.bool_, jnp.float32)
        ),
        jax.ShapeDtypeStruct((1, batch), jnp.float32),
        jax.ShapeDtypeStruct((1, batch, seq_len), jnp.float32),
    )
    step = jax.jit(
        lambda s, b: training.train_step(s, b, model_cfg=cfg, optimizer=optimizer),
        donate_argnums=0,
    )
    mem = step.lower(state, batch_abs).compile().memory_analysis()
    return {
        "vocab": vocab,
        "setup": "plain" if chunk is None else f"chunk={chunk}",
        "num_params": sum(x.size for x in jax.tree.leaves(state.params)),
        "logits_bytes": batch * seq_len * vocab * 4,
        "argument_bytes": mem.argument_size_in_bytes,
        "output_bytes": mem.output_size_in_bytes,
        "temp_bytes": mem.temp_size_in_bytes,
    }


def report(rows: list[dict], model: str, batch: int, seq_len: int, notes: list[str]) -> str:
    lines = [
        f"Model `{model}`'s body (f32) at two vocabularies, batch {batch} x {seq_len}, AdamW, "
        "one device, compiled only; MiB. `[B, L, V] f32` is the size of one copy of the "
        "whole logits.",
        "",
        "| vocab | params | loss | [B, L, V] f32 | compiled arguments | compiled temp "
        "| temp / plain |",
        "|---:|---:|---|---:|---:|---:|---:|",
    ]
    plain = {r["vocab"]: r["temp_bytes"] for r in rows if r["setup"] == "plain"}
    for r in rows:
        lines.append(
            f"| {r['vocab']:,} | {r['num_params'] / 1e6:.1f}M | {r['setup']} | "
            f"{r['logits_bytes'] / MIB:.1f} | {r['argument_bytes'] / MIB:.1f} | "
            f"{r['temp_bytes'] / MIB:.1f} | {r['temp_bytes'] / plain[r['vocab']]:.3f} |"
        )
    lines += ["", *[f"- {note}" for note in notes]]
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--vocabs", default="32000,256000")
    p.add_argument("--chunks", default="64,128")
    p.add_argument("--write", action="store_true")
    p.add_argument("--results", default=str(REPO / "benchmarks" / "RESULTS.md"))
    p.add_argument("--json", default=None)
    args = p.parse_args()
    model = "tiny" if args.quick else "llama20m"
    batch, seq_len = (4, 32) if args.quick else (8, 256)
    vocabs = [int(v) for v in args.vocabs.split(",")] if not args.quick else [256, 4096]
    chunks = [int(c) for c in args.chunks.split(",")] if not args.quick else [8]
    loads = [_common.load_average()]
    rows = [
        measure(model, vocab, chunk, batch, seq_len)
        for vocab in vocabs
        for chunk in (None, *chunks)
    ]
    loads.append(_common.load_average())
    flags = [a for a in sys.argv[1:] if a not in ("--write",) and not a.startswith("--json")]
    command = "python benchmarks/loss_memory.py " + shlex.join(flags)
    text = report(rows, model, batch, seq_len, _common.run_notes(command.strip(), tuple(loads)))
    print(text)
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(rows, indent=1))
    if args.write:
        heading = _common.results_heading("Loss memory", flags)
        _common.write_results(pathlib.Path(args.results), heading, text)


if __name__ == "__main__":
    main()
