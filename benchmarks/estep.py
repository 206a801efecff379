"""E-step decoding on heavy-tailed lengths: continuous batching against the static batch.

What is measured: kept tokens per second (tokens up to and including each row's EOS)
of `rest_em.sampling.sample` on a random-init llama20m-shaped model whose EOS logit is
biased so a sample's length is about geometric with mean `--mean_frac` (a quarter) of
the cap, as chain-of-thought lengths are heavy-tailed: `--samples` samples of each of
`--prompts` prompts (the E-step's shape), for each `max_new_tokens` cap, with
  static        today's sampler: one batch of prompts x samples, decoded until its
                longest row ends (every step pays for every row);
  buckets       the static batch attending over the filled cache only (opt-in);
  continuous    `SamplingConfig(num_slots=--slots)`: slots refilled from the work list
                the step their sample ends (`rest_em.continuous_batching`);
  continuous-buckets  continuous batching attending over the filled cache only (the
                furthest live slot's bucket);
  continuous-bf16  the same with a bf16 KV cache;
  hf            Hugging Face `generate` on the same weights (exported with
                `checkpoints.save_hf_checkpoint`), a static batch of prompts x samples
                with EOS ending rows (torch's own random numbers: other tokens, the same
                length distribution); opt-in (`--systems=...,hf`), it needs torch.
The f32 systems sample identical tokens (checked on every run). Reported: the median
over `--repeats` interleaved runs after a warm-up each, kept tokens/s, the ratio to the
static batch, the cost per kept token relative to the smallest cap, the useful-step
fraction (kept tokens / row-steps decoded: a static batch's is its slot occupancy too).

Not measured here: a GPU (benchmarks/gpu.py).

Usage:
  python benchmarks/estep.py                 # caps 256, 1024, 32 samples (~10 min)
  python benchmarks/estep.py --quick         # a tiny model (seconds; the test runs it)
  python benchmarks/estep.py --write         # also update benchmarks/RESULTS.md
"""

from __future__ import annotations

import argparse
import dataclasses
import pathlib
import shlex
import statistics
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import jax  # noqa: E402
import numpy as np  # noqa: E402
import tqdm  # noqa: E402

from benchmarks import _common  # noqa: E402
from benchmarks.fsdp_memory import MODELS  # noqa: E402
from rest_em import model as model_lib  # noqa: E402
from rest_em import sampling  # noqa: E402

SYSTEMS = {  # name -> SamplingConfig overrides (num_slots filled in from --slots)
    "static": {},
    "buckets": {"bucketed_attention": True},
    "continuous": {"num_slots": -1},
    "continuous-buckets": {"num_slots": -1, "bucketed_attention": True},
    "continuous-bf16": {"num_slots": -1, "kv_cache_dtype": "bfloat16"},
}
SYSTEMS["hf"] = {}  # not a SamplingConfig: `hf_runner`
# Systems that draw other tokens than the f32 static sampler (not checked for equality).
OWN_TOKENS = {"continuous-bf16", "hf"}
DEFAULT_SYSTEMS = "static,continuous,continuous-buckets,continuous-bf16"
EOS = 2


@dataclasses.dataclass
class Row:
    cap: int
    system: str
    seconds: list[float]
    tokens: int  # kept tokens per run
    row_steps: int  # rows x decode steps per run

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / statistics.median(self.seconds)


def bias_eos(params, cfg, mean_length: float):
    """Makes EOS about a 1/mean_length event per step on a random-init model: hidden
    dimension 0 of every embedding is 1 (the rest ~N(0, 0.02)), so the final-normed
    state's dimension 0 is a near-constant h0 > 0; the LM head reads only EOS's logit
    from it, set to the log-odds of 1/mean_length against the other V-1 tokens."""
    emb = np.array(params["embedding"])
    emb[:, 0] = 1.0
    head = np.array(params["lm_head"])
    head[0, :] = 0.0
    p = {**params, "embedding": jax.numpy.asarray(emb), "lm_head": jax.numpy.asarray(head)}
    h = np.asarray(model_lib.forward(p, cfg, jax.numpy.arange(3, 67)[None], head=False))[0]
    others = h @ head  # the other tokens' logits (EOS's column is still random)
    lse = float(np.mean(np.log(np.sum(np.exp(others - others.max(-1, keepdims=True)), -1))
                        + others.max(-1)))  # fmt: skip
    q = 1.0 / mean_length
    target = lse + np.log(q / (1 - q))
    head[:, EOS] = 0.0
    head[0, EOS] = target / float(np.mean(h[:, 0]))
    return {**p, "lm_head": jax.numpy.asarray(head)}


