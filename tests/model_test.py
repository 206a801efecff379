"""The Flax model against Hugging Face transformers, through `load_hf_checkpoint`.

Tiny random Llama / Qwen2 / Qwen3 / Mistral / Gemma / Gemma 2 / Gemma 3 models are built
with torch (every weight, norm scale and bias randomised so a swapped or dropped tensor
shows), saved with
`save_pretrained`, imported, and their logits compared on full and left-padded batches.
"""

import dataclasses
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from hf_testing import make_hf_model
from rest_em import checkpoints, model

VOCAB, T = 256, 10
# Bigger than hf_testing.SMALL, with three layers unless a case says otherwise.
SIZE = dict(
    vocab_size=VOCAB,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=3,
    max_position_embeddings=128,
)

CASES = {
    "llama": ("Llama", dict(rope_parameters={"rope_type": "default", "rope_theta": 5000.0})),
    "llama_tied": ("Llama", dict(tie_word_embeddings=True, num_hidden_layers=2)),
    "llama3_rope": (
        "Llama",
        dict(
            rope_parameters={
                "rope_type": "llama3",
                "rope_theta": 500000.0,
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 64,
            }
        ),
    ),
    "llama_linear_rope": (
        "Llama",
        dict(
            num_hidden_layers=2,
            rope_parameters={"rope_type": "linear", "rope_theta": 10000.0, "factor": 4.0},
        ),
    ),
    "llama_mha_head_dim": ("Llama", dict(num_key_value_heads=4, head_dim=8, num_hidden_layers=2)),
    "qwen2": ("Qwen2", dict(num_hidden_layers=2)),
    "qwen2_sliding": (
        "Qwen2",
        dict(num_hidden_layers=2, use_sliding_window=True, sliding_window=4, max_window_layers=0),
    ),
    "mistral_sliding": ("Mistral", dict(sliding_window=4, num_hidden_layers=2)),
    # Qwen3: q/k RMSNorm per head before RoPE, an explicit head_dim (not hidden / heads).
    "qwen3": ("Qwen3", dict(num_hidden_layers=2, head_dim=24)),
    "qwen3_sliding": (
        "Qwen3",
        dict(
            num_hidden_layers=2,
            head_dim=16,
            use_sliding_window=True,
            sliding_window=4,
            max_window_layers=0,
        ),
    ),
    # Gemma: (1 + w) norms, sqrt(hidden)-scaled tied embeddings, GeGLU.
    "gemma": ("Gemma", dict(num_hidden_layers=2, head_dim=16)),
    # Gemma 2: + sandwich norms, its own query scale, soft-capped scores and logits (caps
    # small enough to bite on random weights), a window on alternate layers (0 and 2).
    "gemma2": (
        "Gemma2",
        dict(
            head_dim=16,
            query_pre_attn_scalar=12,
            attn_logit_softcapping=0.5,
            final_logit_softcapping=2.0,
            sliding_window=4,
        ),
    ),
    # Gemma 3: + q/k norms, no caps, sliding layers with their own rope theta, the full
    # layer's rope linearly scaled.
    "gemma3": (
        "Gemma3",
        dict(
            head_dim=16,
            query_pre_attn_scalar=16,
            sliding_window=4,
            layer_types=["sliding_attention", "full_attention", "sliding_attention"],
            rope_parameters={
                "full_attention": {"rope_type": "linear", "rope_theta": 1e6, "factor": 4.0},
                "sliding_attention": {"rope_type": "default", "rope_theta": 100.0},
            },
        ),
    ),
}
GEMMA = ("gemma", "gemma2", "gemma3")


@pytest.fixture(scope="module", params=list(CASES))
def case(request, tmp_path_factory):
    family, overrides = CASES[request.param]
    hf = make_hf_model(family, **{**SIZE, **overrides})
    path = tmp_path_factory.mktemp(request.param)
    hf.save_pretrained(path)
    cfg, params = checkpoints.load_hf_checkpoint(path)
    return request.param, hf, cfg, params


def _tokens(batch=3, seed=1):
    return np.random.default_rng(seed).integers(1, VOCAB, (batch, T)).astype(np.int64)


def _hf_logits(hf, tokens, valid=None):
    kwargs = {}
    if valid is not None:
        positions = np.maximum(np.cumsum(valid, axis=1) - 1, 0)
        kwargs = dict(
            attention_mask=torch.tensor(valid.astype(np.int64)),
            position_ids=torch.tensor(positions),
        )
    with torch.no_grad():
        return hf(input_ids=torch.tensor(tokens), **kwargs).logits.numpy()


_forward = jax.jit(model.forward, static_argnums=1)


