"""Sampler behaviour on one device: decoding rules, keys, EOS, compilation, bad input."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from rest_em import model, sampling

CFG = model.ModelConfig(
    vocab_size=48,
    hidden_size=32,
    intermediate_size=64,
    num_layers=2,
    num_heads=4,
    num_kv_heads=2,
    max_seq_len=96,
)
PROMPTS = [[3, 4, 5], [7, 8, 9, 10, 11, 12, 13], [1], [20, 21, 22, 23, 24]]


@pytest.fixture(scope="module")
def params():
    p = model.init_params(CFG, jax.random.key(0))
    # Random init gives near-uniform next-token distributions; sharpen the head so the
    # filters below cut off real probability mass.
    return {**p, "lm_head": p["lm_head"] * 25.0}


def _sample(params, prompts=PROMPTS, key=0, **kw):
    kw.setdefault("eos_id", None)
    kw.setdefault("max_new_tokens", 4)
    cfg = sampling.SamplingConfig(**kw)
    return sampling.sample(params, prompts, model_cfg=CFG, cfg=cfg, key=jax.random.key(key))


def _next_token_logits(params, prompt):
    return np.asarray(model.forward(params, CFG, jnp.asarray([prompt]))[0, -1], np.float64)


def _filtered_probs(logits, temperature, top_k, top_p):
    """The reference: temperature, then top-k, then nucleus, on float64 numpy."""
    scores = logits / temperature
    order = np.argsort(-scores, kind="stable")
    keep = np.zeros_like(scores, bool)
    k = top_k if 0 < top_k < len(scores) else len(scores)
    keep[order[:k]] = True
    probs = np.exp(scores - scores[keep].max()) * keep
    probs /= probs.sum()
    if top_p < 1.0:
        sorted_p = probs[order]
        before = np.cumsum(sorted_p) - sorted_p
        nucleus = order[(before < top_p) & (sorted_p > 0)]
        keep = np.zeros_like(keep)
        keep[nucleus] = True
        probs = probs * keep
        probs /= probs.sum()
    return probs


@pytest.mark.parametrize(
    "temperature,top_k,top_p",
    [
        (1.3, 0, 1.0),  # temperature alone
        (1.0, 5, 1.0),  # top-k alone
        (1.0, 0, 0.8),  # top-p alone
        (0.7, 8, 0.9),  # all three together
    ],
)
def test_empirical_frequencies_match_filtered_distribution(params, temperature, top_k, top_p):
    prompt = PROMPTS[1]
    n = 6000
    out = _sample(
        params,
        [prompt],
        max_new_tokens=1,
        num_samples=n,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
    )
    counts = np.bincount(out.tokens_BxNxT[0, :, 0], minlength=CFG.vocab_size)
    expected = _filtered_probs(_next_token_logits(params, prompt), temperature, top_k, top_p)
    support = expected > 0
    assert counts[~support].sum() == 0, "a token outside the top-k / nucleus was sampled"
    if top_k and top_p == 1.0:
        assert support.sum() == top_k
    assert support.sum() >= 3, "test distribution too peaked to be informative"
    # Pool rare categories so every expected count is >= 5, then chi-square.
    exp_counts = expected[support] * n
    obs = counts[support]
    order = np.argsort(exp_counts)
    exp_sorted, obs_sorted = exp_counts[order], obs[order]
    pooled_e, pooled_o, acc_e, acc_o = [], [], 0.0, 0
    for e, o in zip(exp_sorted, obs_sorted):
        acc_e, acc_o = acc_e + e, acc_o + o
        if acc_e >= 5:
            pooled_e.append(acc_e)
            pooled_o.append(acc_o)
            acc_e, acc_o = 0.0, 0
    pooled_e[-1] += acc_e
    pooled_o[-1] += acc_o
    _, p_value = stats.chisquare(pooled_o, pooled_e)
    assert p_value > 1e-3, (p_value, pooled_o, pooled_e)


def test_top_k_without_top_p_samples_rather_than_decoding_greedily(params):
    # Tunix's trap: top-k given without top-p silently became greedy.
    out = _sample(
        params, [PROMPTS[0]], max_new_tokens=1, num_samples=200, temperature=1.0, top_k=5, top_p=1.0
    )
    assert len(np.unique(out.tokens_BxNxT)) > 1


def test_greedy_matches_step_by_step_argmax(params):
    out = _sample(params, max_new_tokens=10, temperature=0.0)
    for i, prompt in enumerate(PROMPTS):
        seq = list(prompt)
        for _ in range(10):
            seq.append(int(np.argmax(_next_token_logits(params, seq))))
        assert out.tokens_BxNxT[i, 0].tolist() == seq[len(prompt) :]


def test_kv_cache_and_recompute_agree(params):
    a = _sample(params, max_new_tokens=12, num_samples=3, temperature=1.0, top_k=0)
    b = _sample(
        params, max_new_tokens=12, num_samples=3, temperature=1.0, top_k=0, use_kv_cache=False
    )
    np.testing.assert_array_equal(a.tokens_BxNxT, b.tokens_BxNxT)
    np.testing.assert_allclose(a.logprobs_BxNxT, b.logprobs_BxNxT, atol=1e-5)


def test_logprobs_are_model_log_probabilities(params):
    out = _sample(params, max_new_tokens=6, num_samples=2, temperature=0.7, top_k=10)
    for i, prompt in enumerate(PROMPTS):
        for n in range(2):
            gen = out.tokens_BxNxT[i, n].tolist()
            logits = model.forward(params, CFG, jnp.asarray([prompt + gen]))[0]
            logp = jax.nn.log_softmax(logits, axis=-1)
            want = [float(logp[len(prompt) - 1 + t, gen[t]]) for t in range(6)]
            np.testing.assert_allclose(out.logprobs_BxNxT[i, n], want, atol=1e-4)


def test_same_key_same_samples_different_key_different_samples(params):
    a = _sample(params, key=1, max_new_tokens=8, num_samples=4, temperature=1.0)
    b = _sample(params, key=1, max_new_tokens=8, num_samples=4, temperature=1.0)
    c = _sample(params, key=2, max_new_tokens=8, num_samples=4, temperature=1.0)
    np.testing.assert_array_equal(a.tokens_BxNxT, b.tokens_BxNxT)
    assert (a.tokens_BxNxT != c.tokens_BxNxT).any()
    # The samples of one problem differ from each other (each has its own key).
    assert len({tuple(s) for s in a.tokens_BxNxT[1]}) > 1


def test_sample_does_not_depend_on_neighbours_or_batch_size(params):
    kw = dict(max_new_tokens=8, num_samples=2, temperature=1.0, top_k=10)
    cfg = sampling.SamplingConfig(eos_id=None, **kw)
    key = jax.random.key(7)
    alone = sampling.sample(params, [PROMPTS[1]], model_cfg=CFG, cfg=cfg, key=key, problem_ids=[41])
    other = [[30, 31], PROMPTS[1], [5] * 20, [6]]  # a longer neighbour changes the padding too
    batched = sampling.sample(
        params, other, model_cfg=CFG, cfg=cfg, key=key, problem_ids=[3, 41, 9, 12]
    )
    np.testing.assert_array_equal(alone.tokens_BxNxT[0], batched.tokens_BxNxT[1])
    np.testing.assert_allclose(alone.logprobs_BxNxT[0], batched.logprobs_BxNxT[1], atol=1e-5)


def test_eos_stops_rows_and_pads_after(params):
    greedy = _sample(params, max_new_tokens=6, temperature=0.0)
    eos = int(greedy.tokens_BxNxT[0, 0, 2])  # row 0 emits this at step 2
    out = _sample(params, max_new_tokens=6, temperature=0.0, eos_id=eos, pad_id=47)
    for i in range(len(PROMPTS)):
        row = greedy.tokens_BxNxT[i, 0].tolist()
        stop = row.index(eos) + 1 if eos in row else 6
        assert out.lengths_BxN[i, 0] == stop
        assert out.tokens_BxNxT[i, 0, :stop].tolist() == row[:stop]
        assert (out.tokens_BxNxT[i, 0, stop:] == 47).all()
        assert (out.logprobs_BxNxT[i, 0, stop:] == 0).all()


def test_loop_stops_when_every_row_is_done(params):
    greedy = _sample(params, [PROMPTS[0]], max_new_tokens=40, temperature=0.0)
    assert int(greedy.num_steps) == 40
    eos = int(greedy.tokens_BxNxT[0, 0, 1])
    out = _sample(params, [PROMPTS[0]], max_new_tokens=40, temperature=0.0, eos_id=eos)
    assert int(out.num_steps) == greedy.tokens_BxNxT[0, 0].tolist().index(eos) + 1


def test_no_recompilation_for_same_shapes(params):
    cfg = sampling.SamplingConfig(max_new_tokens=5, num_samples=2, eos_id=None)
    fn = sampling.make_sampler(CFG, cfg)
    before = fn._cache_size()
    for seed, prompts in enumerate([PROMPTS, [[1, 2], [3], [4, 5, 6], [7] * 9]]):
        sampling.sample(params, prompts, model_cfg=CFG, cfg=cfg, key=jax.random.key(seed))
    assert fn._cache_size() - before <= 1


@pytest.mark.parametrize(
    "prompts,kw,message",
    [
        ([[1, 2], []], {}, "prompt 1 is empty"),
        ([[1, 2, 48]], {}, "prompt 0 position 2 holds token id 48, outside the vocabulary"),
        ([[-1]], {}, "token id -1, outside the vocabulary"),
        ([[1] * 90], {"max_new_tokens": 10}, "exceeds the model's max length 96"),
        ([], {}, "no prompts"),
        ([[1.5, 2.0]], {}, "must be integers"),
    ],
)
def test_bad_prompts_get_clear_errors(params, prompts, kw, message):
    with pytest.raises(ValueError, match=message):
        _sample(params, prompts, **kw)


@pytest.mark.parametrize(
    "kw,message",
    [
        ({"top_p": 0.0}, "top_p must be in"),
        ({"top_p": 1.5}, "top_p must be in"),
        ({"top_k": -1}, "top_k must be an integer >= 0"),
        ({"temperature": -0.1}, "temperature must be finite and >= 0"),
        ({"temperature": float("nan")}, "temperature must be finite"),
        ({"max_new_tokens": 0}, "max_new_tokens must be a positive integer"),
        ({"num_samples": 0}, "num_samples must be a positive integer"),
    ],
)
def test_bad_sampling_config_gets_clear_errors(kw, message):
    with pytest.raises(ValueError, match=message):
        sampling.SamplingConfig(**kw)


def test_problem_ids_must_match_prompts(params):
    cfg = sampling.SamplingConfig(max_new_tokens=2)
    with pytest.raises(ValueError, match="got 1 problem_ids for 4 prompts"):
        sampling.sample(
            params, PROMPTS, model_cfg=CFG, cfg=cfg, key=jax.random.key(0), problem_ids=[1]
        )


@pytest.mark.parametrize(
    "overrides",
    [{}, {"sliding_window": 12, "sliding_layers": (0,), "attn_softcap": 20.0}],
    ids=["llama", "sliding_softcap"],
)
@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_bucketed_attention_equals_attending_over_the_whole_cache(overrides, temperature):
    """Decode steps attending over the filled cache only (buckets 64 and the whole
    cache) give the tokens, lengths and log-probs of steps that read every slot:
    rows of mixed lengths (EOS) on either side of the first boundary, and rows without
    EOS that run through every bucket; with sliding windows and softcapping too."""
    cfg = dataclasses.replace(CFG, max_seq_len=256, **overrides)
    p = model.init_params(cfg, jax.random.key(1))
    prompts = [[3, 4, 5], [7, 8, 9, 10, 11, 12, 13], [1], [20, 21, 22, 23, 24]]
    assert sampling.attend_buckets(8, 158) == [64, 158]  # buckets up to half the cache
    for eos_id, num_samples in ((2, 6), (None, 1)):
        out = {}
        for bucketed in (True, False):
            sc = sampling.SamplingConfig(
                max_new_tokens=150,
                num_samples=num_samples,
                temperature=temperature,
                top_k=0,
                eos_id=eos_id,
                bucketed_attention=bucketed,
            )
            out[bucketed] = sampling.sample(
                p, prompts, model_cfg=cfg, cfg=sc, key=jax.random.key(0)
            )
        a, b = out[True], out[False]
        np.testing.assert_array_equal(a.tokens_BxNxT, b.tokens_BxNxT)
        np.testing.assert_array_equal(a.lengths_BxN, b.lengths_BxN)
        np.testing.assert_allclose(a.logprobs_BxNxT, b.logprobs_BxNxT, atol=1e-5)
        assert int(a.num_steps) == int(b.num_steps)
        lengths = np.asarray(a.lengths_BxN).ravel()
        if eos_id is None:
            assert (lengths == 150).all() and int(a.num_steps) == 150
        elif temperature > 0:  # rows end on both sides of the first boundary (slot 64)
            assert lengths.min() < 40 and lengths.max() > 60, lengths