def kept_lengths(new_tokens_RxT: np.ndarray) -> np.ndarray:
    """Tokens up to and including each row's first EOS (all of them without one)."""
    eos = new_tokens_RxT == EOS
    return np.where(eos.any(1), eos.argmax(1) + 1, new_tokens_RxT.shape[1])


def hf_runner(cfg, params, prompts, cap: int, samples: int, outputs: dict):
    """HF `generate` (KV cache, sdpa) sampling `samples` rows per prompt, temperature 1,
    no top-k, until every row has drawn EOS or `cap` tokens, like the static batch."""
    import tempfile

    import torch
    import transformers

    from rest_em import checkpoints

    with tempfile.TemporaryDirectory() as d:
        checkpoints.save_hf_checkpoint(d, cfg, params)
        hf = transformers.AutoModelForCausalLM.from_pretrained(d, attn_implementation="sdpa")
    hf = hf.float().eval()
    ids = torch.tensor(prompts, dtype=torch.long).repeat_interleave(samples, dim=0)

    def run(seed: int) -> int:
        del seed
        torch.manual_seed(0)  # the same tokens every run
        with torch.inference_mode():
            out = hf.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                do_sample=True,
                temperature=1.0,
                top_k=0,
                top_p=1.0,
                max_new_tokens=cap,
                eos_token_id=EOS,
                pad_token_id=0,
                use_cache=True,
            )
        new = out[:, ids.shape[1] :].numpy()
        lengths = kept_lengths(new)
        outputs["hf"] = (None, lengths, new.shape[0] * new.shape[1])
        return int(lengths.sum())

    return run


def bench_cap(cfg, params, prompts, args, cap: int, systems, progress) -> list[Row]:
    outputs: dict[str, tuple] = {}

    def runner(name: str):
        if name == "hf":
            return hf_runner(cfg, params, prompts, cap, args.samples, outputs)
        over = {k: (args.slots if v == -1 else v) for k, v in SYSTEMS[name].items()}
        sc = sampling.SamplingConfig(
            max_new_tokens=cap,
            num_samples=args.samples,
            temperature=1.0,
            top_k=0,
            eos_id=EOS,
            **over,
        )
        rows = len(prompts) * args.samples
        width = min(sc.num_slots, rows) if sc.num_slots else rows

        def run(seed: int) -> int:
            del seed  # the same key every run: the same tokens
            out = sampling.sample(params, prompts, model_cfg=cfg, cfg=sc, key=jax.random.key(0))
            lengths = np.asarray(out.lengths_BxN)
            outputs[name] = (np.asarray(out.tokens_BxNxT), lengths, width * int(out.num_steps))
            return int(lengths.sum())

        return run

    timings = _common.time_interleaved({n: runner(n) for n in systems}, args.repeats, progress)
    f32 = [n for n in systems if n not in OWN_TOKENS]
    for n in f32[1:]:
        if not np.array_equal(outputs[n][0], outputs[f32[0]][0]):
            raise RuntimeError(f"cap {cap}: {n} sampled other tokens than {f32[0]}")
    return [
        Row(cap, name, [s for s, _ in runs], runs[0][1], outputs[name][2])
        for name, runs in timings.items()
    ]


