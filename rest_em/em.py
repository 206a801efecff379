"""The ReST^EM outer loop (Algorithm 1): generate -> filter -> improve -> evaluate.

Iteration 0 evaluates the base model; iteration i >= 1 samples `num_samples` solutions
per training problem from the previous iteration's model (E-step, `rest_em.estep`), keeps
the correct ones (`rest_em.filtering`), fine-tunes the BASE model on them (M-step,
`rest_em.mstep`; `from_base=False` continues from the last model, as ReST does) and
evaluates the result (`rest_em.evaluation`).

The rows of the paper's Table 1 are configurations of the same loop (gin_configs/):
  ReST^EM        the defaults
  ReST           from_base=False (each M-step continues from the last model)
  RFT            num_iterations=1, dedup=True
  STaR           estep="greedy" (one greedy solution per problem), rationalize=True
                 (unsolved problems re-sampled with the answer as a hint)
  distillation   a `Teacher` (a larger model's params) generates the E-step samples
  SFT            data="human": the M-step trains on the task's reference solutions
and per-step negatives (Setlur et al. 2024) add the incorrect samples, weighted per step
by Monte-Carlo advantages: `step_negatives=StepNegativesConfig()` (an M-step objective
of `mstep.OBJECTIVES`).

Every unit of work leaves a file in the workdir (`rest_em.workdir` names them all), so a
run killed at any moment (even `kill -9`) continues from the last completed unit when
the same command runs again; the workdir's fingerprint (`rest_em.fingerprint`) refuses a
rerun with another configuration before anything is done.

Multi-host (`jax.distributed`, a `mesh` over every process's devices): every process
runs this same loop on the same data (SPMD). The sampler and the M-step's train steps
are global computations over the mesh; every process gets all completions back, scores
its own share of the problems and the statuses are all-gathered in problem order, so
every process holds identical records and the results do not depend on the number of
processes. Process 0 alone writes the workdir's files (on a filesystem every host sees,
as orbax needs); whether a unit exists is process 0's answer, broadcast.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import pathlib
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import tqdm

from rest_em import errors, estep, evaluation, filtering, fingerprint, mstep, partitioning, training
from rest_em import metrics as metrics_lib
from rest_em import model as model_lib
from rest_em import workdir as workdir_lib
from rest_em.estep import Scored, generate_and_score, prompt_ids  # noqa: F401 (public here too)
from rest_em.evaluation import evaluate  # noqa: F401 (public here too)
from rest_em.mstep import StepNegativesConfig
from rest_em.tasks.problems import Problem, Task
from rest_em.tokenizers import Tokenizer

log = logging.getLogger(__name__)

Teacher = estep.Policy  # distillation: the model whose samples train the student


@dataclasses.dataclass(frozen=True)
class EMConfig:
    """Knobs of Algorithm 1. Defaults follow the paper where it gives them: 32 samples per
    problem, temperature 0.7 and top-k 40 in the E-step, at most 10 solutions per
    problem, every M-step from the base model."""

    num_iterations: int = 3
    num_samples: int = 32  # E-step samples per training problem
    temperature: float = 0.7
    top_k: int = 40  # 0 = the whole vocabulary
    top_p: float = 1.0
    max_new_tokens: int = 128
    # The decoding engine (E-step, evaluation, per-step rollouts): continuous batching
    # in this many slots per sampler call (`rest_em.continuous_batching`; 0 = one static
    # batch). The same samples either way, so it is not part of a workdir's fingerprint.
    decode_slots: int = 256
    kv_cache_dtype: str | None = None  # "bfloat16": half the KV cache (logits change slightly)
    max_per_problem: int = 10  # the paper's cap on solutions per problem
    dedup: bool = True
    from_base: bool = True  # ReST^EM: every M-step starts from the base model
    chunk_size: int = 256  # problems per sampler call (= per E-step shard)
    eval_num_samples: int = 8  # samples per test problem for pass@k / maj@k
    eval_ks: tuple[int, ...] = (1, 4, 8)
    train_eval_size: int = 500  # training problems scored greedily (train-test gap)
    val_size: int | None = None  # validation problems for checkpoint selection
    eval_splits: tuple[str, ...] = ("test",)  # splits with greedy + sampled evaluation
    estep: str = "sample"  # "sample" (ReST^EM) or "greedy" (STaR: 1 solution)
    rationalize: bool = False  # STaR: unsolved problems re-sampled with a hint
    data: str = "model"  # an entry of estep.SOURCES: "model" or "human" (SFT)
    step_negatives: StepNegativesConfig | None = None  # + per-step negatives (Setlur 2024)
    # The M-step's start model competes in its validation-based selection (one more D_val
    # evaluation): an M-step that never beats it keeps it. Off by default (the paper's
    # ReST^EM always returns a fine-tuned model); on the embedded task short M-steps from
    # the base can do worse than the base (docs/RESULTS.md, study 8).
    keep_start: bool = False
    seed: int = 0
    fit: training.FitConfig = training.FitConfig()

    def __post_init__(self):
        def need(ok: bool, msg: str) -> None:
            if not ok:
                raise errors.ConfigError(f"EMConfig: {msg}")

        need(self.decode_slots >= 0, f"decode_slots must be >= 0, got {self.decode_slots}")
        need(
            self.kv_cache_dtype in (None, "float32", "bfloat16"),
            f"kv_cache_dtype must be None, 'float32' or 'bfloat16', got {self.kv_cache_dtype!r}",
        )
        need(self.num_iterations >= 0, f"num_iterations must be >= 0, got {self.num_iterations}")
        need(
            self.num_samples >= 1 and self.eval_num_samples >= 1,
            "num_samples and eval_num_samples must be >= 1",
        )
        need(
            self.temperature > 0,
            "temperature must be > 0 (it is the E-step's and pass@k's; "
            "estep='greedy' selects greedy E-step decoding)",
        )
        need(self.top_k >= 0, f"top_k must be >= 0 (0 = no top-k), got {self.top_k}")
        need(
            self.estep in ("sample", "greedy"),
            f"estep={self.estep!r}; expected 'sample' or 'greedy'",
        )
        need(
            self.data in estep.SOURCES,
            f"data={self.data!r}; expected one of {sorted(estep.SOURCES)}",
        )
        need(
            self.step_negatives is None or self.data == "model",
            "step_negatives needs model samples (data='model')",
        )
        need("test" in self.eval_splits, f"eval_splits={self.eval_splits!r} must include 'test'")


def with_gold(problems: Sequence[Problem], split: str) -> list[Problem]:
    """Problems without a gold answer (or tests) cannot be scored: reported and skipped,
    never scored 0."""
    kept = [p for p in problems if p.scorable]
    if len(kept) < len(problems):
        missing = [p.problem_id for p in problems if p not in kept]
        log.warning(
            "%s: %d problems have no gold answer and are skipped (ids %s%s)",
            split,
            len(missing),
            missing[:20],
            " ..." if len(missing) > 20 else "",
        )
    return kept


@dataclasses.dataclass(frozen=True)
class Splits:
    """The problems of a run: train (E-step), val (checkpoint selection), the greedy
    train subset (the train-test gap), the evaluation splits, and the transfer tasks'
    test problems (other tasks the model is evaluated on; never used for any choice)."""

    train: list[Problem]
    val: list[Problem]
    evals: dict[str, list[Problem]]
    train_eval: list[Problem]
    transfer: dict[str, tuple[Task, list[Problem]]] = dataclasses.field(default_factory=dict)

    @classmethod
    def load(cls, task: Task, cfg: EMConfig, transfer_tasks: Sequence[Task] = ()) -> Splits:
        train = with_gold(task.load("train"), "train")
        val = with_gold(task.load("val"), "val")[: cfg.val_size]
        evals = {s: with_gold(task.load(s), s) for s in cfg.eval_splits}
        transfer = {}
        for t in transfer_tasks:
            if t.name == task.name or t.name in transfer:
                raise errors.ConfigError(
                    f"transfer task {t.name!r}: its name must differ from the training "
                    "task's and the other transfer tasks' (it prefixes its metrics)"
                )
            transfer[t.name] = (t, with_gold(t.load("test"), f"{t.name}/test"))
        return cls(train, val, evals, train[: cfg.train_eval_size], transfer)

    def named(self) -> dict[str, list[Problem]]:
        """split -> problems, for the fingerprint."""
        return {"train": self.train, "val": self.val, **self.evals}

    def by_id(self) -> dict[int, Problem]:
        return {p.problem_id: p for p in self.train}

    def to_evaluate(self) -> dict[str, tuple]:
        """name -> (problems, sampled[, task]): train greedy only, the evaluation splits
        and the transfer tasks' test splits (`<task>/test`) sampled too."""
        return {
            "train": (self.train_eval, False),
            **{s: (p, True) for s, p in self.evals.items()},
            **{f"{name}/test": (p, True, t) for name, (t, p) in self.transfer.items()},
        }


