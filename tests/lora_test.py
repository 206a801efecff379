"""LoRA: fresh adapters are the base model; the factored training forward equals the
merged weights; `fit` trains only the adapters (frozen base, optimizer state for the
adapters alone) and returns merged params that differ from the base only by scale*A*B on
the targets; dropout is seeded; bad configs are refused."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import helpers
from rest_em import errors, lora, training
from rest_em import model as model_lib

CFG = helpers.tiny_model_cfg()


def _random_adapters(params, cfg, seed=1):
    """Adapters with nonzero B (a fresh adapter's B is zero)."""
    ad = lora.init_adapters(params, cfg, jax.random.key(seed))
    leaves, tree = jax.tree.flatten(ad)
    keys = jax.random.split(jax.random.key(seed + 1), len(leaves))
    return jax.tree.unflatten(
        tree, [0.1 * jax.random.normal(k, x.shape) for k, x in zip(keys, leaves)]
    )


def _tokens():
    return jnp.asarray(np.random.default_rng(0).integers(3, 32, (3, 12)))


def test_fresh_adapters_are_the_base_and_attached_equals_merged():
    params = model_lib.init_params(CFG, jax.random.key(0))
    cfg = lora.LoraConfig(rank=4, alpha=8.0)
    tokens = _tokens()
    base = model_lib.forward(params, CFG, tokens)
    fresh = lora.init_adapters(params, cfg, jax.random.key(3))
    np.testing.assert_array_equal(
        model_lib.forward(lora.attach(params, fresh, cfg), CFG, tokens), base
    )
    assert all(
        (a == b).all()
        for a, b in zip(jax.tree.leaves(lora.merge(params, fresh, cfg)), jax.tree.leaves(params))
    )
    ad = _random_adapters(params, cfg)
    attached = model_lib.forward(lora.attach(params, ad, cfg), CFG, tokens)
    merged = model_lib.forward(lora.merge(params, ad, cfg), CFG, tokens)
    assert np.abs(np.asarray(attached - base)).max() > 1e-2  # the adapters matter...
    np.testing.assert_allclose(attached, merged, atol=1e-5)  # ...and x(W + sAB) = xW + sxAB
    # 7 targets x 2 layers; A [in, r], B [r, out] for every layout (o_kernel: [H, hd, D]).
    d, f, hd = CFG.hidden_size, CFG.intermediate_size, CFG.resolved_head_dim
    r = cfg.rank
    per_layer = (d * r + r * 4 * hd) + 2 * (d * r + r * 2 * hd) + (4 * hd * r + r * d)
    per_layer += 2 * (d * r + r * f) + (f * r + r * d)
    assert lora.num_params(ad) == 2 * per_layer


def test_fit_trains_only_the_adapters_and_returns_merged_params():
    prompts, comps = helpers.token_data(16)
    params = model_lib.init_params(CFG, jax.random.key(0))
    cfg = lora.LoraConfig(rank=4, alpha=8.0, targets=("q", "v", "down"))
    fit_cfg = training.FitConfig(
        batch_size=8,
        num_steps=30,
        eval_every=10,
        max_length=16,
        optimizer=training.OptimizerConfig(learning_rate=5e-2, warmup_steps=0),
        lora=cfg,
    )
    seen = []

    def eval_fn(p):  # validation sees merged, full params
        seen.append(jax.tree.structure(p) == jax.tree.structure(params))
        return -float(training_loss(p))

    def training_loss(p):
        b = training.make_batch(prompts, comps, length=16)
        logits = model_lib.forward(p, CFG, jnp.asarray(b.inputs_BxL), jnp.asarray(b.valid_BxL))
        from rest_em import losses

        return losses.weighted_nll(logits, b.targets_BxL, b.loss_mask_BxL, b.weights_B)[0]

    res = training.fit(params, prompts, comps, model_cfg=CFG, cfg=fit_cfg, seed=0, eval_fn=eval_fn)
    assert all(seen) and len(seen) == 3
    # The adapters come back too, and they are what the merged params hold.
    merged = lora.merge(params, res.adapters, cfg)
    helpers.assert_trees_equal(merged, res.params)
    assert training_loss(res.params) < 0.95 * training_loss(params)  # it learns (0.89 here)
    # Only the targets moved, and by a rank-4 update; norms, embeddings, other kernels
    # are the base's exactly.
    flat_base = dict(jax.tree_util.tree_flatten_with_path(params)[0])
    for path, new in jax.tree_util.tree_flatten_with_path(res.params)[0]:
        name = jax.tree_util.keystr(path)
        old = flat_base[path]
        if any(f"'{t}'" in name for t in ("q_kernel", "v_kernel", "down_kernel")):
            delta = np.asarray(new - old).reshape(old.shape[0], -1)
            assert 0 < np.linalg.matrix_rank(delta, tol=1e-6) <= 4, name
        else:
            np.testing.assert_array_equal(new, old, err_msg=name)


def test_optimizer_state_is_the_adapters_only():
    params = model_lib.init_params(CFG, jax.random.key(0))
    cfg = lora.LoraConfig(rank=2)
    ad = lora.init_adapters(params, cfg, jax.random.key(0))
    opt = training.make_optimizer(training.OptimizerConfig(), 10)
    state = training.init_train_state(ad, opt)
    moments = sum(x.size for x in jax.tree.leaves(state.opt_state) if x.ndim > 0)
    assert moments == 2 * lora.num_params(ad) < 0.2 * model_lib.count_params(params)


def test_dropout_is_seeded_and_changes_the_step():
    prompts, comps = helpers.token_data(8)
    params = model_lib.init_params(CFG, jax.random.key(0))
    b = training.make_batch(prompts, comps, length=16)
    batch = jax.tree.map(lambda x: jnp.asarray(x)[None], b)
    opt = training.make_optimizer(training.OptimizerConfig(learning_rate=1e-2), 10)

    def loss(cfg, seed):
        state = training.init_train_state(_random_adapters(params, cfg), opt)
        _, m = training.train_step(
            state, batch, model_cfg=CFG, optimizer=opt, frozen=params, lora=cfg, seed=seed
        )
        return float(m["loss"])

    drop = lora.LoraConfig(rank=4, dropout=0.5)
    assert loss(drop, 0) == loss(drop, 0) != loss(drop, 1)
    plain = dataclasses.replace(drop, dropout=0.0)
    assert loss(plain, 0) == loss(plain, 1)


def test_bad_configs_are_refused():
    with pytest.raises(errors.ConfigError, match="targets"):
        lora.LoraConfig(targets=("q", "embed"))
    with pytest.raises(errors.ConfigError, match="rank"):
        lora.LoraConfig(rank=0)
    with pytest.raises(errors.ConfigError, match="dropout"):
        lora.LoraConfig(dropout=1.0)


def test_memory_benchmark_quick(tmp_path):
    """benchmarks/lora_memory.py --quick: trainable parameters and optimizer state of
    LoRA are its adapters' (and their two AdamW moments), a fraction of full's."""
    import json
    import subprocess
    import sys

    out = tmp_path / "rows.json"
    proc = subprocess.run(
        [
            sys.executable,
            str(helpers.REPO / "benchmarks" / "lora_memory.py"),
            "--quick",
            "--ranks=4",
            f"--json={out}",
        ],
        env=helpers.env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    full, low = json.loads(out.read_text())
    assert full["trainable"] == full["num_params"] and full["frozen_bytes"] == 0
    assert low["setup"] == "LoRA r=4" and low["trainable"] < 0.1 * full["trainable"]
    assert abs(low["opt_bytes"] - 2 * 4 * low["trainable"]) <= 64  # mu, nu (f32) + counts
    assert low["frozen_bytes"] == 4 * full["num_params"]
    assert "| LoRA r=4 | " in proc.stdout


@pytest.mark.parametrize("family", ["Llama", "Gemma2"])
def test_peft_files_load_in_peft_and_match_our_merged_weights(family, tmp_path):
    """save_peft's directory loads with peft.PeftModel.from_pretrained on the base HF
    checkpoint, whose logits then equal our forward pass on merge(params, adapters);
    load_peft reads it back exactly."""
    import peft  # the test extra's ground truth
    import torch

    from hf_testing import make_hf_model
    from rest_em import checkpoints

    extra = {"head_dim": 8} if family == "Gemma2" else {}
    hf = make_hf_model(family, **extra)
    hf.save_pretrained(tmp_path / "base")
    model_cfg, params = checkpoints.load_hf_checkpoint(tmp_path / "base")
    cfg = lora.LoraConfig(rank=4, alpha=8.0, targets=("q", "k", "v", "o", "gate", "up", "down"))
    ad = _random_adapters(params, cfg)
    lora.save_peft(tmp_path / "adapter", ad, cfg, base_model=str(tmp_path / "base"))

    back, cfg_back = lora.load_peft(tmp_path / "adapter")
    assert cfg_back == cfg
    helpers.assert_trees_equal(back, ad)

    tokens = np.random.default_rng(0).integers(1, 128, (2, 9))
    peft_model = peft.PeftModel.from_pretrained(hf, tmp_path / "adapter").eval()
    with torch.no_grad():
        want = peft_model(torch.tensor(tokens)).logits.numpy()
    ours = np.asarray(
        model_lib.forward(lora.merge(params, ad, cfg), model_cfg, jnp.asarray(tokens))
    )
    plain = np.asarray(model_lib.forward(params, model_cfg, jnp.asarray(tokens)))
    assert np.abs(ours - plain).max() > 1e-2  # the adapters change the logits...
    np.testing.assert_allclose(ours, want, atol=1e-4, rtol=0)  # ...exactly as PEFT's do


def test_load_peft_names_what_it_cannot_use(tmp_path):
    params = model_lib.init_params(CFG, jax.random.key(0))
    cfg = lora.LoraConfig(rank=2, targets=("q",))
    lora.save_peft(tmp_path / "a", lora.init_adapters(params, cfg, jax.random.key(0)), cfg)
    with pytest.raises(errors.CheckpointError, match="adapter_model.safetensors: missing"):
        (tmp_path / "a" / "adapter_model.safetensors").unlink()
        lora.load_peft(tmp_path / "a")
    lora.save_peft(tmp_path / "b", lora.init_adapters(params, cfg, jax.random.key(0)), cfg)
    config = tmp_path / "b" / "adapter_config.json"
    config.write_text(config.read_text().replace('"use_rslora": false', '"use_rslora": true'))
    with pytest.raises(errors.CheckpointError, match="only plain LoRA"):
        lora.load_peft(tmp_path / "b")
