"""Sampling throughput: rest_em's sampler against Hugging Face `generate`, side by side.

What is measured: generated tokens per second of the E-step's workload (top-k 40,
temperature 0.7, exactly `--new_tokens` new tokens per row, prompts of random length)
for three systems that run the SAME weights:

  hf        transformers `generate` (KV cache, left-padded batch + attention_mask),
            torch on `--threads` threads;
  ours      `rest_em.sampling.sample` with the KV cache (`use_kv_cache=True`);
  ours-rec  `rest_em.sampling.sample` recomputing the whole prefix every step
            (`use_kv_cache=False`): the baseline that shows what the cache buys.

Why: the E-step samples N solutions for every problem, every iteration; it is most of
ReST^EM's compute, so the sampler has to be at least as fast as the reference
implementation people would otherwise use.

How: a random-init `transformers.LlamaForCausalLM` (torch.manual_seed(seed)) is saved
with `save_pretrained` and read into ours with `rest_em.checkpoints.load_hf_checkpoint`.
Every system is warmed up once (which compiles ours) before timing; then `--repeats`
rounds each time every system once, in an order rotated per round, so drift in a
shared or throttling machine hits all systems alike. Reported: the MEDIAN over rounds.

Precision modes: "f32" runs everything in float32. "bf16" runs HF entirely in bfloat16
(`model.to(torch.bfloat16)`) and ours with bfloat16 weights but float32 compute
(`param_dtype="bfloat16", dtype="float32"`: matmuls read bf16 operands and accumulate
in f32; norms, softmax, residuals and the KV cache stay f32).

Fraction of peak: the run measures the machine's matmul peak itself (median of jitted
2048x2048 matmuls: f32 x f32 for "f32", bf16 x bf16 -> f32 for "bf16") and divides each
system's achieved model FLOP/s by it. Model FLOPs count the useful work of generation:

    FLOPs = 2 * N_matmul * G  +  4 * L * (heads * head_dim) * sum_g context_g

N_matmul: weights used in matmuls per token (attention + MLP projections of all layers
plus the LM head; the input-embedding lookup and norm scales are not matmuls).
G: generated tokens; context_g: keys token g attends to (its prompt + earlier new
tokens). The prompt prefill is not counted (prompts are short next to the generated
tokens), so the fractions are slight underestimates; the recompute baseline does far
more arithmetic than this useful work, which its low fraction shows.

Usage:
  python benchmarks/sampling.py                 # full run (~15 min on 2 cores)
  python benchmarks/sampling.py --quick         # smoke run (< 1 min)
  python benchmarks/sampling.py --write         # also update benchmarks/RESULTS.md
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import pathlib
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # runnable as a plain script from any directory
    sys.path.insert(0, str(REPO))

import jax
import torch
import tqdm
import transformers

from benchmarks import _common
from benchmarks._common import (
    PEAK_SIZE,
    Runner,
    matmul_params,
    matmul_peak,
    time_interleaved,
    usable_cores,
    write_results,
)
from rest_em import checkpoints, sampling
from rest_em import model as model_lib

# Hugging Face config fields of the benchmarked models (override with --model_overrides).
CONFIGS: dict[str, dict[str, Any]] = {
    # ~22.7M params, 14.5M of them in per-token matmuls: a small subword-vocabulary Llama.
    "llama20m": {
        "vocab_size": 32000,
        "hidden_size": 256,
        "intermediate_size": 768,
        "num_hidden_layers": 8,
        "num_attention_heads": 8,
        "num_key_value_heads": 4,
        "max_position_embeddings": 512,
        "tie_word_embeddings": False,
    },
    # ~19M params, almost all in the layers: the library's embedded byte-level task.
    "bytes": {
        "vocab_size": 256,
        "hidden_size": 512,
        "intermediate_size": 1536,
        "num_hidden_layers": 6,
        "num_attention_heads": 8,
        "num_key_value_heads": 4,
        "max_position_embeddings": 512,
        "tie_word_embeddings": False,
    },
    # Smoke-test size for --quick.
    "tiny": {
        "vocab_size": 256,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 128,
        "tie_word_embeddings": False,
    },
}

SYSTEMS = ("hf", "ours", "ours-rec")
SYSTEM_LABELS = {
    "hf": "HF generate (KV cache)",
    "ours": "rest_em (KV cache)",
    "ours-rec": "rest_em (no cache, recompute)",
}
PRECISIONS = ("f32", "bf16")
TOP_K, TEMPERATURE = 40, 0.7


# --- workload ------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Workload:
    """One table cell group: a model, a precision, a batch of prompts."""

    config_name: str
    precision: str
    prompts: tuple[np.ndarray, ...]
    new_tokens: int

    @property
    def batch(self) -> int:
        return len(self.prompts)


def make_prompts(
    batch: int, vocab: int, min_len: int, max_len: int, seed: int
) -> tuple[np.ndarray, ...]:
    """`batch` prompts of random ids in [3, vocab) (skipping pad/bos/eos), lengths
    uniform in [min_len, max_len]; a fixed numpy seed makes them reproducible."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(min_len, max_len + 1, size=batch)
    return tuple(rng.integers(3, vocab, size=n).astype(np.int32) for n in lengths)


