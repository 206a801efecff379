"""The ReST^EM outer loop (Algorithm 1): generate -> score -> filter -> improve -> evaluate.

Iteration 0 evaluates the base model; iteration i >= 1 samples `num_samples` solutions
per training problem from the previous iteration's model (E-step), keeps the correct
ones (filtering), fine-tunes the BASE model on them (M-step; `from_base=False` continues
from the last model, as ReST does) and evaluates the result.

The rows of the paper's Table 1 are configurations of the same loop (gin_configs/):
  ReST^EM        the defaults
  ReST           from_base=False (each M-step continues from the last model)
  RFT            num_iterations=1, dedup=True
  STaR           estep="greedy" (one greedy solution per problem), rationalize=True
                 (unsolved problems re-sampled with the answer as a hint)
  distillation   a `Teacher` (a larger model's params) generates the E-step samples
  SFT            data="human": the M-step trains on the task's reference solutions
and per-step negatives (Setlur et al. 2024) add the incorrect samples, weighted per step
by Monte-Carlo advantages: `step_negatives=StepNegativesConfig()` (rest_em.step_values).

Every unit of work leaves a file in the workdir, written atomically (temp file +
rename), and is skipped when that file exists; so a run killed at any moment (even
`kill -9`) continues from the last completed unit when the same command runs again:

  workdir/base/                      the base params (orbax)
  workdir/iter_001/samples/shard_*   E-step samples with rewards, one file per chunk
  workdir/iter_001/samples/manifest.json
  workdir/iter_001/selected.jsonl    the M-step dataset
  workdir/iter_001/mstep/            resumable M-step checkpoints (orbax)
  workdir/iter_001/params/           the iteration's model (orbax)
  workdir/iter_00i/eval_<split>.json evaluation results
  workdir/iter_00i/metrics.json      the iteration's metrics: its completion marker
  workdir/metrics.jsonl, tensorboard/, accuracy.png   rebuilt from the markers

Multi-host (`jax.distributed`, a `mesh` over every process's devices): every process
runs this same loop on the same data (SPMD). The sampler and the M-step's train steps
are global computations over the mesh; every process gets all completions back, scores
its own share of the problems (the reward checker runs on each host's CPUs) and the
statuses are all-gathered in problem order, so every process holds identical records
and the results do not depend on the number of processes. Process 0 alone writes the
workdir's files (which must be on a filesystem every host sees, as orbax needs for its
checkpoints); whether a unit of work exists is process 0's answer, broadcast, so that
every process skips or redoes the same units on resume.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import pathlib
import shutil
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import tqdm

from rest_em import checkpoints, evaluation, filtering, partitioning, sampling, training
from rest_em import metrics as metrics_lib
from rest_em import model as model_lib
from rest_em.tasks.problems import Problem, Task
from rest_em.tokenizers import Tokenizer

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class StepNegativesConfig:
    """Per-step negatives (Setlur et al. 2024): the M-step also trains on incorrect
    samples, each step's tokens weighted exp(A_i / beta) (clipped) where A_i = Q_i - Q_{i-1}
    and Q comes from `num_rollouts` rollouts per prefix of the sampling model."""

    num_rollouts: int = 5             # K; the paper: 5
    estimator: str = "best_of_k"      # or "mean"
    beta: float = 1.0
    clip: float = 10.0
    max_per_problem: int = 8          # negatives per problem; the paper: up to 8
    step_mode: str = "newline"        # or "sentence"
    max_steps: int = 32
    # "weighted_nll": one fit on positives + negatives weighted exp(A/beta) per token.
    # "dpo": fit on the positives, then per-step DPO from that model (also the frozen
    # reference) on first-pit pairs (`step_values.step_dpo_pairs`), kept if D_val improves.
    objective: str = "weighted_nll"
    dpo_beta: float = 0.1
    dpo_fit: training.FitConfig | None = None  # the DPO phase's schedule; None: EMConfig.fit

    def __post_init__(self):
        if self.objective not in ("weighted_nll", "dpo"):
            raise ValueError(f"objective={self.objective!r}; expected 'weighted_nll' or 'dpo'")
        if self.num_rollouts < 1 or self.dpo_beta <= 0:
            raise ValueError("num_rollouts must be >= 1 and dpo_beta > 0")


@dataclasses.dataclass(frozen=True)
class EMConfig:
    """Knobs of Algorithm 1. Defaults follow the paper where it gives them."""

    num_iterations: int = 3
    num_samples: int = 32            # E-step samples per training problem
    temperature: float = 0.7
    top_k: int = 0
    top_p: float = 1.0
    max_new_tokens: int = 128
    max_per_problem: int = 10        # the paper's cap on solutions per problem
    dedup: bool = True
    from_base: bool = True           # ReST^EM: every M-step starts from the base model
    chunk_size: int = 256            # problems per sampler call (= per E-step shard)
    eval_num_samples: int = 8        # samples per test problem for pass@k / maj@k
    eval_ks: tuple[int, ...] = (1, 4, 8)
    train_eval_size: int = 500       # training problems scored greedily (train-test gap)
    val_size: int | None = None      # validation problems for checkpoint selection
    eval_splits: tuple[str, ...] = ("test",)  # splits with greedy + sampled evaluation
    estep: str = "sample"            # "sample" (ReST^EM) or "greedy" (STaR: 1 solution)
    rationalize: bool = False        # STaR: unsolved problems re-sampled with a hint
    data: str = "model"              # "model" (E-step samples) or "human" (SFT baseline)
    step_negatives: StepNegativesConfig | None = None  # + per-step negatives (Setlur 2024)
    # The M-step's start model competes in its validation-based selection (one more D_val
    # evaluation): an M-step that never beats it keeps it. Off by default (the paper's
    # ReST^EM always returns a fine-tuned model); on the embedded task short M-steps from
    # the base can do worse than the base (docs/RESULTS.md, study 8).
    keep_start: bool = False
    seed: int = 0
    fit: training.FitConfig = training.FitConfig()

    def __post_init__(self):
        if self.num_iterations < 0:
            raise ValueError(f"num_iterations must be >= 0, got {self.num_iterations}")
        if self.num_samples < 1 or self.eval_num_samples < 1:
            raise ValueError("num_samples and eval_num_samples must be >= 1")
        if self.temperature <= 0:
            raise ValueError("temperature must be > 0 (it is the E-step's and pass@k's; "
                             "estep='greedy' selects greedy E-step decoding)")
        if self.estep not in ("sample", "greedy"):
            raise ValueError(f"estep={self.estep!r}; expected 'sample' or 'greedy'")
        if self.data not in ("model", "human"):
            raise ValueError(f"data={self.data!r}; expected 'model' or 'human'")
        if self.step_negatives is not None and self.data != "model":
            raise ValueError("step_negatives needs model samples (data='model')")
        if "test" not in self.eval_splits:
            raise ValueError(f"eval_splits={self.eval_splits!r} must include 'test'")


@dataclasses.dataclass(frozen=True)
class Teacher:
    """Distillation: the model whose samples train the student (usually a larger one)."""

    model_cfg: model_lib.ModelConfig
    params: Any


# --- small, atomic file helpers ---------------------------------------------------------

def _write_atomic(path: pathlib.Path, text: str) -> None:
    """Writes `path` atomically; with several processes only process 0 writes."""
    if not partitioning.is_main_process():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with tmp.open("w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _write_jsonl(path: pathlib.Path, rows: Sequence[dict]) -> None:
    _write_atomic(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))


def _read_jsonl(path: pathlib.Path) -> list[dict]:
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _write_json(path: pathlib.Path, obj: Any) -> None:
    _write_atomic(path, json.dumps(obj, indent=1, sort_keys=True) + "\n")


def _exists(path: pathlib.Path) -> bool:
    """Whether a unit of work is done: process 0's answer on every process."""
    return partitioning.agree(path.exists())


