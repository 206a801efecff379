"""The E-step and the train step on one accelerator chip, against its HBM roofline.

    python benchmarks/gpu.py --write     # on a GPU machine: a Qwen2.5-0.5B-shaped model, bf16
    python benchmarks/gpu.py --smoke     # on CPU: a tiny model, seconds (the test runs it)

What is measured, on a random-init model (weights and compute bf16; `--model`):
  E-step   `sampling.sample` with continuous batching (`--slots` slots), `--prompts`
           prompts x `--samples` samples at temperature 1, EOS biased to a mean length
           of a quarter of `--cap` (benchmarks/estep.py's workload): kept tokens/s per chip,
           and the fraction of the HBM roofline. A decode step must at least read every
           weight once and each slot's filled KV cache; at the chip's bandwidth that
           bounds tokens/s to `bandwidth * slots / (weight bytes + mean cache bytes)`.
  train    `training.make_train_step` (AdamW, f32 master weights, bf16 compute) on
           `--batch` x `--seq_len` random tokens: tokens/s per chip and model TFLOP/s
           (6 * matmul params * tokens + attention).
The bandwidth comes from the device kind (H100 SXM 3.35 TB/s, H200 4.8 TB/s, A100 80GB
2.04 TB/s) or `--hbm_tb_s`; on CPU the fraction is left out.
"""

from __future__ import annotations

import argparse
import dataclasses
import pathlib
import shlex
import statistics
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks import _common  # noqa: E402
from benchmarks.estep import EOS, bias_eos  # noqa: E402
from benchmarks.fsdp_memory import MODELS as FSDP_MODELS  # noqa: E402
from benchmarks.training import OPTIMIZER, make_workload, train_flops  # noqa: E402
from rest_em import model as model_lib  # noqa: E402
from rest_em import sampling, training  # noqa: E402

MODELS = {
    # Qwen2.5-0.5B's shape with an untied head (630M parameters), so EOS can be biased.
    "qwen0.5b": dict(
        vocab_size=151936,
        hidden_size=896,
        intermediate_size=4864,
        num_layers=24,
        num_heads=14,
        num_kv_heads=2,
        head_dim=64,
        qkv_bias=True,
        rope_theta=1e6,
    ),
    # --smoke: fsdp_memory's tiny model (its max_seq_len set here from the workload).
    "tiny": {k: v for k, v in FSDP_MODELS["tiny"].items() if k != "max_seq_len"},
}
HBM_TB_S = {"H100": 3.35, "H200": 4.8, "A100": 2.04, "L4": 0.3}


def hbm_bandwidth(args) -> float | None:
    """Bytes/s of the chip's HBM (None where unknown, e.g. on CPU)."""
    if args.hbm_tb_s:
        return args.hbm_tb_s * 1e12
    kind = jax.devices()[0].device_kind
    for name, tb in HBM_TB_S.items():
        if name in kind:
            return tb * 1e12
    return None


def _median_time(fn, repeats: int) -> float:
    fn()  # warm-up (compiles)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def bench_estep(cfg, params, args, bandwidth) -> dict:
    params = bias_eos(params, cfg, args.cap / 4)
    params = jax.tree.map(lambda x: x.astype(cfg.params_dtype), params)
    rng = np.random.default_rng(0)
    prompts = rng.integers(3, cfg.vocab_size, (args.prompts, args.prompt_len)).tolist()
    sc = sampling.SamplingConfig(
        max_new_tokens=args.cap,
        num_samples=args.samples,
        temperature=1.0,
        top_k=0,
        eos_id=EOS,
        num_slots=args.slots,
        kv_cache_dtype="bfloat16",
    )
    out = {}

    def run():
        res = sampling.sample(params, prompts, model_cfg=cfg, cfg=sc, key=jax.random.key(0))
        out["lengths"] = np.asarray(res.lengths_BxN)
        out["steps"] = int(res.num_steps)

    seconds = _median_time(run, args.repeats)
    kept = int(out["lengths"].sum())
    slots = min(args.slots, out["lengths"].size)
    weight_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(params))
    per_token_cache = 2 * cfg.num_layers * cfg.num_kv_heads * cfg.resolved_head_dim * 2  # bf16
    mean_context = args.prompt_len + float(out["lengths"].mean()) / 2
    step_bytes = weight_bytes + slots * mean_context * per_token_cache
    row = {
        "kept tokens/s": kept / seconds,
        "useful-step fraction": kept / (slots * out["steps"]),
        "mean length": float(out["lengths"].mean()),
        "seconds": seconds,
    }
    if bandwidth:
        roofline = bandwidth * slots / step_bytes
        row["roofline tokens/s"] = roofline
        row["fraction of roofline"] = kept / seconds / roofline
    return row


