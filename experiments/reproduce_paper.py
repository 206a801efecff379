"""Reproduces the paper's findings and its baselines on the embedded arithmetic task.

One command runs every study over 3 seeds and regenerates docs/RESULTS.md and its plots
(docs/figures/*.png); every number in that file comes from the runs this script starts:

  python experiments/reproduce_paper.py                   # ~1-1.5 h on 2 CPU cores
  python experiments/reproduce_paper.py --seeds=0 --jobs=1 --out=/tmp/r   # one seed

Each run is `python -m rest_em.main` with gin_configs/arithmetic.gin plus a variant file
(gin_configs/variants/) and bindings, in its own workdir under --workdir, so an
interrupted study resumes where it stopped. Runs of one seed with the same model share
the base model (its SFT and its iteration-0 evaluation are done once and copied; so the
iteration-0 metrics of every variant are its reference run's, sampled metrics included).
`--quick` swaps in the seconds-scale
tests/testdata/tiny_arithmetic.gin (the test suite runs it end to end).

Studies (paper figures in brackets): 1. ReST^EM vs SFT on human solutions per iteration
(Fig. 2/3); 2. train vs test accuracy (Fig. 4); 3. pass@k and maj@k (Fig. 5);
4. human SFT vs one model solution per problem vs ReST^EM, and distillation into a
smaller model (Fig. 6); 5. ReST vs ReST^EM in-task and on the transfer split (Fig. 7);
6. number of training problems, gains per difficulty level (Fig. 8); 7. three iterations
vs one iteration with 3x the samples; 8. per-step negatives (Setlur et al. 2024): test
accuracy vs number of training problems for SFT, positives only, positives + per-step
negatives and per-step DPO, and the data-efficiency multipliers, with positives only
refit for as many optimizer steps as the negatives' M-step took; 8b. per-step DPO's beta
and learning rate swept and chosen on val. Plus the Table-1 summary of every variant
(with transfer) and what the testbed can and cannot show.

The full-mode `restem` run is `make demo`'s config exactly: the workdirs of
`experiments/seeds_study.py --config=arithmetic` can be copied in as its runs
(ROOT/seed<N> -> WORKDIR/seed_<N>/restem); the launcher's fingerprint check refuses a
copy whose config differs.
"""

from __future__ import annotations

import argparse
import ast
import concurrent.futures
import dataclasses
import datetime
import json
import os
import pathlib
import platform
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Sequence

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "experiments"))
import readme_block  # noqa: E402

TINY = REPO / "tests" / "testdata" / "tiny_arithmetic.gin"
ARITHMETIC = REPO / "gin_configs" / "arithmetic.gin"
# A DPO run's iteration-1 work before its DPO phase: E-step, rollouts, pairs, positives' fit.
DPO_UNITS = ("samples", "selected.jsonl", "step_dataset.jsonl", "step_pairs.jsonl", "mstep")

SMALL = [
    "--gin.rest_em.ModelConfig.hidden_size=64",
    "--gin.rest_em.ModelConfig.intermediate_size=192",
    "--gin.rest_em.ModelConfig.num_layers=2",
]
ONE = ["--gin.EMConfig.num_iterations=1"]
# LoRA's M-step learning rate (full fine-tuning's is 1e-3): adapters start at zero and move
# the weights by a rank-8 update, so they want a larger step.
LORA_LR = ["--gin.mstep/rest_em.OptimizerConfig.learning_rate=3e-3"]


@dataclasses.dataclass(frozen=True)
class Run:
    """One experiment of one seed: extra gin files/bindings on top of the base config."""

    name: str
    args: tuple[str, ...]
    after: tuple[str, ...] = ()  # runs that must finish first (same seed)
    base_from: str | None = None  # copy this run's base model (same model + seed)
    # Iteration-1 units (iter_001/<name>) copied from base_from: work that is identical by
    # construction (same seed, base and problems), e.g. the E-step's samples.
    reuse: tuple[str, ...] = ()
    steps_from: str | None = None  # M-step optimizer steps: this run's iteration 1's


def runs_of(quick: bool) -> list[Run]:
    # Full mode: `restem` is `make demo`'s config exactly (its pass@k up to 8 and its
    # transfer task), so experiments/seeds_study.py's seeds serve as its runs.
    passk = (
        ["--gin.EMConfig.eval_num_samples=4", "--gin.EMConfig.eval_ks=(1, 2, 4)"] if quick else []
    )
    transfer = (
        [
            "--gin.rest_em.run.transfer_tasks=[@rest_em.arithmetic_transfer_task()]",
            "--gin.rest_em.arithmetic_transfer_task.num_test=16",
        ]
        if quick
        else []
    )
    small = (
        SMALL
        if not quick
        else [
            "--gin.rest_em.ModelConfig.hidden_size=16",
            "--gin.rest_em.ModelConfig.intermediate_size=32",
        ]
    )
    teacher = [
        "--gin_file=variants/distill.gin",
        "--gin.rest_em.run.teacher_model=@teacher/rest_em.ModelConfig()",
        "--gin.teacher/rest_em.ModelConfig.hidden_size=" + ("32" if quick else "128"),
        "--gin.teacher/rest_em.ModelConfig.intermediate_size=" + ("64" if quick else "384"),
        "--gin.teacher/rest_em.ModelConfig.num_layers=" + ("2" if quick else "4"),
    ]
    three = [] if not quick else ["--gin.EMConfig.num_iterations=3"]
    # Runs whose pass@k / maj@k no study reads draw 1 evaluation sample per problem (cost).
    lean = ["--gin.EMConfig.eval_num_samples=1", "--gin.EMConfig.eval_ks=(1,)"]
    train = (12, 24) if quick else (188, 375, 750)
    # Rollouts cost K per prefix: on 2 CPU cores the study uses K=3 and 4 negatives per
    # problem (the paper: K=5, up to 8), for 188-750 problems.
    negatives = (
        "--gin_file=variants/step_negatives.gin",
        "--gin.StepNegativesConfig.max_per_problem=4",
        "--gin.StepNegativesConfig.num_rollouts=" + ("2" if quick else "3"),
    )
    samples = "12" if quick else "48"
    step_dpo = "--gin_file=variants/step_dpo.gin"
    dpo_mstep = mstep_schedule_as_dpo(quick)
    # The human solutions are spaced ("41 - 17 = 24"): up to 66 tokens at level 5 where the
    # model's own "41-17=24" lines take at most 46, so SFT on them gets a longer budget to
    # be sampled and trained in (the defaults are 48 and 96; worded ones take up to ~105).
    human = [
        "--gin_file=variants/sft_human.gin",
        "--gin.EMConfig.max_new_tokens=128",
        "--gin.mstep/rest_em.FitConfig.max_length=160",
        "--gin.rest_em.ModelConfig.max_seq_len=160",
    ]
    # In priority order (the study runs them run-major over seeds): the paper's studies
    # 1-7 first, then the Table-1-only rows, then study 8.
    return [
        Run("restem", (*three, *passk, *transfer)),
        Run(
            "sft_human",
            (*human, *transfer, *lean),
            ("restem",),
            "restem",
        ),
        # LoRA M-steps (issue 16): fresh rank-8 adapters from the base every iteration; the
        # same base and the same iteration-1 samples as `restem` (identical by construction).
        Run(
            "lora",
            ("--gin_file=variants/lora.gin", *LORA_LR, *three, *lean),
            ("restem",),
            "restem",
            reuse=("samples", "selected.jsonl"),
        ),
        Run(
            "one_per_problem",
            (*ONE, "--gin.EMConfig.max_per_problem=1", *lean),
            ("restem",),
            "restem",
        ),
        Run(
            "one_iter_3x",
            (*ONE, f"--gin.EMConfig.num_samples={samples}", *lean),
            ("restem",),
            "restem",
        ),
        *[
            Run(
                f"train_{n}",
                (*ONE, f"--gin.arithmetic_task.num_train={n}", *lean),
                ("restem",),
                "restem",
            )
            for n in sorted(train, key=lambda n: n != train[1])
        ],
        Run("small_restem", (*small, *three)),
        Run(
            "small_sft_human",
            (*small, *human),
            ("small_restem",),
            "small_restem",
        ),
        Run("small_distill", (*small, *teacher), ("restem", "small_restem"), "small_restem"),
        Run(
            "rest",
            ("--gin_file=variants/rest.gin", *three, *transfer, *lean),
            ("restem",),
            "restem",
        ),
        Run("rft", ("--gin_file=variants/rft.gin", *lean), ("restem",), "restem"),
        Run("star", ("--gin_file=variants/star.gin", *three, *lean), ("restem",), "restem"),
        # 8. Per-step negatives (Setlur et al. 2024): data efficiency, 1 iteration each.
        *[
            Run(
                f"sft_human_{n}",
                (*human, f"--gin.arithmetic_task.num_train={n}", *lean),
                ("restem",),
                "restem",
            )
            for n in train
        ],
        *[
            Run(
                f"negatives_{n}",
                (*ONE, *negatives, f"--gin.arithmetic_task.num_train={n}", *lean),
                ("restem",),
                "restem",
            )
            for n in train
        ],
        # The same rollouts' budget with the other objective: per-step DPO.
        *[
            Run(
                f"dpo_{n}",
                (*ONE, *negatives, step_dpo, f"--gin.arithmetic_task.num_train={n}", *lean),
                ("restem",),
                "restem",
            )
            for n in train
        ],
        # Positives only with as many optimizer steps as + per-step negatives took (the
        # negatives add rows, so their M-step runs longer): the same E-step, reused.
        *[
            Run(
                f"matched_{n}",
                (*ONE, f"--gin.arithmetic_task.num_train={n}", *lean),
                ("train_" + str(n), f"negatives_{n}"),
                f"train_{n}",
                reuse=("samples", "selected.jsonl"),
                steps_from=f"negatives_{n}",
            )
            for n in train
        ],
        # Per-step DPO's beta and its phase's learning rate, chosen on val (study 8), at
        # the middle size: the E-step, rollouts, pairs and positives' fit are dpo_<n>'s.
        *[
            Run(
                sweep_name(beta, lr),
                (
                    *ONE,
                    *negatives,
                    step_dpo,
                    f"--gin.arithmetic_task.num_train={train[1]}",
                    *lean,
                    *dpo_schedule(beta, lr, dpo_mstep),
                ),
                (f"dpo_{train[1]}",),
                f"dpo_{train[1]}",
                reuse=DPO_UNITS,
            )
            for beta, lr in dpo_grid(quick)
        ],
    ]