def _save_params_once(path: pathlib.Path, params: Any) -> None:
    """Orbax writes to a temp dir and renames on commit; a stale temp dir is removed.
    Every process calls it (each writes its shards of the params)."""
    if partitioning.is_main_process() and path.exists():
        shutil.rmtree(path)
    partitioning.sync(f"rest_em: remove {path}")
    checkpoints.save_params(path, params)


def _score_problems(task: Task, problems: Sequence[Problem],
                    completions: Sequence[list[str]]) -> list[list[str]]:
    """`task.score` of each problem's completions (one call per problem). With several
    processes each scores its contiguous share of the problems; all get every status."""

    def score(probs, comps):
        return [[str(s) for s in task.score(c, [p] * len(c))] for p, c in zip(probs, comps)]

    return partitioning.split_over_processes(score)(problems, completions)


# --- generation + scoring ---------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Scored:
    """The sampler's completions for one problem with the checker's statuses."""

    problem: Problem
    completions: list[str]
    statuses: list[str]
    answers: list[str | None]


def prompt_ids(task: Task, tokenizer: Tokenizer, problem: Problem,
               prompt_fn: Callable[[Problem], str] | None = None) -> list[int]:
    ids = tokenizer.encode((prompt_fn or task.prompt)(problem))
    return ([tokenizer.bos_id] if tokenizer.bos_id is not None else []) + ids


