"""Weighted NLL: value against NumPy, mask equivalence, weights, gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from rest_em import losses


def _case(seed=0, b=3, length=5, v=7):
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(b, length, v)).astype(np.float32)
    targets = rng.integers(0, v, size=(b, length)).astype(np.int32)
    mask = (rng.random((b, length)) < 0.7).astype(np.float32)
    mask[:, 0] = 1.0
    return logits, targets, mask


def _numpy_nll(logits, targets, mask, w=None, tw=None):
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    nll = -np.take_along_axis(logp, targets[..., None], -1)[..., 0]
    weight = mask * (1 if w is None else w[:, None]) * (1 if tw is None else tw)
    return (weight * nll).sum() / mask.sum()


def test_value_matches_numpy_reference():
    logits, targets, mask = _case()
    w = np.array([1.0, 0.5, 2.0], np.float32)
    tw = np.random.default_rng(1).random(mask.shape).astype(np.float32)
    loss, aux = losses.weighted_nll(logits, targets, mask, w, tw)
    np.testing.assert_allclose(loss, _numpy_nll(logits, targets, mask, w, tw), rtol=1e-5)
    np.testing.assert_allclose(aux["num_tokens"], mask.sum())
    np.testing.assert_allclose(aux["loss_sum"], loss * mask.sum(), rtol=1e-5)


def test_token_logprobs_equal_the_log_softmax_and_its_gradient():
    """The logsumexp form gives log_softmax's gathered values, argmax and gradients."""
    logits, targets, _ = _case(v=50)
    logp, top = losses.token_logprobs(jnp.asarray(logits), jnp.asarray(targets))
    full = jax.nn.log_softmax(jnp.asarray(logits), axis=-1)
    want = jnp.take_along_axis(full, jnp.asarray(targets)[..., None], axis=-1)[..., 0]
    np.testing.assert_allclose(logp, want, atol=1e-6)
    argmax = logits.argmax(-1)
    targets[0, :2] = argmax[0, :2]  # some targets are the most likely token
    _, top = losses.token_logprobs(jnp.asarray(logits), jnp.asarray(targets))
    np.testing.assert_array_equal(top, targets == argmax)
    assert top.sum() >= 2

    def via_softmax(x):
        f = jax.nn.log_softmax(x, axis=-1)
        return (jnp.take_along_axis(f, jnp.asarray(targets)[..., None], axis=-1) ** 2).sum()

    def via_lse(x):
        return (losses.token_logprobs(x, jnp.asarray(targets))[0] ** 2).sum()

    np.testing.assert_allclose(
        jax.grad(via_lse)(jnp.asarray(logits)),
        jax.grad(via_softmax)(jnp.asarray(logits)),
        atol=1e-5,
    )
    check_grads(via_lse, (jnp.asarray(logits),), order=2, modes=["rev"], atol=1e-2, rtol=1e-2)


def test_masked_positions_never_matter():
    logits, targets, mask = _case()
    garbage_logits = np.where(
        mask[..., None] > 0, logits, 1e4 * np.random.default_rng(2).normal(size=logits.shape)
    )
    garbage_targets = np.where(mask > 0, targets, 0)
    f = lambda lg, t: losses.weighted_nll(lg, t, mask)[0]  # noqa: E731
    np.testing.assert_allclose(
        f(logits, targets), f(garbage_logits.astype(np.float32), garbage_targets), rtol=1e-6
    )
    g1 = jax.grad(f)(jnp.asarray(logits), targets)
    g2 = jax.grad(f)(jnp.asarray(garbage_logits, jnp.float32), garbage_targets)
    np.testing.assert_allclose(
        np.where(mask[..., None] > 0, g1, 0), np.where(mask[..., None] > 0, g2, 0), atol=1e-7
    )
    assert np.all(np.asarray(g2)[mask == 0] == 0)


def test_padding_equals_the_unpadded_computation():
    logits, targets, mask = _case(b=1, length=4)
    mask[:] = 1
    padded_logits = np.concatenate([logits, np.zeros((1, 3, 7), np.float32)], axis=1)
    padded_targets = np.concatenate([targets, np.zeros((1, 3), np.int32)], axis=1)
    padded_mask = np.concatenate([mask, np.zeros((1, 3), np.float32)], axis=1)
    a = losses.weighted_nll(logits, targets, mask)[0]
    b = losses.weighted_nll(padded_logits, padded_targets, padded_mask)[0]
    np.testing.assert_allclose(a, b, rtol=1e-6)