def generation_flops(
    cfg: model_lib.ModelConfig, prompt_lengths: Sequence[int], new_tokens: int
) -> float:
    """Useful FLOPs of generating `new_tokens` per prompt (see the module docstring)."""
    generated = len(prompt_lengths) * new_tokens
    # Token g (0-based) of a row with prompt length p attends to p + g keys.
    context = sum(new_tokens * p + new_tokens * (new_tokens - 1) / 2 for p in prompt_lengths)
    attn_width = cfg.num_heads * cfg.resolved_head_dim
    return 2.0 * matmul_params(cfg) * generated + 4.0 * cfg.num_layers * attn_width * context


# --- models ------------------------------------------------------------------------


def build_hf_checkpoint(
    hf_config: dict[str, Any], directory: pathlib.Path, seed: int, attn_implementation: str
) -> transformers.LlamaForCausalLM:
    """A random-init f32 Llama (torch.manual_seed(seed)), saved to `directory`."""
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(**hf_config, attn_implementation=attn_implementation)
    hf = transformers.LlamaForCausalLM(config).eval()
    hf.save_pretrained(directory)
    return hf


def hf_model_for(
    hf_f32: transformers.LlamaForCausalLM, precision: str
) -> transformers.LlamaForCausalLM:
    if precision == "f32":
        return hf_f32
    return copy.deepcopy(hf_f32).to(torch.bfloat16).eval()


def load_ours(directory: pathlib.Path, precision: str) -> tuple[model_lib.ModelConfig, Any]:
    """Our config and params from the SAME checkpoint HF runs."""
    if precision == "f32":
        overrides = {"param_dtype": "float32", "dtype": "float32"}
    else:
        overrides = {"param_dtype": "bfloat16", "dtype": "float32"}
    return checkpoints.load_hf_checkpoint(directory, config_overrides=overrides)


# --- runners: callables `seed -> generated tokens`; the count is checked, so a run
# that stops early cannot look fast -------------------------------------------------


def hf_runner(hf: transformers.LlamaForCausalLM, work: Workload) -> Runner:
    """Left-padded batch with an attention mask, sampling with HF's own processors."""
    width = max(len(p) for p in work.prompts)
    ids = torch.zeros((work.batch, width), dtype=torch.long)
    mask = torch.zeros((work.batch, width), dtype=torch.long)
    for i, p in enumerate(work.prompts):
        ids[i, width - len(p) :] = torch.from_numpy(p.astype(np.int64))
        mask[i, width - len(p) :] = 1

    def run(seed: int) -> int:
        torch.manual_seed(seed)
        with torch.inference_mode():
            out = hf.generate(
                input_ids=ids,
                attention_mask=mask,
                do_sample=True,
                top_k=TOP_K,
                top_p=1.0,
                temperature=TEMPERATURE,
                min_new_tokens=work.new_tokens,
                max_new_tokens=work.new_tokens,
                use_cache=True,
                pad_token_id=0,
            )
        generated = out.shape[1] - width
        if generated != work.new_tokens:
            raise RuntimeError(f"HF generated {generated} tokens, expected {work.new_tokens}")
        return generated * work.batch

    return run


def ours_runner(
    cfg: model_lib.ModelConfig, params: Any, work: Workload, use_kv_cache: bool
) -> Runner:
    """`sampling.sample`, the public front door: host prompts in, host arrays out."""
    sampling_cfg = sampling.SamplingConfig(
        max_new_tokens=work.new_tokens,
        num_samples=1,
        temperature=TEMPERATURE,
        top_k=TOP_K,
        top_p=1.0,
        eos_id=None,
        use_kv_cache=use_kv_cache,
    )
    prompts = list(work.prompts)

    def run(seed: int) -> int:
        out = sampling.sample(
            params, prompts, model_cfg=cfg, cfg=sampling_cfg, key=jax.random.key(seed)
        )
        generated = int(np.asarray(out.lengths_BxN).sum())
        if generated != work.batch * work.new_tokens:
            raise RuntimeError(
                f"rest_em generated {generated} tokens, expected {work.batch * work.new_tokens}"
            )
        return generated

    return run


# --- results ------------------------------------------------------------------------


@dataclasses.dataclass
class Row:
    config_name: str
    precision: str
    batch: int
    system: str
    new_tokens: int
    seconds: list[float] = dataclasses.field(default_factory=list)
    tokens: int = 0
    flops: float = 0.0
    note: str = ""

    @property
    def skipped(self) -> bool:
        return not self.seconds

    @property
    def median_s(self) -> float:
        return statistics.median(self.seconds)

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.median_s


