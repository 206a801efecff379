"""The E-step (Generate): sample solutions, score them, keep every result on disk.

`generate_and_score` is the engine shared by the E-step, evaluation and STaR's hinted
round: problems go through the sampler in chunks of one compiled shape, the task's checker
scores every completion, and (with a shard directory) each chunk is a resumable unit.
`generate` is the E-step proper: its data source is an entry of `SOURCES`, chosen by
`EMConfig.data`: "model" (samples of the current model or of a teacher: ReST^EM, ReST,
RFT, STaR, distillation) or "human" (the task's reference solutions: the SFT baseline).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import functools
import pathlib
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
import tqdm

from rest_em import filtering, partitioning, sampling, stops
from rest_em import model as model_lib
from rest_em import workdir as workdir_lib
from rest_em.tasks.problems import Problem, Task
from rest_em.tokenizers import Tokenizer


@dataclasses.dataclass(frozen=True)
class Policy:
    """A model that generates: its config and params (the learner, or a teacher)."""

    model_cfg: model_lib.ModelConfig
    params: Any


@dataclasses.dataclass(frozen=True)
class Scored:
    """The sampler's completions for one problem with the checker's statuses."""

    problem: Problem
    completions: list[str]
    statuses: list[str]
    answers: list[str | None]


def prompt_ids(
    task: Task,
    tokenizer: Tokenizer,
    problem: Problem,
    prompt_fn: Callable[[Problem], str] | None = None,
) -> list[int]:
    ids = tokenizer.encode((prompt_fn or task.prompt)(problem))
    return ([tokenizer.bos_id] if tokenizer.bos_id is not None else []) + ids


def score_problems(
    task: Task, problems: Sequence[Problem], completions: Sequence[list[str]]
) -> list[list[str]]:
    """`task.score` of every problem's completions, in one call (a code task's sandbox
    then runs them all in parallel). With several processes each scores its contiguous
    share of the problems; all get every status."""

    def score(probs, comps):
        flat = task.score(
            [c for cs in comps for c in cs], [p for p, cs in zip(probs, comps) for _ in cs]
        )
        out, i = [], 0
        for cs in comps:
            out.append([str(s) for s in flat[i : i + len(cs)]])
            i += len(cs)
        return out

    return partitioning.split_over_processes(score)(problems, completions)


def _shard_rows(
    chunk: Sequence[Problem], comps: Sequence[list[str]], statuses: Sequence[list[str]], task: Task
) -> list[dict]:
    return [
        {
            "problem_id": p.problem_id,
            "sample_index": j,
            "completion": c,
            "status": s,
            "reward": float(s == "correct"),
            "answer": task.extract(c),
        }
        for p, cs, ss in zip(chunk, comps, statuses)
        for j, (c, s) in enumerate(zip(cs, ss))
    ]


def _scored(chunk: Sequence[Problem], rows: Sequence[dict]) -> list[Scored]:
    by_id: dict[int, list[dict]] = {}
    for r in rows:
        by_id.setdefault(r["problem_id"], []).append(r)
    out = []
    for p in chunk:
        rs = sorted(by_id[p.problem_id], key=lambda r: r["sample_index"])
        out.append(
            Scored(
                p,
                [r["completion"] for r in rs],
                [r["status"] for r in rs],
                [r["answer"] for r in rs],
            )
        )
    return out


@functools.lru_cache(maxsize=8)
def stop_table(stop_sequences: tuple[str, ...], tokenizer: Tokenizer) -> np.ndarray | None:
    """The sampler's table for a task's stop sequences (None: the task has none)."""
    if not stop_sequences:
        return None
    return stops.token_table(stop_sequences, stops.token_bytes(tokenizer))


def generate_and_score(
    params: Any,
    problems: Sequence[Problem],
    *,
    task: Task,
    tokenizer: Tokenizer,
    model_cfg: model_lib.ModelConfig,
    sampling_cfg: sampling.SamplingConfig,
    key: jax.Array,
    chunk_size: int,
    mesh=None,
    desc: str = "",
    shard_dir: pathlib.Path | None = None,
    prompt_fn: Callable[[Problem], str] | None = None,
    seconds: dict[str, float] | None = None,
    overlap: bool = True,
) -> list[Scored]:
    """Samples and scores `problems` in chunks of `chunk_size` (one sampler shape).

    The checker scores a chunk in a background thread while the sampler generates the
    next one (a code task's sandbox runs programs in parallel workers meanwhile). With
    `shard_dir`, each chunk's results are a unit of work there (`workdir.unit`):
    finished chunks are read back instead of recomputed. Keys depend only on (key,
    problem_id, sample index), so chunking never changes a sample. `prompt_fn` replaces
    `task.prompt` (STaR's hinted prompts). `seconds` (if given) accumulates "sampler"
    (sampling and decoding), "scoring" (the checker, overlapped) and "scoring_wait"
    (the sampler idle, waiting for the checker). `overlap=False` scores each chunk before
    sampling the next (the benchmark's baseline; also what several processes do).
    """
    timing = seconds if seconds is not None else {}
    chunks = [list(problems[s : s + chunk_size]) for s in range(0, len(problems), chunk_size)]
    rows: list[list[dict] | None] = [None] * len(chunks)
    todo = []
    for i in range(len(chunks)):
        path = None if shard_dir is None else workdir_lib.shard(shard_dir, i)
        if path is not None and workdir_lib.exists(path):
            rows[i] = workdir_lib.JSONL.read(path)
        else:
            todo.append((i, path))

    def sample(chunk: list[Problem]) -> list[list[str]]:
        # Pad the last chunk with copies of its first problem: one compiled shape.
        padded = (
            chunk + [chunk[0]] * (chunk_size - len(chunk)) if len(problems) > chunk_size else chunk
        )
        res = sampling.sample(
            params,
            [prompt_ids(task, tokenizer, p, prompt_fn) for p in padded],
            model_cfg=model_cfg,
            cfg=sampling_cfg,
            key=key,
            problem_ids=[p.problem_id for p in padded],
            mesh=mesh,
            stop_table=stop_table(task.stop_sequences, tokenizer),
        )
        return [
            [
                stops.cut(
                    tokenizer.decode(res.tokens_BxNxT[b, j, : res.lengths_BxN[b, j]]),
                    task.stop_sequences,
                )
                for j in range(sampling_cfg.num_samples)
            ]
            for b in range(len(chunk))
        ]

    def score(chunk: list[Problem], comps: list[list[str]]) -> list[dict]:
        with _timed(timing, "scoring"):
            return _shard_rows(chunk, comps, score_problems(task, chunk, comps), task)

    def finish(i: int, path: pathlib.Path | None, scoring: concurrent.futures.Future) -> None:
        with _timed(timing, "scoring_wait"):
            result = scoring.result()
        if path is None:
            rows[i] = result
        else:
            rows[i] = workdir_lib.unit(path, lambda: result, workdir_lib.JSONL)

    # Several processes: each scores its share and all gather (a collective), so the
    # scoring runs in this thread, in the same order on every process.
    overlap = overlap and not partitioning.is_multiprocess()
    pending = None
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="rest_em-score") as pool:
        for i, path in tqdm.tqdm(todo, desc=desc, leave=False, dynamic_ncols=True):
            with _timed(timing, "sampler"):
                comps = sample(chunks[i])
            scoring = (
                pool.submit(score, chunks[i], comps) if overlap else _done(score(chunks[i], comps))
            )
            if pending is not None:
                finish(*pending)
            pending = (i, path, scoring)
        if pending is not None:
            finish(*pending)
    return [s for chunk, r in zip(chunks, rows) for s in _scored(chunk, r)]


@contextlib.contextmanager
def _timed(seconds: dict[str, float], name: str):
    t = time.monotonic()
    try:
        yield
    finally:
        with _TIMING_LOCK:
            seconds[name] = seconds.get(name, 0.0) + time.monotonic() - t


_TIMING_LOCK = threading.Lock()


def _done(value: Any) -> concurrent.futures.Future:
    f: concurrent.futures.Future = concurrent.futures.Future()
    f.set_result(value)
    return f


def sampling_config(cfg: Any, tokenizer: Tokenizer, num_samples: int) -> sampling.SamplingConfig:
    """`num_samples` per prompt at the EMConfig's temperature, top-k, top-p and length,
    on its decoding engine: the E-step's, evaluation's and per-step rollouts' sampler
    settings."""
    return sampling.SamplingConfig(
        num_samples=num_samples,
        temperature=cfg.temperature,
        top_k=cfg.top_k,
        top_p=cfg.top_p,
        max_new_tokens=cfg.max_new_tokens,
        eos_id=tokenizer.eos_id,
        pad_id=tokenizer.pad_id,
        num_slots=getattr(cfg, "decode_slots", 0),
        kv_cache_dtype=getattr(cfg, "kv_cache_dtype", None),
    )


# --- the E-step's data sources ----------------------------------------------------------

Records = list[filtering.Sample]
Counts = dict[str, int]


def _counts(num_problems: int, statuses: Sequence[str]) -> Counts:
    return {
        "num_problems": num_problems,
        "num_samples": len(statuses),
        "num_correct": statuses.count("correct"),
        "num_no_answer": statuses.count("no_answer"),
        "num_checker_errors": statuses.count("checker_error") + statuses.count("timeout"),
    }


def _records(task: Task, scored: Sequence[Scored], offset: int) -> Records:
    return [
        filtering.Sample(
            problem_id=s.problem.problem_id,
            sample_index=offset + j,
            prompt=task.prompt(s.problem),
            completion=c,
            reward=float(st == "correct"),
        )
        for s in scored
        for j, (c, st) in enumerate(zip(s.completions, s.statuses))
    ]


def model_samples(
    policy: Policy,
    train: Sequence[Problem],
    *,
    paths: workdir_lib.IterationPaths,
    task: Task,
    tokenizer: Tokenizer,
    cfg: Any,
    key: jax.Array,
    mesh=None,
) -> tuple[Records, Counts]:
    """`num_samples` samples per problem from `policy` (estep="greedy": one greedy
    solution, STaR). With `rationalize`, problems without a correct sample are sampled
    again from the hinted prompt and the correct ones kept with the plain prompt (STaR),
    sample indices continuing after the first round's."""
    greedy = cfg.estep == "greedy"
    e_cfg = sampling_config(cfg, tokenizer, 1 if greedy else cfg.num_samples)
    if greedy:
        e_cfg = dataclasses.replace(e_cfg, temperature=0.0)
    common = dict(
        task=task,
        tokenizer=tokenizer,
        model_cfg=policy.model_cfg,
        sampling_cfg=e_cfg,
        chunk_size=cfg.chunk_size,
        mesh=mesh,
    )
    it, seconds = paths.number, {}
    if task.scoring_stats is not None:
        task.scoring_stats()  # start the counters afresh: this E-step's work only
    scored = generate_and_score(
        policy.params,
        train,
        key=jax.random.fold_in(key, 0),
        desc=f"iter {it} E-step",
        shard_dir=paths.samples,
        seconds=seconds,
        **common,
    )
    workdir_lib.write_json(
        paths.manifest,
        {
            "shards": sorted(p.name for p in paths.samples.glob("shard_*.jsonl")),
            "num_problems": len(train),
            "num_samples": e_cfg.num_samples,
        },
    )
    records = _records(task, scored, 0)
    counts = _counts(len(train), [st for s in scored for st in s.statuses])
    if cfg.rationalize:
        if task.hint_prompt is None:
            raise ValueError(f"rationalize=True, but task {task.name!r} has no hint_prompt")
        unsolved = [s.problem for s in scored if "correct" not in s.statuses]
        hinted = (
            generate_and_score(
                policy.params,
                unsolved,
                key=jax.random.fold_in(key, 1),
                desc=f"iter {it} rationalize",
                shard_dir=paths.rationalized,
                prompt_fn=task.hint_prompt,
                seconds=seconds,
                **common,
            )
            if unsolved
            else []
        )
        extra = _records(task, hinted, e_cfg.num_samples)
        records += extra
        counts["num_rationalized"] = sum(r.reward > 0 for r in extra)
    counts["seconds"] = {f"generate/{k}": v for k, v in seconds.items()}
    if task.scoring_stats is not None:
        counts["sandbox"] = sandbox_metrics(task.scoring_stats())
    return records, counts


def sandbox_metrics(stats: dict[str, Any]) -> dict[str, Any]:
    """A code task's E-step work in the sandbox (this process's: a resumed E-step counts
    only the chunks it scored), for the metrics: programs run, identical programs
    skipped, programs/s in the sandbox, the isolation in effect and what it lacks."""
    from rest_em.tasks import programs

    ran = stats["programs"] - stats["no_program"]
    isolation = stats["isolation"]
    return {
        "programs": stats["programs"],
        "runs": stats["runs"],
        "skipped_identical": ran - stats["runs"],
        "programs_per_s": stats["runs"] / stats["seconds"] if stats["seconds"] else 0.0,
        "seconds": stats["seconds"],
        "isolation": isolation,
        "degraded": ",".join(programs.missing_isolation(isolation.split(","))) if isolation else "",
    }


def human_solutions(
    policy: Policy, train: Sequence[Problem], *, task: Task, **_: Any
) -> tuple[Records, Counts]:
    """The train split's reference solutions, reward 1 (no sampling): SFT on human data."""
    del policy
    records = [
        filtering.Sample(
            problem_id=p.problem_id,
            sample_index=0,
            prompt=task.prompt(p),
            completion=task.target(p),
            reward=1.0,
        )
        for p in train
        if p.solution
    ]
    return records, {
        "num_problems": len(train),
        "num_samples": 0,
        "num_correct": len(records),
        "num_no_answer": 0,
        "num_checker_errors": 0,
    }


SOURCES: dict[str, Callable[..., tuple[Records, Counts]]] = {
    "model": model_samples,
    "human": human_solutions,
}


def generate(
    policy: Policy,
    train: Sequence[Problem],
    *,
    paths: workdir_lib.IterationPaths,
    task: Task,
    tokenizer: Tokenizer,
    cfg: Any,
    key: jax.Array,
    mesh=None,
) -> tuple[Records, Counts]:
    """The E-step: candidate M-step data (every scored sample, reward 1 if correct) and
    its counts, from `SOURCES[cfg.data]`."""
    return SOURCES[cfg.data](
        policy, train, paths=paths, task=task, tokenizer=tokenizer, cfg=cfg, key=key, mesh=mesh
    )


__all__ = [
    "Policy",
    "SOURCES",
    "Scored",
    "generate",
    "generate_and_score",
    "human_solutions",
    "model_samples",
    "prompt_ids",
    "sampling_config",
    "score_problems",
]