class _Timer(dict):
    """Seconds per phase: `with timer("generate"): ...`; `pop_all()` hands them to the
    iteration's metrics and starts afresh (the base's seconds go to the first iteration
    this process runs)."""

    def pop_all(self) -> dict[str, float]:
        out = dict(self)
        self.clear()
        return out

    @contextlib.contextmanager
    def __call__(self, name: str):
        t = time.time()
        yield
        self[name] = self.get(name, 0.0) + time.time() - t


def run(
    *,
    task: Task,
    tokenizer: Tokenizer,
    model_cfg: model_lib.ModelConfig,
    make_base_params: Callable[[], Any],
    workdir: str | pathlib.Path,
    cfg: EMConfig,
    mesh=None,
    teacher: Teacher | None = None,
    config: Mapping[str, Any] | None = None,
    on_config_change: str = "refuse",
    on_start: Callable[[], None] | None = None,
    transfer_tasks: Sequence[Task] = (),
) -> list[dict]:
    """Runs (or resumes) the EM loop in `workdir`; returns the metrics of every iteration.

    Args:
      task, tokenizer, model_cfg: what is learned and how text becomes tokens.
      make_base_params: builds the base model (called once; saved in the workdir).
      workdir: every artifact of the run (`rest_em.workdir`); rerun to resume.
      cfg: the loop's knobs (EMConfig).
      mesh: shards sampling and training (several processes: required, over all devices).
      teacher: distillation: its samples train the student (`model_cfg`).
      config: the config that determines results, for the workdir's fingerprint (the
        launcher: every gin binding); None: `cfg`'s fields.
      on_config_change: "refuse" (a workdir of another config stops the run,
        `errors.WorkdirConflict`) or "continue" (recorded, then go on).
      on_start: called once the fingerprint is accepted, before any work (the launcher
        writes config.gin there).
      transfer_tasks: other tasks each iteration's model is evaluated on (their "test"
        split, metrics `<task name>/test/...`); never used for any choice.
    """
    _check_mesh(mesh)
    paths, root = workdir_lib.RunPaths(pathlib.Path(workdir)), jax.random.key(cfg.seed)
    parts = dict(task=task, tokenizer=tokenizer, cfg=cfg, mesh=mesh)  # what every phase reads
    learner = dict(model_cfg=model_cfg, **parts)
    splits = Splits.load(task, cfg, transfer_tasks)
    fp = fingerprint.of_run(
        teacher=teacher, config=config, splits=splits.named(), transfer=splits.transfer, **learner
    )
    fingerprint.check(paths, fp, on_config_change=on_config_change)  # before any work
    if on_start is not None:
        on_start()
    codec, timer = workdir_lib.params_codec(_abstract_params(model_cfg, mesh)), _Timer()
    with timer("base"):
        base = workdir_lib.unit(paths.base, make_base_params, codec)
    params, history, wrote = base, [], False
    for it in range(cfg.num_iterations + 1):
        ipaths, key = paths.iteration(it), jax.random.fold_in(root, it)
        if workdir_lib.exists(ipaths.marker):
            history.append(workdir_lib.read_json(ipaths.marker))
            params = None  # restored below if a later iteration needs it
            continue
        if params is None:
            params = codec.read(paths.model(it - 1))
        m: dict[str, Any] = {"iteration": it}
        if it > 0:
            with timer("generate"):  # E-step: sample from the last model (or the teacher), score
                policy = teacher or estep.Policy(model_cfg, params)
                records, counts = estep.generate(
                    policy, splits.train, paths=ipaths, key=key, **parts
                )
            timer.update(counts.pop("seconds", {}))
            with timer("filter"):  # the M-step dataset: verified, capped per problem
                selected, selection = _select(records, ipaths, cfg)
            start = base if cfg.from_base else params  # M-step: fine-tune from the base
            val = val_reward(splits.val, key=key, **learner)
            inputs = mstep.Inputs(
                start, policy, records, selected, splits.by_id(), ipaths, key, val, **learner
            )
            params, improve_metrics = mstep.improve(inputs, codec)
            timer.update(improve_metrics.pop("seconds"))
            m.update(counts, **selection, **improve_metrics)
        with timer("evaluate"):  # train (greedy: the train-test gap), test (pass@k, maj@k)
            key = jax.random.fold_in(root, 10_000 + it)
            evals = evaluation.evaluate_splits(params, splits.to_evaluate(), ipaths, key, **learner)
            m.update(evals)
        m["seconds"] = timer.pop_all()
        workdir_lib.write_json(ipaths.marker, m)  # the iteration is done
        history.append(m)
        _report(paths, history)
        wrote = True
    if not wrote:  # nothing new: rebuild the outputs once (a finished run, rerun)
        metrics_lib.MetricsWriter(paths.root).write_all(history)
    return history