def bench_train(cfg, params, args) -> dict:
    optimizer = training.make_optimizer(OPTIMIZER, total_steps=1_000_000)
    state = jax.device_put(training.init_train_state(params, optimizer), jax.devices()[0])
    step_fn = training.make_train_step(cfg, optimizer, state)
    batch = make_workload(args.batch, args.seq_len, cfg.vocab_size, seed=0)
    stacked = jax.device_put(jax.tree.map(lambda x: np.asarray(x)[None], batch))
    holder = {"state": state}

    def run():
        holder["state"], m = step_fn(holder["state"], stacked)
        jax.block_until_ready(m)

    seconds = _median_time(run, args.repeats)
    tokens = args.batch * args.seq_len
    return {
        "tokens/s": tokens / seconds,
        "model TFLOP/s": train_flops(cfg, args.batch, args.seq_len) / seconds / 1e12,
        "seconds": seconds,
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="qwen0.5b", choices=sorted(MODELS))
    p.add_argument("--cap", type=int, default=1024)
    p.add_argument("--prompts", type=int, default=8)
    p.add_argument("--prompt_len", type=int, default=128)
    p.add_argument("--samples", type=int, default=32)
    p.add_argument("--slots", type=int, default=128)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seq_len", type=int, default=1024)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--hbm_tb_s", type=float, default=None)
    p.add_argument("--smoke", action="store_true", help="tiny model on any backend, seconds")
    p.add_argument("--write", action="store_true")
    p.add_argument("--results", default=str(REPO / "benchmarks" / "RESULTS.md"))
    flags = list(sys.argv[1:] if argv is None else argv)
    args = p.parse_args(flags)
    if args.smoke:
        args.model, args.cap, args.prompts, args.prompt_len = "tiny", 32, 2, 8
        args.samples, args.slots, args.batch, args.seq_len, args.repeats = 4, 4, 4, 32, 1
    cfg = model_lib.ModelConfig(
        **MODELS[args.model],
        max_seq_len=max(args.prompt_len + args.cap, args.seq_len),
        param_dtype="float32",
        dtype="bfloat16",
    )
    params = model_lib.init_params(cfg, jax.random.key(0))
    bandwidth = hbm_bandwidth(args)
    # The sampler's config: bf16 weights too (the E-step reads them every step).
    estep = bench_estep(dataclasses.replace(cfg, param_dtype="bfloat16"), params, args, bandwidth)
    train = bench_train(cfg, params, args)
    size = model_lib.count_params(model_lib.abstract_params(cfg))
    device = jax.devices()[0]
    lines = [
        f"Random-init `{args.model}` ({size / 1e6:.0f}M params), on {device.platform} "
        f"({device.device_kind}), one chip; HBM "
        + (f"{bandwidth / 1e12:.2f} TB/s" if bandwidth else "bandwidth unknown (no roofline)"),
        "",
        "| step | workload | tokens/s per chip | roofline / peak share | notes |",
        "|---|---|---:|---:|---|",
        f"| E-step (continuous, bf16 weights + KV cache) | {args.prompts} prompts x "
        f"{args.samples} samples, cap {args.cap}, {args.slots} slots | "
        f"{estep['kept tokens/s']:,.0f} | "
        + (f"{estep['fraction of roofline']:.2f} of HBM roofline" if bandwidth else "-")
        + f" | mean length {estep['mean length']:.0f}, useful-step fraction "
        f"{estep['useful-step fraction']:.2f} |",
        f"| train step (bf16 compute, f32 AdamW) | {args.batch} x {args.seq_len} | "
        f"{train['tokens/s']:,.0f} | - | {train['model TFLOP/s']:.2f} model TFLOP/s |",
        "",
        *[f"- {n}" for n in _common.run_notes(shlex.join(["python", "benchmarks/gpu.py", *[
            f for f in flags if f != "--write"]]), (_common.load_average(),) * 2)],
    ]  # fmt: skip
    text = "\n".join(lines) + "\n"
    print(text)
    if args.write:
        heading = _common.results_heading("E-step and train step on one chip", flags)
        _common.write_results(pathlib.Path(args.results), heading, text)


if __name__ == "__main__":
    main()