def generate_and_score(params: Any, problems: Sequence[Problem], *, task: Task,
                       tokenizer: Tokenizer, model_cfg: model_lib.ModelConfig,
                       sampling_cfg: sampling.SamplingConfig, key: jax.Array,
                       chunk_size: int, mesh=None, desc: str = "",
                       shard_dir: pathlib.Path | None = None,
                       prompt_fn: Callable[[Problem], str] | None = None) -> list[Scored]:
    """Samples and scores `problems` in chunks of `chunk_size` (one sampler shape).

    With `shard_dir`, each chunk's results are a file there and finished chunks are
    read back instead of recomputed (resumable E-step). Keys depend only on (key,
    problem_id, sample index), so chunking never changes a sample. `prompt_fn` replaces
    `task.prompt` (STaR's hinted prompts).
    """
    out: list[Scored] = []
    starts = range(0, len(problems), chunk_size)
    for shard, start in enumerate(tqdm.tqdm(starts, desc=desc, leave=False, dynamic_ncols=True)):
        chunk = list(problems[start: start + chunk_size])
        path = shard_dir / f"shard_{shard:05d}.jsonl" if shard_dir is not None else None
        if path is not None and _exists(path):
            rows = _read_jsonl(path)
            by_id: dict[int, list[dict]] = {}
            for r in rows:
                by_id.setdefault(r["problem_id"], []).append(r)
            for p in chunk:
                rs = sorted(by_id[p.problem_id], key=lambda r: r["sample_index"])
                out.append(Scored(p, [r["completion"] for r in rs], [r["status"] for r in rs],
                                  [r["answer"] for r in rs]))
            continue
        # Pad the last chunk with copies of its first problem: one compiled shape.
        padded = chunk + [chunk[0]] * (chunk_size - len(chunk)) if len(problems) > chunk_size else chunk
        res = sampling.sample(params, [prompt_ids(task, tokenizer, p, prompt_fn) for p in padded],
                              model_cfg=model_cfg, cfg=sampling_cfg, key=key,
                              problem_ids=[p.problem_id for p in padded], mesh=mesh)
        rows = []
        all_comps = [[tokenizer.decode(res.tokens_BxNxT[b, j, : res.lengths_BxN[b, j]])
                      for j in range(sampling_cfg.num_samples)] for b in range(len(chunk))]
        all_statuses = _score_problems(task, chunk, all_comps)
        for p, comps, statuses in zip(chunk, all_comps, all_statuses):
            answers = [task.extract(c) for c in comps]
            out.append(Scored(p, comps, statuses, answers))
            rows += [{"problem_id": p.problem_id, "sample_index": j, "completion": c, "status": s,
                      "reward": float(s == "correct"), "answer": a}
                     for j, (c, s, a) in enumerate(zip(comps, statuses, answers))]
        if path is not None:
            _write_jsonl(path, rows)
    return out


def with_gold(problems: Sequence[Problem], split: str) -> list[Problem]:
    """Problems without a gold answer cannot be scored: reported and skipped, never scored 0."""
    kept = [p for p in problems if p.answer is not None and str(p.answer).strip()]
    if len(kept) < len(problems):
        missing = [p.problem_id for p in problems if p not in kept]
        log.warning("%s: %d problems have no gold answer and are skipped (ids %s%s)", split,
                    len(missing), missing[:20], " ..." if len(missing) > 20 else "")
    return kept