def test_zero_weight_drops_the_example_from_the_numerator():
    logits, targets, mask = _case()
    _, aux_w = losses.weighted_nll(logits, targets, mask, np.array([1.0, 0.0, 1.0], np.float32))
    keep = [0, 2]
    _, aux_d = losses.weighted_nll(logits[keep], targets[keep], mask[keep])
    np.testing.assert_allclose(aux_w["loss_sum"], aux_d["loss_sum"], rtol=1e-6)


def test_sequence_normalisation():
    logits, targets, mask = _case()
    loss, _ = losses.weighted_nll(logits, targets, mask, normalize="sequences")
    per_row = [_numpy_nll(logits[i : i + 1], targets[i : i + 1], mask[i : i + 1]) for i in range(3)]
    np.testing.assert_allclose(loss, np.mean(per_row), rtol=1e-5)
    with pytest.raises(ValueError, match="normalize"):
        losses.weighted_nll(logits, targets, mask, normalize="bogus")


def test_check_grads():
    logits, targets, mask = _case(b=2, length=3, v=4)
    w = jnp.array([1.0, 0.5])
    check_grads(
        lambda lg: losses.weighted_nll(lg, targets, mask, w)[0],
        (jnp.asarray(logits),),
        order=1,
        modes=("rev",),
        atol=1e-2,
        rtol=1e-2,
    )


def test_advantage_weights_are_clipped_exponentials():
    a = jnp.array([-10.0, 0.0, 0.5, 10.0])
    np.testing.assert_allclose(
        losses.advantage_weights(a, beta=0.5, clip=5.0), [np.exp(-20), 1.0, np.e, 5.0], rtol=1e-6
    )


# --- per-step DPO ------------------------------------------------------------------------


def test_sequence_logprobs_matches_numpy():
    logits, targets, mask = _case()
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    tok = np.take_along_axis(logp, targets[..., None], -1)[..., 0]
    np.testing.assert_allclose(
        losses.sequence_logprobs(logits, targets, mask), (tok * mask).sum(-1), rtol=1e-5
    )
    # Masked positions never matter, even with -inf log-probs there.
    bad = np.where(mask[..., None] > 0, logits, -np.inf).astype(np.float32)
    bad[..., 0] = np.where(mask > 0, logits[..., 0], 0.0)
    np.testing.assert_allclose(
        losses.sequence_logprobs(bad, np.where(mask > 0, targets, 1), mask),
        (tok * mask).sum(-1),
        rtol=1e-5,
    )


def test_step_dpo_loss_hand_computed():
    # beta = 0.5; pair 1: policy raises chosen by 1 and lowers rejected by 1 vs the reference
    # -> margin 0.5 * (1 - (-1)) = 1, loss log(1 + e^-1); pair 2: the reverse -> margin -1,
    # loss log(1 + e).
    pc, pr = jnp.array([-1.0, -4.0]), jnp.array([-3.0, -1.0])
    rc, rr = jnp.array([-2.0, -3.0]), jnp.array([-2.0, -2.0])
    loss, aux = losses.step_dpo_loss(pc, pr, rc, rr, beta=0.5)
    l1, l2 = np.log1p(np.exp(-1.0)), np.log1p(np.exp(1.0))
    np.testing.assert_allclose(loss, (l1 + l2) / 2, rtol=1e-6)
    np.testing.assert_allclose(aux["loss_sum"], l1 + l2, rtol=1e-6)
    np.testing.assert_allclose(aux["chosen_reward"], (0.5 * 1 + 0.5 * -1) / 2, atol=1e-7)
    np.testing.assert_allclose(aux["rejected_reward"], (0.5 * -1 + 0.5 * 1) / 2, atol=1e-7)
    np.testing.assert_allclose(aux["margin"], 0.0, atol=1e-7)
    np.testing.assert_allclose(aux["reward_accuracy"], 0.5)
    # Policy == reference: every pair costs log 2.
    np.testing.assert_allclose(
        losses.step_dpo_loss(pc, pr, pc, pr, beta=3.0)[0], np.log(2.0), rtol=1e-6
    )
    # Weights: a zero weight drops pair 2.
    loss_w, aux_w = losses.step_dpo_loss(pc, pr, rc, rr, beta=0.5, weights_B=jnp.array([1.0, 0.0]))
    np.testing.assert_allclose(loss_w, l1, rtol=1e-6)
    np.testing.assert_allclose(aux_w["num_pairs"], 1.0)
    with pytest.raises(ValueError, match="beta"):
        losses.step_dpo_loss(pc, pr, rc, rr, beta=0.0)