def dpo_grid(quick: bool) -> list[tuple[float, float]]:
    """(DPO beta, DPO-phase learning rate) points of the sweep."""
    betas, lrs = ((0.1, 0.3), (1e-3,)) if quick else ((0.03, 0.1, 0.3), (1e-4, 3e-4, 1e-3))
    return [(b, lr) for b in betas for lr in lrs]


def sweep_name(beta: float, lr: float) -> str:
    return f"dposweep_b{beta:g}_lr{lr:g}"


def mstep_schedule_as_dpo(quick: bool) -> list[str]:
    """The base config's mstep/ schedule bindings, copied into the dpo/ scope (all but
    the learning rate, which the sweep sets)."""
    config = parse_gin(ARITHMETIC.read_text())
    if quick:
        config.update(parse_gin(TINY.read_text()))
    return [
        f"--gin.dpo/rest_em.{k.split('/', 1)[1]}={v!r}"
        for k, v in config.items()
        if k.startswith(("mstep/FitConfig.", "mstep/OptimizerConfig."))
        and k not in ("mstep/FitConfig.optimizer", "mstep/OptimizerConfig.learning_rate")
    ]


def dpo_schedule(beta: float, lr: float, schedule: Sequence[str]) -> list[str]:
    """Bindings for a DPO phase with the M-step's schedule (`mstep_schedule_as_dpo`) but
    its own beta and learning rate."""
    return [
        f"--gin.StepNegativesConfig.dpo_beta={beta}",
        "--gin.StepNegativesConfig.dpo_fit=@dpo/rest_em.FitConfig()",
        *schedule,
        "--gin.dpo/rest_em.FitConfig.optimizer=@dpo/rest_em.OptimizerConfig()",
        f"--gin.dpo/rest_em.OptimizerConfig.learning_rate={lr}",
    ]


# --- running ----------------------------------------------------------------------------


def _done(workdir: pathlib.Path) -> bool:
    return (workdir / "DONE").exists()


def execute(run: Run, seed: int, root: pathlib.Path, base_config: str, log) -> None:
    workdir = root / f"seed_{seed}" / run.name
    if _done(workdir):
        return
    if run.base_from and not (workdir / "base").exists():
        # The same base model (same seed and model) and its iteration-0 evaluation (same
        # params and keys, so the same greedy results) are copied, not recomputed.
        src = root / f"seed_{seed}" / run.base_from
        workdir.mkdir(parents=True, exist_ok=True)
        if (src / "iter_000" / "metrics.json").exists():
            shutil.copytree(src / "iter_000", workdir / "iter_000", dirs_exist_ok=True)
        for name in run.reuse:
            unit, dst = src / "iter_001" / name, workdir / "iter_001" / name
            dst.parent.mkdir(exist_ok=True)
            if unit.is_dir():
                shutil.copytree(unit, dst, dirs_exist_ok=True)
            else:
                shutil.copy2(unit, dst)
        shutil.copytree(src / "base", workdir / "base")  # last: it marks the copy complete
    args = list(run.args)
    if run.steps_from:
        steps = history(root, seed, run.steps_from)[1]["num_train_steps"]
        args.append(f"--gin.mstep/rest_em.FitConfig.num_steps={steps}")
    if any(a.startswith("--gin_file=variants/distill.gin") for a in args):
        args.append(f"--gin.TEACHER_WORKDIR='{root / f'seed_{seed}' / 'restem'}'")
    cmd = [
        sys.executable,
        "-m",
        "rest_em.main",
        f"--gin_file={base_config}",
        f"--workdir={workdir}",
        f"--gin.EMConfig.seed={seed}",
        f"--gin.sft_base.seed={seed}",
        *args,
    ]
    if run.base_from and not (workdir / "fingerprint.json").exists():
        # A workdir seeded with another run's units has no fingerprint yet: adopt it
        # (recorded in its fingerprint_history.jsonl); later reruns are checked as usual.
        cmd.append("--on_config_change=continue")
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    t = time.time()
    workdir.mkdir(parents=True, exist_ok=True)
    pid_file = workdir / "PID"
    if pid_file.exists():  # a run left by an earlier (killed) study process: let it finish
        pid = int(pid_file.read_text())
        while _alive(pid):
            time.sleep(5)
    log(f"seed {seed} {run.name}: start")
    # The run's output goes to a file, not a pipe: it outlives a killed study process.
    with (workdir / "run.log").open("a") as out:
        proc = subprocess.Popen(
            cmd, env=env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        pid_file.write_text(str(proc.pid))
        proc.wait()
    if proc.returncode != 0:
        tail = (workdir / "run.log").read_text()[-3000:]
        raise RuntimeError(f"seed {seed} {run.name} failed ({' '.join(cmd)}):\n{tail}")
    (workdir / "DONE").write_text(f"{time.time() - t:.1f}\n")
    log(f"seed {seed} {run.name}: done in {time.time() - t:.0f}s")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return (
        pathlib.Path(f"/proc/{pid}/stat").exists()
        and pathlib.Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    )


def execute_all(
    seeds: list[int], runs: list[Run], root: pathlib.Path, base_config: str, jobs: int
) -> None:
    """Runs every (seed, run) with up to `jobs` processes, respecting `after`."""
    lock = threading.Lock()

    def log(msg):
        with lock:
            print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)

    # Run-major order: every seed's reference run first, the costly study-8 runs last.
    pending = [(s, r) for r in runs for s in seeds]
    finished: set[tuple[int, str]] = set()
    running: dict[concurrent.futures.Future, tuple[int, str]] = {}
    with concurrent.futures.ThreadPoolExecutor(jobs) as pool:
        while pending or running:
            ready = [(s, r) for s, r in pending if all((s, a) in finished for a in r.after)]
            for s, r in ready[: jobs - len(running)]:
                pending.remove((s, r))
                running[pool.submit(execute, r, s, root, base_config, log)] = (s, r.name)
            done, _ = concurrent.futures.wait(
                running, return_when=concurrent.futures.FIRST_COMPLETED
            )
            for f in done:
                f.result()  # a failed run stops the study with its stderr
                finished.add(running.pop(f))