# --- evaluation -------------------------------------------------------------------------

def evaluate(params: Any, problems: Sequence[Problem], *, task: Task, tokenizer: Tokenizer,
             model_cfg: model_lib.ModelConfig, cfg: EMConfig, key: jax.Array, prefix: str,
             sampled: bool, mesh=None) -> dict[str, float]:
    """Greedy pass@1 (and, if `sampled`, pass@k and maj@k) with per-level breakdowns."""
    greedy_cfg = sampling.SamplingConfig(
        num_samples=1, temperature=0.0, max_new_tokens=cfg.max_new_tokens,
        eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id)
    greedy = generate_and_score(params, problems, task=task, tokenizer=tokenizer,
                                model_cfg=model_cfg, sampling_cfg=greedy_cfg, key=key,
                                chunk_size=cfg.chunk_size, mesh=mesh, desc=f"eval {prefix} greedy")
    samples = None
    if sampled:
        sample_cfg = dataclasses.replace(greedy_cfg, num_samples=cfg.eval_num_samples,
                                         temperature=cfg.temperature, top_k=cfg.top_k,
                                         top_p=cfg.top_p)
        samples = generate_and_score(params, problems, task=task, tokenizer=tokenizer,
                                     model_cfg=model_cfg, sampling_cfg=sample_cfg, key=key,
                                     chunk_size=cfg.chunk_size, mesh=mesh,
                                     desc=f"eval {prefix} samples")
    results = evaluation.summarize(
        greedy_correct=[s.statuses[0] == "correct" for s in greedy],
        sample_correct=None if samples is None else
        [[st == "correct" for st in s.statuses] for s in samples],
        sample_answers=None if samples is None else [s.answers for s in samples],
        levels=[p.level for p in problems], ks=cfg.eval_ks)
    return {f"{prefix}/{k}": v for k, v in results.items()}


# --- the E-step -------------------------------------------------------------------------

def _estep(params: Any, train: Sequence[Problem], *, idir: pathlib.Path, it: int, task: Task,
           tokenizer: Tokenizer, model_cfg: model_lib.ModelConfig, cfg: EMConfig,
           key: jax.Array, mesh=None, teacher: Teacher | None = None
           ) -> tuple[list[filtering.Sample], dict[str, int]]:
    """The candidate M-step data (all scored samples, reward 1 if correct) and its counts.

    data="human": the train split's reference solutions (no sampling). Otherwise
    `num_samples` samples per problem (estep="greedy": one greedy solution) from the
    current model or the teacher; with `rationalize`, problems without a correct sample
    are sampled again from the hinted prompt and the correct ones kept with the plain
    prompt (STaR), sample indices continuing after the first round's.
    """
    if cfg.data == "human":
        records = [filtering.Sample(problem_id=p.problem_id, sample_index=0,
                                    prompt=task.prompt(p), completion=task.target(p), reward=1.0)
                   for p in train if p.solution]
        return records, {"num_problems": len(train), "num_samples": 0,
                         "num_correct": len(records), "num_no_answer": 0,
                         "num_checker_errors": 0}
    gen_params, gen_cfg = (params, model_cfg) if teacher is None else (teacher.params,
                                                                        teacher.model_cfg)
    greedy = cfg.estep == "greedy"
    e_cfg = sampling.SamplingConfig(
        num_samples=1 if greedy else cfg.num_samples, temperature=0.0 if greedy else cfg.temperature,
        top_k=cfg.top_k, top_p=cfg.top_p, max_new_tokens=cfg.max_new_tokens,
        eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id)
    common = dict(task=task, tokenizer=tokenizer, model_cfg=gen_cfg,
                  sampling_cfg=e_cfg, chunk_size=cfg.chunk_size, mesh=mesh)
    scored = generate_and_score(gen_params, train, key=jax.random.fold_in(key, 0),
                                desc=f"iter {it} E-step", shard_dir=idir / "samples", **common)
    _write_json(idir / "samples" / "manifest.json",
                {"shards": sorted(p.name for p in (idir / "samples").glob("shard_*.jsonl")),
                 "num_problems": len(train), "num_samples": e_cfg.num_samples})

    def to_records(rows: Sequence[Scored], offset: int) -> list[filtering.Sample]:
        return [filtering.Sample(problem_id=s.problem.problem_id, sample_index=offset + j,
                                 prompt=task.prompt(s.problem), completion=c,
                                 reward=float(st == "correct"))
                for s in rows for j, (c, st) in enumerate(zip(s.completions, s.statuses))]

    records = to_records(scored, 0)
    statuses = [st for s in scored for st in s.statuses]
    counts = {"num_problems": len(train), "num_samples": len(statuses),
              "num_correct": statuses.count("correct"),
              "num_no_answer": statuses.count("no_answer"),
              "num_checker_errors": statuses.count("checker_error") + statuses.count("timeout")}
    if cfg.rationalize:
        if task.hint_prompt is None:
            raise ValueError(f"rationalize=True, but task {task.name!r} has no hint_prompt")
        unsolved = [s.problem for s in scored if "correct" not in s.statuses]
        hinted = generate_and_score(gen_params, unsolved, key=jax.random.fold_in(key, 1),
                                    desc=f"iter {it} rationalize",
                                    shard_dir=idir / "rationalized", prompt_fn=task.hint_prompt,
                                    **common) if unsolved else []
        extra = to_records(hinted, e_cfg.num_samples)
        records += extra
        counts["num_rationalized"] = sum(r.reward > 0 for r in extra)
    return records, counts