def test_step_dpo_loss_is_stable_for_large_margins():
    big = jnp.array([1e4])
    loss, _ = losses.step_dpo_loss(big, -big, jnp.zeros(1), jnp.zeros(1), beta=1.0)
    assert np.isfinite(loss) and loss < 1e-6
    loss, _ = losses.step_dpo_loss(-big, big, jnp.zeros(1), jnp.zeros(1), beta=1.0)
    np.testing.assert_allclose(loss, 2e4, rtol=1e-6)


def test_step_dpo_check_grads():
    rng = np.random.default_rng(3)
    pc, pr, rc, rr = (jnp.asarray(rng.normal(size=3), jnp.float32) for _ in range(4))
    check_grads(
        lambda a, b: losses.step_dpo_loss(a, b, rc, rr, beta=0.7)[0],
        (pc, pr),
        order=1,
        modes=("fwd", "rev"),
        atol=1e-2,
        rtol=1e-2,
    )
    # Through sequence_logprobs, from logits: the gradient a DPO train step takes.
    logits, targets, mask = _case(b=2, length=3, v=4)
    logits_r = logits[::-1].copy()

    def dpo_from_logits(lc, lr):
        return losses.step_dpo_loss(
            losses.sequence_logprobs(lc, targets, mask),
            losses.sequence_logprobs(lr, targets, mask),
            jnp.zeros(2),
            jnp.zeros(2),
            beta=0.3,
        )[0]

    check_grads(
        dpo_from_logits,
        (jnp.asarray(logits), jnp.asarray(logits_r)),
        order=1,
        modes=("rev",),
        atol=1e-2,
        rtol=1e-2,
    )


def _chunked_case(seed=0, b=3, length=7, d=5, v=11):
    rng = np.random.default_rng(seed)
    hidden = jnp.asarray(rng.normal(size=(b, length, d)), jnp.float32)
    head = jnp.asarray(rng.normal(size=(d, v)), jnp.float32)
    targets = jnp.asarray(rng.integers(0, v, size=(b, length)), jnp.int32)
    mask = jnp.asarray(rng.random((b, length)) < 0.7, jnp.float32).at[:, 0].set(1.0)
    w = jnp.asarray(rng.random(b) + 0.5, jnp.float32)
    tw = jnp.asarray(rng.random((b, length)) + 0.5, jnp.float32)
    return hidden, head, targets, mask, w, tw


@pytest.mark.parametrize("chunk", [1, 3, 7, 16])
def test_chunked_nll_equals_the_plain_loss_and_its_gradients(chunk):
    """Chunks that divide L, that do not (padded, masked positions) and one over all of
    it: the same loss, aux and gradients (wrt the hidden states and the head) as
    weighted_nll on the full logits."""
    hidden, head, targets, mask, w, tw = _chunked_case()

    def plain(h, wh):
        return losses.weighted_nll(h @ wh, targets, mask, w, tw)

    def chunked(h, wh):
        return losses.chunked_weighted_nll(h, lambda x: x @ wh, targets, mask, w, tw, chunk=chunk)

    (l0, a0), g0 = jax.value_and_grad(plain, argnums=(0, 1), has_aux=True)(hidden, head)
    (l1, a1), g1 = jax.value_and_grad(chunked, argnums=(0, 1), has_aux=True)(hidden, head)
    np.testing.assert_allclose(l1, l0, rtol=1e-6)
    for k in ("loss_sum", "num_tokens", "accuracy"):
        np.testing.assert_allclose(a1[k], a0[k], rtol=1e-6)
    for x, y in zip(g1, g0):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)


def test_chunked_nll_check_grads():
    hidden, head, targets, mask, w, tw = _chunked_case(b=2, length=5, d=3, v=4)
    check_grads(
        lambda h, wh: losses.chunked_weighted_nll(
            h, lambda x: x @ wh, targets, mask, w, tw, chunk=2
        )[0],
        (hidden, head),
        order=1,
        modes=("rev",),
        atol=1e-2,
        rtol=1e-2,
    )
