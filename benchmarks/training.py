"""Train-step throughput: rest_em's jitted `train_step` against a PyTorch reference step.

What is measured: tokens per second of one M-step optimizer update (forward, backward,
AdamW) in float32 on the SAME model, weights and batch, for two systems:

  torch  a Hugging Face `transformers.LlamaForCausalLM` in train mode on `--threads`
         threads: forward with `attention_mask`, loss = token-level cross-entropy over
         the completion tokens (`F.cross_entropy(..., ignore_index=-100)`, i.e. the mean
         over target tokens), `backward()`, `clip_grad_norm_`, `torch.optim.AdamW.step()`;
  ours   `rest_em.training.make_train_step` (jit, state donated) of `train_step` with
         `make_optimizer(OptimizerConfig(...))`: the gradient of the weighted NLL of
         `rest_em.losses.weighted_nll` (all example weights 1: the same loss), global-norm
         clipping and optax AdamW, on a `[1, B, L]` micro-batch stack.

Both use the same hyper-parameters (lr 1e-4, b1 0.9, b2 0.95, eps 1e-8, no weight decay,
clip 1.0); rest_em's default OptimizerConfig except the learning rate.

Why: the M-step fine-tunes on every iteration's selected samples; with sampling it is
the rest of ReST^EM's compute, so it should not be slower than the plain PyTorch loop a
user would otherwise write.

How: a random-init `LlamaForCausalLM` (torch.manual_seed(seed)) is saved with
`save_pretrained` and read into ours with `rest_em.checkpoints.load_hf_checkpoint`. The
batch is built once with `rest_em.training.make_batch`: B rows of exactly L+1 random
tokens (no padding), a prompt of random length in [L/8, L/2] and the rest completion.
Both systems see the same arrays. The first step of each starts from the same weights;
their losses must agree (checked; reported), which shows model, batch and loss match.
Every system runs one warm-up (which compiles ours), then `--repeats` rounds each time
`--steps` consecutive steps of every system (default: the preset's own, about a second
or more of work), in an order rotated per round. Reported:
the MEDIAN over rounds. Timing ends when the updated parameters exist (ours: block on
the new state; torch is synchronous).

Tokens: every input position of the batch, B * L per step (all are computed; the loss
uses only the completion positions, the fraction is in the notes).

Threads: torch's OpenMP threads busy-wait between parallel regions by default. In this
process XLA's CPU thread pool lives next to them, and on a machine with other work on
it, a torch step then stalls at nearly every parallel region (measured on 2 shared cores:
a tiny model's step took ~900 ms on 2 threads against 5 ms on 1). The script therefore
sets OMP_WAIT_POLICY=PASSIVE unless the environment sets it (the value is reported), and
`--threads 2,1` times torch at several thread counts in the same run.

Fraction of peak: the run measures the machine's f32 matmul peak itself (median of a
jitted 2048x2048 f32 matmul) and divides each system's achieved model FLOP/s by it.
Model FLOPs of one step (the usual 6N rule: forward 2N per token, backward 4N):

    FLOPs = 6 * N_matmul * B * L  +  12 * layers * (heads * head_dim) * B * L * (L + 1) / 2

N_matmul: weights used in matmuls per token (attention + MLP projections of all layers
plus the LM head; the embedding lookup, norms, softmax and the optimizer update are not
counted). The attention term is QK^T and PV (2 * 2 * heads * head_dim FLOPs per query
and key, times 3 for forward + backward) over the CAUSAL keys only: position t sees t+1
keys. (PaLM's MFU counts the full L x L square, which would add about half again.)

Usage:
  python benchmarks/training.py                 # full run (~2 min on 2 cores)
  python benchmarks/training.py --quick         # smoke run (< 30 s)
  python benchmarks/training.py --write         # also update benchmarks/RESULTS.md
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import os
import pathlib
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # runnable as a plain script from any directory
    sys.path.insert(0, str(REPO))

# Before torch loads libgomp (see "Threads" in the module docstring).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import jax
import jax.numpy as jnp
import torch
import torch.nn.functional as F
import tqdm
import transformers

from benchmarks import _common
from benchmarks._common import PEAK_SIZE, Runner, matmul_params, usable_cores
from rest_em import checkpoints, training
from rest_em import model as model_lib


@dataclasses.dataclass(frozen=True)
class Preset:
    """A model (Hugging Face config fields) and the batch it trains on."""

    hf_config: dict[str, Any]
    batch: int
    seq_len: int
    steps: int  # consecutive steps per timed run: about a second or more of work


PRESETS: dict[str, Preset] = {
    # The embedded arithmetic task's model (gin_configs/arithmetic.gin): byte vocabulary,
    # ~0.87M params; batch 64 as its SFT / M-step fit.
    "task": Preset(
        {
            "vocab_size": 259,
            "hidden_size": 128,
            "intermediate_size": 384,
            "num_hidden_layers": 4,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "max_position_embeddings": 128,
            "tie_word_embeddings": False,
        },
        batch=64,
        seq_len=64,
        steps=3,
    ),
    # ~22.7M params, 14.5M of them in per-token matmuls: a small subword-vocabulary Llama
    # (the sampling benchmark's llama20m).
    "llama20m": Preset(
        {
            "vocab_size": 32000,
            "hidden_size": 256,
            "intermediate_size": 768,
            "num_hidden_layers": 8,
            "num_attention_heads": 8,
            "num_key_value_heads": 4,
            "max_position_embeddings": 512,
            "tie_word_embeddings": False,
        },
        batch=8,
        seq_len=256,
        steps=1,
    ),
    # Smoke-test size for --quick.
    "tiny": Preset(
        {
            "vocab_size": 256,
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "max_position_embeddings": 64,
            "tie_word_embeddings": False,
        },
        batch=4,
        seq_len=32,
        steps=1,
    ),
}

OURS = "ours"
OURS_LABEL = "rest_em train_step (jit)"
# The bf16 M-step: ModelConfig(dtype="bfloat16"), f32 master weights and AdamW state.
OURS_BF16 = "ours_bf16"
OURS_BF16_LABEL = "rest_em train_step, bf16 compute (jit)"
BF16_LOSS_RTOL = 2e-2  # its step-0 loss against f32's (bf16 rounding)
BF16_CURVE_RTOL = 5e-2  # its loss at every step of the run against f32's at that step
# The chunked loss: ModelConfig(loss_chunk=C), the LM head and log-softmax C positions at
# a time (never all [B, L, V] f32 logits), recomputed in the backward pass.
OURS_CHUNKED = "ours_chunked"
OURS_CHUNKED_LABEL = "rest_em train_step, chunked loss (jit)"
TORCH_LABEL = "PyTorch (HF Llama, AdamW)"


def torch_key(threads: int) -> str:
    return f"torch/{threads}"


def system_label(key: str, torch_threads: Sequence[int]) -> str:
    """Table label; torch rows name their thread count when more than one is timed."""
    if key == OURS:
        return OURS_LABEL
    if key == OURS_BF16:
        return OURS_BF16_LABEL
    if key == OURS_CHUNKED:
        return OURS_CHUNKED_LABEL
    if len(torch_threads) == 1:
        return TORCH_LABEL
    n = int(key.split("/")[1])
    return f"{TORCH_LABEL}, {n} thread{'s' if n > 1 else ''}"


OPTIMIZER = training.OptimizerConfig(
    learning_rate=1e-4,
    warmup_steps=0,
    schedule="constant",
    weight_decay=0.0,
    b1=0.9,
    b2=0.95,
    eps=1e-8,
    clip_norm=1.0,
)
LOSS_RTOL = 1e-4  # step-0 losses of the two systems must agree this closely


# --- workload ------------------------------------------------------------------------


def make_workload(batch: int, seq_len: int, vocab: int, seed: int) -> training.TrainBatch:
    """`make_batch` of `batch` unpadded rows: L+1 random ids in [3, vocab) each, a prompt of
    uniform length in [L/8, L/2], the rest completion. Fixed numpy seed."""
    rng = np.random.default_rng(seed)
    prompts, completions = [], []
    for _ in range(batch):
        row = rng.integers(3, vocab, size=seq_len + 1)
        p = int(rng.integers(max(1, seq_len // 8), seq_len // 2 + 1))
        prompts.append(row[:p].tolist())
        completions.append(row[p:].tolist())
    return training.make_batch(prompts, completions, length=seq_len)


def train_flops(cfg: model_lib.ModelConfig, batch: int, seq_len: int) -> float:
    """Model FLOPs of one train step on `batch` x `seq_len` tokens (module docstring)."""
    tokens = batch * seq_len
    attn_width = cfg.num_heads * cfg.resolved_head_dim
    causal_keys = batch * seq_len * (seq_len + 1) / 2
    return 6.0 * matmul_params(cfg) * tokens + 12.0 * cfg.num_layers * attn_width * causal_keys


def build_hf_checkpoint(
    hf_config: dict[str, Any], directory: pathlib.Path, seed: int, attn_implementation: str
) -> transformers.LlamaForCausalLM:
    """A random-init f32 Llama (torch.manual_seed(seed)), saved to `directory`."""
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(**hf_config, attn_implementation=attn_implementation)
    hf = transformers.LlamaForCausalLM(config)
    hf.save_pretrained(directory)
    return hf


# --- runners: `seed -> tokens` of `steps` optimizer updates; each records its losses --


@dataclasses.dataclass
class System:
    run: Runner
    losses: list[float]  # every step's loss, in order (the first: from the shared weights)
    compiles: Callable[[], int] | None = None  # how often ours has compiled its step


def torch_system(
    hf: transformers.LlamaForCausalLM,
    batch: training.TrainBatch,
    steps: int,
    adamw_impl: str,
    threads: int,
) -> System:
    """The reference loop a PyTorch user writes: zero_grad, forward, CE, backward, clip, step.

    Trains `hf` in place; `threads` is set (torch.set_num_threads) at the start of each run.
    """
    hf.train()
    impl = {"default": {}, "foreach": {"foreach": True}, "fused": {"fused": True}}[adamw_impl]
    opt = torch.optim.AdamW(
        hf.parameters(),
        lr=OPTIMIZER.learning_rate,
        betas=(OPTIMIZER.b1, OPTIMIZER.b2),
        eps=OPTIMIZER.eps,
        weight_decay=OPTIMIZER.weight_decay,
        **impl,
    )
    inputs = torch.from_numpy(np.asarray(batch.inputs_BxL, np.int64))
    attention_mask = torch.from_numpy(np.asarray(batch.valid_BxL, np.int64))
    labels = np.where(np.asarray(batch.loss_mask_BxL) > 0, np.asarray(batch.targets_BxL), -100)
    labels = torch.from_numpy(labels.astype(np.int64)).reshape(-1)
    tokens = inputs.numel()
    losses: list[float] = []

    def run(seed: int) -> int:
        del seed  # deterministic
        torch.set_num_threads(threads)
        for _ in range(steps):
            opt.zero_grad(set_to_none=True)
            logits = hf(input_ids=inputs, attention_mask=attention_mask, use_cache=False).logits
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels, ignore_index=-100)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(hf.parameters(), OPTIMIZER.clip_norm)
            opt.step()
            losses.append(loss.item())
        return steps * tokens

    return System(run, losses)


def ours_system(
    cfg: model_lib.ModelConfig, params: Any, batch: training.TrainBatch, steps: int
) -> System:
    """`make_train_step` as `training.fit` calls it; the state lives across runs."""
    optimizer = training.make_optimizer(OPTIMIZER, total_steps=1_000_000)
    state = training.init_train_state(params, optimizer)
    # load_hf_checkpoint's params are committed to the device, the step counter and the
    # optimizer state init_train_state adds are not; the step's outputs all are, so the
    # SECOND call would compile train_step again (once). Committing the whole state now
    # keeps that one-time cost out of the warm-up; `compiles` checks none happens later.
    device = jax.tree.leaves(params)[0].sharding
    state = jax.device_put(state, device)
    step_fn = training.make_train_step(cfg, optimizer, state)
    stacked = jax.device_put(
        jax.tree.map(lambda x: np.asarray(x)[None], batch), device
    )  # [A=1, B, L]
    tokens = int(np.asarray(batch.inputs_BxL).size)
    losses: list[float] = []

    def run(seed: int) -> int:
        del seed  # deterministic
        nonlocal state
        metrics = []
        for _ in range(steps):
            state, m = step_fn(state, stacked)
            metrics.append(m["loss"])
        jax.block_until_ready((state, metrics))
        losses.extend(float(x) for x in metrics)
        return steps * tokens

    # jax.jit's executable count (private API; without it the check is skipped).
    return System(run, losses, compiles=getattr(step_fn, "_cache_size", lambda: 1))


# --- results ------------------------------------------------------------------------


@dataclasses.dataclass
class Row:
    config_name: str
    batch: int
    seq_len: int
    system: str
    steps: int
    seconds: list[float] = dataclasses.field(default_factory=list)
    tokens: int = 0  # per timed run
    flops: float = 0.0  # per timed run
    first_loss: float = math.nan

    @property
    def median_s(self) -> float:
        return statistics.median(self.seconds)

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.median_s


@dataclasses.dataclass
class ConfigInfo:
    name: str
    params: int
    matmul_params: int
    completion_fraction: float
    # The bf16 step's loss curve against f32's over the run's steps on the fixed batch
    # (both start from the same weights and take the same number of steps).
    curve_steps: int = 0
    curve_max_rel: float = math.nan
    curve_last: tuple[float, float] = (math.nan, math.nan)  # (f32, bf16)


def bench_config(
    name: str,
    preset: Preset,
    directory: pathlib.Path,
    args: argparse.Namespace,
    progress: tqdm.tqdm,
) -> tuple[list[Row], ConfigInfo]:
    hf = build_hf_checkpoint(
        {**preset.hf_config, **args.model_overrides}, directory, args.seed, args.hf_attention
    )
    cfg, params = checkpoints.load_hf_checkpoint(directory, dtype="float32")
    batch_size = args.batch_size or preset.batch
    seq_len = args.seq_len or preset.seq_len
    if seq_len > cfg.max_seq_len:
        raise ValueError(f"{name}: --seq_len {seq_len} > max_position_embeddings {cfg.max_seq_len}")
    steps = args.steps or preset.steps
    batch = make_workload(batch_size, seq_len, cfg.vocab_size, args.seed)
    systems = {
        torch_key(n): torch_system(
            copy.deepcopy(hf) if i else hf, batch, steps, args.torch_adamw, n
        )
        for i, n in enumerate(args.threads)
    }
    bf16 = dataclasses.replace(cfg, dtype="bfloat16")
    systems[OURS_BF16] = ours_system(bf16, jax.tree.map(jnp.copy, params), batch, steps)
    chunked = dataclasses.replace(cfg, loss_chunk=args.loss_chunk)
    systems[OURS_CHUNKED] = ours_system(chunked, jax.tree.map(jnp.copy, params), batch, steps)
    systems[OURS] = ours_system(cfg, params, batch, steps)
    del params  # ours' state holds its own copy
    timings = _common.time_interleaved(
        {k: s.run for k, s in systems.items()}, args.repeats, progress
    )
    for key in (OURS, OURS_BF16, OURS_CHUNKED):
        compiles = systems[key].compiles()
        if compiles != 1:
            raise RuntimeError(
                f"{name}: rest_em's train_step ({key}) compiled {compiles} times; the "
                "timed runs must reuse the warm-up's executable"
            )
    first = {k: s.losses[0] for k, s in systems.items()}
    for key, loss in first.items():
        tol = BF16_LOSS_RTOL if key == OURS_BF16 else LOSS_RTOL
        if not math.isclose(first[OURS], loss, rel_tol=tol):
            raise RuntimeError(
                f"{name}: step-0 losses differ (ours {first[OURS]!r}, {key} "
                f"{loss!r}): the systems do not train the same model, batch "
                "and loss"
            )
    loss32 = np.asarray(systems[OURS].losses)
    loss16 = np.asarray(systems[OURS_BF16].losses)
    curve_rel = float(np.max(np.abs(loss16 - loss32) / loss32))
    if curve_rel > BF16_CURVE_RTOL:
        raise RuntimeError(
            f"{name}: the bf16 step's loss curve leaves f32's by rel. {curve_rel:.3g} "
            f"(> {BF16_CURVE_RTOL:g}) within {len(loss32)} steps"
        )
    flops = train_flops(cfg, batch_size, seq_len) * steps
    rows = []
    for system, runs in timings.items():
        rows.append(
            Row(
                name,
                batch_size,
                seq_len,
                system,
                steps,
                seconds=[s for s, _ in runs],
                tokens=runs[0][1],
                flops=flops,
                first_loss=first[system],
            )
        )
    info = ConfigInfo(
        name,
        sum(p.numel() for p in hf.parameters()),
        matmul_params(cfg),
        float(np.asarray(batch.loss_mask_BxL).mean()),
        curve_steps=len(loss32),
        curve_max_rel=curve_rel,
        curve_last=(float(loss32[-1]), float(loss16[-1])),
    )
    return rows, info


def format_table(rows: Sequence[Row], peak: float, torch_threads: Sequence[int]) -> str:
    """Markdown: one line per (config, system); ratios against torch on the first
    `torch_threads` entry (by default the usable cores)."""
    lines = [
        (
            "| model | batch x length | system | tokens/s (median) | ours / torch | ms / step | "
            "model GFLOP/s | % of matmul peak | runs (s) |"
        ),
        "|---|---|---|---:|---:|---:|---:|---:|---|",
    ]
    base = torch_key(torch_threads[0])
    torch_speed = {r.config_name: r.tokens_per_s for r in rows if r.system == base}
    for r in rows:
        ratio = r.tokens_per_s / torch_speed[r.config_name]
        achieved = r.flops / r.median_s
        runs = ", ".join(f"{s:.3g}" for s in r.seconds)
        lines.append(
            f"| {r.config_name} | {r.batch} x {r.seq_len} | "
            f"{system_label(r.system, torch_threads)} | "
            f"{r.tokens_per_s:,.0f} | {ratio:.2f} | {1e3 * r.median_s / r.steps:.1f} | "
            f"{achieved / 1e9:.1f} | {100 * achieved / peak:.1f} | {runs} |"
        )
    return "\n".join(lines)


def report(
    rows: Sequence[Row],
    infos: Sequence[ConfigInfo],
    peak: float,
    args: argparse.Namespace,
    command: str,
    wall_s: float,
    loads: tuple[tuple[float, ...], ...],
) -> str:
    by_config = {i.name: i for i in infos}
    models = "; ".join(
        f"{i.name}: {i.params / 1e6:.2f}M params ({i.matmul_params / 1e6:.2f}M in matmuls), "
        f"{100 * i.completion_fraction:.0f}% of positions are loss targets"
        for i in infos
    )
    losses = "; ".join(
        f"{name}: ours {r_ours.first_loss:.6f}, torch {r_torch.first_loss:.6f}"
        for name in by_config
        for r_ours in rows
        if r_ours.config_name == name and r_ours.system == OURS
        for r_torch in rows
        if r_torch.config_name == name and r_torch.system == torch_key(args.threads[0])
    )
    steps = ", ".join(f"{r.config_name} {r.steps}" for r in rows if r.system == OURS)
    threads = " and ".join(str(n) for n in args.threads)
    adamw = {
        "default": "default implementation (per-tensor loop on CPU)",
        "foreach": "foreach=True",
        "fused": "fused=True",
    }[args.torch_adamw]
    notes = [
        *_common.run_notes(command, loads),
        f"Models (random init, seed {args.seed}, float32): {models}.",
        (
            f"Workload: unpadded rows of exactly `length` input tokens, prompts of random length "
            f"in [length/8, length/2] (numpy seed {args.seed}); consecutive steps per timed run: "
            f"{steps}; median of {args.repeats} interleaved runs after one warm-up run each; "
            "tokens/s counts every input position (batch x length per step)."
        ),
        (
            f"Optimizer (both): AdamW lr {OPTIMIZER.learning_rate:g}, betas ({OPTIMIZER.b1}, "
            f"{OPTIMIZER.b2}), eps {OPTIMIZER.eps:g}, weight decay {OPTIMIZER.weight_decay:g}, "
            f"global-norm clip {OPTIMIZER.clip_norm:g}; torch.optim.AdamW {adamw}."
        ),
        (
            f"Same model, batch and loss: first-step losses (from the shared weights) {losses} "
            f"(checked to agree within rel. {LOSS_RTOL:g})."
        ),
        (
            f"Matmul peak measured in this run ({PEAK_SIZE}x{PEAK_SIZE} f32, jitted): "
            f"{peak / 1e9:.0f} GFLOP/s. Model FLOPs per step = 6 * N_matmul * batch * length "
            "+ 12 * layers * heads * head_dim * batch * length * (length + 1) / 2 (causal keys "
            "only; embedding lookup, norms and the optimizer update not counted)."
        ),
        (
            f"PyTorch: eager mode, {threads} threads (OMP_WAIT_POLICY="
            f"{os.environ.get('OMP_WAIT_POLICY')}), HF attention "
            f"implementation {args.hf_attention}, forward with attention_mask and "
            "use_cache=False. rest_em: `training.make_train_step` (jit, state donated), timed "
            "until the new state is ready."
        ),
        (
            'bf16 compute: the same step with `ModelConfig(dtype="bfloat16")` (bf16 '
            "activations and matmuls, f32 master weights, gradients and AdamW state), from the "
            f"same weights; its first-step loss agrees with f32's within rel. {BF16_LOSS_RTOL:g} "
            "(checked). On a CPU without bf16 matmul units it is a correctness and memory "
            "mode, not a speed-up."
        ),
        (
            f"Chunked loss: the f32 step with `ModelConfig(loss_chunk={args.loss_chunk})`: the LM "
            f"head, log-softmax and their backward over {args.loss_chunk} positions at a time "
            "(rematerialised), never the whole [B, L, V] float32 logits; its first-step loss "
            f"agrees with the plain step's within rel. {LOSS_RTOL:g} (checked)."
        ),
        "bf16 loss curve: both of rest_em's steps train on the fixed batch for every step "
        "of the run (warm-up included), from the same weights; the largest relative "
        "difference of the bf16 loss from f32's at the same step (checked to stay within "
        f"{BF16_CURVE_RTOL:g}): "
        + "; ".join(
            f"{i.name}: {i.curve_max_rel:.2%} over {i.curve_steps} steps (loss "
            f"{i.curve_last[0]:.4f} f32, {i.curve_last[1]:.4f} bf16 at the last)"
            for i in infos
        )
        + ".",
        f"Total wall time {wall_s / 60:.1f} min.",
    ]
    return (
        format_table(rows, peak, args.threads) + "\n\n" + "\n".join(f"- {n}" for n in notes) + "\n"
    )


# --- driver -----------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--configs", default="task,llama20m", help=f"comma-separated presets from {sorted(PRESETS)}"
    )
    p.add_argument(
        "--model_overrides",
        default="{}",
        type=json.loads,
        help="JSON dict of HF config fields applied to every preset, e.g. "
        "'{\"num_hidden_layers\": 4}'",
    )
    p.add_argument(
        "--batch_size",
        type=int,
        default=None,
        help="rows per step for every preset (default: each preset's own)",
    )
    p.add_argument(
        "--seq_len",
        type=int,
        default=None,
        help="tokens per row for every preset (default: each preset's own)",
    )
    p.add_argument(
        "--steps",
        type=int,
        default=None,
        help="consecutive steps per timed run (default: each preset's own)",
    )
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument(
        "--threads",
        default=str(usable_cores()),
        help="torch.set_num_threads (default: the cores this process may use, "
        "which XLA's CPU client uses too); a comma-separated list times torch "
        "once per entry (e.g. 2,1), ratios are against the first",
    )
    p.add_argument(
        "--hf_attention",
        default="sdpa",
        choices=("sdpa", "eager"),
        help="attn_implementation of the HF model",
    )
    p.add_argument(
        "--torch_adamw",
        default="default",
        choices=("default", "foreach", "fused"),
        help="torch.optim.AdamW implementation",
    )
    p.add_argument(
        "--loss_chunk",
        type=int,
        default=64,
        help="sequence positions per chunk of the chunked-loss system (ModelConfig.loss_chunk)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--quick",
        action="store_true",
        help="smoke run (overrides the flags above): tiny model, 1 step, 1 repeat",
    )
    p.add_argument("--write", action="store_true", help="update benchmarks/RESULTS.md")
    p.add_argument("--results", default=str(REPO / "benchmarks" / "RESULTS.md"))
    args = p.parse_args(argv)
    if args.quick:
        args.configs, args.repeats = "tiny", 1
        args.batch_size = args.seq_len = args.steps = None
    args.configs = [c for c in args.configs.split(",") if c]
    args.threads = [int(n) for n in args.threads.split(",") if n]
    if not args.threads or min(args.threads) < 1 or len(set(args.threads)) < len(args.threads):
        p.error("--threads needs distinct positive thread counts")
    unknown = [c for c in args.configs if c not in PRESETS]
    if unknown:
        p.error(f"unknown configs {unknown}; choose from {sorted(PRESETS)}")
    if (args.steps is not None and args.steps < 1) or args.repeats < 1:
        p.error("--steps and --repeats must be >= 1")
    return args


def run(args: argparse.Namespace) -> tuple[list[Row], list[ConfigInfo], float]:
    torch.set_num_threads(args.threads[0])
    transformers.utils.logging.disable_progress_bar()  # ours is the only bar
    peak = _common.matmul_peak("f32")
    rows: list[Row] = []
    infos: list[ConfigInfo] = []
    total = len(args.configs) * (len(args.threads) + 1) * (args.repeats + 1)
    with (
        tempfile.TemporaryDirectory() as tmp,
        tqdm.tqdm(total=total, desc="runs", file=sys.stderr) as progress,
    ):
        for name in args.configs:
            progress.set_description(name)
            config_rows, info = bench_config(
                name, PRESETS[name], pathlib.Path(tmp) / name, args, progress
            )
            rows += config_rows
            infos.append(info)
    torch.set_num_threads(args.threads[0])  # what the machine description reports
    return rows, infos, peak


def results_heading(flags: Sequence[str]) -> str:
    """One section per (day, flags): a rerun with the same flags replaces its section."""
    return _common.results_heading("Train step throughput", flags)


def main(argv: Sequence[str] | None = None) -> None:
    flags = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(flags)
    command = shlex.join([pathlib.Path(sys.executable).name, "benchmarks/training.py", *flags])
    load_start = _common.load_average()
    start = time.perf_counter()
    rows, infos, peak = run(args)
    body = report(
        rows,
        infos,
        peak,
        args,
        command,
        time.perf_counter() - start,
        (load_start, _common.load_average()),
    )
    print(body)
    if args.write:
        heading = results_heading(flags)
        _common.write_results(pathlib.Path(args.results), heading, body)
        print(f"updated {args.results} under '{heading}'")


if __name__ == "__main__":
    main()
