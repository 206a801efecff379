"""The M-step (Improve): fine-tune the start model on the E-step's data.

An objective is an entry of `OBJECTIVES`, chosen by name (`objective_name`):

  "positives"     ReST^EM: reward-weighted NLL on the selected correct samples
  "weighted_nll"  per-step negatives (Setlur 2024): the positives plus incorrect samples
                  whose step tokens weigh exp(A_i / beta), A from Monte-Carlo rollouts
  "dpo"           the positives' fit, then per-step DPO on first-pit pairs from that
                  model (also the frozen reference), kept only if D_val improves

Every objective starts from `Inputs.start` (the base for ReST^EM, the last model for
ReST), selects its checkpoint by validation reward (with `keep_start`, the start model
competes too) and returns the params with its metrics. A new objective is a function
with the signature of `positives` and one more entry in the table.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax

from rest_em import errors, estep, filtering, partitioning, training
from rest_em import lora as lora_lib
from rest_em import model as model_lib
from rest_em import workdir as workdir_lib
from rest_em.tasks.problems import Problem, Task
from rest_em.tokenizers import Tokenizer

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class StepNegativesConfig:
    """Per-step negatives (Setlur et al. 2024): the M-step also trains on incorrect
    samples, each step's tokens weighted exp(A_i / beta) (clipped) where A_i = Q_i - Q_{i-1}
    and Q comes from `num_rollouts` rollouts per prefix of the sampling model."""

    num_rollouts: int = 5  # K; the paper: 5
    estimator: str = "best_of_k"  # or "mean"
    beta: float = 1.0
    clip: float = 10.0
    max_per_problem: int = 8  # negatives per problem; the paper: up to 8
    step_mode: str = "newline"  # or "sentence"
    max_steps: int = 32
    # The M-step objective (an entry of OBJECTIVES): "weighted_nll" or "dpo".
    objective: str = "weighted_nll"
    dpo_beta: float = 0.1
    dpo_fit: training.FitConfig | None = None  # the DPO phase's schedule; None: EMConfig.fit

    def __post_init__(self):
        if self.objective not in ("weighted_nll", "dpo"):
            raise errors.ConfigError(
                f"StepNegativesConfig.objective={self.objective!r}; expected 'weighted_nll' "
                "or 'dpo'"
            )
        if self.num_rollouts < 1 or self.dpo_beta <= 0:
            raise errors.ConfigError("num_rollouts must be >= 1 and dpo_beta > 0")


@dataclasses.dataclass(frozen=True)
class Inputs:
    """What an objective gets: the start model, the E-step's data and the run's parts."""

    start: Any  # params the fine-tune starts from
    policy: estep.Policy  # the E-step's sampler (per-step rollouts)
    records: Sequence[filtering.Sample]  # every scored E-step sample
    selected: Sequence[filtering.Sample]  # the filtered positives
    problems: dict[int, Problem]  # the train split by problem_id
    paths: workdir_lib.IterationPaths
    key: jax.Array
    val_reward: Callable[[Any], float]  # greedy pass@1 on D_val (checkpoint selection)
    task: Task
    tokenizer: Tokenizer
    model_cfg: model_lib.ModelConfig  # the learner's (a teacher's may differ)
    cfg: Any  # EMConfig
    mesh: Any = None

    @property
    def seed(self) -> int:
        return self.cfg.seed * 1_000_003 + self.paths.number


Result = tuple[Any, dict[str, Any]]  # (params, metrics incl. "seconds")


def _fits(lengths: Sequence[int], max_length: int, it: int, what: str) -> list[bool]:
    """Which examples fit the M-step's max_length (+1: inputs/targets shift); a long
    (few-shot) prompt plus a long re-tokenized sample may not, and training.fit refuses
    those mid-run, so they are dropped, counted and reported."""
    fits = [n <= max_length + 1 for n in lengths]
    if not all(fits):
        log.warning(
            "iteration %d: %d of %d %s do not fit max_length=%d (prompt + completion) "
            "and are not trained on",
            it,
            fits.count(False),
            len(fits),
            what,
            max_length,
        )
    return fits


def _fit(
    m: Inputs, prompts: list, targets: list, token_w: list | None = None
) -> tuple[training.FitResult, dict[str, Any]]:
    """The NLL fine-tune from `m.start` with validation-based selection (resumable)."""
    it, cfg = m.paths.number, m.cfg
    if not m.selected:
        log.warning(
            "iteration %d: no correct samples among %d: the M-step has nothing "
            "to train on and keeps its starting model",
            it,
            len(m.records),
        )
    ok = _fits(
        [len(p) + len(c) for p, c in zip(prompts, targets)],
        cfg.fit.max_length,
        it,
        "selected samples",
    )
    prompts = [p for p, o in zip(prompts, ok) if o]
    targets = [c for c, o in zip(targets, ok) if o]
    token_w = None if token_w is None else [w for w, o in zip(token_w, ok) if o]
    fit = (
        training.fit(
            m.start,
            prompts,
            targets,
            model_cfg=m.model_cfg,
            token_weights=token_w,
            cfg=cfg.fit,
            seed=m.seed,
            eval_fn=m.val_reward,
            checkpoint_dir=m.paths.mstep_checkpoints,
            mesh=m.mesh,
            pad_id=m.tokenizer.pad_id,
            desc=f"iter {it} M-step",
            base_reward=m.val_reward(m.start) if cfg.keep_start else None,
        )
        if prompts
        else training.FitResult(m.start, 0, None, [])
    )
    if fit.adapters is not None and partitioning.is_main_process():
        # The adapters alone, in PEFT's format, beside the merged params.
        lora_lib.save_peft(m.paths.adapter, fit.adapters, cfg.fit.lora)
    return fit, {
        "val/greedy_pass@1": fit.best_reward,
        "best_step": fit.best_step,
        "num_too_long": ok.count(False),
        "num_train_steps": training.total_steps(cfg.fit, len(prompts)) if prompts else 0,
    }


def _positive_examples(m: Inputs) -> tuple[list, list]:
    eos = [m.tokenizer.eos_id]
    prompts = [estep.prompt_ids(m.task, m.tokenizer, m.problems[s.problem_id]) for s in m.selected]
    targets = [m.tokenizer.encode(s.completion) + eos for s in m.selected]
    return prompts, targets


def positives(m: Inputs) -> Result:
    """ReST^EM's M-step: NLL on the selected correct samples (reward 1 each)."""
    t = time.time()
    fit, metrics = _fit(m, *_positive_examples(m))
    return fit.params, {**metrics, "seconds": {"improve": time.time() - t}}