# --- reading results ----------------------------------------------------------------------

T = "test/greedy_pass@1"
X = "arithmetic_transfer/test/greedy_pass@1"  # the transfer task's


def history(root: pathlib.Path, seed: int, name: str) -> list[dict]:
    path = root / f"seed_{seed}" / name / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def read_config(workdir: pathlib.Path) -> dict[str, object]:
    """A run's gin bindings: operative_config.gin (every value the run used, defaults
    included; written when it finishes), else config.gin (its explicit bindings)."""
    path = workdir / "operative_config.gin"
    return parse_gin((path if path.exists() else workdir / "config.gin").read_text())


def parse_gin(text: str) -> dict[str, object]:
    """Gin bindings as `[scope/]Configurable.param` -> value, module prefixes dropped
    (`mstep/rest_em.FitConfig.batch_size = 64` -> {"mstep/FitConfig.batch_size": 64});
    values are Python literals where they parse as one, else their text (`@rest_em.sft_base`,
    `%MACRO`). A trailing backslash or an indented line continues the binding above."""
    bindings: list[str] = []
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if bindings and (line[0].isspace() or bindings[-1].endswith("\\")):
            bindings[-1] = bindings[-1].removesuffix("\\").rstrip() + " " + line.strip()
        else:
            bindings.append(line.strip())
    out: dict[str, object] = {}
    for binding in bindings:
        if "=" not in binding:  # include / import
            continue
        key, value = (s.strip() for s in binding.split("=", 1))
        scope, _, selector = key.rpartition("/")
        name = ".".join(selector.split(".")[-2:])
        try:
            out[f"{scope}/{name}" if scope else name] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[f"{scope}/{name}" if scope else name] = value
    return out


def num_params(config: dict[str, object], scope: str = "") -> int:
    """Parameters of rest_em.model.Transformer under a run's (`scope/`) ModelConfig: the
    embedding; per layer two norms, the q/k/v/o projections (and q/k/v biases) and the
    gated MLP; the final norm and the head unless tied. (The test checks it against the
    model's own count.)"""

    def get(name, default=None):
        return config.get(f"{scope}ModelConfig.{name}", default)

    d, f, v = get("hidden_size"), get("intermediate_size"), get("vocab_size")
    h, kv = get("num_heads"), get("num_kv_heads")
    hd = get("head_dim") or d // h
    qkv = hd * (h + 2 * kv)
    layer = 2 * d + d * qkv + (qkv if get("qkv_bias", False) else 0) + h * hd * d + 3 * d * f
    return v * d * (1 if get("tie_embeddings", False) else 2) + get("num_layers") * layer + d


def approx(n: int) -> str:
    """853888 -> '~0.9M', 35168 -> '~35K'."""
    return f"~{n / 1e6:.1f}M" if n >= 100_000 else f"~{n / 1e3:.0f}K"


def span(levels: Sequence[int]) -> str:
    return f"{min(levels)}-{max(levels)}" if min(levels) != max(levels) else f"{levels[0]}"


def pct(xs: list[float]) -> str:
    xs = [100 * x for x in xs]
    if len(xs) == 1:
        return f"{xs[0]:.1f}"
    return f"{statistics.mean(xs):.1f} ± {statistics.stdev(xs):.1f}"


def bar(ax, items: list[tuple[str, list[float]]]) -> None:
    """Bars of mean accuracy (%) over seeds with their std as error bars."""
    ax.bar(
        [label for label, _ in items],
        [statistics.mean(v) * 100 for _, v in items],
        yerr=[statistics.stdev(v) * 100 if len(v) > 1 else 0 for _, v in items],
        capsize=3,
    )


def verdict(diffs: list[float]) -> str:
    """Did a claimed effect (a positive paired difference per seed) reproduce?"""
    pos = sum(d > 0 for d in diffs)
    if pos == len(diffs) and statistics.mean(diffs) > 0:
        return "**yes**"
    if statistics.mean(diffs) > 0:
        return f"partly ({pos} of {len(diffs)} paired runs)"
    return "**no**"


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


class NotRun(Exception):
    """A study's runs have not all finished; args: the missing runs."""


@dataclasses.dataclass(frozen=True)
class Context:
    """What every study reads: the finished runs' metrics and gin configs, the planned
    runs, and where the figures go."""

    root: pathlib.Path
    seeds: list[int]
    h: dict[tuple[int, str], list[dict]]  # (seed, run) -> its metrics, one row per iteration
    configs: dict[str, dict[str, object]]  # run -> its gin bindings (the first seed's)
    planned: tuple[str, ...]  # this study's runs (stale runs on disk are not read)
    config_file: str  # the base gin file, relative to the repository
    fig_dir: pathlib.Path
    rel: str  # fig_dir as the report links it

    @classmethod
    def load(
        cls,
        root: pathlib.Path,
        seeds: list[int],
        *,
        planned: Sequence[str],
        config_file: str,
        fig_dir: pathlib.Path,
        rel: str,
    ) -> Context:
        h = {(s, r): history(root, s, r) for s in seeds for r in _names(root, s)}
        configs = {r: read_config(root / f"seed_{seeds[0]}" / r) for r in _names(root, seeds[0])}
        return cls(root, seeds, h, configs, tuple(planned), config_file, fig_dir, rel)

    def has(self, run: str) -> bool:
        return all((s, run) in self.h for s in self.seeds)

    def require(self, *runs: str) -> None:
        missing = [r for r in runs if not self.has(r)]
        if missing:
            raise NotRun(*missing)

    def get(self, run: str, key: str, it: int = -1) -> list[float]:
        """`key` of iteration `it` of `run`, one value per seed."""
        return [row[key] for row in self.rows(run, it)]

    def opt(self, run: str, key: str, it: int = -1) -> list[float] | None:
        """As get, or None where the run, its iteration or the key is missing."""
        try:
            return self.get(run, key, it)
        except (NotRun, KeyError, IndexError):
            return None

    def rows(self, run: str, it: int) -> list[dict]:
        self.require(run)
        return [self.h[(s, run)][it] for s in self.seeds]

    def iters(self, run: str) -> list[int]:
        return [m["iteration"] for m in self.h[(self.seeds[0], run)]]

    def cfg(self, run: str, key: str):
        """The binding `key` (`[scope/]Configurable.param`) the run used."""
        self.require(run)
        return self.configs[run][key]

    def planned_sizes(self, prefix: str) -> list[int]:
        """The training-set sizes of the planned runs named `{prefix}_{n}`."""
        return sorted(
            int(n.rsplit("_", 1)[1])
            for n in self.planned
            if n.startswith(prefix + "_") and n.rsplit("_", 1)[1].isdigit()
        )

    def fig(self, name: str) -> str:
        """Saves the current figure; returns its Markdown link."""
        plt = pyplot()
        plt.tight_layout()
        plt.savefig(self.fig_dir / f"{name}.png", dpi=110)
        plt.close()
        return f"![{name}]({self.rel}/{name}.png)"

    def curve(self, ax, run: str, key: str, label: str, style: str = "-o") -> None:
        """Mean of `key` per iteration with the std over seeds as error bars."""
        its = self.iters(run)
        vals = [[100 * v for v in self.get(run, key, i)] for i in range(len(its))]
        means = [statistics.mean(v) for v in vals]
        sds = [statistics.stdev(v) if len(v) > 1 else 0 for v in vals]
        ax.errorbar(its, means, yerr=sds, fmt=style, capsize=3, label=label)


def _names(root: pathlib.Path, seed: int) -> list[str]:
    return sorted(p.parent.name for p in (root / f"seed_{seed}").glob("*/DONE"))


# --- the studies --------------------------------------------------------------------------

Claim = tuple[str, str, str, str]  # (study, paper's finding, our measurement, reproduced?)


@dataclasses.dataclass
class Section:
    lines: list[str]  # the section's body, below its heading
    claims: list[Claim] = dataclasses.field(default_factory=list)
    title: str | None = None  # instead of the study's fixed title


