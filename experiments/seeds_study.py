"""ReST^EM over seeds on an embedded task: the arithmetic testbed (gin_configs/
arithmetic.gin, `make demo`'s; seeds 0-4) or the code task (gin_configs/
embedded_code.gin; seeds 0-2).

    python experiments/seeds_study.py --config=arithmetic --seeds=0,1,2,3,4 \
        --root=runs/arithmetic_study --out=docs/RESULTS_demo.md
    python experiments/seeds_study.py --config=embedded_code --root=runs/embedded_code_study \
        --out=docs/RESULTS_code.md

One workdir per seed under --root (`seed<N>`); a seed sets the base model's init and
data order (rest_em.sft_base.seed) and the E-step's sampling and selection
(EMConfig.seed); the problems (the task's own seed) stay fixed, so every seed is
scored on the same test set. Resumable: a finished workdir is only read, an unfinished
one is resumed by the launcher. Writes a markdown report to --out: test greedy pass@1
per iteration and seed (mean / min / max), per level, pass@k at the base and the last
iteration, the train-test gap, the transfer task and wall seconds per iteration.
`--quick` runs the config's tiny test version, seed 0.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import subprocess
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[1]


@dataclasses.dataclass(frozen=True)
class Config:
    title: str
    gin: pathlib.Path
    tiny: pathlib.Path
    transfer: str  # the transfer task's name (its metrics' prefix)


CONFIGS = {
    "arithmetic": Config(
        "ReST^EM on the embedded arithmetic testbed (`make demo`)",
        REPO / "gin_configs" / "arithmetic.gin",
        REPO / "tests" / "testdata" / "tiny_arithmetic.gin",
        "arithmetic_transfer",
    ),
    "embedded_code": Config(
        "ReST^EM on the embedded code task",
        REPO / "gin_configs" / "embedded_code.gin",
        REPO / "tests" / "testdata" / "tiny_embedded_code.gin",
        "embedded_code_transfer",
    ),
}


def read_metrics(workdir: pathlib.Path) -> list[dict]:
    path = workdir / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def run_seed(gin_file: pathlib.Path, workdir: pathlib.Path, seed: int, extra: list[str]) -> float:
    """Runs (or resumes) one seed; returns the launcher's wall seconds (0 if finished)."""
    cmd = [
        sys.executable,
        "-m",
        "rest_em.main",
        f"--gin_file={gin_file}",
        f"--workdir={workdir}",
        f"--gin.EMConfig.seed={seed}",
        f"--gin.sft_base.seed={seed}",
        *extra,
    ]
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("JAX_PLATFORMS", "cpu")
    workdir.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    with open(workdir / "study.log", "a") as log:
        proc = subprocess.run(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        raise SystemExit(
            f"seed {seed}: the launcher failed (exit {proc.returncode}); see {log.name}"
        )
    return time.monotonic() - t0


def _fmt(x) -> str:
    return "" if x is None else f"{100 * x:.1f}"


def _stats(values: list[float]) -> tuple[str, str, str]:
    if not values:
        return "", "", ""
    return _fmt(sum(values) / len(values)), _fmt(min(values)), _fmt(max(values))


def report(
    runs: dict[int, list[dict]], walls: dict[int, float], config: Config = CONFIGS["embedded_code"]
) -> str:
    """The markdown report of finished runs (seed -> metrics rows); numbers in %."""
    seeds = sorted(runs)
    iters = sorted({r["iteration"] for rows in runs.values() for r in rows})
    out = [f"# {config.title}", ""]
    out.append("Numbers are percentages of the test split (greedy pass@1 unless named).")
    out.append("")
    # 1. test greedy pass@1 per iteration and seed.
    head = ["iteration", *[f"seed {s}" for s in seeds], "mean", "min", "max"]
    out += ["## test/greedy_pass@1", "", " | ".join(head), " | ".join("---" for _ in head)]
    by = {s: {r["iteration"]: r for r in rows} for s, rows in runs.items()}

    def get(s, it, key):
        return by[s].get(it, {}).get(key)

    for it in iters:
        vals = [get(s, it, "test/greedy_pass@1") for s in seeds]
        ok = [v for v in vals if v is not None]
        out.append(" | ".join([str(it), *map(_fmt, vals), *_stats(ok)]))
    if len(iters) > 1:
        gains = [
            get(s, iters[-1], "test/greedy_pass@1") - get(s, iters[0], "test/greedy_pass@1")
            for s in seeds
            if get(s, iters[-1], "test/greedy_pass@1") is not None
        ]
        out.append("")
        out.append(
            f"Gain, iteration {iters[-1]} over the base (points): "
            + ", ".join(f"seed {s}: {100 * g:+.1f}" for s, g in zip(seeds, gains))
        )
    # 2. per level.
    levels = sorted(
        {
            int(k.split("/")[1].split("_")[1])
            for rows in runs.values()
            for r in rows
            for k in r
            if k.startswith("test/level_") and k.endswith("/greedy_pass@1")
        }
    )
    if levels:
        head = ["seed", "iteration", *[f"level {lv}" for lv in levels], "all"]
        out += ["", "## test/greedy_pass@1 per level", "", " | ".join(head)]
        out.append(" | ".join("---" for _ in head))
        for s in seeds:
            for it in iters:
                cells = [_fmt(get(s, it, f"test/level_{lv}/greedy_pass@1")) for lv in levels]
                out.append(
                    " | ".join([str(s), str(it), *cells, _fmt(get(s, it, "test/greedy_pass@1"))])
                )
    # 3. pass@k at the last iteration (and the base), train-test gap, transfer.
    last = iters[-1]
    ks = sorted(
        {
            int(k.split("@")[1])
            for rows in runs.values()
            for r in rows
            for k in r
            if k.startswith("test/pass@")
        }
    )
    head = ["seed", "iteration", *[f"pass@{k}" for k in ks], "train greedy", "test greedy"]
    head += ["train-test gap", "transfer greedy"]
    out += ["", "## pass@k, train-test gap, transfer", "", " | ".join(head)]
    out.append(" | ".join("---" for _ in head))
    for s in seeds:
        for it in sorted({iters[0], last}):
            tr, te = get(s, it, "train/greedy_pass@1"), get(s, it, "test/greedy_pass@1")
            gap = None if tr is None or te is None else tr - te
            cells = [_fmt(get(s, it, f"test/pass@{k}")) for k in ks]
            transfer = get(s, it, f"{config.transfer}/test/greedy_pass@1")
            cells += [_fmt(tr), _fmt(te), _fmt(gap), _fmt(transfer)]
            out.append(" | ".join([str(s), str(it), *cells]))
    # 4. wall seconds per iteration.
    head = ["seed", *[f"iteration {it}" for it in iters], "total", "this launch"]
    out += ["", "## wall seconds per iteration", "", " | ".join(head)]
    out.append(" | ".join("---" for _ in head))
    for s in seeds:
        secs = [  # top-level phases only ("generate/sampler" etc. are parts of "generate")
            sum(v for k, v in by[s].get(it, {}).get("seconds", {}).items() if "/" not in k)
            for it in iters
        ]
        out.append(
            " | ".join(
                [str(s), *[f"{x:.0f}" for x in secs], f"{sum(secs):.0f}", f"{walls.get(s, 0):.0f}"]
            )
        )
    return "\n".join(out) + "\n"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--root", required=True, help="the seeds' workdirs: ROOT/seed<N>")
    ap.add_argument("--out", required=True, help="the markdown report")
    ap.add_argument("--config", choices=sorted(CONFIGS), default="embedded_code")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--gin_file", default=None, help="default: the config's (--quick: tiny)")
    ap.add_argument("--quick", action="store_true", help="the tiny test config, seed 0")
    ap.add_argument("--gin", action="append", default=[], help="extra gin bindings")
    args = ap.parse_args(argv)
    config = CONFIGS[args.config]
    gin_file = pathlib.Path(args.gin_file or (config.tiny if args.quick else config.gin))
    seeds = [0] if args.quick else [int(s) for s in args.seeds.split(",")]
    root = pathlib.Path(args.root)
    extra = [f"--gin.{b}" for b in args.gin]
    runs, walls = {}, {}
    for seed in seeds:
        workdir = root / f"seed{seed}"
        walls[seed] = run_seed(gin_file, workdir, seed, extra)
        runs[seed] = read_metrics(workdir)
        print(f"seed {seed}: {len(runs[seed])} iterations, {walls[seed]:.0f}s", flush=True)
    text = report(runs, walls, config)
    pathlib.Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    pathlib.Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