def _step_values_codec(paths: workdir_lib.IterationPaths, dpo: bool) -> workdir_lib.Codec:
    """step_pairs.jsonl (DPO only) then step_dataset.jsonl, whose existence marks both
    complete; its last row holds the statistics."""

    def write(path, value):
        rows, pairs, stats = value
        if dpo:
            workdir_lib.write_jsonl(paths.step_pairs, pairs)
        workdir_lib.write_jsonl(path, rows + [{"stats": stats}])

    def read(path):
        rows = workdir_lib.read_jsonl(path)
        stats = rows.pop()["stats"]
        return rows, workdir_lib.read_jsonl(paths.step_pairs) if dpo else [], stats

    return workdir_lib.Codec(write, read)


def step_values_data(m: Inputs) -> tuple[list[dict], list[dict], dict]:
    """M-step rows ({prompt_ids, completion_ids, token_weights}: the positives and the
    per-step weighted negatives), per-step DPO pairs ({prompt_ids, chosen_ids,
    rejected_ids}; objective "dpo" only) and statistics, from rollouts of the E-step's
    policy; a unit of work (a resumed run skips the rollouts)."""
    from rest_em import step_values

    cfg, neg, tok = m.cfg, m.cfg.step_negatives, m.tokenizer
    dpo = neg.objective == "dpo"

    def compute():
        rollout_cfg = estep.sampling_config(cfg, tok, neg.num_rollouts)
        prompts = {i: estep.prompt_ids(m.task, tok, p) for i, p in m.problems.items()}
        ds = step_values.step_negatives_dataset(
            m.policy.params,
            m.records,
            problems=m.problems,
            prompt_ids=prompts,
            model_cfg=m.policy.model_cfg,
            tokenizer=tok,
            sampling_cfg=rollout_cfg,
            score_fn=partitioning.split_over_processes(m.task.score),
            key=jax.random.fold_in(m.key, 2),
            positives=m.selected,
            num_rollouts=neg.num_rollouts,
            estimator=neg.estimator,
            beta=neg.beta,
            clip=neg.clip,
            max_per_problem=neg.max_per_problem,
            step_mode=neg.step_mode,
            max_steps=neg.max_steps,
            max_samples=max(cfg.num_samples, 1) * 2,
            seed=m.seed,
            chunk_size=cfg.chunk_size,
            mesh=m.mesh,
        )
        stats, pairs = dict(ds.stats), []
        if dpo:
            pairs = [
                {
                    "prompt_ids": q.prompt_ids,
                    "chosen_ids": q.chosen_ids,
                    "rejected_ids": q.rejected_ids,
                }
                for q in step_values.step_dpo_pairs(
                    ds.values, prompt_ids=prompts, tokenizer=tok, positives=m.selected
                )
            ]
            stats["num_pairs"] = float(len(pairs))
        rows = [
            {"prompt_ids": p, "completion_ids": c, "token_weights": w}
            for p, c, w in zip(ds.prompt_ids, ds.completion_ids, ds.token_weights)
        ]
        return rows, pairs, stats

    return workdir_lib.unit(m.paths.step_dataset, compute, _step_values_codec(m.paths, dpo))