def table1(ctx: Context) -> Section:
    base = ctx.get("restem", T, 0)
    name = pathlib.Path(ctx.config_file).name
    lines = [
        "Test greedy pass@1 (%) of the final model, mean ± std over seeds; iteration 0 is "
        "the base model (SFT on worked solutions, mostly of easy problems). Transfer: "
        "greedy pass@1 on the held-out transfer task (the same kind of problems asked "
        "another way), never used for a choice.",
        "",
        "| variant | configuration | iterations | test pass@1 | gain over base (points) "
        "| transfer pass@1 |",
        "|---|---|---:|---:|---:|---:|",
    ]
    rows = [
        ("base model", f"{name}, iteration 0", "restem", 0),
        ("SFT on human solutions", "variants/sft_human.gin", "sft_human", -1),
        ("RFT", "variants/rft.gin", "rft", -1),
        ("STaR (greedy + rationalization)", "variants/star.gin", "star", -1),
        ("ReST", "variants/rest.gin", "rest", -1),
        ("ReST^EM", name, "restem", -1),
        ("ReST^EM, LoRA M-steps (rank 8)", "variants/lora.gin", "lora", -1),
    ]
    for label, conf, run, it in rows:
        vals = ctx.opt(run, T, it)
        if vals is None:
            lines.append(f"| {label} | `{conf}` | — | not run yet | — | — |")
            continue
        gain = pct([v - b for v, b in zip(vals, base)]) if it != 0 else "—"
        transfer = ctx.opt(run, X, it)
        lines.append(
            f"| {label} | `{conf}` | {ctx.iters(run)[it]} | {pct(vals)} | {gain} "
            f"| {pct(transfer) if transfer else '—'} |"
        )
    return Section(lines + [""])


def iterations(ctx: Context) -> Section:
    """1. ReST^EM (and ReST, STaR) per iteration vs SFT on human solutions."""
    restem, sft = ctx.get("restem", T), ctx.get("sft_human", T)
    plt = pyplot()
    _, ax = plt.subplots(figsize=(5.5, 3.6))
    ctx.curve(ax, "restem", T, "ReST^EM")
    for run, label, style in (("rest", "ReST", "-s"), ("star", "STaR", "-^")):
        if ctx.opt(run, T) is not None:
            ctx.curve(ax, run, T, label, style)
    ax.axhline(statistics.mean(sft) * 100, color="gray", ls="--", label="SFT on human solutions")
    ax.set_xlabel("iteration")
    ax.set_ylabel("test greedy pass@1 (%)")
    ax.legend(fontsize=8)
    lines = [
        ctx.fig("fig1_iterations"),
        "",
        "| iteration | ReST^EM | ReST | STaR |",
        "|---:|---:|---:|---:|",
    ]
    for i in ctx.iters("restem"):
        cells = [ctx.opt(r, T, i) for r in ("restem", "rest", "star")]
        lines.append(f"| {i} | " + " | ".join(pct(c) if c else "—" for c in cells) + " |")
    lines += [
        "",
        f"SFT on the human-written solutions of the same training problems: {pct(sft)}.",
        "",
    ]
    d = [a - b for a, b in zip(restem, sft)]
    return Section(
        lines,
        [
            (
                "1. ReST^EM vs human-data SFT (Fig. 2/3)",
                "ReST^EM on model samples beats SFT on human-written solutions",
                f"ReST^EM {pct(restem)} vs SFT {pct(sft)} (difference {pct(d)} points)",
                verdict(d),
            )
        ],
    )


def train_vs_test(ctx: Context) -> Section:
    """2. The train - test gap per iteration."""
    ctx.require("restem")
    plt = pyplot()
    _, ax = plt.subplots(figsize=(5.5, 3.6))
    ctx.curve(ax, "restem", "train/greedy_pass@1", "train")
    ctx.curve(ax, "restem", T, "test", "-s")
    ax.set_xlabel("iteration")
    ax.set_ylabel("greedy pass@1 (%)")
    ax.legend(fontsize=8)
    lines = [
        ctx.fig("fig2_train_test"),
        "",
        "| iteration | train | test | gap (train − test) |",
        "|---:|---:|---:|---:|",
    ]
    gaps = {}
    for i in ctx.iters("restem"):
        tr, te = ctx.get("restem", "train/greedy_pass@1", i), ctx.get("restem", T, i)
        gaps[i] = [a - b for a, b in zip(tr, te)]
        lines.append(f"| {i} | {pct(tr)} | {pct(te)} | {pct(gaps[i])} |")
    last = ctx.iters("restem")[-1]
    d = [b - a for a, b in zip(gaps[1], gaps[last])]
    return Section(
        lines + [""],
        [
            (
                "2. Over-fitting gap (Fig. 4)",
                "train accuracy rises faster than test over iterations (the gap grows)",
                f"gap {pct(gaps[1])} after iteration 1, {pct(gaps[last])} after {last}",
                verdict(d),
            )
        ],
    )


def pass_at_k(ctx: Context) -> Section:
    """3. pass@k and maj@k of the base and the last ReST^EM model."""
    ctx.require("restem")
    ks = sorted(
        int(k.split("@")[1])
        for k in ctx.h[(ctx.seeds[0], "restem")][0]
        if k.startswith("test/pass@")
    )
    plt = pyplot()
    _, ax = plt.subplots(figsize=(5.5, 3.6))
    for it, label in ((0, "base"), (-1, "ReST^EM")):
        for kind, style in (("pass", "-o"), ("maj", "--s")):
            ys = [statistics.mean(ctx.get("restem", f"test/{kind}@{k}", it)) * 100 for k in ks]
            ax.plot(ks, ys, style, label=f"{label} {kind}@k")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("k (samples, temperature 1.0)")
    ax.set_ylabel("test accuracy (%)")
    ax.legend(fontsize=8)
    lines = [
        ctx.fig("fig3_pass_at_k"),
        "",
        "| k | base pass@k | ReST^EM pass@k | base maj@k | ReST^EM maj@k |",
        "|---:|---:|---:|---:|---:|",
    ]
    for k in ks:
        lines.append(
            f"| {k} | {pct(ctx.get('restem', f'test/pass@{k}', 0))} | "
            f"{pct(ctx.get('restem', f'test/pass@{k}'))} | "
            f"{pct(ctx.get('restem', f'test/maj@{k}', 0))} | "
            f"{pct(ctx.get('restem', f'test/maj@{k}'))} |"
        )
    claims = []
    for kind, finding in (
        ("pass", "ReST^EM improves pass@k at every k, incl. large k"),
        ("maj", "ReST^EM improves majority voting"),
    ):
        key = f"test/{kind}@{ks[-1]}"
        before, after = ctx.get("restem", key, 0), ctx.get("restem", key)
        claims.append(
            (
                f"3. {kind}@k (Fig. 5)",
                finding,
                f"{kind}@{ks[-1]} {pct(before)} → {pct(after)}",
                verdict([a - b for a, b in zip(after, before)]),
            )
        )
    return Section(lines + [""], claims)