def _check_mesh(mesh) -> None:
    if partitioning.is_multiprocess() and mesh is None:
        raise ValueError(
            f"{jax.process_count()} processes: run() needs a mesh over every "
            "process's devices (e.g. partitioning.make_mesh(-1, 1, 1))"
        )


def _select(
    records: Sequence[filtering.Sample], paths: workdir_lib.IterationPaths, cfg: EMConfig
) -> tuple[list[filtering.Sample], dict[str, int]]:
    """The filter as a unit of work (iter_NNN/selected.jsonl), and its statistics (the
    selection is cheap and deterministic: a resumed run recomputes them)."""
    kept, stats = filtering.select_with_stats(
        records,
        max_per_problem=cfg.max_per_problem,
        seed=cfg.seed * 1_000_003 + paths.number,
        dedup=cfg.dedup,
    )
    rows = workdir_lib.unit(
        paths.selected, lambda: [dataclasses.asdict(s) for s in kept], workdir_lib.JSONL
    )
    selection = {
        "num_selected": stats.num_selected,
        "num_problems_solved": stats.num_problems_solved,
        "num_duplicates_dropped": stats.num_duplicates_dropped,
    }
    return [filtering.Sample(**r) for r in rows], selection


def val_reward(val: Sequence[Problem], **kwargs: Any) -> Callable[[Any], float]:
    """Greedy pass@1 on D_val: the M-step's checkpoint selection."""

    def reward(params: Any) -> float:
        return evaluate(params, val, prefix="val", sampled=False, **kwargs)["val/greedy_pass@1"]

    return reward