def _step_negatives_data(params: Any, records: Sequence[filtering.Sample],
                         selected: Sequence[filtering.Sample], by_id: dict[int, Problem], *,
                         idir: pathlib.Path, task: Task, tokenizer: Tokenizer,
                         model_cfg: model_lib.ModelConfig, cfg: EMConfig, key: jax.Array,
                         mesh=None) -> tuple[list[dict], list[dict], dict]:
    """M-step rows ({prompt_ids, completion_ids, token_weights}: the positives and the
    per-step weighted negatives), per-step DPO pairs ({prompt_ids, chosen_ids,
    rejected_ids}; only with objective="dpo") and statistics. The rollouts' result is a
    file (a resumed run skips them)."""
    from rest_em import step_values

    neg = cfg.step_negatives
    path = idir / "step_dataset.jsonl"
    pairs_path = idir / "step_pairs.jsonl"
    if not _exists(path) or (neg.objective == "dpo" and not _exists(pairs_path)):
        rollout_cfg = sampling.SamplingConfig(
            num_samples=neg.num_rollouts, temperature=cfg.temperature, top_k=cfg.top_k,
            top_p=cfg.top_p, max_new_tokens=cfg.max_new_tokens, eos_id=tokenizer.eos_id,
            pad_id=tokenizer.pad_id)
        prompts = {i: prompt_ids(task, tokenizer, p) for i, p in by_id.items()}
        ds = step_values.step_negatives_dataset(
            params, records, problems=by_id, prompt_ids=prompts,
            model_cfg=model_cfg, tokenizer=tokenizer, sampling_cfg=rollout_cfg,
            score_fn=partitioning.split_over_processes(task.score), key=key, positives=selected,
            num_rollouts=neg.num_rollouts,
            estimator=neg.estimator, beta=neg.beta, clip=neg.clip,
            max_per_problem=neg.max_per_problem, step_mode=neg.step_mode,
            max_steps=neg.max_steps, max_samples=max(cfg.num_samples, 1) * 2,
            seed=cfg.seed * 1_000_003 + int(idir.name.split("_")[-1]),
            chunk_size=cfg.chunk_size, mesh=mesh)
        stats = dict(ds.stats)
        if neg.objective == "dpo":
            pairs = step_values.step_dpo_pairs(ds.values, prompt_ids=prompts, tokenizer=tokenizer,
                                               positives=selected)
            stats["num_pairs"] = float(len(pairs))
            _write_jsonl(pairs_path, [{"prompt_ids": q.prompt_ids, "chosen_ids": q.chosen_ids,
                                       "rejected_ids": q.rejected_ids} for q in pairs])
        rows = [{"prompt_ids": p, "completion_ids": c, "token_weights": w}
                for p, c, w in zip(ds.prompt_ids, ds.completion_ids, ds.token_weights)]
        rows.append({"stats": stats})
        _write_jsonl(path, rows)  # last: its existence marks both files complete
        partitioning.sync(f"rest_em: wrote {path}")
    rows = _read_jsonl(path)
    stats = rows.pop()["stats"]
    pairs = _read_jsonl(pairs_path) if neg.objective == "dpo" else []
    return rows, pairs, stats


