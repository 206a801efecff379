"""Per-step values of sampled solutions by Monte-Carlo rollouts, and what to train on them.

Setlur et al. 2024 (arXiv 2406.14532): an incorrect sample still holds useful steps; which
ones is told by the value of each prefix. For a sample with steps y_1..y_T (see
`rest_em.steps`) of problem x:

  Q_i   = value of the prefix y_{1:i}: the chance that the policy, continuing from it,
          reaches a correct answer. Q_0 is the problem itself, Q_T = the sample's reward.
          Estimated from K rollouts per prefix, either as their mean (Q under the policy
          pi) or as best-of-K (Q under BoK(pi), "does any of K tries succeed"; the paper's
          choice, K = 5).
  A_i   = Q_i - Q_{i-1}: the advantage of step i (what taking y_i did to the chance of
          success).
  pit c = the first step after which success becomes unlikely (`first_pit`).

Two objectives use them: advantage-weighted NLL, sum_i exp(A_i / beta) log pi(y_i | x, y_<i)
(per-token weights, `token_weights`, fed to `training.fit(token_weights=...)`), and per-step
DPO on (shared prefix y_<c, a successful continuation, the pit step y_c) pairs
(`step_dpo_pairs`, `losses.step_dpo_loss`).

Rollouts go through the sampler (`sampler_rollout_fn`) with derived keys: prefix i of
sample n of problem p gets the stable id `rollout_id(p, n, i)` as the sampler's problem
id, and rollout k is the sampler's sample index, so a rollout never depends on batching,
chunking or the other prefixes. Any other `RolloutFn` (a toy policy in the tests) can be
plugged in instead.

Cost: one rollout of at most `max_new_tokens` tokens per (distinct prefix, k): at most
K * (number of problems + sum over samples of (T - 1)) rollouts, where T <= max_steps (the
empty prefix is shared by a problem's samples, the full sample needs none, and identical
prefixes of one problem are rolled out once). E.g. 1000 problems x 8 negatives x 5 steps
x K=5 is about 165k rollouts, 5x an E-step of 32 samples per problem.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np

from rest_em import evaluation, filtering, losses, sampling
from rest_em import model as model_lib
from rest_em import steps as steps_lib

ESTIMATORS = ("best_of_k", "mean")
MAX_ID = 2**31  # the sampler's problem ids must be in [0, 2**31)


# --- Q from rollout rewards ---------------------------------------------------------------


def estimate_q(
    rewards_PxK: np.ndarray, *, estimator: str = "best_of_k", k: int | None = None
) -> np.ndarray:
    """`q_P`: the value of each of P prefixes from the rewards of its K rollouts.

    "mean": the fraction of rollouts that succeed, an unbiased estimate of Q^pi (rewards
    may be any reals). "best_of_k": an unbiased estimate of the chance that at least one of
    `k` rollouts succeeds (default k = K: 1 if any of the K succeeded, else 0), i.e. Q under
    the best-of-k policy, 1 - (1 - p)^k for success rate p; with K > k it is the unbiased
    pass@k estimator 1 - C(K-c, k)/C(K, k) (lower variance than K = k). Rewards must be 0/1.
    """
    rewards = np.asarray(rewards_PxK, np.float64)
    if rewards.ndim != 2 or rewards.shape[1] < 1:
        raise ValueError(f"rewards must be [num_prefixes, K>=1], got shape {rewards.shape}")
    if estimator == "mean":
        if k is not None:
            raise ValueError("k only applies to estimator='best_of_k'")
        return rewards.mean(axis=1)
    if estimator != "best_of_k":
        raise ValueError(f"estimator={estimator!r}; expected one of {ESTIMATORS}")
    if not np.isin(rewards, (0.0, 1.0)).all():
        raise ValueError("best_of_k needs 0/1 rewards")
    num = rewards.shape[1]
    k = num if k is None else k
    if not 1 <= k <= num:
        raise ValueError(f"best_of_k needs 1 <= k <= K={num}, got k={k}")
    return np.array([evaluation.pass_at_k(num, int(c), k) for c in rewards.sum(axis=1)])


def advantages(q_Tp1: np.ndarray) -> np.ndarray:
    """`a_T`: A_i = Q_i - Q_{i-1} for steps i = 1..T from the prefix values Q_0..Q_T
    (Q_0 = the problem itself). Works on a leading batch axis too (`[..., T+1] -> [..., T]`)."""
    q = np.asarray(q_Tp1, np.float64)
    if q.shape[-1] < 1:
        raise ValueError("need at least Q_0")
    return np.diff(q, axis=-1)


def first_pit(q_Tp1: np.ndarray, *, threshold: float = 0.0) -> int | None:
    """The first pit: the smallest step c in 1..T with Q_c <= threshold, or None.

    The first step after which success becomes unlikely: all prefixes before y_c still
    led somewhere (Q_{c'} > threshold for 1 <= c' < c), y_{1:c} no longer does. This is the
    "first pit" of Hwang et al. 2024 (Self-Explore), whose per-step DPO Setlur et al. use:
    with the best-of-K estimator and threshold 0, the first step from which none of the K
    rollouts reaches a correct answer. One best-of-K estimate is 0 or 1, so when Q_0 = 1 the
    pit is also the first step where Q drops most (A_c = -1). For a negative Q_T = 0, so a
    pit always exists (at worst the last step); None means no prefix is below threshold
    (a positive). Q_0 is not looked at: with Q_0 <= threshold the pit is step 1.
    """
    q = np.asarray(q_Tp1, np.float64)
    if q.ndim != 1 or q.shape[0] < 2:
        raise ValueError(f"need Q_0..Q_T with T >= 1, got shape {q.shape}")
    below = np.nonzero(q[1:] <= threshold)[0]
    return int(below[0]) + 1 if below.size else None


def token_weights(
    advantages_T: np.ndarray, spans_T: Sequence[tuple[int, int]], *, beta: float, clip: float
) -> np.ndarray:
    """Per-token weights of one sample: exp(A_i / beta) clipped to [0, clip] on the tokens
    of step i (`losses.advantage_weights`), for `training.fit(token_weights=...)`.

    `spans_T` are contiguous `[start, end)` token ranges from 0 (`steps.token_spans`; extend
    the last one over an appended EOS). Length = spans_T[-1][1].
    """
    adv = np.asarray(advantages_T, np.float32)
    if adv.shape != (len(spans_T),):
        raise ValueError(f"{adv.shape[0] if adv.ndim else 0} advantages for {len(spans_T)} spans")
    if not spans_T:
        return np.zeros((0,), np.float32)
    w = np.asarray(losses.advantage_weights(adv, beta=beta, clip=clip), np.float32)
    out = np.empty((spans_T[-1][1],), np.float32)
    pos = 0
    for (start, end), wi in zip(spans_T, w):
        if start != pos or end < start:
            raise ValueError(f"spans must be contiguous from 0, got {list(spans_T)}")
        out[start:end] = wi
        pos = end
    return out


# --- rollouts -----------------------------------------------------------------------------


def rollout_id(
    problem_id: int, sample_index: int, step: int, *, max_samples: int, max_steps: int
) -> int:
    """The sampler's problem id for prefix `step` (steps 1..step) of a sample:
    (problem_id * max_samples + sample_index) * (max_steps + 1) + step.

    Distinct for every (problem, sample, step) with sample_index < max_samples and
    step <= max_steps, stable across runs and batchings. The empty prefix (step 0, the
    problem itself) is shared by a problem's samples and uses sample_index 0. Raises
    ValueError when out of range or when the id reaches 2**31 (the sampler's limit: lower
    max_samples / max_steps, or renumber the problems).
    """
    if not 0 <= sample_index < max_samples:
        raise ValueError(f"sample_index {sample_index} not in [0, max_samples={max_samples})")
    if not 0 <= step <= max_steps:
        raise ValueError(f"step {step} not in [0, max_steps={max_steps}]")
    if problem_id < 0:
        raise ValueError(f"problem_id must be >= 0, got {problem_id}")
    rid = (problem_id * max_samples + sample_index) * (max_steps + 1) + step
    if rid >= MAX_ID:
        raise ValueError(
            f"rollout id {rid} for (problem {problem_id}, sample {sample_index}, "
            f"step {step}) is >= 2**31 with max_samples={max_samples}, "
            f"max_steps={max_steps}"
        )
    return rid


def decode_rollout_id(rid: int, *, max_samples: int, max_steps: int) -> tuple[int, int, int]:
    """`(problem_id, sample_index, step)` of `rollout_id`."""
    rest, step = divmod(rid, max_steps + 1)
    problem_id, sample_index = divmod(rest, max_samples)
    return problem_id, sample_index, step


@dataclasses.dataclass(frozen=True)
class Prefix:
    """A state to roll out from: the problem's prompt followed by a completion prefix."""

    rollout_id: int  # the stable id that fixes the rollouts' randomness
    problem: Any  # what score_fn gets (e.g. a tasks.Problem)
    prompt_ids: tuple[int, ...]  # the problem's prompt tokens (BOS included if any)
    text: str  # the completion prefix y_{1:i}; "" = the problem itself


# rollout_fn(prefixes, K) -> K continuation texts per prefix (text after prefix.text).
RolloutFn = Callable[[Sequence[Prefix], int], list[list[str]]]
# score_fn(completions, problems) -> statuses, "correct" = reward 1 (like Task.score).
ScoreFn = Callable[[Sequence[str], Sequence[Any]], list[str]]


def _budget(prompt_len: int, max_new_tokens: int, max_seq_len: int) -> int:
    """Tokens a rollout may generate: max_new_tokens, or what is left of the model's length
    rounded down to 16 (few compilations). A deterministic function of the prompt, and a
    shorter budget only truncates a rollout (keys are per decode step), so budgets never
    make results depend on batching."""
    room = max_seq_len - prompt_len
    if room >= max_new_tokens:
        return max_new_tokens
    return room // 16 * 16 if room >= 16 else max(room, 0)


def sampler_rollout_fn(
    params: Any,
    *,
    model_cfg: model_lib.ModelConfig,
    sampling_cfg: sampling.SamplingConfig,
    tokenizer: Any,
    key: jax.Array,
    chunk_size: int = 256,
    mesh: jax.sharding.Mesh | None = None,
) -> RolloutFn:
    """A `RolloutFn` that samples continuations with `rest_em.sampling.sample`.

    Prompt = prefix.prompt_ids + tokenizer.encode(prefix.text); the sampler's problem id is
    prefix.rollout_id and rollout k its sample index k, so rollout k of a prefix draws
    decode step t from fold_in(fold_in(fold_in(key, rollout_id), k), t). `sampling_cfg` sets
    temperature / top-k / top-p / max_new_tokens (num_samples is replaced by K); a prompt
    too long for max_new_tokens gets what is left of the model's length (see `_budget`),
    and one with no room left is not continued (its rollouts are the prefix alone).
    Prompts go to the sampler in chunks of `chunk_size`. Use a `key` other than the
    E-step's: rollout ids and E-step problem ids are both small integers.
    """
    if sampling_cfg.greedy:
        raise ValueError("rollouts need temperature > 0 (greedy rollouts are K copies of one)")

    def rollout(prefixes: Sequence[Prefix], num_rollouts: int) -> list[list[str]]:
        prompts = [list(p.prompt_ids) + tokenizer.encode(p.text) for p in prefixes]
        groups: dict[int, list[int]] = collections.defaultdict(list)
        for i, pr in enumerate(prompts):
            groups[_budget(len(pr), sampling_cfg.max_new_tokens, model_cfg.max_seq_len)].append(i)
        out: list[list[str] | None] = [None] * len(prefixes)
        for budget, idx in sorted(groups.items()):
            if budget <= 0:
                for i in idx:
                    out[i] = [""] * num_rollouts
                continue
            cfg = dataclasses.replace(sampling_cfg, num_samples=num_rollouts, max_new_tokens=budget)
            for start in range(0, len(idx), chunk_size):
                chunk = idx[start : start + chunk_size]
                res = sampling.sample(
                    params,
                    [prompts[i] for i in chunk],
                    model_cfg=model_cfg,
                    cfg=cfg,
                    key=key,
                    mesh=mesh,
                    problem_ids=[prefixes[i].rollout_id for i in chunk],
                )
                for row, i in enumerate(chunk):
                    out[i] = [
                        tokenizer.decode(res.tokens_BxNxT[row, k, : res.lengths_BxN[row, k]])
                        for k in range(num_rollouts)
                    ]
        return out  # type: ignore[return-value]

    return rollout


@dataclasses.dataclass(frozen=True)
class Rollouts:
    """Rollouts of P prefixes: K continuation texts each, their 0/1 rewards and Q."""

    continuations: list[list[str]]  # [P][K], text after the prefix
    rewards_PxK: np.ndarray
    q_P: np.ndarray


def rollout_values(
    prefixes: Sequence[Prefix],
    *,
    rollout_fn: RolloutFn,
    score_fn: ScoreFn,
    num_rollouts: int,
    estimator: str = "best_of_k",
    k: int | None = None,
) -> Rollouts:
    """Rolls out every prefix K = `num_rollouts` times, scores prefix + continuation with
    `score_fn` (one call for all), and estimates Q per prefix (`estimate_q`)."""
    if num_rollouts < 1:
        raise ValueError(f"num_rollouts must be >= 1, got {num_rollouts}")
    if not prefixes:
        return Rollouts([], np.zeros((0, num_rollouts)), np.zeros((0,)))
    conts = rollout_fn(prefixes, num_rollouts)
    if len(conts) != len(prefixes) or any(len(c) != num_rollouts for c in conts):
        raise ValueError(
            f"rollout_fn must return {num_rollouts} continuations for each of "
            f"{len(prefixes)} prefixes"
        )
    completions = [p.text + c for p, cs in zip(prefixes, conts) for c in cs]
    problems = [p.problem for p in prefixes for _ in range(num_rollouts)]
    statuses = score_fn(completions, problems)
    rewards = np.asarray([s == "correct" for s in statuses], np.float64).reshape(
        len(prefixes), num_rollouts
    )
    return Rollouts(
        [list(c) for c in conts], rewards, estimate_q(rewards, estimator=estimator, k=k)
    )


# --- per-sample step values ---------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class StepValues:
    """One sample's steps with the values of its prefixes.

    q_Tp1[i] is Q of steps 1..i (q[0]: the problem, q[T]: the sample's own reward);
    continuations[i] / rewards_TxK[i] are the K rollouts from prefix i (i < T).
    """

    sample: filtering.Sample
    steps: tuple[str, ...]
    q_Tp1: np.ndarray
    continuations: tuple[tuple[str, ...], ...]
    rewards_TxK: np.ndarray

    @property
    def advantages_T(self) -> np.ndarray:
        return advantages(self.q_Tp1)

    def first_pit(self, threshold: float = 0.0) -> int | None:
        return first_pit(self.q_Tp1, threshold=threshold)


def compute_step_values(
    samples: Sequence[filtering.Sample],
    *,
    problems: Mapping[int, Any],
    prompt_ids: Mapping[int, Sequence[int]],
    rollout_fn: RolloutFn,
    score_fn: ScoreFn,
    num_rollouts: int = 5,
    estimator: str = "best_of_k",
    k: int | None = None,
    step_mode: str = "newline",
    max_steps: int = 32,
    max_samples: int = 256,
) -> list[StepValues]:
    """Q_0..Q_T of every sample (`problems` / `prompt_ids`: by problem_id).

    All prefixes of all samples go to `rollout_fn` in one call. Identical prefix texts of
    one problem (the empty prefix, shared first steps, duplicate samples) are rolled out
    once, under the id of the first (sample_index, step) that has them, so they get one
    consistent value. Samples with an empty completion have no steps and are left out.
    """
    prefix_of: dict[tuple[int, str], Prefix] = {}
    plan: list[tuple[filtering.Sample, list[str], list[tuple[int, str]]]] = []
    for s in sorted(samples, key=lambda s: (s.problem_id, s.sample_index)):
        steps = steps_lib.split_steps(s.completion, mode=step_mode, max_steps=max_steps)
        if not steps:
            continue
        keys = []
        for i, text in enumerate(steps_lib.prefixes(steps)[:-1]):
            key = (s.problem_id, text)
            if key not in prefix_of:
                rid = rollout_id(
                    s.problem_id,
                    0 if i == 0 else s.sample_index,
                    i,
                    max_samples=max_samples,
                    max_steps=max_steps,
                )
                prefix_of[key] = Prefix(
                    rid,
                    problems[s.problem_id],
                    tuple(int(t) for t in prompt_ids[s.problem_id]),
                    text,
                )
            keys.append(key)
        plan.append((s, steps, keys))
    order = list(prefix_of)
    ro = rollout_values(
        [prefix_of[key] for key in order],
        rollout_fn=rollout_fn,
        score_fn=score_fn,
        num_rollouts=num_rollouts,
        estimator=estimator,
        k=k,
    )
    row = {key: j for j, key in enumerate(order)}
    out = []
    for s, steps, keys in plan:
        rows = [row[key] for key in keys]
        q = np.concatenate([ro.q_P[rows], [float(s.reward)]])
        out.append(
            StepValues(
                s,
                tuple(steps),
                q,
                tuple(tuple(ro.continuations[j]) for j in rows),
                ro.rewards_PxK[rows],
            )
        )
    return out


# --- training data ------------------------------------------------------------------------


def weighted_example(
    sv: StepValues, *, prompt_ids: Sequence[int], tokenizer: Any, beta: float, clip: float
) -> tuple[list[int], list[int], list[float]]:
    """`(prompt_ids, completion_ids, token_weights)` of one sample for advantage-weighted
    NLL: completion = tokenizer.encode(completion) + EOS (as the M-step trains), step i's
    tokens weighted exp(A_i / beta) clipped to `clip`, the EOS with the last step."""
    ids = tokenizer.encode(sv.sample.completion)
    spans = steps_lib.token_spans(sv.steps, ids, tokenizer.decode)
    spans[-1] = (spans[-1][0], spans[-1][1] + 1)  # the EOS ends the last step
    w = token_weights(sv.advantages_T, spans, beta=beta, clip=clip)
    return list(prompt_ids), ids + [tokenizer.eos_id], w.tolist()


@dataclasses.dataclass(frozen=True)
class StepPair:
    """A per-step DPO pair from one negative (see `step_dpo_pairs`)."""

    problem_id: int
    sample_index: int
    pit: int  # c, 1-based
    prompt_ids: list[int]  # the problem's prompt + steps y_<c
    chosen_ids: list[int]  # a continuation from y_<c that reaches the answer, + EOS
    rejected_ids: list[int]  # the pit step y_c (+ EOS when c = T)
    chosen_source: str  # "rollout" or "positive"


def step_dpo_pairs(
    values: Sequence[StepValues],
    *,
    prompt_ids: Mapping[int, Sequence[int]],
    tokenizer: Any,
    positives: Sequence[filtering.Sample] = (),
    threshold: float = 0.0,
) -> list[StepPair]:
    """Per-step DPO pairs of negatives, as Setlur et al. build them after Hwang et al.

    For a negative with first pit c (`first_pit`): prompt = x + y_<c, rejected = y_c (the
    step that made success unlikely; with the EOS when it is the last step), chosen = the
    shortest continuation among the K rollouts from y_<c that reached a correct answer
    (one exists whenever Q_{c-1} > threshold). Without one (only possible for c = 1, a
    problem whose K rollouts all failed) chosen = a correct E-step sample of the problem
    from `positives` (rotating through them by sample order), else the negative gives no
    pair. Because the shared prefix y_<c cancels in DPO's log-ratios, the pair is the same
    as chosen = y_<c + continuation, rejected = y_<=c with prompt x. Negatives without a
    pit (no prefix below threshold) give no pair.
    Text is re-encoded piecewise (prompt, prefix, continuation): exact for byte tokenizers,
    a close approximation at piece boundaries for BPE.
    """
    pos_by_problem: dict[int, list[filtering.Sample]] = collections.defaultdict(list)
    for p in sorted(positives, key=lambda p: (p.problem_id, p.sample_index)):
        pos_by_problem[p.problem_id].append(p)
    used: collections.Counter[int] = collections.Counter()
    eos = [tokenizer.eos_id]
    out = []
    for sv in values:
        c = sv.first_pit(threshold)
        if c is None:
            continue
        s = sv.sample
        wins = [
            (len(t), j)
            for j, (t, r) in enumerate(zip(sv.continuations[c - 1], sv.rewards_TxK[c - 1]))
            if r > 0
        ]
        if wins:
            chosen_text, source = sv.continuations[c - 1][min(wins)[1]], "rollout"
        elif c == 1 and pos_by_problem.get(s.problem_id):
            cands = pos_by_problem[s.problem_id]
            chosen_text = cands[used[s.problem_id] % len(cands)].completion
            used[s.problem_id] += 1
            source = "positive"
        else:
            continue
        prefix = "".join(sv.steps[: c - 1])
        rejected = tokenizer.encode(sv.steps[c - 1]) + (eos if c == len(sv.steps) else [])
        out.append(
            StepPair(
                s.problem_id,
                s.sample_index,
                c,
                list(prompt_ids[s.problem_id]) + tokenizer.encode(prefix),
                tokenizer.encode(chosen_text) + eos,
                rejected,
                source,
            )
        )
    return out


# --- one call for the EM loop -------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class StepDataset:
    """M-step data for `training.fit(prompts, completions, token_weights=...)`."""

    prompt_ids: list[list[int]]
    completion_ids: list[list[int]]
    token_weights: list[list[float]]
    values: list[StepValues]  # the negatives' step values (for DPO pairs, logging)
    stats: dict[str, float]


def select_negatives(
    samples: Sequence[filtering.Sample],
    *,
    max_per_problem: int | None,
    seed: int,
    dedup: bool = True,
) -> list[filtering.Sample]:
    """Incorrect samples (reward < 1), at most `max_per_problem` per problem: the same
    seeded, order-independent choice (and optional dedup) as `filtering.select`."""
    negatives = [s for s in samples if s.reward < 1.0]
    return filtering.select(
        negatives, max_per_problem=max_per_problem, seed=seed, min_reward=-np.inf, dedup=dedup
    )


def step_negatives_dataset(
    params: Any,
    samples: Sequence[filtering.Sample],
    *,
    problems: Mapping[int, Any],
    prompt_ids: Mapping[int, Sequence[int]],
    model_cfg: model_lib.ModelConfig,
    tokenizer: Any,
    sampling_cfg: sampling.SamplingConfig,
    score_fn: ScoreFn,
    key: jax.Array,
    positives: Sequence[filtering.Sample] = (),
    num_rollouts: int = 5,
    estimator: str = "best_of_k",
    beta: float = 1.0,
    clip: float = 10.0,
    max_per_problem: int | None = 8,
    step_mode: str = "newline",
    max_steps: int = 32,
    max_samples: int = 256,
    seed: int = 0,
    chunk_size: int = 256,
    mesh: jax.sharding.Mesh | None = None,
    rollout_fn: RolloutFn | None = None,
) -> StepDataset:
    """Advantage-weighted training data from an E-step's samples (Setlur et al. 2024).

    `samples`: the E-step's samples (rewards 0/1; the incorrect ones are used, at most
    `max_per_problem` per problem, `select_negatives`). Each is split into steps, every
    prefix is rolled out `num_rollouts` (K) times from `params` with `sampling_cfg`
    (`sampler_rollout_fn`, keys from `key`; or a given `rollout_fn`) and scored with
    `score_fn`; Q by `estimator`; step i's tokens get weight exp(A_i / beta) clipped to
    `clip`. `key` must differ from the E-step's key (e.g. `fold_in(key, 1)`): rollout ids
    and E-step problem ids share one number space. Negatives whose text the tokenizer does
    not round-trip are left out (stats["num_untokenizable"]). `positives` (the selected
    correct samples, e.g. `filtering.select`'s output) are appended with weight 1 on every
    token, as ReST^EM trains them, so the result can go to `training.fit` as is.
    `problems` / `prompt_ids` map problem_id to what `score_fn` takes and to the prompt
    tokens (BOS included), as `em.prompt_ids` makes them.
    Cost: K rollouts per distinct prefix, at most K * (problems + sum of (T - 1)) rollouts
    of up to max_new_tokens each; stats["num_rollouts"] reports it. Rows longer than the
    M-step's max_length are not dropped here (em.py drops them before fit).

    In the EM loop, after the E-step's `records` and `selected = filtering.select(...)`:

        ds = step_values.step_negatives_dataset(
            params, records, problems=by_id,
            prompt_ids={i: prompt_ids(task, tokenizer, p) for i, p in by_id.items()},
            model_cfg=model_cfg, tokenizer=tokenizer, sampling_cfg=e_cfg,
            score_fn=task.score, key=jax.random.fold_in(key, 1), positives=selected)
        training.fit(start, ds.prompt_ids, ds.completion_ids,
                     token_weights=ds.token_weights, ...)
    """
    negatives = select_negatives(samples, max_per_problem=max_per_problem, seed=seed)
    if rollout_fn is None:
        rollout_fn = sampler_rollout_fn(
            params,
            model_cfg=model_cfg,
            sampling_cfg=sampling_cfg,
            tokenizer=tokenizer,
            key=key,
            chunk_size=chunk_size,
            mesh=mesh,
        )
    values = compute_step_values(
        negatives,
        problems=problems,
        prompt_ids=prompt_ids,
        rollout_fn=rollout_fn,
        score_fn=score_fn,
        num_rollouts=num_rollouts,
        estimator=estimator,
        step_mode=step_mode,
        max_steps=max_steps,
        max_samples=max_samples,
    )
    prompts, comps, weights = [], [], []
    untokenizable = 0
    for sv in values:
        try:
            p, c, w = weighted_example(
                sv,
                prompt_ids=prompt_ids[sv.sample.problem_id],
                tokenizer=tokenizer,
                beta=beta,
                clip=clip,
            )
        except ValueError:  # the tokenizer does not round-trip this text: no token spans
            untokenizable += 1
            continue
        prompts.append(p)
        comps.append(c)
        weights.append(w)
    for s in sorted(positives, key=lambda s: (s.problem_id, s.sample_index)):
        c = tokenizer.encode(s.completion) + [tokenizer.eos_id]
        prompts.append(list(prompt_ids[s.problem_id]))
        comps.append(c)
        weights.append([1.0] * len(c))
    prefixes_seen = {
        (sv.sample.problem_id, "".join(sv.steps[:i])) for sv in values for i in range(len(sv.steps))
    }
    adv = np.concatenate([sv.advantages_T for sv in values]) if values else np.zeros((0,))
    stats = {
        "num_negatives": float(len(values)),
        "num_untokenizable": float(untokenizable),
        "num_positives": float(len(positives)),
        "num_prefixes": float(len(prefixes_seen)),
        "num_rollouts": float(len(prefixes_seen) * num_rollouts),
        "mean_steps": float(np.mean([len(sv.steps) for sv in values])) if values else 0.0,
        "mean_q0": float(np.mean([sv.q_Tp1[0] for sv in values])) if values else 0.0,
        "mean_advantage": float(adv.mean()) if adv.size else 0.0,
        "frac_negative_advantage": float((adv < 0).mean()) if adv.size else 0.0,
    }
    return StepDataset(prompts, comps, weights, values, stats)


__all__ = [
    "ESTIMATORS",
    "Prefix",
    "RolloutFn",
    "Rollouts",
    "ScoreFn",
    "StepDataset",
    "StepPair",
    "StepValues",
    "advantages",
    "compute_step_values",
    "decode_rollout_id",
    "estimate_q",
    "first_pit",
    "rollout_id",
    "rollout_values",
    "sampler_rollout_fn",
    "select_negatives",
    "step_dpo_pairs",
    "step_negatives_dataset",
    "token_weights",
    "weighted_example",
]