def _report(paths: workdir_lib.RunPaths, history: Sequence[dict]) -> None:
    metrics_lib.MetricsWriter(paths.root).write_all(history)
    if partitioning.is_main_process():
        tqdm.tqdm.write(_one_line(history[-1]))


def _one_line(m: dict) -> str:
    keys = ("num_selected", "train/greedy_pass@1", "test/greedy_pass@1")
    parts = [
        f"{k}={m[k]:.3f}" if isinstance(m.get(k), float) else f"{k}={m[k]}" for k in keys if k in m
    ]
    secs = ", ".join(f"{k} {v:.0f}s" for k, v in m["seconds"].items() if "/" not in k)
    return f"iteration {m['iteration']}: " + " ".join(parts) + f"  ({secs})"


def final_table(history: Sequence[dict]) -> str:
    """The terminal summary: one row per iteration."""
    cols = ["iteration", "num_correct", "num_selected", "train/greedy_pass@1", "test/greedy_pass@1"]
    ks = sorted(
        {k for m in history for k in m if k.startswith(("test/pass@", "test/maj@"))},
        key=lambda k: (k.split("@")[0], int(k.split("@")[1])),
    )
    cols += ks
    cols += sorted({k for m in history for k in m if k.endswith("/test/greedy_pass@1")})  # transfer
    lines = [" | ".join(cols), " | ".join("---" for _ in cols)]
    for m in history:
        cells = []
        for c in cols:
            v = m.get(c, "")
            cells.append(f"{v:.3f}" if isinstance(v, float) else str(v))
        lines.append(" | ".join(cells))
    sandbox = next((m["sandbox"] for m in reversed(history) if m.get("sandbox")), None)
    if sandbox is not None:  # a code task: say how programs were confined
        lines.append(
            f"code sandbox: isolation {sandbox['isolation'] or '(none)'}"
            + (f"; DEGRADED, missing {sandbox['degraded']}" if sandbox["degraded"] else "")
        )
    return "\n".join(lines)


def _abstract_params(model_cfg: model_lib.ModelConfig, mesh=None) -> Any:
    """Restore targets: the params' shapes, in their mesh shardings when a mesh is given."""
    abstract = model_lib.abstract_params(model_cfg)
    if mesh is None:
        return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), abstract)
    return jax.tree.map(
        lambda x, sh: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sh),
        abstract,
        model_lib.param_shardings(model_cfg, mesh),
    )


def final_params(workdir: str | pathlib.Path, model_cfg: model_lib.ModelConfig, mesh=None) -> Any:
    """The params of a run's last completed iteration (its base if none): a teacher.
    With `mesh`, restored into the model's shardings on it."""
    paths = workdir_lib.RunPaths(pathlib.Path(workdir))
    done = [i.params for i in paths.completed() if i.params.exists()]
    path = done[-1] if done else paths.base
    if not path.exists():
        raise errors.CheckpointError(
            f"{paths.root}: no completed iteration or base params to "
            "load (is it the workdir of a finished run?)"
        )
    return workdir_lib.params_codec(_abstract_params(model_cfg, mesh)).read(path)


def load_history(workdir: str | pathlib.Path) -> list[dict]:
    """Metrics of the completed iterations of a workdir, in order."""
    return [
        workdir_lib.read_json(i.marker)
        for i in workdir_lib.RunPaths(pathlib.Path(workdir)).completed()
    ]


__all__ = [
    "EMConfig",
    "Scored",
    "Splits",
    "StepNegativesConfig",
    "Teacher",
    "evaluate",
    "final_params",
    "final_table",
    "generate_and_score",
    "load_history",
    "prompt_ids",
    "run",
    "with_gold",
]
