"""E-step decoding at long budgets: attention over the filled cache against the whole cache.

What is measured: decode throughput (generated tokens per second) of `rest_em.sampling.
sample` on a random-init llama20m-shaped model (f32), `--samples` samples of each of
`--prompts` prompts (the E-step's shape: one prefill per prompt, its cache copied to
every sample), for each `max_new_tokens` cap, with
  whole    `SamplingConfig(bucketed_attention=False)`: every decode step reads the whole
           prompt + max_new_tokens cache (the sampler before attention buckets);
  buckets  `bucketed_attention=True` (opt-in): a step writing slot q attends over
           the first doubling bucket (64, 128, 256, ...) above q, so it reads less than
           twice its context.
Rows run to the cap (no EOS): every decode step produces a kept token, so the figures
isolate the cost of attending over long caches. Both systems produce the same tokens
(checked on every run). Reported: the median over `--repeats` interleaved runs after a
warm-up each, tokens/s, the buckets/whole ratio, and the cost per generated token
relative to the smallest cap (a sampler whose step cost grew only with the context it
has would stay near 1 + the attention share).

Not measured here (issue 17, still open): continuous batching (refilling finished rows)
and heavy-tailed EOS lengths, where a static batch wastes the steps after a row ends.

Usage:
  python benchmarks/estep.py                 # caps 128, 256, 512, 8 samples (~5 min)
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

SYSTEMS = {"whole": False, "buckets": True}  # name -> bucketed_attention


@dataclasses.dataclass
class Row:
    cap: int
    system: str
    seconds: list[float]
    tokens: int

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / statistics.median(self.seconds)


def bench_cap(cfg, params, prompts, args, cap: int, progress) -> list[Row]:
    outputs: dict[str, np.ndarray] = {}

    def runner(name: str):
        sc = sampling.SamplingConfig(
            max_new_tokens=cap,
            num_samples=args.samples,
            temperature=1.0,
            top_k=0,
            eos_id=None,
            bucketed_attention=SYSTEMS[name],
        )

        def run(seed: int) -> int:
            del seed  # the same key every run: the same tokens
            out = sampling.sample(params, prompts, model_cfg=cfg, cfg=sc, key=jax.random.key(0))
            outputs[name] = np.asarray(out.tokens_BxNxT)
            return int(np.asarray(out.lengths_BxN).sum())

        return run

    timings = _common.time_interleaved({n: runner(n) for n in SYSTEMS}, args.repeats, progress)
    if not np.array_equal(outputs["whole"], outputs["buckets"]):
        raise RuntimeError(f"cap {cap}: bucketed attention changed the sampled tokens")
    return [Row(cap, name, [s for s, _ in runs], runs[0][1]) for name, runs in timings.items()]


def report(rows: list[Row], cfg, args, notes: list[str]) -> str:
    caps = sorted({r.cap for r in rows})
    by = {(r.cap, r.system): r for r in rows}
    size = model_lib.count_params(model_lib.abstract_params(cfg))
    lines = [
        f"Random-init `{args.model}` ({size / 1e6:.1f}M params, f32), {args.prompts} "
        f"prompt(s) of {args.prompt_len} tokens x {args.samples} samples, temperature 1, "
        f"no EOS (every row runs to the cap); median of {args.repeats} interleaved runs.",
        "",
        "| max_new_tokens | attention | tokens/s | ms per decode step | buckets / whole "
        "| cost per token vs smallest cap | runs (s) |",
        "|---:|---|---:|---:|---:|---:|---|",
    ]
    for cap in caps:
        for name in SYSTEMS:
            r = by[cap, name]
            med = statistics.median(r.seconds)
            base = by[caps[0], name]
            lines.append(
                f"| {cap} | {name} | {r.tokens_per_s:,.0f} | {1000 * med / cap:.1f} | "
                f"{r.tokens_per_s / by[cap, 'whole'].tokens_per_s:.2f} | "
                f"{base.tokens_per_s / r.tokens_per_s:.2f} | "
                f"{', '.join(f'{s:.3g}' for s in r.seconds)} |"
            )
    lines += [
        "",
        "- Both systems sampled identical tokens at every cap (checked).",
        *[f"- {n}" for n in notes],
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="llama20m", choices=sorted(MODELS))
    p.add_argument("--caps", default="128,256,512")
    p.add_argument("--prompts", type=int, default=1)
    p.add_argument("--prompt_len", type=int, default=48)
    p.add_argument("--samples", type=int, default=8)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="tiny model, caps 16 and 96, 1 repeat")
    p.add_argument("--write", action="store_true")
    p.add_argument("--results", default=str(REPO / "benchmarks" / "RESULTS.md"))
    flags = list(sys.argv[1:] if argv is None else argv)
    args = p.parse_args(flags)
    if args.quick:
        args.model, args.caps, args.repeats, args.samples = "tiny", "16,96", 1, 4
    caps = [int(c) for c in args.caps.split(",")]
    cfg = model_lib.ModelConfig(
        **{**MODELS[args.model], "max_seq_len": args.prompt_len + max(caps)}
    )
    params = model_lib.init_params(cfg, jax.random.key(0))
    rng = np.random.default_rng(0)
    prompts = rng.integers(3, cfg.vocab_size, (args.prompts, args.prompt_len)).tolist()
    loads = [_common.load_average()]
    rows = []
    with tqdm.tqdm(total=len(caps) * len(SYSTEMS) * (args.repeats + 1), desc="runs") as bar:
        for cap in caps:
            rows += bench_cap(cfg, params, prompts, args, cap, bar)
    loads.append(_common.load_average())
    command = shlex.join(["python", "benchmarks/estep.py", *[f for f in flags if f != "--write"]])
    text = report(rows, cfg, args, _common.run_notes(command, tuple(loads)))
    print(text)
    if args.write:
        heading = _common.results_heading("E-step decoding, attention buckets", flags)
        _common.write_results(pathlib.Path(args.results), heading, text)
        print(f"updated {args.results} under '{heading}'")


if __name__ == "__main__":
    main()
