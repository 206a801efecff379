"""E-step throughput of a code task with and without overlapping sampling and scoring.

    python benchmarks/estep_overlap.py --write            # embedded_code.gin's base model
    python benchmarks/estep_overlap.py --quick            # a tiny config: checks it runs

The task, tokenizer, model and base model come from a gin config through the launcher's
own plumbing (`rest_em.run` is called with `em.run` captured), so the benchmark measures
the shipped experiment. The base model is built once (or read back) in `--workdir`. Each
round runs `estep.generate_and_score` on the same training problems and key, once with
the checker scoring a chunk in a background thread while the sampler generates the next
(`overlap=True`, what the loop does) and once scoring each chunk before sampling the next;
the order rotates per round. Reported: samples/s (median), seconds in the sampler, in the
sandbox and waiting for it, and the share of programs skipped as identical to another
sample of the same problem.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import shlex
import statistics
import sys
import time
from collections.abc import Sequence

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import _common  # noqa: E402
import jax  # noqa: E402

from rest_em import em, estep, main  # noqa: E402
from rest_em import workdir as workdir_lib  # noqa: E402


class _Captured(Exception):
    pass


def configured_experiment(gin_files: Sequence[str], bindings: Sequence[str]) -> dict:
    """em.run's arguments as the launcher would build them from the gin config."""
    main.parse_gin(gin_files, bindings)
    captured = {}

    def capture(**kwargs):
        captured.update(kwargs)
        raise _Captured

    real, em.run = em.run, capture
    try:
        main._CONFIGURED["run"](workdir="unused")
    except _Captured:
        pass
    finally:
        em.run = real
    return captured


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--gin_file", action="append", default=None)
    p.add_argument("--gin", action="append", default=[], help="extra bindings NAME=VALUE")
    p.add_argument("--workdir", default="/tmp/rest_em_estep_overlap", help="base model cache")
    p.add_argument("--num_problems", type=int, default=300)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="tiny config, 16 problems, 1 round")
    p.add_argument("--write", action="store_true", help="update the results file")
    p.add_argument("--results", default=str(REPO / "benchmarks" / "RESULTS.md"))
    args = p.parse_args(argv)
    if args.quick:
        args.gin_file = args.gin_file or [str(REPO / "tests/testdata/tiny_embedded_code.gin")]
        args.num_problems, args.repeats = 16, 1
    args.gin_file = args.gin_file or ["embedded_code.gin"]
    return args


def main_(argv: Sequence[str] | None = None) -> int:
    flags = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(flags)
    exp = configured_experiment(args.gin_file, [b.replace("=", " = ", 1) for b in args.gin])
    task, tok, model_cfg, cfg = exp["task"], exp["tokenizer"], exp["model_cfg"], exp["cfg"]
    paths = workdir_lib.RunPaths(pathlib.Path(args.workdir))
    codec = workdir_lib.params_codec(em._abstract_params(model_cfg))
    t0 = time.perf_counter()
    params = workdir_lib.unit(paths.base, exp["make_base_params"], codec)
    base_s = time.perf_counter() - t0
    problems = task.load("train")[: args.num_problems]
    s_cfg = estep.sampling_config(cfg, tok, cfg.num_samples)
    chunk = min(cfg.chunk_size, max(1, len(problems) // 4))  # >= 4 chunks: something to overlap

    def run(overlap: bool) -> dict:
        task.scoring_stats()
        seconds = {}
        start = time.perf_counter()
        scored = estep.generate_and_score(
            params,
            problems,
            task=task,
            tokenizer=tok,
            model_cfg=model_cfg,
            sampling_cfg=s_cfg,
            key=jax.random.key(cfg.seed),
            chunk_size=chunk,
            seconds=seconds,
            overlap=overlap,
        )
        wall = time.perf_counter() - start
        stats = task.scoring_stats()
        n = sum(len(s.completions) for s in scored)
        statuses = [st for s in scored for st in s.statuses]
        return {"wall": wall, "samples": n, "stats": stats, "seconds": seconds, "st": statuses}

    load_before = _common.load_average()
    run(True)  # warm-up: compiles the sampler, starts the sandbox
    results = {True: [], False: []}
    for r in range(args.repeats):
        for overlap in (True, False) if r % 2 == 0 else (False, True):
            results[overlap].append(run(overlap))
    load_after = _common.load_average()
    ref = results[True][0]["st"]
    if any(x["st"] != ref for rs in results.values() for x in rs):
        raise SystemExit("statuses differ between runs: the benchmark compares unequal work")

    rows = []
    for overlap, label in ((True, "overlapped (the loop)"), (False, "score, then sample")):
        rs = results[overlap]
        med = statistics.median(x["wall"] for x in rs)

        def median_s(k, rs=rs):
            return statistics.median(x["seconds"].get(k, 0.0) for x in rs)

        rows.append((label, rs[0]["samples"], rs[0]["samples"] / med, med, median_s, rs))
    base = rows[1][3]
    stats = results[True][0]["stats"]
    ran = stats["programs"] - stats["no_program"]
    skipped = (ran - stats["runs"]) / ran if ran else 0.0
    table = [
        "| E-step | samples | samples/s (median) | speed vs no overlap | sampler s | "
        "sandbox s | waiting for the sandbox s | runs (s) |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for label, n, rate, med, median_s, rs in rows:
        table.append(
            f"| {label} | {n} | {rate:,.1f} | {base / med:.2f}x | {median_s('sampler'):.1f} | "
            f"{median_s('scoring'):.1f} | {median_s('scoring_wait'):.1f} | "
            + ", ".join(f"{x['wall']:.3g}" for x in rs)
            + " |"
        )
    command = shlex.join(
        ["python", "benchmarks/estep_overlap.py"]
        + [f for f in flags if f != "--write" and not f.startswith("--results")]
    )
    correct = sum(s == "correct" for s in ref)
    notes = _common.run_notes(command, (load_before, load_after)) + [
        f"Config: {', '.join(args.gin_file)}; task {task.name}, {len(problems)} training "
        f"problems x {cfg.num_samples} samples (temperature {cfg.temperature}, "
        f"max_new_tokens {cfg.max_new_tokens}), {chunk} problems per chunk; base model "
        f"{'read back' if base_s < 5 else f'trained in {base_s:.0f} s'} from {args.workdir}.",
        f"Programs: {stats['programs']} samples, {stats['no_program']} with no program, "
        f"{stats['runs']} sandbox runs: {skipped:.1%} of the programs skipped as identical "
        f"to another sample of the same problem; {correct} samples correct. Sandbox: "
        f"{os.cpu_count()} workers, isolation {stats['isolation'] or '(none)'}.",
        f"Median of {args.repeats} rounds after one warm-up, order alternating per round; "
        "every round gave identical statuses. 'sandbox s' is the checker's time (in a "
        "background thread when overlapped); 'waiting' is the sampler idle until it finished.",
    ]
    body = "\n".join(table) + "\n\n" + "\n".join(f"- {n}" for n in notes) + "\n"
    heading = _common.results_heading("E-step: overlapped sampling and sandbox scoring", flags)
    print(heading + "\n\n" + body)
    if args.write:
        _common.write_results(pathlib.Path(args.results), heading, body)
    return 0


if __name__ == "__main__":
    sys.exit(main_())