def test_config_matches_hf(case):
    name, hf, cfg, params = case
    c = hf.config
    assert cfg.num_layers == c.num_hidden_layers and cfg.num_kv_heads == c.num_key_value_heads
    assert cfg.resolved_head_dim == (getattr(c, "head_dim", None) or 64 // 4)
    assert cfg.tie_embeddings == c.tie_word_embeddings
    assert cfg.qkv_bias == name.startswith("qwen2")
    windowed = name.endswith("sliding") or name in ("gemma2", "gemma3")
    assert cfg.sliding_window == (4 if windowed else None)
    assert cfg.sliding_layers == ((0, 2) if name in ("gemma2", "gemma3") else None)
    assert (cfg.rope_llama3_scaling is not None) == (name == "llama3_rope")
    assert (cfg.rope_linear_factor is not None) == (name in ("llama_linear_rope", "gemma3"))
    assert cfg.qk_norm == name.startswith(("qwen3", "gemma3"))
    assert cfg.norm_offset == cfg.embed_scale == (name in GEMMA)
    assert cfg.sandwich_norms == (name in ("gemma2", "gemma3"))
    assert (cfg.attn_softcap, cfg.final_softcap) == (
        (0.5, 2.0) if name == "gemma2" else (None,) * 2
    )
    assert cfg.rope_local_theta == (100.0 if name == "gemma3" else None)
    assert cfg.param_dtype == "float32"
    assert ("lm_head" in params) != cfg.tie_embeddings
    assert model.count_params(params) == sum(p.numel() for p in hf.parameters())


# Optional features whose effect the test sequences must be long enough to show.
FEATURES = {
    "llama3_rope": {"rope_llama3_scaling": None},
    "qwen2_sliding": {"sliding_window": None},
    "mistral_sliding": {"sliding_window": None},
    "llama_linear_rope": {"rope_linear_factor": None},
    "qwen3": {"qk_norm": False},
    "qwen3_sliding": {"sliding_window": None},
    "gemma": {"norm_offset": False},
    "gemma2": {"sliding_layers": None},  # the window on every layer instead of alternate ones
}
# Each of these alone changes the logits too (the reference is the same HF model).
GEMMA_FEATURES = {
    "gemma": [{"embed_scale": False}, {"hidden_act": "silu"}],
    "gemma2": [
        {"attn_softcap": None},
        {"final_softcap": None},
        {"query_pre_attn_scalar": None},
        {"sliding_window": None, "sliding_layers": None},
    ],
    "gemma3": [{"rope_local_theta": None}, {"rope_linear_factor": None}, {"qk_norm": False}],
}


def test_logits_match_hf(case):
    name, hf, cfg, params = case
    tokens = _tokens()
    ours = np.asarray(_forward(params, cfg, jnp.asarray(tokens)))
    ref = _hf_logits(hf, tokens)
    assert np.abs(ref).max() > 0.5  # the comparison is not between near-zero logits
    np.testing.assert_allclose(ours, ref, atol=1e-4, rtol=0)
    changes = ([FEATURES[name]] if name in FEATURES else []) + GEMMA_FEATURES.get(name, [])
    for change in changes:  # ...and it would fail without the feature
        without = dataclasses.replace(cfg, **change)
        got = np.asarray(_forward(params, without, jnp.asarray(tokens)))
        assert np.abs(got - ref).max() > 1e-2, change


def test_left_padded_logits_match_hf(case):
    _, hf, cfg, params = case
    tokens = _tokens(seed=2)
    lengths = np.array([T, 6, 3])
    valid = np.arange(T)[None, :] >= (T - lengths)[:, None]
    tokens = np.where(valid, tokens, 0)
    ours = np.asarray(_forward(params, cfg, jnp.asarray(tokens), jnp.asarray(valid)))
    ref = _hf_logits(hf, tokens, valid)
    np.testing.assert_allclose(ours[valid], ref[valid], atol=1e-4, rtol=0)
    # Padding must not change a row's logits: each row equals its unpadded self.
    for row, n in enumerate(lengths):
        alone = np.asarray(_forward(params, cfg, jnp.asarray(tokens[row : row + 1, T - n :])))
        np.testing.assert_allclose(ours[row, T - n :], alone[0], atol=1e-4, rtol=0)


@pytest.mark.parametrize("remat", ["block", "block_dots"])
def test_remat_same_params_logits_and_gradients(remat):
    base = model.ModelConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
    )
    cfg = dataclasses.replace(base, remat=remat)
    params = model.init_params(base, jax.random.key(0))
    assert jax.tree.structure(model.abstract_params(cfg)) == jax.tree.structure(
        params
    )  # same names: checkpoints load either way
    tokens = jnp.asarray(_tokens())

    def loss(p, c):
        return jnp.mean(model.forward(p, c, tokens) ** 2)

    grad = jax.jit(jax.value_and_grad(loss), static_argnums=1)
    (l0, g0), (l1, g1) = grad(params, base), grad(params, cfg)
    np.testing.assert_allclose(l1, l0, rtol=1e-6)
    for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1)):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-7)

    # The remat really is in the program (one checkpointed call per layer), and only there.
    def remats(c):  # the primitive is "remat2" in jax 0.10 ("checkpoint" in older ones)
        return len(
            re.findall(
                r"= (?:remat\d*|checkpoint)\[",
                str(jax.make_jaxpr(loss, static_argnums=1)(params, c)),
            )
        )

    assert remats(cfg) == 2 and remats(base) == 0


def test_remat_rejects_unknown_policy():
    with pytest.raises(ValueError, match="remat"):
        model.ModelConfig(
            vocab_size=8,
            hidden_size=8,
            intermediate_size=8,
            num_layers=1,
            num_heads=1,
            num_kv_heads=1,
            remat="everything",
        )
