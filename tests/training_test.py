"""The M-step: batching masks, exact gradient accumulation, a golden step, fit()'s
validation-based selection, resume after an interruption, and NaN handling."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import helpers
from rest_em import losses, training
from rest_em import model as model_lib

CFG = helpers.tiny_model_cfg()


_data = helpers.token_data


def test_make_batch_targets_only_the_completion():
    b = training.make_batch([[5, 6, 7]], [[8, 9, 2]], length=8)
    np.testing.assert_array_equal(b.inputs_BxL[0], [5, 6, 7, 8, 9, 2, 0, 0])
    np.testing.assert_array_equal(b.targets_BxL[0], [6, 7, 8, 9, 2, 0, 0, 0])
    # Positions whose target is 8, 9, 2 (the completion) and nothing else.
    np.testing.assert_array_equal(b.loss_mask_BxL[0], [0, 0, 1, 1, 1, 0, 0, 0])
    np.testing.assert_array_equal(b.valid_BxL[0], [1, 1, 1, 1, 1, 0, 0, 0])


def test_make_batch_rejects_rows_that_do_not_fit():
    with pytest.raises(ValueError, match="row 1"):
        training.make_batch([[1], [1, 2, 3]], [[4], [4, 5, 6]], length=4)


def _stack(batch, a):
    return jax.tree.map(lambda x: jnp.asarray(x).reshape((a, -1) + x.shape[1:]), batch)


def _one_step(a, opt=None):
    """One train_step; SGD(lr=1) by default so the update IS the gradient (Adam's first
    step, g/|g|, would magnify float noise in near-zero gradients)."""
    prompts, comps = _data()
    params = model_lib.init_params(CFG, jax.random.key(0))
    opt = opt or optax.sgd(1.0)
    state = training.init_train_state(params, opt)
    batch = training.make_batch(prompts, comps, length=16, weights=[1, 1, 0.5, 1, 1, 1, 0, 1])
    state, metrics = training.train_step(state, _stack(batch, a), model_cfg=CFG, optimizer=opt)
    return state, metrics, params, batch, opt


def test_accumulation_is_exact():
    s1, m1, *_ = _one_step(1)
    s4, m4, *_ = _one_step(4)
    np.testing.assert_allclose(m1["loss"], m4["loss"], rtol=1e-6)
    helpers.assert_trees_equal(s1.params, s4.params, rtol=1e-5, atol=1e-6)


def test_golden_one_step_matches_a_direct_optax_update():
    """train_step == value_and_grad of the documented loss + the optax chain, by hand."""
    # SGD(lr=1): the update is exactly -grad, so the comparison tests the gradient itself
    # (Adam's first step, g/|g|, turns float noise in near-zero gradients into +-lr).
    state, metrics, params, batch, opt = _one_step(2)

    def loss_fn(p):
        logits = model_lib.forward(
            p, CFG, jnp.asarray(batch.inputs_BxL), jnp.asarray(batch.valid_BxL)
        )
        logp = jax.nn.log_softmax(logits, axis=-1)
        nll = -jnp.take_along_axis(logp, jnp.asarray(batch.targets_BxL)[..., None], -1)[..., 0]
        w = batch.loss_mask_BxL * batch.weights_B[:, None]
        return (nll * w).sum() / batch.loss_mask_BxL.sum()

    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, _ = opt.update(grads, opt.init(params), params)
    expected = optax.apply_updates(params, updates)
    np.testing.assert_allclose(metrics["loss"], loss, rtol=1e-5)
    # Golden value (recorded): a fresh model predicts ~uniformly, nll ~ log(32) = 3.466 per
    # token, scaled by the weights (one row at 0.5, one at 0) over the token count.
    np.testing.assert_allclose(float(metrics["loss"]), 3.014951, rtol=1e-4)
    helpers.assert_trees_equal(state.params, expected, rtol=1e-4, atol=1e-6)
    assert int(state.step) == 1


def test_base_params_survive_donation():
    params = model_lib.init_params(CFG, jax.random.key(0))
    before = [np.asarray(x).copy() for x in jax.tree.leaves(params)]
    prompts, comps = _data()
    cfg = training.FitConfig(batch_size=4, num_steps=3, max_length=16, eval_every=2)
    training.fit(params, prompts, comps, model_cfg=CFG, cfg=cfg, seed=0)
    for x, y in zip(before, jax.tree.leaves(params)):
        np.testing.assert_array_equal(x, np.asarray(y))  # still readable and unchanged


def test_fit_keeps_the_best_validation_checkpoint():
    prompts, comps = _data()
    rewards = iter([0.1, 0.5, 0.3])
    seen = []

    def eval_fn(p):
        seen.append(jax.tree.map(np.asarray, p))
        return next(rewards)

    cfg = training.FitConfig(batch_size=4, num_steps=6, max_length=16, eval_every=2)
    res = training.fit(
        model_lib.init_params(CFG, jax.random.key(0)),
        prompts,
        comps,
        model_cfg=CFG,
        cfg=cfg,
        seed=0,
        eval_fn=eval_fn,
    )
    assert res.best_step == 4 and res.best_reward == 0.5
    assert [h["step"] for h in res.history] == [2, 4, 6]
    helpers.assert_trees_equal(res.params, seen[1])


def test_fit_stops_at_the_first_validation_that_reaches_stop_at(tmp_path):
    prompts, comps = _data()
    params = model_lib.init_params(CFG, jax.random.key(0))
    cfg = training.FitConfig(batch_size=4, num_steps=10, max_length=16, eval_every=2, stop_at=0.5)
    seen = []

    def eval_fn(p):
        seen.append(jax.tree.map(np.asarray, p))
        return [0.1, 0.6, 0.2, 0.9, 0.9][len(seen) - 1]

    kw = dict(model_cfg=CFG, cfg=cfg, seed=0, checkpoint_dir=tmp_path / "ckpt")
    res = training.fit(params, prompts, comps, eval_fn=eval_fn, **kw)
    assert [h["step"] for h in res.history] == [2, 4] and len(seen) == 2
    assert res.best_step == 4 and res.best_reward == 0.6
    helpers.assert_trees_equal(res.params, seen[1])
    # A restart after the stop trains no further and returns the same params.
    again = training.fit(params, prompts, comps, eval_fn=lambda p: pytest.fail("trained on"), **kw)
    assert again.best_step == 4 and again.history == res.history
    helpers.assert_trees_equal(again.params, res.params)
    # Never reached: the whole schedule, the best on validation.
    full = training.fit(
        params,
        prompts,
        comps,
        model_cfg=CFG,
        cfg=dataclasses.replace(cfg, stop_at=0.95),
        seed=0,
        eval_fn=lambda p: 0.1,
    )
    assert [h["step"] for h in full.history] == [2, 4, 6, 8, 10]


def test_fit_resumes_after_an_interruption(tmp_path):
    prompts, comps = _data(16)
    params = model_lib.init_params(CFG, jax.random.key(0))
    cfg = training.FitConfig(batch_size=4, num_steps=8, max_length=16, eval_every=2)
    full = training.fit(
        params, prompts, comps, model_cfg=CFG, cfg=cfg, seed=3, eval_fn=lambda p: 0.0
    )

    calls = {"n": 0}

    def crashing_eval(p):
        calls["n"] += 1
        if calls["n"] == 3:  # dies at step 6, after the step-4 checkpoint was written
            raise KeyboardInterrupt
        return 0.0

    with pytest.raises(KeyboardInterrupt):
        training.fit(
            params,
            prompts,
            comps,
            model_cfg=CFG,
            cfg=cfg,
            seed=3,
            eval_fn=crashing_eval,
            checkpoint_dir=tmp_path / "ckpt",
        )
    resumed = training.fit(
        params,
        prompts,
        comps,
        model_cfg=CFG,
        cfg=cfg,
        seed=3,
        eval_fn=lambda p: 0.0,
        checkpoint_dir=tmp_path / "ckpt",
    )
    assert resumed.history == full.history
    helpers.assert_trees_equal(resumed.params, full.params)


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_last_checkpoint(tmp_path):
    prompts, comps = _data(8)
    params = model_lib.init_params(CFG, jax.random.key(0))
    cfg = training.FitConfig(batch_size=8, num_steps=6, max_length=16, eval_every=2)
    weights = [1.0] * 8

    class Poison(list):
        """Weights that turn NaN after the first checkpoint (step 2)."""

        def __getitem__(self, i):
            return float("nan") if Poison.armed else 1.0

    Poison.armed = False
    w = Poison(weights)
    original = training.make_batch

    def make_batch(*args, **kw):
        make_batch.calls += 1
        Poison.armed = make_batch.calls > 2
        return original(*args, **kw)

    make_batch.calls = 0
    training.make_batch = make_batch
    try:
        with pytest.raises(training.TrainingDiverged, match=r"loss is nan at step 4.*\(step 2\)"):
            training.fit(
                params,
                prompts,
                comps,
                model_cfg=CFG,
                cfg=cfg,
                seed=0,
                weights=w,
                checkpoint_dir=tmp_path / "ckpt",
            )
    finally:
        training.make_batch = original
    import orbax.checkpoint as ocp

    with ocp.CheckpointManager(tmp_path / "ckpt") as m:
        assert m.latest_step() == 2


def test_batch_indices_cover_each_epoch_once():
    idx = np.concatenate([training.batch_indices(10, s, 5, seed=1) for s in range(4)])
    assert sorted(idx[:10]) == list(range(10)) and sorted(idx[10:]) == list(range(10))
    assert not np.array_equal(idx[:10], idx[10:])  # a new permutation each epoch


# --- per-step DPO -------------------------------------------------------------------------


_pairs = helpers.token_pairs


def _dpo_step(a, batch, beta=0.5):
    """One DPO step with SGD(lr=1) through the jitted, donating `make_dpo_train_step`."""
    params = model_lib.init_params(CFG, jax.random.key(0))
    opt = optax.sgd(1.0)
    state = training.init_train_state(params, opt)
    state, metrics = training.make_dpo_train_step(CFG, opt, beta=beta)(state, _stack(batch, a))
    return state, metrics, params


def _batch_logp(params, tb):
    """log p(completion | prompt) per row from a plain forward of one TrainBatch (the step
    runs chosen and rejected rows through one concatenated forward)."""
    logits = model_lib.forward(params, CFG, tb.inputs_BxL, tb.valid_BxL)
    logp = jax.nn.log_softmax(logits, axis=-1)
    tok = jnp.take_along_axis(logp, tb.targets_BxL[..., None], -1)[..., 0]
    return (tok * tb.loss_mask_BxL).sum(-1)


def _pair_batch(ref):
    prompts, chosen, rejected = _pairs()
    batch = training.make_pair_batch(
        prompts, chosen, rejected, length=12, weights=[1.0, 1.0, 0.0, 1.0]
    )
    ref_fn = jax.jit(functools.partial(training.reference_logprobs, model_cfg=CFG))
    return ref_fn(ref, jax.tree.map(jnp.asarray, batch))


def test_dpo_step_at_the_reference_is_log2_and_the_log_ratio_gradient():
    """Policy == reference: every pair costs log 2 and the gradient is
    -(beta / 2) * mean over weighted pairs of grad(log p(chosen) - log p(rejected))."""
    beta = 0.5
    batch = _pair_batch(model_lib.init_params(CFG, jax.random.key(0)))
    state, metrics, params = _dpo_step(1, batch, beta)
    np.testing.assert_allclose(metrics["loss"], np.log(2.0), rtol=1e-6)
    np.testing.assert_allclose(metrics["num_pairs"], 3.0)
    np.testing.assert_allclose(metrics["margin"], 0.0, atol=1e-6)
    w = batch.chosen.weights_B

    def ratio(p):
        d = _batch_logp(p, batch.chosen) - _batch_logp(p, batch.rejected)
        return (w * d).sum() / w.sum()  # the zero-weight pair does not count

    g = jax.jit(jax.grad(ratio))(params)
    for new, old, gi in zip(
        jax.tree.leaves(state.params), jax.tree.leaves(params), jax.tree.leaves(g)
    ):
        # SGD(lr=1): new = old - grad(loss) = old + (beta / 2) * grad(ratio).
        np.testing.assert_allclose(new - old, beta / 2 * gi, rtol=1e-3, atol=1e-6)


def test_dpo_step_golden_and_exact_accumulation():
    ref = model_lib.init_params(CFG, jax.random.key(1))  # a reference other than the policy
    beta = 0.5
    batch = _pair_batch(ref)
    s1, m1, params = _dpo_step(1, batch, beta)
    s2, m2, _ = _dpo_step(2, batch, beta)
    # Reference log-probs are the completion log-likelihoods weighted_nll sums (its masks
    # target exactly the completion: test_make_batch_targets_only_the_completion).
    for tb, got in (
        (batch.chosen, batch.ref_chosen_logp_B),
        (batch.rejected, batch.ref_rejected_logp_B),
    ):
        logits = jax.jit(model_lib.forward, static_argnums=1)(ref, CFG, tb.inputs_BxL, tb.valid_BxL)
        nll = [
            losses.weighted_nll(
                logits[i : i + 1], tb.targets_BxL[i : i + 1], tb.loss_mask_BxL[i : i + 1]
            )[1]["loss_sum"]
            for i in range(4)
        ]
        np.testing.assert_allclose(got, -np.asarray(nll), rtol=1e-5)
    w = batch.chosen.weights_B

    def loss_fn(p):
        pc, pr = _batch_logp(p, batch.chosen), _batch_logp(p, batch.rejected)
        margin = beta * ((pc - batch.ref_chosen_logp_B) - (pr - batch.ref_rejected_logp_B))
        return (w * jnp.log1p(jnp.exp(-margin))).sum() / w.sum()

    loss, g = jax.jit(jax.value_and_grad(loss_fn))(params)
    np.testing.assert_allclose(m1["loss"], loss, rtol=1e-5)
    np.testing.assert_allclose(m2["loss"], loss, rtol=1e-5)
    for x, y, old, gi in zip(
        jax.tree.leaves(s1.params),
        jax.tree.leaves(s2.params),
        jax.tree.leaves(params),
        jax.tree.leaves(g),
    ):
        np.testing.assert_allclose(x, old - gi, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)


def test_in_step_reference_equals_precomputed_reference_logprobs():
    """`dpo_train_step_with_reference` (what fit_dpo runs) is `dpo_train_step` with the
    reference log-probs of `reference_logprobs`, micro-batched or not."""
    ref = model_lib.init_params(CFG, jax.random.key(1))
    batch = _pair_batch(ref)
    want, m_want, _ = _dpo_step(2, batch)
    opt = optax.sgd(1.0)
    state = training.init_train_state(model_lib.init_params(CFG, jax.random.key(0)), opt)
    plain = batch.replace(ref_chosen_logp_B=jnp.zeros(4), ref_rejected_logp_B=jnp.zeros(4))
    step = jax.jit(
        functools.partial(
            training.dpo_train_step_with_reference, model_cfg=CFG, optimizer=opt, beta=0.5
        )
    )
    got, m_got = step(state, ref, _stack(plain, 2))
    np.testing.assert_allclose(m_got["loss"], m_want["loss"], rtol=1e-5)
    helpers.assert_trees_equal(got.params, want.params, rtol=1e-5, atol=1e-6)


def test_fit_dpo_prefers_chosen_and_resumes_exactly(tmp_path):
    """fit_dpo moves the policy toward chosen and away from rejected relative to the
    frozen reference, and an interrupted run resumes to the uninterrupted result."""
    prompts, chosen, rejected = _pairs(8, seed=7)
    params = model_lib.init_params(CFG, jax.random.key(0))
    cfg = training.FitConfig(
        batch_size=4,
        num_steps=8,
        max_length=16,
        eval_every=2,
        optimizer=training.OptimizerConfig(learning_rate=3e-3, warmup_steps=0),
    )
    full = training.fit_dpo(
        params,
        prompts,
        chosen,
        rejected,
        model_cfg=CFG,
        cfg=cfg,
        seed=1,
        beta=0.5,
        eval_fn=lambda p: 0.0,
    )
    batch = jax.tree.map(
        jnp.asarray, training.make_pair_batch(prompts, chosen, rejected, length=16)
    )

    def log_ratio(p):
        return _batch_logp(p, batch.chosen) - _batch_logp(p, batch.rejected)

    gain = np.asarray(log_ratio(full.params) - log_ratio(params))
    assert (gain > 0).all(), gain
    # The loss was logged at log 2 (policy == reference) and fell.
    assert full.history[-1]["loss"] < np.log(2.0)

    calls = {"n": 0}

    def crashing_eval(p):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return 0.0

    with pytest.raises(KeyboardInterrupt):
        training.fit_dpo(
            params,
            prompts,
            chosen,
            rejected,
            model_cfg=CFG,
            cfg=cfg,
            seed=1,
            beta=0.5,
            eval_fn=crashing_eval,
            checkpoint_dir=tmp_path / "ckpt",
        )
    resumed = training.fit_dpo(
        params,
        prompts,
        chosen,
        rejected,
        model_cfg=CFG,
        cfg=cfg,
        seed=1,
        beta=0.5,
        eval_fn=lambda p: 0.0,
        checkpoint_dir=tmp_path / "ckpt",
    )
    assert resumed.history == full.history
    helpers.assert_trees_equal(resumed.params, full.params)


def test_fit_with_base_reward_keeps_the_start_when_nothing_beats_it():
    prompts, comps = _data()
    params = model_lib.init_params(CFG, jax.random.key(0))
    cfg = training.FitConfig(batch_size=4, num_steps=4, max_length=16, eval_every=2)
    kept = training.fit(
        params,
        prompts,
        comps,
        model_cfg=CFG,
        cfg=cfg,
        seed=0,
        eval_fn=lambda p: 0.5,
        base_reward=0.5,
    )  # ties keep the earlier: 0
    assert kept.best_step == 0 and kept.best_reward == 0.5
    helpers.assert_trees_equal(kept.params, params)
    beaten = training.fit(
        params,
        prompts,
        comps,
        model_cfg=CFG,
        cfg=cfg,
        seed=0,
        eval_fn=lambda p: 0.6,
        base_reward=0.5,
    )
    assert beaten.best_step == 2 and beaten.best_reward == 0.6


def test_bf16_m_step_keeps_f32_master_weights_and_tracks_the_f32_loss():
    """The bf16 M-step, ModelConfig(dtype="bfloat16", param_dtype="float32"): bf16
    activations and matmuls (f32 accumulation, f32 logits and loss), f32 params,
    gradients and AdamW moments. On the task model (byte-level, arithmetic solutions)
    its loss curve over 60 steps from the same init stays within 1% of float32's step by
    step for 20 steps and within 5% over windows of 10 steps (measured: 0.07%, 1.5%)."""
    from rest_em.tasks import arithmetic
    from rest_em.tokenizers import ByteTokenizer

    tok, task = ByteTokenizer(), arithmetic.make_task(num_sft=256)
    rows = task.load("sft")
    prompts = [tok.encode(task.prompt(p)) for p in rows]
    comps = [tok.encode(task.target(p)) + [tok.eos_id] for p in rows]
    f32 = model_lib.ModelConfig(
        vocab_size=259,
        hidden_size=64,
        intermediate_size=128,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        max_seq_len=128,
    )
    bf16 = dataclasses.replace(f32, dtype="bfloat16")
    params = model_lib.init_params(f32, jax.random.key(0))
    steps, batch = 60, 32
    opt = training.make_optimizer(
        training.OptimizerConfig(learning_rate=3e-3, warmup_steps=5), steps
    )

    def curve(cfg):
        state = training.init_train_state(jax.tree.map(jnp.copy, params), opt)
        step_fn = training.make_train_step(cfg, opt, state)
        out = []
        for i in range(steps):
            idx = training.batch_indices(len(rows), i, batch, seed=0)
            b = training.make_batch([prompts[j] for j in idx], [comps[j] for j in idx], length=96)
            state, m = step_fn(state, _stack(b, 1))
            out.append(float(m["loss"]))
        return np.array(out), state

    loss32, _ = curve(f32)
    loss16, state16 = curve(bf16)
    leaves = jax.tree.leaves((state16.params, state16.opt_state))
    assert all(x.dtype == jnp.float32 for x in leaves if jnp.issubdtype(x.dtype, jnp.floating))
    assert loss32[-1] < 0.4 * loss32[0]  # it learns...
    # ...and bf16 follows f32: step by step early on, then (as the two trajectories
    # part by rounding) over windows of 10 steps.
    np.testing.assert_allclose(loss16[:20], loss32[:20], rtol=0.01)
    window = lambda x: x.reshape(-1, 10).mean(axis=1)  # noqa: E731
    np.testing.assert_allclose(window(loss16), window(loss32), rtol=0.05)
    assert np.abs(loss16 - loss32).max() > 0  # bf16 compute did happen


def test_sft_base_stops_once_val_greedy_reaches_stop_at(capsys):
    """The base of a chosen strength: sft_base measures greedy pass@1 on the task's val
    split every eval_every steps and stops at the first that reaches fit.stop_at."""
    from rest_em import experiment
    from rest_em.tasks import arithmetic
    from rest_em.tokenizers import ByteTokenizer

    task = arithmetic.make_task(num_train=8, num_sft=32, num_val=4, num_test=4)
    model_cfg = dataclasses.replace(CFG, vocab_size=259, max_seq_len=64)
    fit = training.FitConfig(batch_size=8, num_steps=12, max_length=48, eval_every=4)
    kw = dict(max_new_tokens=16, seed=0)
    tok = ByteTokenizer()
    experiment.sft_base(task, tok, model_cfg, fit=dataclasses.replace(fit, stop_at=0.0), **kw)
    assert "val greedy pass@1 0.000 at step 4 of 12 (stop_at=0.0)" in capsys.readouterr().out
    experiment.sft_base(task, tok, model_cfg, fit=dataclasses.replace(fit, stop_at=1.5), **kw)
    assert "of 12 (stop_at=1.5)" in capsys.readouterr().out  # never reached: the best
    experiment.sft_base(task, tok, model_cfg, fit=fit, **kw)  # no stop_at: no validation
    assert "val greedy" not in capsys.readouterr().out


@pytest.mark.parametrize(
    "overrides",
    [{}, {"tie_embeddings": True, "final_softcap": 5.0}],
    ids=["untied", "tied_softcap"],
)
def test_chunked_loss_train_step_equals_the_plain_one(overrides):
    """ModelConfig.loss_chunk: the train step's loss, metrics and update are the plain
    step's (chunks of 5 over length 16: padded, masked positions), for untied and for
    tied, softcapped heads (Gemma 2's)."""
    prompts, comps = _data()
    cfg = dataclasses.replace(CFG, **overrides)
    params = model_lib.init_params(cfg, jax.random.key(0))
    opt = optax.sgd(1.0)
    batch = _stack(training.make_batch(prompts, comps, length=16, weights=[1, 1, 0.5, 1] * 2), 2)
    out = []
    for c in (cfg, dataclasses.replace(cfg, loss_chunk=5)):
        state = training.init_train_state(jax.tree.map(jnp.copy, params), opt)
        out.append(training.train_step(state, batch, model_cfg=c, optimizer=opt))
    (s0, m0), (s1, m1) = out
    for k in ("loss", "token_accuracy", "num_tokens", "grad_norm"):
        np.testing.assert_allclose(m1[k], m0[k], rtol=1e-5)
    helpers.assert_trees_equal(s1.params, s0.params, rtol=1e-5, atol=1e-6)


def test_chunked_loss_bounds_the_train_steps_memory():
    """At vocab 8192 the compiled step's temporary memory holds [B, L, V] f32 logits (and
    their gradient) unchunked, one chunk's with loss_chunk (XLA's own estimate)."""
    cfg = dataclasses.replace(CFG, vocab_size=8192)
    params = model_lib.init_params(cfg, jax.random.key(0))
    opt = optax.adamw(1e-3)
    prompts = [[5] * 8] * 8
    comps = [[6] * 56] * 8
    batch = _stack(training.make_batch(prompts, comps, length=64), 1)
    temp = {}
    for chunk in (None, 8):
        c = dataclasses.replace(cfg, loss_chunk=chunk)
        state = training.init_train_state(params, opt)
        step = jax.jit(functools.partial(training.train_step, model_cfg=c, optimizer=opt))
        temp[chunk] = step.lower(state, batch).compile().memory_analysis().temp_size_in_bytes
    logits_bytes = 8 * 64 * 8192 * 4
    assert temp[None] > 2 * logits_bytes
    assert temp[8] < temp[None] / 3, temp
