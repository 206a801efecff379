"""Continuous batching gives the static sampler's samples: same tokens, lengths and
log-probs whatever the number of slots (so whatever slot, neighbours and refill order
a sample got), with EOS, stop sequences, sliding windows and a bf16 KV cache."""

import dataclasses

import jax
import numpy as np
import pytest

from rest_em import continuous_batching, model, partitioning, sampling, stops

CFG = model.ModelConfig(
    vocab_size=48,
    hidden_size=32,
    intermediate_size=64,
    num_layers=2,
    num_heads=4,
    num_kv_heads=2,
    max_seq_len=128,
)
# Mixed prompt lengths (padding differs per prompt), non-contiguous problem ids.
PROMPTS = [[3, 4, 5], [7, 8, 9, 10, 11, 12, 13], [1], [20, 21, 22, 23, 24], [9] * 11]
IDS = [5, 1, 9, 3, 7]


def _sample(params, cfg=CFG, stop_table=None, **kw):
    sc = sampling.SamplingConfig(**kw)
    return sampling.sample(
        params,
        PROMPTS,
        model_cfg=cfg,
        cfg=sc,
        key=jax.random.key(0),
        problem_ids=IDS,
        stop_table=stop_table,
    )


def _assert_same(a, b, atol=1e-5):
    np.testing.assert_array_equal(a.tokens_BxNxT, b.tokens_BxNxT)
    np.testing.assert_array_equal(a.lengths_BxN, b.lengths_BxN)
    np.testing.assert_allclose(a.logprobs_BxNxT, b.logprobs_BxNxT, atol=atol)


@pytest.mark.parametrize(
    "overrides",
    [{}, {"sliding_window": 12, "sliding_layers": (0,), "attn_softcap": 20.0}],
    ids=["llama", "sliding_softcap"],
)
@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_continuous_batching_gives_the_static_samplers_samples(overrides, temperature):
    cfg = dataclasses.replace(CFG, **overrides)
    params = model.init_params(cfg, jax.random.key(1))
    kw = dict(max_new_tokens=60, num_samples=3, temperature=temperature, top_k=0, eos_id=2)
    static = _sample(params, cfg, **kw)
    lengths = np.asarray(static.lengths_BxN)
    # A heavy-tailed workload: rows end early (EOS) and at the budget, on every prompt.
    assert lengths.min() < 10 and (lengths == 60).any(), lengths
    steps = {}
    for slots in (1, 4, 7, 15, 64):  # 15 = every work item a slot; 64 is capped at 15
        got = _sample(params, cfg, num_slots=slots, **kw)
        _assert_same(static, got)
        steps[slots] = int(got.num_steps)
    # Fewer slots take more steps; one slot decodes the samples one after another.
    assert steps[1] == lengths.sum() and steps[1] > steps[4] > steps[7] >= steps[15]
    assert steps[15] == steps[64] == int(static.num_steps)


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_bucketed_attention_in_slots_gives_the_static_samplers_samples(temperature):
    """Slots attending over the filled cache only (buckets 64 and the whole cache, by
    the furthest live slot) give the static sampler's samples: long samples cross every
    bucket boundary, and when one ends its slot's fresh sample shrinks the context back
    to the smallest bucket. One compilation serves every refill and bucket change."""
    cfg = dataclasses.replace(CFG, max_seq_len=256)
    params = model.init_params(cfg, jax.random.key(1))
    assert sampling.attend_buckets(11, 161) == [64, 161]  # buckets up to half the cache
    kw = dict(max_new_tokens=150, num_samples=3, temperature=temperature, top_k=0, eos_id=2)
    static = _sample(params, cfg, **kw)
    lengths = np.asarray(static.lengths_BxN)
    assert lengths.min() < 10 and lengths.max() > 128 - 11, lengths  # crosses buckets
    sc = sampling.SamplingConfig(num_slots=4, bucketed_attention=True, **kw)
    rules = tuple(partitioning.LOGICAL_AXIS_RULES)
    fn = sampling.make_sampler(cfg, sc, None, rules, False)  # the one `sample` takes
    before = fn._cache_size()
    for slots in (1, 4, 15):
        got = _sample(params, cfg, num_slots=slots, bucketed_attention=True, **kw)
        _assert_same(static, got)
    assert fn._cache_size() - before == 1  # slots=4: compiled once for the whole run


def test_stop_sequences_end_a_slots_sample():
    params = model.init_params(CFG, jax.random.key(2))
    token_bytes = [bytes([65 + i % 26]) for i in range(CFG.vocab_size)]  # token i is a letter
    greedy = _sample(params, max_new_tokens=30, temperature=0.0, eos_id=None)
    row = greedy.tokens_BxNxT[0, 0].tolist()
    across = (token_bytes[row[3]] + token_bytes[row[4]]).decode()  # spans two tokens
    for stop_list, temperature in (([across], 0.0), (["A", "B", "C"], 1.0)):
        table = stops.token_table(stop_list, token_bytes)
        kw = dict(max_new_tokens=30, num_samples=2, temperature=temperature, top_k=0, eos_id=None)
        static = _sample(params, stop_table=table, **kw)
        lengths = np.asarray(static.lengths_BxN)
        assert lengths[0, 0] == 5 if temperature == 0.0 else lengths.min() < 10, lengths
        for slots in (1, 3, 10):
            _assert_same(static, _sample(params, stop_table=table, num_slots=slots, **kw))


def test_bf16_kv_cache_matches_f32_within_tolerance():
    """The bf16 cache changes logits by bf16 rounding of k and v only: greedy tokens of
    this model agree on most positions and the log-probs of the f32 run's tokens, scored
    under the bf16 cache, stay within 0.05."""
    params = model.init_params(CFG, jax.random.key(3))
    kw = dict(max_new_tokens=24, temperature=0.0, eos_id=None)
    f32 = _sample(params, **kw)
    bf16 = _sample(params, kv_cache_dtype="bfloat16", **kw)
    agree = np.mean(np.asarray(f32.tokens_BxNxT) == np.asarray(bf16.tokens_BxNxT))
    assert agree > 0.9, agree
    # Up to the first differing token the log-probs are of the same tokens.
    for a, b, ta, tb in zip(
        f32.logprobs_BxNxT[:, 0], bf16.logprobs_BxNxT[:, 0], f32.tokens_BxNxT[:, 0],
        bf16.tokens_BxNxT[:, 0],
    ):  # fmt: skip
        same = np.cumprod(ta == tb).astype(bool)
        np.testing.assert_allclose(a[same], b[same], atol=0.05)
    # Continuous batching with a bf16 cache gives the static bf16 sampler's samples.
    _assert_same(bf16, _sample(params, kv_cache_dtype="bfloat16", num_slots=3, **kw))


def test_num_slots_and_bad_configs():
    sc = sampling.SamplingConfig(num_slots=10)
    assert continuous_batching.num_slots(sc, 6) == 6  # never more slots than work
    assert continuous_batching.num_slots(sc, 64, multiple=4) == 12  # the mesh's batch split
    with pytest.raises(ValueError, match="num_slots must be an integer >= 0"):
        sampling.SamplingConfig(num_slots=-1)
    with pytest.raises(ValueError, match="needs use_kv_cache=True"):
        sampling.SamplingConfig(num_slots=4, use_kv_cache=False)
    with pytest.raises(ValueError, match="kv_cache_dtype must be"):
        sampling.SamplingConfig(kv_cache_dtype="int8")