def apples_to_apples(ctx: Context) -> Section:
    """4. Human vs model data on the same problems; distillation into a smaller model."""
    ctx.require(
        "restem", "sft_human", "one_per_problem", "small_sft_human", "small_restem", "small_distill"
    )
    sft, one = ctx.get("sft_human", T), ctx.get("one_per_problem", T)
    restem, restem1, last = ctx.get("restem", T), ctx.get("restem", T, 1), ctx.iters("restem")[-1]
    small = {r: ctx.get(r, T) for r in ("small_sft_human", "small_restem", "small_distill")}
    student = (
        f"{ctx.cfg('small_restem', 'ModelConfig.hidden_size')} wide, "
        f"{ctx.cfg('small_restem', 'ModelConfig.num_layers')} layers"
    )
    plt = pyplot()
    _, (ax1, ax2) = plt.subplots(1, 2, figsize=(8, 3.4))
    bar(
        ax1,
        [
            ("human SFT", sft),
            ("1 model sol./problem", one),
            ("ReST^EM it. 1", restem1),
            (f"ReST^EM it. {last}", restem),
        ],
    )
    ax1.set_ylabel("test greedy pass@1 (%)")
    ax1.set_title("same problems, default model", fontsize=9)
    ax1.tick_params(axis="x", labelsize=7, rotation=20)
    bar(
        ax2,
        [
            ("human SFT", small["small_sft_human"]),
            ("ReST^EM", small["small_restem"]),
            ("distilled", small["small_distill"]),
        ],
    )
    ax2.set_title(f"small student ({student})", fontsize=9)
    ax2.tick_params(axis="x", labelsize=7)
    lines = [
        ctx.fig("fig4_apples_to_apples"),
        "",
        "| M-step data (default model, from its base) | test pass@1 |",
        "|---|---:|",
        f"| human-written solutions, 1 per problem | {pct(sft)} |",
        f"| model solutions, 1 per problem (1 iteration) | {pct(one)} |",
        f"| model solutions, up to {ctx.cfg('restem', 'EMConfig.max_per_problem')} per "
        f"problem (1 iteration) | {pct(restem1)} |",
        f"| ReST^EM, {last} iterations | {pct(restem)} |",
        "",
        f"| small student ({student}) | test pass@1 |",
        "|---|---:|",
        f"| its base model | {pct(ctx.get('small_restem', T, 0))} |",
        f"| SFT on human solutions | {pct(small['small_sft_human'])} |",
        f"| its own ReST^EM ({ctx.iters('small_restem')[-1]} iterations) | "
        f"{pct(small['small_restem'])} |",
        f"| distilled: trained on the default model's ReST^EM samples (1 iteration) | "
        f"{pct(small['small_distill'])} |",
        "",
    ]
    d_one = [a - b for a, b in zip(one, sft)]
    d_distill = [a - b for a, b in zip(small["small_distill"], small["small_sft_human"])]
    return Section(
        lines,
        [
            (
                "4. Model vs human data (Fig. 6)",
                "one model-generated solution per problem beats one human solution per problem",
                f"{pct(one)} vs {pct(sft)}",
                verdict(d_one),
            ),
            (
                "4. Distillation (Fig. 6)",
                "a smaller model trained on a larger model's filtered samples beats it trained "
                "on human data",
                f"{pct(small['small_distill'])} vs {pct(small['small_sft_human'])}",
                verdict(d_distill),
            ),
        ],
    )


def rest_vs_restem(ctx: Context) -> Section:
    """5. ReST vs ReST^EM, in-task and on the transfer split."""
    ctx.require("restem", "rest")
    plt = pyplot()
    _, (ax1, ax2) = plt.subplots(1, 2, figsize=(8, 3.4))
    panels = ((ax1, T, "in-task (test)"), (ax2, X, "transfer (asked as 'Question: ...')"))
    for ax, key, title in panels:
        ctx.curve(ax, "restem", key, "ReST^EM")
        ctx.curve(ax, "rest", key, "ReST", "-s")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("iteration")
    ax1.set_ylabel("greedy pass@1 (%)")
    ax1.legend(fontsize=8)
    lines = [
        ctx.fig("fig5_rest_vs_restem"),
        "",
        "| iteration | ReST^EM test | ReST test | ReST^EM transfer | ReST transfer |",
        "|---:|---:|---:|---:|---:|",
    ]
    for i in ctx.iters("restem"):
        lines.append(
            f"| {i} | {pct(ctx.get('restem', T, i))} | {pct(ctx.get('rest', T, i))} | "
            f"{pct(ctx.get('restem', X, i))} | {pct(ctx.get('rest', X, i))} |"
        )
    d = [a - b for a, b in zip(ctx.get("restem", X), ctx.get("rest", X))]
    return Section(
        lines + [""],
        [
            (
                "5. ReST vs ReST^EM (Fig. 7)",
                "restarting each M-step from the base (ReST^EM) transfers better than continued "
                "fine-tuning (ReST), which over-fits",
                f"transfer {pct(ctx.get('restem', X))} (ReST^EM) vs "
                f"{pct(ctx.get('rest', X))} (ReST); "
                f"in-task {pct(ctx.get('restem', T))} vs {pct(ctx.get('rest', T))}",
                verdict(d),
            )
        ],
    )


def problems_and_levels(ctx: Context) -> Section:
    """6. Test accuracy by number of training problems; gains per difficulty level."""
    sizes = ctx.planned_sizes("train")
    if not sizes:
        raise NotRun("train_*")
    ctx.require("restem", *(f"train_{n}" for n in sizes))
    full = ctx.cfg("restem", "arithmetic_task.num_train")
    by_n = {n: ctx.get(f"train_{n}", T) for n in sizes}
    by_n[full] = ctx.get("restem", T, 1)
    ns = sorted(by_n)
    last = ctx.iters("restem")[-1]
    plt = pyplot()
    _, (ax1, ax2) = plt.subplots(1, 2, figsize=(8, 3.4))
    ax1.errorbar(
        ns,
        [statistics.mean(by_n[n]) * 100 for n in ns],
        yerr=[statistics.stdev(by_n[n]) * 100 if len(ctx.seeds) > 1 else 0 for n in ns],
        fmt="-o",
        capsize=3,
        label="1 ReST^EM iteration",
    )
    ax1.axhline(statistics.mean(ctx.get("restem", T, 0)) * 100, color="gray", ls="--", label="base")
    ax1.set_xscale("log")
    ax1.set_xlabel("training problems")
    ax1.set_ylabel("test greedy pass@1 (%)")
    ax1.legend(fontsize=8)
    levels = sorted(
        int(k.split("_")[1].split("/")[0])
        for k in ctx.h[(ctx.seeds[0], "restem")][0]
        if k.startswith("test/level_") and k.endswith("greedy_pass@1")
    )
    lv = {
        lvl: (
            ctx.get("restem", f"test/level_{lvl}/greedy_pass@1", 0),
            ctx.get("restem", f"test/level_{lvl}/greedy_pass@1"),
        )
        for lvl in levels
    }
    w = 0.38
    ax2.bar(
        [x - w / 2 for x in levels],
        [statistics.mean(a) * 100 for a, _ in lv.values()],
        w,
        label="base",
    )
    ax2.bar(
        [x + w / 2 for x in levels],
        [statistics.mean(b) * 100 for _, b in lv.values()],
        w,
        label="ReST^EM",
    )
    ax2.set_xlabel("difficulty level (operations)")
    ax2.legend(fontsize=8)
    lines = [
        ctx.fig("fig6_problems_and_levels"),
        "",
        "| training problems | test pass@1 after 1 iteration |",
        "|---:|---:|",
    ]
    lines += [f"| {n} | {pct(by_n[n])} |" for n in ns]
    lines += [
        "",
        f"| level | base | ReST^EM ({last} iterations) | gain (points) |",
        "|---:|---:|---:|---:|",
    ]
    gain = {lvl: [y - x for x, y in zip(a, b)] for lvl, (a, b) in lv.items()}
    lines += [f"| {lvl} | {pct(a)} | {pct(b)} | {pct(gain[lvl])} |" for lvl, (a, b) in lv.items()]
    d = [a - b for a, b in zip(by_n[full], by_n[ns[0]])]
    worst = min(levels, key=lambda lvl: statistics.mean(lv[lvl][1]) - statistics.mean(lv[lvl][0]))
    return Section(
        lines + [""],
        [
            (
                "6. Number of problems (Fig. 8)",
                "more training problems give a better model",
                f"{ns[0]} problems: {pct(by_n[ns[0]])}; {full}: {pct(by_n[full])}",
                verdict(d),
            ),
            (
                "6. Per-level gains (Fig. 8)",
                "ReST^EM improves every difficulty level",
                "gains per level " + ", ".join(f"L{lvl} {pct(gain[lvl])}" for lvl in levels),
                verdict(gain[worst]) + f" (weakest: level {worst})",
            ),
        ],
    )


