"""Losses of the M-step: weighted negative log-likelihood over completion tokens, per-step DPO.

ReST^EM maximises  sum_i r_i * log p(y_i | x_i)  over the selected samples (r_i = 1 for
kept samples); per-token weights extend it to per-step advantages (Setlur et al. 2024).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

Array = jax.Array


def token_logprobs(logits_XxV: Array, targets_X: Array) -> tuple[Array, Array]:
    """`(logp_X, top_X)`: log p(target) = logit[target] - logsumexp(logits) in float32,
    and whether the target is a most likely token (argmax == target, up to exact ties).

    Never forms the log-softmax `[..., V]`: its backward is then one fused
    softmax - onehot over the vocabulary instead of two passes (about a quarter of the
    LM head + loss time at vocab 32k on a CPU). X: any leading dimensions.
    """
    logits = logits_XxV.astype(jnp.float32)
    chosen_X = jnp.take_along_axis(logits, targets_X[..., None].astype(jnp.int32), axis=-1)[..., 0]
    top_X = chosen_X >= jax.lax.stop_gradient(logits.max(axis=-1))
    return chosen_X - jax.nn.logsumexp(logits, axis=-1), top_X


def weighted_nll(
    logits_BxLxV: Array,
    targets_BxL: Array,
    loss_mask_BxL: Array,
    example_weights_B: Array | None = None,
    token_weights_BxL: Array | None = None,
    *,
    normalize: str = "tokens",
) -> tuple[Array, dict[str, Array]]:
    """`(loss, aux)`: the weighted NLL of `targets_BxL` where `loss_mask_BxL` is 1.

    weight(b, t) = loss_mask * example_weights[b] * token_weights[b, t]. Normalisation:
      "tokens"     sum(weight * nll) / sum(loss_mask): every target token counts once,
                   so long solutions weigh more (the paper's token-level SFT loss);
      "sequences"  mean over rows with any target of each row's weighted token mean.
    The log-probs are float32 whatever the logits dtype. aux carries the sums that
    make gradient accumulation exact: `loss_sum` (sum of weight * nll), `num_tokens`
    (sum of loss_mask) and `accuracy` (argmax == target over masked tokens).
    """
    if normalize not in ("tokens", "sequences"):
        raise ValueError(f"normalize={normalize!r}; expected 'tokens' or 'sequences'")
    logp_BxL, top_BxL = token_logprobs(logits_BxLxV, targets_BxL)
    nll_BxL = -logp_BxL
    mask = loss_mask_BxL.astype(jnp.float32)
    w = mask
    if example_weights_B is not None:
        w = w * example_weights_B.astype(jnp.float32)[:, None]
    if token_weights_BxL is not None:
        w = w * token_weights_BxL.astype(jnp.float32)
    # where(): masked positions contribute exactly 0 even if their nll is inf/nan.
    contrib = jnp.where(mask > 0, w * nll_BxL, 0.0)
    loss_sum = contrib.sum()
    num_tokens = mask.sum()
    correct = jnp.where(mask > 0, top_BxL, False)
    accuracy = correct.sum() / jnp.maximum(num_tokens, 1.0)
    if normalize == "tokens":
        loss = loss_sum / jnp.maximum(num_tokens, 1.0)
    else:
        per_row = mask.sum(axis=1)
        row_loss = contrib.sum(axis=1) / jnp.maximum(per_row, 1.0)
        rows = (per_row > 0).sum()
        loss = row_loss.sum() / jnp.maximum(rows, 1)
    return loss, {"loss_sum": loss_sum, "num_tokens": num_tokens, "accuracy": accuracy}


def chunked_weighted_nll(
    hidden_BxLxD: Array,
    logits_fn: Callable[[Array], Array],
    targets_BxL: Array,
    loss_mask_BxL: Array,
    example_weights_B: Array | None = None,
    token_weights_BxL: Array | None = None,
    *,
    chunk: int,
) -> tuple[Array, dict[str, Array]]:
    """`weighted_nll(logits_fn(hidden), ...)` (token normalisation), computed over chunks
    of `chunk` sequence positions: each chunk's logits `[B, C, V]` are made, reduced and
    dropped, and rematerialised in the backward pass, so peak memory holds one chunk's
    logits instead of all `[B, L, V]` (L is padded up to a multiple of C with masked
    positions). Same value, aux and gradients as the plain loss, up to float summation
    order.
    """
    b, length, _ = hidden_BxLxD.shape
    n = -(-length // chunk)
    pad = n * chunk - length
    mask = loss_mask_BxL.astype(jnp.float32)
    w = mask
    if example_weights_B is not None:
        w = w * example_weights_B.astype(jnp.float32)[:, None]
    if token_weights_BxL is not None:
        w = w * token_weights_BxL.astype(jnp.float32)

    def chunks(x):  # [B, L, ...] -> [N, B, C, ...]
        x = jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2))
        x = x.reshape(b, n, chunk, *x.shape[2:])
        return jnp.moveaxis(x, 1, 0)

    @jax.checkpoint
    def one(h_BxCxD, t_BxC, m_BxC, w_BxC):
        logp, top = token_logprobs(logits_fn(h_BxCxD), t_BxC)
        loss_sum = jnp.where(m_BxC > 0, -w_BxC * logp, 0.0).sum()
        correct = jnp.where(m_BxC > 0, top, False).sum()
        return loss_sum, correct.astype(jnp.float32)

    def body(carry, xs):
        loss_sum, correct = one(*xs)
        return (carry[0] + loss_sum, carry[1] + correct), None

    xs = tuple(map(chunks, (hidden_BxLxD, targets_BxL, mask, w)))
    (loss_sum, correct), _ = jax.lax.scan(body, (jnp.float32(0), jnp.float32(0)), xs)
    num_tokens = mask.sum()
    denom = jnp.maximum(num_tokens, 1.0)
    return loss_sum / denom, {
        "loss_sum": loss_sum,
        "num_tokens": num_tokens,
        "accuracy": correct / denom,
    }


def advantage_weights(advantages_BxL: Array, *, beta: float, clip: float) -> Array:
    """Per-token weights exp(A / beta), clipped to [0, clip] (advantage-weighted NLL)."""
    if beta <= 0 or clip <= 0:
        raise ValueError("beta and clip must be > 0")
    return jnp.clip(jnp.exp(advantages_BxL / beta), 0.0, clip)


def sequence_logprobs(logits_BxLxV: Array, targets_BxL: Array, mask_BxL: Array) -> Array:
    """`logp_B`: sum over positions where `mask_BxL` is 1 of log p(target | prefix).

    The log-likelihood of each row's completion (or of any masked part of it): what DPO
    compares between the policy and the reference. In float32; masked
    positions contribute exactly 0, even where their log-prob is -inf.
    """
    tok_BxL, _ = token_logprobs(logits_BxLxV, targets_BxL)
    return jnp.where(mask_BxL > 0, tok_BxL * mask_BxL.astype(jnp.float32), 0.0).sum(axis=-1)


def step_dpo_loss(
    policy_chosen_logp_B: Array,
    policy_rejected_logp_B: Array,
    ref_chosen_logp_B: Array,
    ref_rejected_logp_B: Array,
    *,
    beta: float,
    weights_B: Array | None = None,
) -> tuple[Array, dict[str, Array]]:
    """`(loss, aux)`: per-step DPO (Setlur et al. 2024, Sec. 6; Hwang et al. 2024).

    loss = mean_b w_b * -log sigmoid(beta * [(pc - rc) - (pr - rr)]) with p/r the policy /
    reference log-probs of the chosen (c) and rejected (r) responses, normalised by sum(w)
    (`weights_B`, default 1: 0 drops a padding row). The pairs (`rest_em.step_values.
    step_dpo_pairs`) share a prompt that ends with the negative's steps before its first
    pit; chosen = a continuation from there that reaches the right answer, rejected = the
    first-pit step. That equals DPO on (x, y_<c + continuation, y_<=c): the shared prefix's
    policy/reference log-ratio appears on both sides and cancels exactly.
    aux: `loss_sum` (sum of w * loss, for exact accumulation), `num_pairs` (sum of w),
    `chosen_reward` / `rejected_reward` (mean beta * log-ratio), `reward_accuracy`
    (fraction of pairs whose chosen implicit reward is higher) and `margin`.
    """
    if beta <= 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    f32 = lambda x: jnp.asarray(x, jnp.float32)  # noqa: E731
    chosen = beta * (f32(policy_chosen_logp_B) - f32(ref_chosen_logp_B))
    rejected = beta * (f32(policy_rejected_logp_B) - f32(ref_rejected_logp_B))
    margin = chosen - rejected
    w = jnp.ones_like(margin) if weights_B is None else f32(weights_B)
    per_pair = -jax.nn.log_sigmoid(margin)
    loss_sum = (w * per_pair).sum()
    num = w.sum()
    denom = jnp.maximum(num, 1e-9)
    aux = {
        "loss_sum": loss_sum,
        "num_pairs": num,
        "chosen_reward": (w * chosen).sum() / denom,
        "rejected_reward": (w * rejected).sum() / denom,
        "reward_accuracy": (w * (margin > 0)).sum() / denom,
        "margin": (w * margin).sum() / denom,
    }
    return loss_sum / denom, aux