def _fits(lengths: Sequence[int], max_length: int, it: int, what: str) -> list[bool]:
    """Which examples fit the M-step's max_length (+1: inputs/targets shift); a long
    (few-shot) prompt plus a long re-tokenized sample may not, and training.fit refuses
    those mid-run, so they are dropped, counted and reported."""
    fits = [n <= max_length + 1 for n in lengths]
    if not all(fits):
        log.warning("iteration %d: %d of %d %s do not fit max_length=%d (prompt + completion) "
                    "and are not trained on", it, fits.count(False), len(fits), what, max_length)
    return fits


# --- the loop ---------------------------------------------------------------------------

def run(*, task: Task, tokenizer: Tokenizer, model_cfg: model_lib.ModelConfig,
        make_base_params: Callable[[], Any], workdir: str | pathlib.Path, cfg: EMConfig,
        mesh=None, teacher: Teacher | None = None) -> list[dict]:
    """Runs (or resumes) the EM loop in `workdir`; returns the metrics of every iteration.

    With a `teacher`, the E-step samples come from the teacher (distillation); the
    student (`make_base_params`, `model_cfg`) is trained and evaluated.

    With several processes (`jax.distributed`), every process calls `run` with the same
    arguments and a `mesh` over all processes' devices (see the module docstring).
    """
    if partitioning.is_multiprocess() and mesh is None:
        raise ValueError(f"{jax.process_count()} processes: run() needs a mesh over every "
                         "process's devices (e.g. partitioning.make_mesh(-1, 1, 1))")
    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    writer = metrics_lib.MetricsWriter(workdir)
    root = jax.random.key(cfg.seed)

    t0 = time.time()
    base_dir = workdir / "base"
    if not _exists(base_dir):  # orbax renames its temp dir into place only when complete
        base = make_base_params()
        _save_params_once(base_dir, base)
    base_seconds = time.time() - t0
    abstract = _abstract_params(model_cfg, mesh)
    base = checkpoints.restore_params(base_dir, abstract=abstract)

    train = with_gold(task.load("train"), "train")
    val = with_gold(task.load("val"), "val")
    if cfg.val_size is not None:
        val = val[: cfg.val_size]
    evals = {split: with_gold(task.load(split), split) for split in cfg.eval_splits}
    train_eval = train[: cfg.train_eval_size]

    params = base
    history: list[dict] = []
    for it in range(cfg.num_iterations + 1):
        idir = workdir / f"iter_{it:03d}"
        marker = idir / "metrics.json"
        if _exists(marker):
            history.append(json.loads(marker.read_text()))
            params = None if it > 0 else params  # restored below if a later iteration needs it
            continue
        if params is None:
            params = checkpoints.restore_params(workdir / f"iter_{it - 1:03d}" / "params",
                                                abstract=abstract)
        key = jax.random.fold_in(root, it)
        m: dict[str, Any] = {"iteration": it}
        seconds: dict[str, float] = {}
        if it == 0:
            seconds["base"] = base_seconds
        else:
            # E-step: sample from the previous iteration's model (or the teacher), score.
            t = time.time()
            records, estep_metrics = _estep(params, train, idir=idir, it=it, task=task,
                                            tokenizer=tokenizer, model_cfg=model_cfg, cfg=cfg,
                                            key=key, mesh=mesh, teacher=teacher)
            seconds["generate"] = time.time() - t

            # Filter: the M-step dataset.
            t = time.time()
            selected = filtering.select(records, max_per_problem=cfg.max_per_problem,
                                        seed=cfg.seed * 1_000_003 + it, dedup=cfg.dedup)
            _write_jsonl(idir / "selected.jsonl", [dataclasses.asdict(s) for s in selected])
            m.update(estep_metrics)
            m.update(num_selected=len(selected),
                     num_problems_solved=len({s.problem_id for s in selected}))
            seconds["filter"] = time.time() - t

            # M-step: fine-tune (from the base model) with validation-based selection.
            t = time.time()
            start = base if cfg.from_base else params
            if not selected:
                log.warning("iteration %d: no correct samples among %d: the M-step has nothing "
                            "to train on and keeps its starting model", it, len(records))
            eos = [tokenizer.eos_id]

            def val_reward(p):
                r = evaluate(p, val, task=task, tokenizer=tokenizer, model_cfg=model_cfg,
                             cfg=cfg, key=key, prefix="val", sampled=False, mesh=mesh)
                return r["val/greedy_pass@1"]

            by_id = {p.problem_id: p for p in train}
            neg = cfg.step_negatives
            pairs: list[dict] = []
            token_w = None
            if neg is None or neg.objective == "dpo":
                prompts = [prompt_ids(task, tokenizer, by_id[s.problem_id]) for s in selected]
                targets = [tokenizer.encode(s.completion) + eos for s in selected]
            if neg is not None:  # rollouts: per-step weighted negatives or DPO pairs
                t_neg = time.time()
                rows, pairs, neg_stats = _step_negatives_data(
                    params if teacher is None else teacher.params, records, selected, by_id,
                    idir=idir, task=task, tokenizer=tokenizer,
                    model_cfg=model_cfg if teacher is None else teacher.model_cfg, cfg=cfg,
                    key=jax.random.fold_in(key, 2), mesh=mesh)
                if neg.objective == "weighted_nll":  # positives (weight 1) + negatives
                    prompts = [r["prompt_ids"] for r in rows]
                    targets = [r["completion_ids"] for r in rows]
                    token_w = [r["token_weights"] for r in rows]
                m.update({f"negatives/{k}": v for k, v in neg_stats.items()})
                seconds["step_values"] = time.time() - t_neg
            fits = _fits([len(p) + len(c) for p, c in zip(prompts, targets)], cfg.fit.max_length,
                         it, "selected samples")
            prompts = [p for p, ok in zip(prompts, fits) if ok]
            targets = [c for c, ok in zip(targets, fits) if ok]
            if token_w is not None:
                token_w = [w for w, ok in zip(token_w, fits) if ok]
            fit = training.fit(
                start, prompts, targets, model_cfg=model_cfg, token_weights=token_w,
                cfg=cfg.fit, seed=cfg.seed * 1_000_003 + it, eval_fn=val_reward,
                checkpoint_dir=idir / "mstep", mesh=mesh, pad_id=tokenizer.pad_id,
                desc=f"iter {it} M-step",
                base_reward=val_reward(start) if cfg.keep_start else None,
            ) if prompts else training.FitResult(start, 0, None, [])
            params = fit.params
            m.update({"val/greedy_pass@1": fit.best_reward, "best_step": fit.best_step,
                      "num_too_long": fits.count(False),
                      "num_train_steps": training.total_steps(cfg.fit, len(prompts))
                      if prompts else 0})
            if pairs:  # per-step DPO from the positives' model, which is also the reference
                t_dpo = time.time()
                dpo_cfg = neg.dpo_fit or cfg.fit
                ok = _fits([len(q["prompt_ids"]) + max(len(q["chosen_ids"]), len(q["rejected_ids"]))
                            for q in pairs], dpo_cfg.max_length, it, "DPO pairs")
                pairs = [q for q, o in zip(pairs, ok) if o]
                if pairs:
                    dpo = training.fit_dpo(
                        params, [q["prompt_ids"] for q in pairs], [q["chosen_ids"] for q in pairs],
                        [q["rejected_ids"] for q in pairs], model_cfg=model_cfg, cfg=dpo_cfg,
                        seed=cfg.seed * 1_000_003 + it, beta=neg.dpo_beta, eval_fn=val_reward,
                        checkpoint_dir=idir / "dpo", mesh=mesh, pad_id=tokenizer.pad_id,
                        desc=f"iter {it} DPO", base_reward=fit.best_reward)
                    params = dpo.params
                    m.update({"val/greedy_pass@1": dpo.best_reward, "dpo/best_step": dpo.best_step,
                              "dpo/start_val_pass@1": fit.best_reward,
                              "dpo/num_train_steps": training.total_steps(dpo_cfg, len(pairs))})
                m["dpo/num_too_long"] = ok.count(False)
                seconds["dpo"] = time.time() - t_dpo
            _save_params_once(idir / "params", params)
            seconds["improve"] = time.time() - t - seconds.get("step_values", 0.0) - \
                seconds.get("dpo", 0.0)

        # Evaluate: train (greedy, the train-test gap) and test (greedy, pass@k, maj@k).
        t = time.time()
        ekey = jax.random.fold_in(root, 10_000 + it)
        splits = [("train", train_eval, False)] + [(n, ps, True) for n, ps in evals.items()]
        for split, probs, sampled in splits:
            path = idir / f"eval_{split}.json"
            if not _exists(path):
                _write_json(path, evaluate(params, probs, task=task, tokenizer=tokenizer,
                                           model_cfg=model_cfg, cfg=cfg, key=ekey, prefix=split,
                                           sampled=sampled, mesh=mesh))
                partitioning.sync(f"rest_em: wrote {path}")
            m.update(json.loads(path.read_text()))
        seconds["evaluate"] = time.time() - t
        m["seconds"] = seconds
        _write_json(marker, m)
        history.append(m)
        writer.write_all(history)
        if partitioning.is_main_process():
            tqdm.tqdm.write(_one_line(m))
    writer.write_all(history)
    return history