def report(rows: list[Row], cfg, args, systems, notes: list[str]) -> str:
    caps = sorted({r.cap for r in rows})
    by = {(r.cap, r.system): r for r in rows}
    size = model_lib.count_params(model_lib.abstract_params(cfg))
    lines = [
        f"Random-init `{args.model}` ({size / 1e6:.1f}M params, f32 weights), {args.prompts} "
        f"prompt(s) of {args.prompt_len} tokens x {args.samples} samples, temperature 1, EOS "
        f"biased to a mean length of ~{args.mean_frac:g} x the cap; continuous batching in "
        f"{args.slots} slots; median of {args.repeats} interleaved run(s) after a warm-up.",
        "",
        "| max_new_tokens | system | kept tokens/s | vs static | cost per kept token vs "
        "smallest cap | useful-step fraction | mean / max length | runs (s) |",
        "|---:|---|---:|---:|---:|---:|---|---|",
    ]
    for cap in caps:
        for name in systems:
            r = by[cap, name]
            base = by[caps[0], name]
            lengths = f"{r.tokens / (args.prompts * args.samples):.0f}"
            lines.append(
                f"| {cap} | {name} | {r.tokens_per_s:,.0f} | "
                f"{r.tokens_per_s / by[cap, systems[0]].tokens_per_s:.2f} | "
                f"{base.tokens_per_s / r.tokens_per_s:.2f} | {r.tokens / r.row_steps:.2f} | "
                f"{lengths} | {', '.join(f'{s:.3g}' for s in r.seconds)} |"
            )
    lines += [
        "",
        "- The f32 systems sampled identical tokens at every cap (checked); the bf16 cache "
        "changes logits by bf16 rounding of k and v, so its samples differ"
        + (
            "; HF draws with torch's random numbers (other samples of the same model)."
            if "hf" in systems
            else "."
        ),
        *[f"- {n}" for n in notes],
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="llama20m", choices=sorted(MODELS))
    p.add_argument("--caps", default="256,1024")
    p.add_argument("--prompts", type=int, default=1)
    p.add_argument("--prompt_len", type=int, default=48)
    p.add_argument("--samples", type=int, default=32)
    p.add_argument("--slots", type=int, default=8)
    p.add_argument("--mean_frac", type=float, default=0.25)
    p.add_argument("--systems", default=DEFAULT_SYSTEMS)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--quick", action="store_true", help="tiny model, caps 16 and 96, 1 repeat")
    p.add_argument("--write", action="store_true")
    p.add_argument("--results", default=str(REPO / "benchmarks" / "RESULTS.md"))
    flags = list(sys.argv[1:] if argv is None else argv)
    args = p.parse_args(flags)
    if args.quick:
        args.model, args.caps, args.repeats, args.samples = "tiny", "16,96", 1, 6
        args.systems, args.slots = ",".join(SYSTEMS), 4  # hf too: torch is a test extra
    caps = [int(c) for c in args.caps.split(",")]
    cfg = model_lib.ModelConfig(
        **{**MODELS[args.model], "max_seq_len": args.prompt_len + max(caps)}
    )
    params = model_lib.init_params(cfg, jax.random.key(0))
    rng = np.random.default_rng(0)
    prompts = rng.integers(3, cfg.vocab_size, (args.prompts, args.prompt_len)).tolist()
    systems = args.systems.split(",")
    unknown = set(systems) - set(SYSTEMS)
    if unknown:
        raise SystemExit(f"unknown systems {sorted(unknown)}; expected some of {list(SYSTEMS)}")
    loads = [_common.load_average()]
    rows = []
    with tqdm.tqdm(total=len(caps) * len(systems) * (args.repeats + 1), desc="runs") as bar:
        for cap in caps:
            biased = bias_eos(params, cfg, args.mean_frac * cap)
            rows += bench_cap(cfg, biased, prompts, args, cap, systems, bar)
    loads.append(_common.load_average())
    command = shlex.join(["python", "benchmarks/estep.py", *[f for f in flags if f != "--write"]])
    text = report(rows, cfg, args, systems, _common.run_notes(command, tuple(loads)))
    print(text)
    if args.write:
        heading = _common.results_heading("E-step decoding, heavy-tailed lengths", flags)
        _common.write_results(pathlib.Path(args.results), heading, text)
        print(f"updated {args.results} under '{heading}'")


if __name__ == "__main__":
    main()
