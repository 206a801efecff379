"""Math checker throughput: verdicts per second of rest_em.rewards.math on GSM8K and MATH.

What is measured: how fast the E-step's reward annotation runs. Workload per dataset:
every reference solution of the test split is a "response", checked once against its own
gold and once against the gold of another random problem (seed 0), so half the verdicts
are correct and half incorrect. GSM8K: 1,319 x 2; MATH-500: 500 x 2.

Systems, run side by side on the same items:

  rest_em         `check_batch`, the shipped configuration: extraction and the exact fast
                  path in process, symbolic comparison in the hard-timeout worker pool
                  (`--workers` processes), verdict cache OFF (every item is computed).
  math-verify     the peer: math_verify.parse(response) + parse(gold) + verify, in one
                  process on the main thread (its SIGALRM timeouts), default settings.

Every system is warmed up once (pool start, parser tables) before timing; then
`--repeats` rounds time each system once, in an order rotated per round. Reported: the
MEDIAN over rounds of verdicts per second, and what fraction of rest_em's verdicts never
left the calling process. Before every timed round the workers' parse cache is cleared,
so repeated rounds do not reuse parsed answers (a real E-step would: a gold recurs for
each of its N samples).

Usage:
  python benchmarks/math_reward.py                # full run (about 1 min on 2 cores)
  python benchmarks/math_reward.py --quick        # smoke run
  python benchmarks/math_reward.py --write        # also update benchmarks/RESULTS.md
"""

from __future__ import annotations

import argparse
import datetime
import gzip
import json
import os
import pathlib
import platform
import random
import shlex
import statistics
import sys
import time
from collections.abc import Callable, Sequence

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from rest_em.rewards import math as rm
from rest_em.rewards import math_answers, math_check, math_equivalence

DATASETS = {
    "GSM8K test": REPO / "tests" / "testdata" / "gsm8k_test.jsonl.gz",
    "MATH-500": REPO / "tests" / "testdata" / "math500_test.jsonl.gz",
}
HEADING = "## Math checker"


def _rounded(xs) -> tuple[float, ...]:
    return tuple(round(x, 2) for x in xs)


def load_items(path: pathlib.Path, limit: int | None, seed: int) -> tuple[list[str], list[str]]:
    """(responses, golds): each reference against its own gold and against another's."""
    with gzip.open(path, "rt", encoding="utf-8") as f:
        refs = [json.loads(line)["answer"] for line in f][:limit]
    golds = [rm.gold_answer(r) for r in refs]
    responses = [math_answers._strip_answer_tail(r) for r in refs]
    rng = random.Random(seed)
    others = [golds[(i + rng.randrange(1, len(golds))) % len(golds)] for i in range(len(golds))]
    return responses + responses, golds + others


def rest_em_runner(workers: int) -> Callable[[list[str], list[str]], list[bool]]:
    def run(responses: list[str], golds: list[str]) -> list[bool]:
        return [
            v.correct
            for v in rm.check_batch(responses, golds, max_workers=workers, use_cache=False)
        ]

    return run


def math_verify_runner() -> Callable[[list[str], list[str]], list[bool]]:
    import math_verify

    def run(responses: list[str], golds: list[str]) -> list[bool]:
        return [
            math_verify.verify(math_verify.parse("$" + g + "$"), math_verify.parse(r))
            for r, g in zip(responses, golds)
        ]

    return run


def machine_description() -> str:
    from importlib.metadata import version

    model = "unknown"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            model = next(
                (line.split(":", 1)[1].strip() for line in f if line.startswith("model name")),
                model,
            )
    except OSError:
        model = platform.processor() or model

    return (
        f"{platform.system()} {platform.machine()}, {model}, {os.cpu_count()} cores; "
        f"python {platform.python_version()}, math-verify {version('math-verify')}, "
        f"sympy {version('sympy')}"
    )


