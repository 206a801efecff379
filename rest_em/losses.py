"""Losses of the M-step: weighted negative log-likelihood over completion tokens.

ReST^EM maximises  sum_i r_i * log p(y_i | x_i)  over the selected samples (r_i = 1 for
kept samples); per-token weights extend it to per-step advantages (Setlur et al. 2024).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


def weighted_nll(logits_BxLxV: Array, targets_BxL: Array, loss_mask_BxL: Array,
                 example_weights_B: Array | None = None, token_weights_BxL: Array | None = None,
                 *, normalize: str = "tokens") -> tuple[Array, dict[str, Array]]:
    """`(loss, aux)`: the weighted NLL of `targets_BxL` where `loss_mask_BxL` is 1.

    weight(b, t) = loss_mask * example_weights[b] * token_weights[b, t]. Normalisation:
      "tokens"     sum(weight * nll) / sum(loss_mask): every target token counts once,
                   so long solutions weigh more (the paper's token-level SFT loss);
      "sequences"  mean over rows with any target of each row's weighted token mean.
    Log-softmax runs in float32 whatever the logits dtype. aux carries the sums that
    make gradient accumulation exact: `loss_sum` (sum of weight * nll), `num_tokens`
    (sum of loss_mask) and `accuracy` (argmax == target over masked tokens).
    """
    if normalize not in ("tokens", "sequences"):
        raise ValueError(f"normalize={normalize!r}; expected 'tokens' or 'sequences'")
    logp = jax.nn.log_softmax(logits_BxLxV.astype(jnp.float32), axis=-1)
    nll_BxL = -jnp.take_along_axis(logp, targets_BxL[..., None].astype(jnp.int32), axis=-1)[..., 0]
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
    correct = jnp.where(mask > 0, (jnp.argmax(logp, axis=-1) == targets_BxL), False)
    accuracy = correct.sum() / jnp.maximum(num_tokens, 1.0)
    if normalize == "tokens":
        loss = loss_sum / jnp.maximum(num_tokens, 1.0)
    else:
        per_row = mask.sum(axis=1)
        row_loss = contrib.sum(axis=1) / jnp.maximum(per_row, 1.0)
        rows = (per_row > 0).sum()
        loss = row_loss.sum() / jnp.maximum(rows, 1)
    return loss, {"loss_sum": loss_sum, "num_tokens": num_tokens, "accuracy": accuracy}


def advantage_weights(advantages_BxL: Array, *, beta: float, clip: float) -> Array:
    """Per-token weights exp(A / beta), clipped to [0, clip] (advantage-weighted NLL)."""
    if beta <= 0 or clip <= 0:
        raise ValueError("beta and clip must be > 0")
    return jnp.clip(jnp.exp(advantages_BxL / beta), 0.0, clip)