def weighted_nll(m: Inputs) -> Result:
    """Per-step negatives: one fit on the positives (weight 1) and the negatives, each
    step's tokens weighted exp(A_i / beta)."""
    t = time.time()
    rows, _, stats = step_values_data(m)
    t_fit = time.time()
    fit, metrics = _fit(
        m,
        [r["prompt_ids"] for r in rows],
        [r["completion_ids"] for r in rows],
        [r["token_weights"] for r in rows],
    )
    metrics.update({f"negatives/{k}": v for k, v in stats.items()})
    return fit.params, {
        **metrics,
        "seconds": {"step_values": t_fit - t, "improve": time.time() - t_fit},
    }


def dpo(m: Inputs) -> Result:
    """The positives' fit, then per-step DPO from that model (the frozen reference too)
    on first-pit pairs; DPO's params are kept only when they beat it on D_val."""
    t = time.time()
    _, pairs, stats = step_values_data(m)
    seconds = {"step_values": time.time() - t}
    t = time.time()
    fit, metrics = _fit(m, *_positive_examples(m))
    metrics.update({f"negatives/{k}": v for k, v in stats.items()})
    seconds["improve"] = time.time() - t
    params = fit.params
    if pairs:
        t = time.time()
        neg, it = m.cfg.step_negatives, m.paths.number
        dpo_cfg = neg.dpo_fit or m.cfg.fit
        ok = _fits(
            [
                len(q["prompt_ids"]) + max(len(q["chosen_ids"]), len(q["rejected_ids"]))
                for q in pairs
            ],
            dpo_cfg.max_length,
            it,
            "DPO pairs",
        )
        pairs = [q for q, o in zip(pairs, ok) if o]
        if pairs:
            res = training.fit_dpo(
                params,
                [q["prompt_ids"] for q in pairs],
                [q["chosen_ids"] for q in pairs],
                [q["rejected_ids"] for q in pairs],
                model_cfg=m.model_cfg,
                cfg=dpo_cfg,
                seed=m.seed,
                beta=neg.dpo_beta,
                eval_fn=m.val_reward,
                checkpoint_dir=m.paths.dpo_checkpoints,
                mesh=m.mesh,
                pad_id=m.tokenizer.pad_id,
                desc=f"iter {it} DPO",
                base_reward=fit.best_reward,
            )
            params = res.params
            metrics.update(
                {
                    "val/greedy_pass@1": res.best_reward,
                    "dpo/best_step": res.best_step,
                    "dpo/start_val_pass@1": fit.best_reward,
                    "dpo/num_train_steps": training.total_steps(dpo_cfg, len(pairs)),
                }
            )
        metrics["dpo/num_too_long"] = ok.count(False)
        seconds["dpo"] = time.time() - t
    return params, {**metrics, "seconds": seconds}


OBJECTIVES: dict[str, Callable[[Inputs], Result]] = {
    "positives": positives,
    "weighted_nll": weighted_nll,
    "dpo": dpo,
}


def objective_name(cfg: Any) -> str:
    """The entry of OBJECTIVES an EMConfig selects."""
    return "positives" if cfg.step_negatives is None else cfg.step_negatives.objective


def improve(m: Inputs, params_codec: workdir_lib.Codec) -> Result:
    """The M-step as a unit of work: the objective's params (iter_NNN/params, written
    with `params_codec`) and metrics (iter_NNN/mstep.json, written last: it marks both
    complete)."""

    def write(path, value):
        params, metrics = value
        params_codec.write(m.paths.params, params)
        partitioning.sync(f"rest_em: wrote {m.paths.params}")
        workdir_lib.write_json(path, metrics)

    def read(path):
        return params_codec.read(m.paths.params), workdir_lib.read_json(path)

    return workdir_lib.unit(
        m.paths.mstep,
        lambda: OBJECTIVES[objective_name(m.cfg)](m),
        workdir_lib.Codec(write, read, every_process=True),
    )


__all__ = [
    "Inputs",
    "OBJECTIVES",
    "StepNegativesConfig",
    "dpo",
    "improve",
    "objective_name",
    "positives",
    "step_values_data",
    "weighted_nll",
]