def bench_workload(
    work: Workload,
    hf: transformers.LlamaForCausalLM,
    cfg: model_lib.ModelConfig,
    params: Any,
    args: argparse.Namespace,
    progress: tqdm.tqdm,
) -> list[Row]:
    """Times the systems on one workload; rows in SYSTEMS order (skipped ones empty)."""
    runners: dict[str, Runner] = {
        "hf": hf_runner(hf, work),
        "ours": ours_runner(cfg, params, work, use_kv_cache=True),
    }
    rows = {
        name: Row(work.config_name, work.precision, work.batch, name, work.new_tokens)
        for name in SYSTEMS
    }
    if work.batch <= args.recompute_max_batch:
        runners["ours-rec"] = ours_runner(cfg, params, work, use_kv_cache=False)
    else:
        rows["ours-rec"].note = f"skipped: batch > --recompute_max_batch={args.recompute_max_batch}"
    timings = time_interleaved(runners, args.repeats, progress)
    flops = generation_flops(cfg, [len(p) for p in work.prompts], work.new_tokens)
    for name, runs in timings.items():
        rows[name].seconds = [s for s, _ in runs]
        rows[name].tokens = runs[0][1]
        rows[name].flops = flops
    return [rows[name] for name in SYSTEMS]


def format_table(rows: Sequence[Row], peaks: dict[str, float]) -> str:
    """Markdown: one line per (config, precision, batch, system)."""
    lines = [
        (
            "| model | precision | batch | system | tokens/s (median) | ours / HF | "
            "model GFLOP/s | % of matmul peak | runs (s) |"
        ),
        "|---|---|---:|---|---:|---:|---:|---:|---|",
    ]
    hf_speed = {
        (r.config_name, r.precision, r.batch): r.tokens_per_s
        for r in rows
        if r.system == "hf" and not r.skipped
    }
    for r in rows:
        head = f"| {r.config_name} | {r.precision} | {r.batch} | {SYSTEM_LABELS[r.system]} |"
        if r.skipped:
            lines.append(f"{head} — | — | — | — | {r.note} |")
            continue
        base = hf_speed.get((r.config_name, r.precision, r.batch))
        ratio = "1.00" if r.system == "hf" else (f"{r.tokens_per_s / base:.2f}" if base else "—")
        achieved = r.flops / r.median_s
        runs = ", ".join(f"{s:.3g}" for s in r.seconds)
        lines.append(
            f"{head} {r.tokens_per_s:,.0f} | {ratio} | {achieved / 1e9:.1f} | "
            f"{100 * achieved / peaks[r.precision]:.1f} | {runs} |"
        )
    return "\n".join(lines)


def report(
    rows: Sequence[Row],
    peaks: dict[str, float],
    args: argparse.Namespace,
    command: str,
    wall_s: float,
    loads: tuple[tuple[float, ...], ...],
) -> str:
    peak_text = ", ".join(
        f"{p}: {peaks[p] / 1e9:.0f} GFLOP/s"
        + (" (f32 x f32)" if p == "f32" else " (bf16 x bf16 -> f32)")
        for p in peaks
    )
    notes = [
        *_common.run_notes(command, loads),
        (
            f"Workload: prompts of {args.prompt_min}..{args.prompt_max} random tokens "
            f"(numpy seed {args.seed}), exactly {args.new_tokens} new tokens per row (no EOS), "
            f"top-k {TOP_K}, temperature {TEMPERATURE}; median of {args.repeats} interleaved "
            "runs after one warm-up each; tokens/s counts generated tokens only."
        ),
        (
            f"Matmul peak measured in this run ({PEAK_SIZE}x{PEAK_SIZE}, jitted): {peak_text}. "
            "Model FLOPs = 2 * N_matmul * generated + 4 * layers * heads * head_dim * "
            "sum(context) (prefill not counted)."
        ),
        (
            f"HF attention implementation: {args.hf_attention}; rest_em's sampler is called "
            "through `rest_em.sampling.sample` (host prompts in, host arrays out, timed whole)."
        ),
        f"Total wall time {wall_s / 60:.1f} min.",
    ]
    if "bf16" in peaks:
        notes.insert(
            -1,
            "bf16: HF runs fully in bfloat16; rest_em holds bfloat16 weights and "
            "computes in float32 (bf16 x bf16 matmuls accumulated in f32; f32 KV cache).",
        )
    skipped = [r for r in rows if r.skipped]
    if skipped:
        notes.append(
            "The recompute baseline is skipped above batch "
            f"{args.recompute_max_batch} (--recompute_max_batch): it costs about "
            "(prompt + new tokens) times the cached sampler's matmul work."
        )
    return format_table(rows, peaks) + "\n\n" + "\n".join(f"- {n}" for n in notes) + "\n"