def iterations_vs_samples(ctx: Context) -> Section:
    """7. The last ReST^EM iteration vs one iteration with as many more samples."""
    ctx.require("restem", "one_iter_3x")
    restem, restem1, x3 = ctx.get("restem", T), ctx.get("restem", T, 1), ctx.get("one_iter_3x", T)
    last = ctx.iters("restem")[-1]
    samples = [ctx.cfg(run, "EMConfig.num_samples") for run in ("one_iter_3x", "restem")]
    r = f"{samples[0] / samples[1]:g}"  # the study's "3×"
    samples3 = ctx.h[(ctx.seeds[0], "one_iter_3x")][1]["num_samples"]
    samples1 = ctx.h[(ctx.seeds[0], "restem")][1]["num_samples"]
    plt = pyplot()
    _, ax = plt.subplots(figsize=(4.5, 3.2))
    bar(ax, [("1 it.", restem1), (f"1 it., {r}x samples", x3), (f"{last} it.", restem)])
    ax.set_ylabel("test greedy pass@1 (%)")
    lines = [
        ctx.fig("fig7_iterations_vs_samples"),
        "",
        "| setting | E-step samples | test pass@1 |",
        "|---|---:|---:|",
        f"| 1 iteration | {samples1} | {pct(restem1)} |",
        f"| 1 iteration, {r}× samples | {samples3} | {pct(x3)} |",
        f"| {last} iterations | {last} × {samples1} | {pct(restem)} |",
        "",
    ]
    d = [a - b for a, b in zip(restem, x3)]
    words = {1: "One", 2: "Two", 3: "Three", 4: "Four", 5: "Five"}
    return Section(
        lines,
        [
            (
                "7. Iterations vs samples",
                "iterating helps beyond drawing more samples once: "
                f"{last} iterations beat 1 iteration with {r}× the samples",
                f"{pct(restem)} vs {pct(x3)}",
                verdict(d),
            )
        ],
        title=f"7. {words.get(last, last)} iterations vs one iteration with {r}× the samples",
    )


def equivalent_problems(acc: float, curve: list[tuple[int, float]]) -> tuple[float, str]:
    """How many problems the reference method (curve: (n, accuracy), n ascending) needs to
    reach `acc`: linear interpolation in log n over the curve's running maximum; beyond
    its ends the answer is a bound ("<" or ">")."""
    import math

    ns = [n for n, _ in curve]
    best, env = -1.0, []
    for _, a in curve:
        best = max(best, a)
        env.append(best)
    if acc <= env[0]:
        return ns[0], "≤"
    if acc > env[-1]:
        return ns[-1], ">"
    for (n0, a0), (n1, a1) in zip(zip(ns, env), zip(ns[1:], env[1:])):
        if a0 < acc <= a1:
            f = (acc - a0) / (a1 - a0)
            return math.exp(math.log(n0) + f * (math.log(n1) - math.log(n0))), "="
    return ns[-1], ">"


def step_negatives(ctx: Context) -> Section:
    """8. SFT vs positives only vs positives + per-step negatives vs per-step DPO, by number
    of problems (the planned runs' sizes, so stale runs on disk are ignored)."""
    sizes = ctx.planned_sizes("negatives")
    study = [
        n
        for n in ctx.planned
        if n.startswith(("negatives_", "dpo_", "sft_human_", "train_", "matched_"))
    ]
    if not sizes:
        raise NotRun("negatives_*")
    ctx.require("restem", "sft_human", *study)
    full = ctx.cfg("restem", "arithmetic_task.num_train")
    neg, dpo_run = f"negatives_{sizes[0]}", f"dpo_{sizes[0]}"
    beta, clip = ctx.cfg(neg, "StepNegativesConfig.beta"), ctx.cfg(neg, "StepNegativesConfig.clip")
    neg_note = (
        f"up to {ctx.cfg(neg, 'StepNegativesConfig.max_per_problem')} negatives per "
        f"problem and K={ctx.cfg(neg, 'StepNegativesConfig.num_rollouts')} best-of-K "
        "rollouts per prefix"
    )
    curves = {
        "SFT on human solutions": {
            **{n: ctx.get(f"sft_human_{n}", T) for n in sizes},
            full: ctx.get("sft_human", T),
        },
        "positives only (RFT / ReST^EM it. 1)": {
            **{n: ctx.get(f"train_{n}", T) for n in sizes},
            full: ctx.get("restem", T, 1),
        },
        "positives + per-step negatives": {n: ctx.get(f"negatives_{n}", T) for n in sizes},
        "positives, then per-step DPO": {n: ctx.get(f"dpo_{n}", T) for n in sizes},
        "positives only, steps matched": {n: ctx.get(f"matched_{n}", T) for n in sizes},
    }
    mean = {k: [(n, statistics.mean(v[n])) for n in sorted(v)] for k, v in curves.items()}
    plt = pyplot()
    _, ax = plt.subplots(figsize=(5.5, 3.6))
    for (label, c), style in zip(curves.items(), ("--s", "-o", "-^", ":v", "-.o")):
        ns = sorted(c)
        ax.errorbar(
            ns,
            [statistics.mean(c[n]) * 100 for n in ns],
            yerr=[statistics.stdev(c[n]) * 100 if len(c[n]) > 1 else 0 for n in ns],
            fmt=style,
            capsize=3,
            label=label,
        )
    ax.set_xscale("log")
    ax.set_xlabel("training problems")
    ax.set_ylabel("test greedy pass@1 (%)")
    ax.legend(fontsize=7)
    labels = list(curves)
    L = [
        ctx.fig("fig8_step_negatives"),
        "",
        "One iteration from the same base model for every point; per-step negatives "
        f"(`gin_configs/variants/step_negatives.gin`): weights exp(A/β), β={beta:g}, clipped at "
        f"{clip:g}, with {neg_note} (the paper: up to 8 negatives, K=5; reduced here to fit the "
        "CPU budget of the study). Per-step DPO (`gin_configs/variants/step_dpo.gin`, "
        f"β={ctx.cfg(dpo_run, 'StepNegativesConfig.dpo_beta'):g}) uses the same rollouts for "
        "first-pit pairs, after a fit on the positives, and keeps its params only if D_val "
        f"improves. The full-size points ({full} problems) of SFT and positives only are the "
        "`sft_human` and `restem` iteration-1 runs.",
        "",
        "| training problems | " + " | ".join(labels) + " |",
        "|" + "---:|" * (len(labels) + 1),
    ]
    for n in sorted(curves[labels[0]]):
        L.append(
            f"| {n} | "
            + " | ".join(pct(curves[k][n]) if n in curves[k] else "—" for k in labels)
            + " |"
        )
    ref, pos_curve = mean[labels[0]], mean[labels[1]]
    L += [
        "",
        "Data-efficiency multipliers: the number of problems a reference method needs to "
        "reach a method's accuracy (read off the reference's mean curve, interpolated in "
        "log n; ≤ / > when the accuracy lies outside the reference's range, so the value is "
        "a bound), divided by the method's number of problems:",
        "",
        "| training problems | positives only, vs SFT | + per-step negatives, vs SFT | "
        "+ per-step negatives, vs positives only | per-step DPO, vs positives only |",
        "|---:|---:|---:|---:|---:|",
    ]

    def multiplier(acc: float, curve, n: int) -> str:
        eq, how = equivalent_problems(acc, curve)
        return f"{how if how != '=' else ''}{eq / n:.2f}×"

    mult: dict[str, list[str]] = {"pos": [], "neg": [], "neg_pos": [], "dpo_pos": []}
    for n in sizes:
        pos, negs, dpo = (statistics.mean(curves[k][n]) for k in labels[1:4])
        mult["pos"].append(multiplier(pos, ref, n))
        mult["neg"].append(multiplier(negs, ref, n))
        mult["neg_pos"].append(multiplier(negs, pos_curve, n))
        mult["dpo_pos"].append(multiplier(dpo, pos_curve, n))
        L.append(
            f"| {n} | {mult['pos'][-1]} | {mult['neg'][-1]} | {mult['neg_pos'][-1]} | "
            f"{mult['dpo_pos'][-1]} |"
        )
    cost = []
    for n in sizes:
        rows = ctx.rows(f"negatives_{n}", 1)
        roll = statistics.mean(r["negatives/num_rollouts"] for r in rows) / n
        samp = statistics.mean(r["num_samples"] for r in rows) / n
        t_roll = statistics.mean(r["seconds"].get("step_values", 0.0) for r in rows)
        t_gen = statistics.mean(r["seconds"]["generate"] for r in rows)
        t_imp = statistics.mean(r["seconds"]["improve"] for r in rows)
        dpo = ctx.rows(f"dpo_{n}", 1)
        t_dpo = statistics.mean(r["seconds"].get("dpo", 0.0) for r in dpo)
        pairs = statistics.mean(r.get("negatives/num_pairs", 0.0) for r in dpo) / n
        cost.append(
            f"| {n} | {samp:.0f} | {roll:.0f} | {t_gen:.0f} | {t_roll:.0f} | {t_imp:.0f} "
            f"| {pairs:.1f} | {t_dpo:.0f} |"
        )
    # What the curves do not show by themselves: where the base model lies, and how many
    # optimizer steps each M-step took (the negatives add rows, so their M-step runs longer).
    base = statistics.mean(ctx.get(f"negatives_{sizes[0]}", T, 0))
    below = [n for n in sizes if statistics.mean(curves[labels[1]][n]) < base]

    def steps(run: str) -> str:
        return "/".join(
            f"{statistics.mean(ctx.get(f'{run}_{n}', 'num_train_steps')):.0f}" for n in sizes
        )

    L += [
        "",
        f"The base model (iteration 0) scores {100 * base:.1f}. "
        + (
            f"One M-step on {', '.join(map(str, below))} problems leaves positives only "
            "*below* it: a short M-step from the base damages this model before it helps. "
            if below
            else ""
        )
        + f"M-step optimizer steps for {'/'.join(map(str, sizes))} problems: positives only "
        f"{steps('train')}, + per-step negatives {steps('negatives')} (the negatives add "
        "rows, so part of their gain at small sizes may come from the longer M-step), "
        f"per-step DPO {steps('dpo')} on the positives, then its DPO phase. "
        '"Positives only, steps matched" refits the same positives (the same E-step) '
        f"for as many steps as + per-step negatives took ({steps('matched')}): the fair "
        "comparison for the negatives.",
    ]
    L += [
        "",
        "The cost of the rollouts (means over seeds; E-step, rollouts and M-step of the "
        "per-step-negatives runs, then the DPO runs' pairs and DPO phase, whose E-step and "
        "rollouts cost the same):",
        "",
        "| training problems | E-step samples / problem | rollouts / problem | E-step (s) | "
        "rollouts (s) | M-step (s) | DPO pairs / problem | DPO phase (s) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
        *cost,
        "",
    ]
    d_pos = [a - b for n in sizes for a, b in zip(curves[labels[1]][n], curves[labels[0]][n])]
    d_dpo = [a - b for n in sizes for a, b in zip(curves[labels[3]][n], curves[labels[1]][n])]
    d_matched = [a - b for n in sizes for a, b in zip(curves[labels[2]][n], curves[labels[4]][n])]
    gain_matched = ", ".join(
        f"{n}: {statistics.mean(d_matched[i * k : (i + 1) * k]) * 100:+.1f}"
        for i, n in enumerate(sizes)
        for k in [len(ctx.seeds)]
    )
    return Section(
        L,
        [
            (
                "8. Positives vs SFT (Setlur Fig. 1)",
                "self-generated positives are ≈2× as data-efficient as SFT on human solutions",
                "multiplier by size: " + ", ".join(mult["pos"]),
                verdict(d_pos) + " (vs SFT, all sizes)",
            ),
            (
                "8. + per-step negatives (Setlur Fig. 1)",
                "adding per-step negatives makes the same problems worth ≈8× the data",
                "points over positives only with matched optimizer steps, by size: "
                + gain_matched
                + "; multiplier by size vs positives only (unmatched steps): "
                + ", ".join(mult["neg_pos"])
                + "; vs SFT: "
                + ", ".join(mult["neg"]),
                verdict(d_matched) + " (vs positives only with matched steps, all sizes)",
            ),
            (
                "8. Per-step DPO (Setlur Sec. 5)",
                "per-step DPO on first-pit pairs improves over positives only",
                "multiplier by size vs positives only: " + ", ".join(mult["dpo_pos"]),
                verdict(d_dpo) + " (vs positives only, all sizes)",
            ),
        ],
    )


