"""Continuous batching: a fixed number of decode slots fed from a work list of samples.

The static sampler (`sampling.generate`) decodes every prompt x num_samples row until
the longest one ends, so with heavy-tailed lengths most of its row-steps produce
padding. Here `R` slots decode at once; the step a slot's sample ends (EOS, a stop
sequence or its budget) the slot takes the next pending (prompt, sample) pair: the
prompt's prefilled KV cache is copied into the slot and decoding goes on. Each prompt
is prefilled once (`sampling.prefill`, the static sampler's own), for all its samples.

Work item w = b * N + n is sample n of prompt b. Its step t draws with
`fold_in(fold_in(fold_in(key, problem_id_b), n), t)` (`sampling.sample_keys`), attends
over the same cache layout (prompt left-padded into P slots, its t-th token at slot
P + t) and so gets the same tokens as the static sampler whichever slot, neighbours or
refill order it had.

Everything is one jitted function: a `lax.while_loop` whose body is `refill` (under
`lax.cond`: only steps where a slot is free and work remains pay for it) then
`decode_step`, both pure functions of `SlotState`. No recompilation per refill; the
host loop is `sampling.sample`'s. With `cfg.bucketed_attention` a step attends over the
smallest of `sampling.attend_buckets` that holds the furthest live slot's context: one
while_loop per bucket, taken in turn inside an outer loop (no `lax.switch`, which would
copy the cache every step on XLA:CPU).

Legend: B prompts, P prompt width, N samples per prompt, W = B * N work items, R slots,
S = P + T cache slots, T = max_new_tokens, V vocabulary.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp

from rest_em import model as model_lib
from rest_em import partitioning, sampling

Array = jax.Array


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class SlotState:
    """The loop's carry. Per slot: `work_R` (its work item; W when it holds none),
    `t_R` (tokens its sample has drawn), `live_R` (the sample is unfinished),
    `logits_RxV` (for its next token), `stop_R` (stop-automaton state) and `cache`
    (per layer (k, v), [R, K, S, H]). Per work item: the outputs. `next_work`: the
    first item no slot has taken; `steps`: decode steps run."""

    work_R: Array
    t_R: Array
    live_R: Array
    logits_RxV: Array
    stop_R: Array
    cache: Any
    next_work: Array
    steps: Array
    tokens_WxT: Array
    logprobs_WxT: Array
    lengths_W: Array


def num_slots(cfg: sampling.SamplingConfig, num_work: int, multiple: int = 1) -> int:
    """Slots to decode in: cfg.num_slots, at most one per work item, rounded up to a
    multiple of the mesh's batch split."""
    r = min(cfg.num_slots, num_work)
    return -(-r // multiple) * multiple


def refill(
    state: SlotState,
    prompt_cache: Any,
    prompt_logits_BxV: Array,
    *,
    num_samples: int,
    prompt_width: int,
) -> SlotState:
    """Gives every free slot the next pending work item, in slot order: its prompt's
    cache in the first P slots (later slots are masked until written), its logits."""
    w_total = state.tokens_WxT.shape[0]
    free_R = ~state.live_R
    new_R = state.next_work + jnp.cumsum(free_R) - 1
    take_R = free_R & (new_R < w_total)
    work_R = jnp.where(take_R, new_R, state.work_R)
    b_R = jnp.minimum(work_R // num_samples, prompt_logits_BxV.shape[0] - 1)
    rows_R = jnp.where(take_R, jnp.arange(take_R.shape[0]), take_R.shape[0])  # R: dropped

    def put(c_RxKxSxH, pc_BxKxPxH):
        update = pc_BxKxPxH[b_R]
        c = c_RxKxSxH.at[rows_R, :, :prompt_width].set(update, mode="drop")
        return partitioning.constrain(c, model_lib.KV_CACHE_AXES)

    return dataclasses.replace(
        state,
        work_R=work_R,
        t_R=jnp.where(take_R, 0, state.t_R),
        live_R=state.live_R | take_R,
        logits_RxV=jnp.where(take_R[:, None], prompt_logits_BxV[b_R], state.logits_RxV),
        stop_R=jnp.where(take_R, 0, state.stop_R),
        cache=jax.tree.map(put, state.cache, prompt_cache),
        next_work=state.next_work + jnp.sum(take_R, dtype=jnp.int32),
    )


def decode_step(
    state: SlotState,
    params: Any,
    keys_W: Array,
    pad_B: Array,
    stop_next_SxV: Array | None,
    *,
    model_cfg: model_lib.ModelConfig,
    cfg: sampling.SamplingConfig,
    prompt_width: int,
    attend: int,
) -> SlotState:
    """Every live slot draws its sample's next token (written to the outputs); then one
    model step for all slots, attending over the cache's first `attend` slots, computes
    the logits after it (free slots compute garbage that the next refill overwrites)."""
    w_total, t_max = state.tokens_WxT.shape
    p, n = prompt_width, cfg.num_samples
    s = p + t_max
    live_R = state.live_R
    work_R = jnp.minimum(state.work_R, w_total - 1)
    step_keys = jax.vmap(jax.random.fold_in)(keys_W[work_R], state.t_R)
    tok_R, logp_R = sampling.draw(state.logits_RxV, step_keys, cfg)

    out_R = jnp.where(live_R, state.work_R, w_total)  # w_total: dropped
    t_R = jnp.minimum(state.t_R, t_max - 1)
    tokens_WxT = state.tokens_WxT.at[out_R, t_R].set(tok_R, mode="drop")
    logprobs_WxT = state.logprobs_WxT.at[out_R, t_R].set(logp_R, mode="drop")
    lengths_W = state.lengths_W.at[out_R].set(state.t_R + 1, mode="drop")

    ended_R, stop_R = sampling.row_ends(tok_R, state.stop_R, stop_next_SxV, cfg)
    ended_R = ended_R | (state.t_R + 1 >= t_max)

    # The model step: the token at slot P + t of its row, attending to its prompt and
    # its own tokens so far (the static sampler's mask, row by row).
    pad_R = pad_B[work_R // n]
    slot_R = jnp.minimum(p + state.t_R, s - 1)
    slots_S = jnp.arange(s)
    valid_RxS = ((slots_S[None, :] >= pad_R[:, None]) & (slots_S[None, :] < p)) | (
        (slots_S[None, :] >= p) & (slots_S[None, :] <= slot_R[:, None])
    )
    # Only the first `attend` slots are read (every live slot's context is in them).
    mask = model_lib.layer_masks(slot_R[:, None], valid_RxS[:, :attend], model_cfg)
    logits, cache = model_lib.Transformer(model_cfg).apply(
        {"params": params}, tok_R[:, None], (slot_R - pad_R)[:, None], mask, state.cache, slot_R
    )
    logits_RxV = partitioning.constrain(logits[:, 0, :], ("batch", "act_vocab"))
    return dataclasses.replace(
        state,
        t_R=state.t_R + live_R.astype(jnp.int32),
        live_R=live_R & ~ended_R,
        logits_RxV=logits_RxV,
        stop_R=stop_R,
        cache=cache,
        steps=state.steps + 1,
        tokens_WxT=tokens_WxT,
        logprobs_WxT=logprobs_WxT,
        lengths_W=lengths_W,
    )


def generate(
    params: Any,
    prompt_BxP: Array,
    prompt_lengths_B: Array,
    problem_ids_B: Array,
    key: Array,
    stop_next_SxV: Array | None = None,
    *,
    model_cfg: model_lib.ModelConfig,
    cfg: sampling.SamplingConfig,
    slot_multiple: int = 1,
) -> sampling.SampleOutput:
    """`sampling.generate`'s contract (same arguments, same outputs, the same tokens),
    decoded in `num_slots(cfg, B * N, slot_multiple)` continuously refilled slots.
    `num_steps` counts decode steps of all R slots (row-steps: R * num_steps)."""
    b, p = prompt_BxP.shape
    n, t_max = cfg.num_samples, cfg.max_new_tokens
    w_total, s = b * n, p + t_max
    r = num_slots(cfg, w_total, slot_multiple)

    logits_BxV, cache_B = sampling.prefill(
        params, prompt_BxP, prompt_lengths_B, s, model_cfg=model_cfg, cfg=cfg
    )
    prompt_cache = jax.tree.map(lambda c: c[:, :, :p], cache_B)
    pad_B, _ = sampling.prompt_validity(prompt_lengths_B, p, s)
    keys_W = sampling.sample_keys(key, problem_ids_B, n)
    dtype = jax.tree.leaves(cache_B)[0].dtype
    cache = model_lib.init_kv_cache(model_cfg, r, s, dtype)
    cache = jax.tree.map(lambda c: partitioning.constrain(c, model_lib.KV_CACHE_AXES), cache)

    state = SlotState(
        work_R=jnp.full((r,), w_total, jnp.int32),
        t_R=jnp.zeros((r,), jnp.int32),
        live_R=jnp.zeros((r,), bool),
        logits_RxV=jnp.zeros((r, logits_BxV.shape[-1]), logits_BxV.dtype),
        stop_R=jnp.zeros((r,), jnp.int32),
        cache=cache,
        next_work=jnp.int32(0),
        steps=jnp.int32(0),
        tokens_WxT=jnp.full((w_total, t_max), cfg.pad_id, jnp.int32),
        logprobs_WxT=jnp.zeros((w_total, t_max), jnp.float32),
        lengths_W=jnp.zeros((w_total,), jnp.int32),
    )
    do_refill = functools.partial(
        refill,
        prompt_cache=prompt_cache,
        prompt_logits_BxV=logits_BxV,
        num_samples=n,
        prompt_width=p,
    )
    step = functools.partial(
        decode_step,
        params=params,
        keys_W=keys_W,
        pad_B=pad_B,
        stop_next_SxV=stop_next_SxV,
        model_cfg=model_cfg,
        cfg=cfg,
        prompt_width=p,
    )

    def body(state: SlotState, attend: int) -> SlotState:
        needs = jnp.any(~state.live_R) & (state.next_work < w_total)
        state = jax.lax.cond(needs, do_refill, lambda st: st, state)
        return step(state, attend=attend)

    def running(state: SlotState) -> Array:
        return (state.next_work < w_total) | jnp.any(state.live_R)

    def need(state: SlotState) -> Array:
        # Cache slots the next model step reads: the furthest live slot's next write,
        # or a refilled slot's first (P), whichever is further.
        return jnp.maximum(jnp.max(jnp.where(state.live_R, p + state.t_R, p)), p) + 1

    # One while_loop per attention bucket, run in turn inside an outer loop: a bucket's
    # loop decodes while the slots' context fits it and not the bucket below; when the
    # longest sample ends and context shrinks, the outer loop starts again from the
    # smallest. Static shapes in every loop (no recompilation, no copy of the cache).
    ends = sampling.attend_buckets(p, s) if cfg.bucketed_attention else [s]

    def phase(state: SlotState) -> SlotState:
        for lo, end in zip([0, *ends[:-1]], ends):
            state = jax.lax.while_loop(
                lambda st, lo=lo, end=end: running(st) & (need(st) > lo) & (need(st) <= end),
                functools.partial(body, attend=end),
                state,
            )
        return state

    state = jax.lax.while_loop(running, phase, state)
    return sampling.SampleOutput(
        tokens_BxNxT=state.tokens_WxT.reshape(b, n, t_max),
        lengths_BxN=state.lengths_W.reshape(b, n),
        logprobs_BxNxT=state.logprobs_WxT.reshape(b, n, t_max),
        num_steps=state.steps,
    )
