"""Evaluation: greedy pass@1, unbiased pass@k, maj@k, per-level breakdowns.

The metrics are host-side numpy (inputs: per-problem lists of verdicts and extracted
answers); `evaluate` produces those inputs with the sampler and the task's checker.
"""

from __future__ import annotations

import collections
import functools
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np


def pass_at_k(num_samples: int, num_correct: int, k: int) -> float:
    """Unbiased pass@k of Chen et al. (2021): 1 - C(n-c, k) / C(n, k), computed as a
    stable product."""
    n, c = num_samples, num_correct
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"need 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def majority_answer(answers: Sequence[str | None]) -> str | None:
    """The most frequent non-None answer; ties go to the answer seen first."""
    counts = collections.Counter(a for a in answers if a is not None)
    if not counts:
        return None
    best = max(counts.values())
    return next(a for a in answers if a is not None and counts[a] == best)


def maj_at_k(answers: Sequence[str | None], correct: Sequence[bool], k: int) -> float:
    """Majority vote over the FIRST k samples (in sample-index order): 1.0 when the
    voted answer is one that the checker marked correct, else 0.0."""
    if k > len(answers):
        raise ValueError(f"k={k} > {len(answers)} samples")
    voted = majority_answer(answers[:k])
    if voted is None:
        return 0.0
    return float(any(a == voted and ok for a, ok in zip(answers[:k], correct[:k])))


def summarize(
    *,
    greedy_correct: Sequence[bool],
    sample_correct: Sequence[Sequence[bool]] | None = None,
    sample_answers: Sequence[Sequence[str | None]] | None = None,
    levels: Sequence[int | None] | None = None,
    ks: Sequence[int] = (1, 4, 8),
) -> dict[str, float]:
    """Flat metrics, fractions in [0, 1]: `greedy_pass@1`, `pass@k`, `maj@k`, each also
    per difficulty as `level_<L>/<metric>`. ks above the number of samples are skipped;
    `num_problems` counts the problems scored."""

    def metrics(idx: list[int]) -> dict[str, float]:
        out = {"greedy_pass@1": float(np.mean([greedy_correct[i] for i in idx]))}
        if sample_correct is not None:
            n = len(sample_correct[idx[0]])
            for k in ks:
                if k > n:
                    continue
                out[f"pass@{k}"] = float(
                    np.mean(
                        [
                            pass_at_k(len(sample_correct[i]), int(sum(sample_correct[i])), k)
                            for i in idx
                        ]
                    )
                )
                if sample_answers is not None:
                    out[f"maj@{k}"] = float(
                        np.mean([maj_at_k(sample_answers[i], sample_correct[i], k) for i in idx])
                    )
        return out

    all_idx = list(range(len(greedy_correct)))
    if not all_idx:
        return {"num_problems": 0}
    result = metrics(all_idx)
    result["num_problems"] = len(all_idx)
    if levels is not None:
        by_level: dict[int, list[int]] = collections.defaultdict(list)
        for i, lv in enumerate(levels):
            if lv is not None:
                by_level[lv].append(i)
        for lv in sorted(by_level):
            for k, v in metrics(by_level[lv]).items():
                result[f"level_{lv}/{k}"] = v
    return result


# --- evaluating a model with the sampler ------------------------------------------------


def evaluate(
    params: Any,
    problems: Sequence[Any],
    *,
    task: Any,
    tokenizer: Any,
    model_cfg: Any,
    cfg: Any,
    key: Any,
    prefix: str,
    sampled: bool,
    mesh: Any = None,
) -> dict[str, float]:
    """Greedy pass@1 (and, if `sampled`, pass@k and maj@k with `cfg.eval_num_samples`
    samples at the E-step's temperature) with per-level breakdowns, keys `<prefix>/...`.
    `cfg` is an EMConfig (max_new_tokens, chunk_size, temperature, top_k, top_p, eval_ks)."""
    import dataclasses

    from rest_em import estep

    greedy_cfg = dataclasses.replace(
        estep.sampling_config(cfg, tokenizer, 1), temperature=0.0, top_k=0, top_p=1.0
    )
    common = dict(
        task=task,
        tokenizer=tokenizer,
        model_cfg=model_cfg,
        key=key,
        chunk_size=cfg.chunk_size,
        mesh=mesh,
    )
    greedy = estep.generate_and_score(
        params, problems, sampling_cfg=greedy_cfg, desc=f"eval {prefix} greedy", **common
    )
    samples = None
    if sampled:
        sample_cfg = dataclasses.replace(
            greedy_cfg,
            num_samples=cfg.eval_num_samples,
            temperature=cfg.temperature,
            top_k=cfg.top_k,
            top_p=cfg.top_p,
        )
        samples = estep.generate_and_score(
            params, problems, sampling_cfg=sample_cfg, desc=f"eval {prefix} samples", **common
        )
    results = summarize(
        greedy_correct=[s.statuses[0] == "correct" for s in greedy],
        sample_correct=None
        if samples is None
        else [[st == "correct" for st in s.statuses] for s in samples],
        sample_answers=None
        if samples is None or not task.majority_vote
        else [s.answers for s in samples],
        levels=[p.level for p in problems],
        ks=cfg.eval_ks,
    )
    return {f"{prefix}/{k}": v for k, v in results.items()}


def evaluate_splits(
    params: Any,
    splits: Mapping[str, tuple[Sequence[Any], bool]],
    paths: Any,
    key: Any,
    **kwargs: Any,
) -> dict[str, float]:
    """`evaluate` on each (problems, sampled[, task]) split, each a unit of work
    (`paths.eval(split)`: iter_NNN/eval_<split>.json), merged into one dict; `kwargs` are
    `evaluate`'s (task, tokenizer, model_cfg, cfg, mesh); a split's own task (a transfer
    task) replaces kwargs' task."""
    from rest_em import workdir

    out: dict[str, float] = {}
    for split, (problems, sampled, *task) in splits.items():
        args = {**kwargs, "task": task[0]} if task else kwargs
        compute = functools.partial(
            evaluate, params, problems, prefix=split, sampled=sampled, key=key, **args
        )
        out.update(workdir.unit(paths.eval(split), compute))
    return out