def _one_line(m: dict) -> str:
    keys = ("num_selected", "train/greedy_pass@1", "test/greedy_pass@1")
    parts = [f"{k}={m[k]:.3f}" if isinstance(m.get(k), float) else f"{k}={m[k]}"
             for k in keys if k in m]
    secs = ", ".join(f"{k} {v:.0f}s" for k, v in m["seconds"].items())
    return f"iteration {m['iteration']}: " + " ".join(parts) + f"  ({secs})"


def final_table(history: Sequence[dict]) -> str:
    """The terminal summary: one row per iteration."""
    cols = ["iteration", "num_correct", "num_selected", "train/greedy_pass@1", "test/greedy_pass@1"]
    ks = sorted({k for m in history for k in m if k.startswith(("test/pass@", "test/maj@"))},
                key=lambda k: (k.split("@")[0], int(k.split("@")[1])))
    cols += ks
    lines = [" | ".join(cols), " | ".join("---" for _ in cols)]
    for m in history:
        cells = []
        for c in cols:
            v = m.get(c, "")
            cells.append(f"{v:.3f}" if isinstance(v, float) else str(v))
        lines.append(" | ".join(cells))
    return "\n".join(lines)


def _abstract_params(model_cfg: model_lib.ModelConfig, mesh=None) -> Any:
    """Restore targets: the params' shapes, in their mesh shardings when a mesh is given."""
    abstract = model_lib.abstract_params(model_cfg)
    if mesh is None:
        return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), abstract)
    return jax.tree.map(lambda x, sh: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sh),
                        abstract, model_lib.param_shardings(model_cfg, mesh))


def final_params(workdir: str | pathlib.Path, model_cfg: model_lib.ModelConfig,
                 mesh=None) -> Any:
    """The params of a run's last completed iteration (its base if none): a teacher.
    With `mesh`, restored into the model's shardings on it."""
    workdir = pathlib.Path(workdir)
    done = sorted(p.parent for p in workdir.glob("iter_*/metrics.json")
                  if (p.parent / "params").exists())
    path = done[-1] / "params" if done else workdir / "base"
    if not path.exists():
        raise FileNotFoundError(f"{workdir}: no completed iteration or base params to load")
    return checkpoints.restore_params(path, abstract=_abstract_params(model_cfg, mesh))


def load_history(workdir: str | pathlib.Path) -> list[dict]:
    """Metrics of the completed iterations of a workdir, in order."""
    paths = sorted(pathlib.Path(workdir).glob("iter_*/metrics.json"))
    return [json.loads(p.read_text()) for p in paths]


__all__ = ["EMConfig", "Scored", "StepNegativesConfig", "Teacher", "final_params", "evaluate", "final_table", "generate_and_score", "load_history",
           "prompt_ids", "run", "with_gold"]