def write_results(path: pathlib.Path, heading: str, body: str) -> None:
    """Replaces the section under `heading` in `path` if present, else appends it."""
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


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--workers", type=int, default=2, help="rest_em symbolic worker processes")
    p.add_argument("--limit", type=int, default=None, help="first N problems per dataset")
    p.add_argument("--quick", action="store_true", help="100 problems, 1 round")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--write", action="store_true", help="update the results file")
    p.add_argument("--results", default=str(REPO / "benchmarks" / "RESULTS.md"))
    args = p.parse_args(argv)
    if args.quick:
        args.limit, args.repeats = args.limit or 100, 1
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    systems = {"rest_em": rest_em_runner(args.workers), "math-verify": math_verify_runner()}
    load_before = os.getloadavg()
    start_all = time.perf_counter()
    rows = []
    for dataset, path in DATASETS.items():
        responses, golds = load_items(path, args.limit, args.seed)
        # Where rest_em decides: in process (extraction + fast path) or in the pool.
        answers = [rm.extract_answer(r) for r in responses]
        fast = sum(
            a is None or isinstance(math_equivalence._fast_compare(a, g), rm.Verdict)
            for a, g in zip(answers, golds)
        )
        verdicts = {}
        for name, run in systems.items():  # warm-up: pool start, parser tables
            verdicts[name] = run(responses, golds)
        times: dict[str, list[float]] = {name: [] for name in systems}
        names = list(systems)
        for r in range(args.repeats):
            for name in names[r % len(names) :] + names[: r % len(names)]:
                # Each round parses afresh: the workers forget every parsed answer.
                math_check._get_pool(args.workers).broadcast("_clear_caches", timeout_s=60)
                start = time.perf_counter()
                systems[name](responses, golds)
                times[name].append(time.perf_counter() - start)
        for name in names:
            median = statistics.median(times[name])
            rows.append(
                (
                    dataset,
                    name,
                    len(responses),
                    len(responses) / median,
                    sum(verdicts[name]),
                    100.0 * fast / len(responses) if name == "rest_em" else None,
                    times[name],
                )
            )
    rm.shutdown_pool()
    load_after, total_s = os.getloadavg(), time.perf_counter() - start_all

    command = "python benchmarks/math_reward.py " + " ".join(
        shlex.quote(a)
        for a in (argv if argv is not None else sys.argv[1:])
        if a != "--write" and not a.startswith("--results")
    )
    table = [
        (
            "| dataset | system | verdicts | verdicts/s (median) | judged correct | "
            "decided in process | runs (s) |"
        ),
        "|---|---|---:|---:|---:|---:|---|",
    ]
    for dataset, name, n, rate, n_correct, fast_pct, runs in rows:
        fast_cell = f"{fast_pct:.1f}%" if fast_pct is not None else "-"
        runs_cell = ", ".join(f"{t:.3g}" for t in runs)
        table.append(
            f"| {dataset} | {name} | {n} | {rate:,.0f} | {n_correct} | {fast_cell} | {runs_cell} |"
        )
    body = "\n".join(
        [
            (
                f"Date: {datetime.date.today().isoformat()}. Command: `{command.strip()}` "
                f"({args.repeats} rounds, median; rest_em with {args.workers} worker processes, "
                "verdict cache off)."
            ),
            f"Machine: {machine_description()}.",
            (
                f"Load average (1/5/15 min) before the run {_rounded(load_before)}, "
                f"after it {_rounded(load_after)}: other work shared the machine "
                f"when the first figure is well above 0. Total wall time {total_s:.0f} s."
            ),
            "",
            (
                "Each reference solution is checked against its own gold and against another "
                "problem's gold (half correct by construction). math-verify is the lenient peer "
                "(it accepts e.g. 1/2^99 for 1/2^98 and 50% for 0.5), run in one process on the "
                "main thread; rest_em adds exact/strict rules and hard-killable workers."
            ),
            "",
            *table,
            "",
        ]
    )
    print(body)
    if args.write:
        write_results(pathlib.Path(args.results), HEADING, body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