# --- driver -----------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--configs",
        default="llama20m,bytes",
        help=f"comma-separated model presets from {sorted(CONFIGS)}",
    )
    p.add_argument(
        "--model_overrides",
        default="{}",
        type=json.loads,
        help="JSON dict of HF config fields applied to every preset, e.g. "
        "'{\"num_hidden_layers\": 4}'",
    )
    p.add_argument("--batch_sizes", default="1,16,128")
    p.add_argument("--precisions", default="f32,bf16", help="subset of f32,bf16")
    p.add_argument("--new_tokens", type=int, default=128)
    p.add_argument("--prompt_min", type=int, default=8)
    p.add_argument("--prompt_max", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument(
        "--recompute_max_batch",
        type=int,
        default=1,
        help="skip the no-cache baseline at larger batches (it is slow)",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=usable_cores(),
        help="torch.set_num_threads for HF (default: the cores this process may "
        "use, which XLA's CPU client uses too)",
    )
    p.add_argument(
        "--hf_attention",
        default="sdpa",
        choices=("sdpa", "eager"),
        help="attn_implementation of the HF model",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--quick",
        action="store_true",
        help="smoke run (overrides the flags above): tiny model, batches 1,4, "
        "16 new tokens, 1 repeat, recompute baseline at every batch",
    )
    p.add_argument("--write", action="store_true", help="update benchmarks/RESULTS.md")
    p.add_argument("--results", default=str(REPO / "benchmarks" / "RESULTS.md"))
    args = p.parse_args(argv)
    if args.quick:
        args.configs, args.batch_sizes, args.new_tokens = "tiny", "1,4", 16
        args.repeats, args.recompute_max_batch = 1, 4
    args.configs = [c for c in args.configs.split(",") if c]
    args.batch_sizes = [int(b) for b in args.batch_sizes.split(",") if b]
    args.precisions = [q for q in args.precisions.split(",") if q]
    unknown = [c for c in args.configs if c not in CONFIGS] + [
        q for q in args.precisions if q not in PRECISIONS
    ]
    if unknown:
        p.error(
            f"unknown config/precision {unknown}; configs: {sorted(CONFIGS)}, "
            f"precisions: {list(PRECISIONS)}"
        )
    if not 1 <= args.prompt_min <= args.prompt_max:
        p.error("need 1 <= --prompt_min <= --prompt_max")
    return args


def run(args: argparse.Namespace) -> tuple[list[Row], dict[str, float]]:
    torch.set_num_threads(args.threads)
    transformers.utils.logging.disable_progress_bar()  # ours is the only bar
    peaks = {q: matmul_peak(q) for q in args.precisions}
    total = (
        sum(
            (args.repeats + 1) * (len(SYSTEMS) - (b > args.recompute_max_batch))
            for b in args.batch_sizes
        )
        * len(args.configs)
        * len(args.precisions)
    )
    rows: list[Row] = []
    with (
        tempfile.TemporaryDirectory() as tmp,
        tqdm.tqdm(total=total, desc="runs", file=sys.stderr) as progress,
    ):
        for name in args.configs:
            directory = pathlib.Path(tmp) / name
            hf_f32 = build_hf_checkpoint(
                {**CONFIGS[name], **args.model_overrides}, directory, args.seed, args.hf_attention
            )
            for precision in args.precisions:
                hf = hf_model_for(hf_f32, precision)
                cfg, params = load_ours(directory, precision)
                for batch in args.batch_sizes:
                    prompts = make_prompts(
                        batch, cfg.vocab_size, args.prompt_min, args.prompt_max, args.seed + batch
                    )
                    work = Workload(name, precision, prompts, args.new_tokens)
                    progress.set_description(f"{name} {precision} batch {batch}")
                    rows += bench_workload(work, hf, cfg, params, args, progress)
    return rows, peaks


def results_heading(flags: Sequence[str]) -> str:
    """One section per (day, flags): a rerun with the same flags replaces its section."""
    return _common.results_heading("Sampling throughput", flags)


def main(argv: Sequence[str] | None = None) -> None:
    flags = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(flags)
    command = shlex.join([pathlib.Path(sys.executable).name, "benchmarks/sampling.py", *flags])
    load_start = _common.load_average()
    start = time.perf_counter()
    rows, peaks = run(args)
    body = report(
        rows,
        peaks,
        args,
        command,
        time.perf_counter() - start,
        (load_start, _common.load_average()),
    )
    print(body)
    if args.write:
        heading = results_heading(flags)
        write_results(pathlib.Path(args.results), heading, body)
        print(f"updated {args.results} under '{heading}'")


if __name__ == "__main__":
    main()
