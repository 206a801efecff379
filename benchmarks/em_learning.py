"""Does ReST^EM learn? The embedded default experiment over several seeds.

Runs `python -m rest_em.main --gin_file=arithmetic.gin` once per seed (the seed sets
the base model's init and SFT data order, and the EM loop's sampling, selection and
M-step data order; the problems stay the same), then reports test greedy pass@1 per
iteration as mean ± std over seeds, the gain of the last iteration over iteration 0,
and the wall time of each phase. Runs are resumable: an interrupted study continues.

  python benchmarks/em_learning.py                    # seeds 0,1,2 (~30 min on 2 cores)
  python benchmarks/em_learning.py --write            # also update benchmarks/RESULTS.md
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import platform
import statistics
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]


def run_seed(seed: int, workdir: pathlib.Path, extra: list[str]) -> list[dict]:
    cmd = [
        sys.executable,
        "-m",
        "rest_em.main",
        "--gin_file=arithmetic.gin",
        f"--workdir={workdir}",
        f"--gin.EMConfig.seed={seed}",
        f"--gin.sft_base.seed={seed}",
        *extra,
    ]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    subprocess.run(cmd, check=True, env=env, cwd=REPO)
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def mean_std(xs: list[float]) -> str:
    if len(xs) == 1:
        return f"{100 * xs[0]:.1f}"
    return f"{100 * statistics.mean(xs):.1f} ± {100 * statistics.stdev(xs):.1f}"


def report(runs: dict[int, list[dict]], command: str) -> str:
    seeds = sorted(runs)
    iters = sorted({m["iteration"] for r in runs.values() for m in r})
    lines = [
        f"## EM learning on the embedded task, {datetime.date.today()}",
        "",
        "Test greedy pass@1 (%) per iteration, mean ± std over seeds "
        f"{', '.join(map(str, seeds))} (iteration 0 = the base model):",
        "",
        "| iteration | test greedy pass@1 | train greedy pass@1 | test pass@8 | test maj@8 |"
        " level 2 | level 3 | level 4 | level 5 | selected samples |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for it in iters:
        rows = [next(m for m in runs[s] if m["iteration"] == it) for s in seeds]

        def col(key, rows=rows):
            vals = [r[key] for r in rows if r.get(key) is not None]
            return mean_std(vals) if vals else "—"

        sel = [r.get("num_selected") for r in rows if r.get("num_selected") is not None]
        lines.append(
            f"| {it} | {col('test/greedy_pass@1')} | {col('train/greedy_pass@1')} | "
            f"{col('test/pass@8')} | {col('test/maj@8')} | {col('test/level_2/greedy_pass@1')} | "
            f"{col('test/level_3/greedy_pass@1')} | {col('test/level_4/greedy_pass@1')} | "
            f"{col('test/level_5/greedy_pass@1')} | "
            f"{round(statistics.mean(sel)) if sel else '—'} |"
        )
    first = [r[0]["test/greedy_pass@1"] for r in runs.values()]
    last = [r[-1]["test/greedy_pass@1"] for r in runs.values()]
    gains = [b - a for a, b in zip(first, last)]
    lines += [
        "",
        f"Gain of iteration {iters[-1]} over iteration 0: **{mean_std(gains)} points** "
        f"(per seed: {', '.join(f'{100 * g:.1f}' for g in gains)}). Target: ≥ 15 points.",
        "",
    ]
    lines += [
        "Wall time per phase (s), mean over seeds:",
        "",
        "| iteration | " + " | ".join(["base", "generate", "filter", "improve", "evaluate"]) + " |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for it in iters:
        rows = [next(m for m in runs[s] if m["iteration"] == it)["seconds"] for s in seeds]
        cells = []
        for phase in ("base", "generate", "filter", "improve", "evaluate"):
            vals = [r[phase] for r in rows if phase in r]
            cells.append(f"{statistics.mean(vals):.0f}" if vals else "—")
        lines.append(f"| {it} | " + " | ".join(cells) + " |")
    lines += [
        "",
        f"- Command: `{command}`",
        f"- Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"python {platform.python_version()}; load average at the end "
        f"{tuple(round(x, 2) for x in os.getloadavg())}.",
        "- Every number above is read from the runs' `metrics.jsonl`; the test split is "
        "never used for any choice (checkpoints are selected on the val split).",
        "",
    ]
    return "\n".join(lines)


def write_section(path: pathlib.Path, section: str) -> None:
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    title = section.splitlines()[0].split(",")[0]
    parts = text.split("\n## ")
    kept = [parts[0]] + [p for p in parts[1:] if not ("## " + p).startswith(title)]
    path.write_text("\n## ".join(kept).rstrip() + "\n\n" + section)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--workdir", default=str(REPO / "runs" / "learning"))
    p.add_argument("--write", action="store_true")
    p.add_argument("--gin", action="append", default=[], help="extra NAME=VALUE bindings")
    args = p.parse_args()
    extra = [f"--gin.{b}" for b in args.gin]
    runs = {
        s: run_seed(s, pathlib.Path(args.workdir) / f"seed_{s}", extra)
        for s in (int(x) for x in args.seeds.split(","))
    }
    command = "python benchmarks/em_learning.py " + " ".join(sys.argv[1:])
    text = report(runs, command.strip())
    print(text)
    if args.write:
        write_section(REPO / "benchmarks" / "RESULTS.md", text)


if __name__ == "__main__":
    main()