def dpo_sweep(ctx: Context) -> Section:
    """8b. Per-step DPO's beta and learning rate, chosen on val, reported on test: its
    default (the M-step's schedule, beta 0.1) is one guess, not a tuned baseline."""
    names = [n for n in ctx.planned if n.startswith("dposweep_")]
    if not names:
        raise NotRun("dposweep_*")
    ctx.require(*names, f"train_{ctx.cfg(names[0], 'arithmetic_task.num_train')}")
    n = ctx.cfg(names[0], "arithmetic_task.num_train")
    V = "val/greedy_pass@1"
    L = [
        f"Per-step DPO at {n} problems (one iteration, the E-step, rollouts, pairs and "
        f"positives' fit of `dpo_{n}`), its β and its DPO phase's learning rate swept; each "
        "point keeps the DPO params only if they beat the positives' fit on val. The point "
        "with the best mean val accuracy is chosen; test is read for it only afterwards.",
        "",
        "| β | DPO learning rate | val pass@1 | test pass@1 | DPO kept (seeds) | DPO steps |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    points = []
    for name in names:
        beta = ctx.cfg(name, "StepNegativesConfig.dpo_beta")
        lr = ctx.cfg(name, "dpo/OptimizerConfig.learning_rate")
        val = ctx.get(name, V)
        kept = sum(r.get("dpo/best_step", 0) > 0 for r in ctx.rows(name, -1))
        steps = statistics.mean(r.get("dpo/num_train_steps", 0) for r in ctx.rows(name, -1))
        points.append((statistics.mean(val), -len(points), name, beta, lr))
        L.append(
            f"| {beta:g} | {lr:g} | {pct(val)} | {pct(ctx.get(name, T))} | "
            f"{kept} of {len(ctx.seeds)} | {steps:.0f} |"
        )
    _, _, best, beta, lr = max(points)
    test, pos = ctx.get(best, T), ctx.get(f"train_{n}", T)
    diffs = [a - b for a, b in zip(test, pos)]
    L += [
        "",
        f"Chosen on val: β={beta:g}, learning rate {lr:g}: test {pct(test)} vs positives only "
        f"(`train_{n}`) {pct(pos)}.",
        "",
    ]
    return Section(
        L,
        [
            (
                "8b. Per-step DPO, β and learning rate tuned on val",
                "per-step DPO on first-pit pairs improves over positives only",
                f"β={beta:g}, lr {lr:g} (best val of {len(names)}): test {pct(test)} vs "
                f"positives only {pct(pos)} at {n} problems",
                verdict(diffs) + " (vs positives only)",
            )
        ],
    )


# (short name for the "Incomplete" note, the section's title, the study)
STUDIES = (
    ("Table 1", "Table 1: the variants", table1),
    ("1.", "1. Test accuracy vs iteration (paper Fig. 2/3)", iterations),
    ("2.", "2. Train vs test accuracy per iteration (paper Fig. 4)", train_vs_test),
    ("3.", "3. pass@k and maj@k, base vs ReST^EM (paper Fig. 5)", pass_at_k),
    (
        "4.",
        "4. Human vs model-generated data on the same problems; distillation (paper Fig. 6)",
        apples_to_apples,
    ),
    (
        "5.",
        "5. ReST vs ReST^EM, in-task and on the held-out transfer split (paper Fig. 7)",
        rest_vs_restem,
    ),
    (
        "6.",
        "6. Number of training problems; gains per difficulty level (paper Fig. 8)",
        problems_and_levels,
    ),
    ("7.", "7. Iterations vs one iteration with more samples", iterations_vs_samples),
    ("8.", "8. Per-step negatives: data efficiency (Setlur et al. 2024)", step_negatives),
    ("8b.", "8b. Per-step DPO: β and learning rate chosen on val", dpo_sweep),
)


# --- the report ---------------------------------------------------------------------------


def intro(ctx: Context) -> str:
    """The report's first paragraph; the task and model as the reference run had them."""
    if ctx.has("restem"):
        c = ctx.configs["restem"]
        task = (
            f"a {approx(num_params(c))}-parameter byte-level model whose base is trained on "
            f"worked solutions of {span(c['arithmetic_task.sft_levels'])}-step problems"
            f"{mix(c.get('arithmetic_task.sft_level_weights'))}, "
            f"improved on {span(c['arithmetic_task.levels'])}-step problems with only the "
            "checker as feedback"
        )
        test = f" ({ctx.h[(ctx.seeds[0], 'restem')][0]['test/num_problems']} problems)"
    else:
        task, test = "its reference run `restem` has not finished", ""
    return (
        "ReST^EM (Singh et al. 2023, arXiv 2312.06585) and its baselines on the embedded "
        f"multi-step arithmetic task (`{ctx.config_file}`: {task}). "
        f"Seeds {', '.join(map(str, ctx.seeds))}: each seed changes the base model's init and "
        "data order and the loop's sampling, selection and M-step order; the problems "
        "stay the same. All numbers are test greedy pass@1 (%) on the held-out test split"
        f"{test} unless said otherwise, mean ± std over seeds. A claim counts as reproduced "
        "when the paired difference (per seed; per seed and size in study 8) has the paper's "
        "sign in every pair; partly when only on average."
    )


def mix(weights) -> str:
    """' (45% / 45% / 5% / 5% of them by level)' for sft_level_weights; '' if unweighted."""
    if not weights:
        return ""
    total = sum(weights)
    return " (" + " / ".join(f"{100 * w / total:.0f}%" for w in weights) + " of them by level)"


def human_data(ctx: Context) -> str:
    """What the task's "human" solutions are, as the reference run configured them."""
    c = ctx.configs.get("restem", {}) if ctx.has("restem") else {}
    style = c.get("arithmetic_task.human_style", "worded")
    example = {"worded": "41 plus 7 is 48", "spaced": "41 + 7 = 48"}.get(style, style)
    text = (
        f'the "human" reference solutions are our rewrite of the model\'s format '
        f'("{example}" where the model writes "41+7=48", one operation per line)'
    )
    share = c.get("arithmetic_task.sft_human_share")
    if share:
        text += (
            f", and {100 * share:.0f}% of the base's SFT solutions are in that style (as a "
            "pretrained model has read people's writing)"
        )
    return text


def limits(ctx: Context) -> list[str]:
    """What the testbed can and cannot show (with the base model's per-level numbers)."""
    lines = ["## What this testbed can and cannot show", ""]
    if ctx.has("restem"):
        row = ctx.rows("restem", 0)
        levels = sorted(
            int(k.split("/")[1].split("_")[1])
            for k in row[0]
            if k.startswith("test/level_") and k.endswith("/greedy_pass@1")
        )
        ks = sorted(int(k.rsplit("@", 1)[1]) for k in row[0] if k.startswith("test/pass@"))
        per_level = ", ".join(
            f"L{lv} {pct([r[f'test/level_{lv}/greedy_pass@1'] for r in row])} / "
            f"{pct([r[f'test/level_{lv}/pass@{ks[-1]}'] for r in row])}"
            for lv in levels
        )
        lines += [
            f"The base model per level, greedy pass@1 / pass@{ks[-1]}: {per_level}. Every "
            "level has solvable problems, so ReST^EM has positives to amplify on each.",
            "",
        ]
    neg = next((n for n in ctx.planned if n.startswith("negatives_") and ctx.has(n)), None)
    budget = (
        f"K={ctx.cfg(neg, 'StepNegativesConfig.num_rollouts')} rollouts and up to "
        f"{ctx.cfg(neg, 'StepNegativesConfig.max_per_problem')} negatives per problem"
        if neg
        else "fewer rollouts and negatives"
    )
    lines += [
        "It can show whether the loop's parts (sampling, a checker that verifies every "
        "step, filtering, an M-step from the base, iterating) turn a verifier into "
        "accuracy, and how variants compare *from the same base model*, as paired "
        "differences over seeds. It cannot show:",
        "",
        "- anything about scale or pretrained models: the model has under a million "
        "parameters and its base is made by SFT on a synthetic mix of levels, so being weak "
        "but nonzero on every level is engineered here, not emergent;",
        f"- human data: {human_data(ctx)}, a stand-in for a different style, not "
        "people's solutions;",
        "- far transfer: the transfer task is the same arithmetic asked with another "
        'prompt ("Question: ..."), near transfer, not GSM8K-to-HumanEval distance;',
        f"- per-step negatives at the paper's budget: study 8 uses {budget} (the paper: K=5, "
        "up to 8 negatives) to fit 2 CPU cores;",
        "- one-seed effects: float summation order differs across CPUs, so a single "
        "seed's number moves; only differences with one sign on every seed are marked "
        "reproduced.",
        "",
    ]
    return lines


def report(ctx: Context, command: str, wall_s: float) -> str:
    """docs/RESULTS.md: the claims table, then every study's section (and its figure); a
    study whose runs have not all finished says so."""
    ctx.fig_dir.mkdir(parents=True, exist_ok=True)
    body: list[str] = []
    claims: list[Claim] = []
    missing: list[str] = []
    for short, title, study in STUDIES:
        try:
            section = study(ctx)
        except NotRun as e:
            pyplot().close("all")
            missing.append(short)
            body += [f"## {title}", "", f"Not run yet (unfinished: {', '.join(e.args)}).", ""]
            if short != "Table 1":
                claims.append((title, "—", "—", "not run yet"))
            continue
        body += [f"## {section.title or title}", "", *section.lines]
        claims += section.claims
    head = [
        "# Reproducing the paper on the embedded task",
        "",
        intro(ctx),
        "",
        "## The paper's claims and ours",
        "",
        "| study | paper's finding | our measurement | reproduced? |",
        "|---|---|---|---|",
    ]
    head += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in claims]
    if missing:
        head += [
            "",
            f"**Incomplete:** the runs of {', '.join(missing)} had not finished when this "
            "report was built; `python experiments/reproduce_paper.py` runs them (resuming) "
            "and rebuilds it.",
        ]
    head += [
        "",
        f"- Regenerate: `{command}` (wall time of this run: {wall_s / 60:.0f} min; "
        "the runs resume, so a re-run only rebuilds this file).",
        "- The code half of the paper (the embedded code task: pass@1 per iteration, "
        "train-test gap, pass@k, transfer) is in docs/RESULTS_code.md, regenerated by "
        "`python experiments/seeds_study.py`.",
        f"- Machine: {platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}, {datetime.date.today()}.",
        "- Checkpoints are selected on the val split; the test and transfer splits are never "
        "used for a choice.",
        "",
        *limits(ctx),
    ]
    return "\n".join(head + body)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--workdir", default=str(REPO / "runs" / "paper"))
    p.add_argument("--out", default=str(REPO / "docs"), help="RESULTS.md and figures/ go here")
    p.add_argument("--jobs", type=int, default=2, help="runs in parallel")
    p.add_argument("--quick", action="store_true", help="the tiny test config (seconds per run)")
    p.add_argument(
        "--report_only",
        action="store_true",
        help="rebuild the report from the finished runs; start nothing",
    )
    p.add_argument(
        "--readme",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="rewrite README.md's claims table (default: when --out is docs/)",
    )
    args = p.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    if args.readme is None:
        args.readme = pathlib.Path(args.out).resolve() == (REPO / "docs").resolve()
    root = pathlib.Path(args.workdir)
    t = time.time()
    if not args.report_only:
        execute_all(
            seeds,
            runs_of(args.quick),
            root,
            str(TINY) if args.quick else "arithmetic.gin",
            args.jobs,
        )
    wall = time.time() - t
    walls = [
        float((root / f"seed_{s}" / r.name / "DONE").read_text())
        for s in seeds
        for r in runs_of(args.quick)
        if (root / f"seed_{s}" / r.name / "DONE").exists()
    ]
    out = pathlib.Path(args.out)
    command = "python experiments/reproduce_paper.py" + "".join(f" {a}" for a in sys.argv[1:])
    ctx = Context.load(
        root,
        seeds,
        planned=[r.name for r in runs_of(args.quick)],
        config_file=str(
            (TINY if args.quick else REPO / "gin_configs" / "arithmetic.gin").relative_to(REPO)
        ),
        fig_dir=out / "figures",
        rel="figures",
    )
    text = report(ctx, command, max(wall, sum(walls) / max(args.jobs, 1)))
    out.mkdir(parents=True, exist_ok=True)
    (out / "RESULTS.md").write_text(text + "\n")
    print(f"wrote {out / 'RESULTS.md'} and {out / 'figures'}/")
    if args.readme:
        update_readme(REPO / "README.md", text)
        print("updated the claims table in README.md")


def update_readme(path: pathlib.Path, report_text: str) -> None:
    """Rewrites the README's paper-claims block with the report's claims table."""
    claims = report_text.split("## The paper's claims and ours\n", 1)[1].split("\n## ", 1)[0]
    readme_block.replace(path, "paper-claims", claims)


if __name__ == "__main__":
    main()
