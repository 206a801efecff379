"""Sharded sampling on 8 simulated CPU devices equals single-device sampling.

XLA_FLAGS must be set before JAX initialises its backend, hence its own module.
"""

import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from rest_em import model, partitioning, sampling  # noqa: E402

# Heads, kv heads, mlp and vocab divide by 4, so tensor parallelism really splits them.
CFG = model.ModelConfig(
    vocab_size=64,
    hidden_size=32,
    intermediate_size=64,
    num_layers=2,
    num_heads=8,
    num_kv_heads=4,
    head_dim=8,
    max_seq_len=64,
)
PROMPTS = [[3, 4, 5], [7, 8, 9, 10, 11, 12, 13], [1], [20, 21, 22, 23, 24], [9] * 11]
SAMPLING = sampling.SamplingConfig(
    max_new_tokens=10, num_samples=3, temperature=1.0, top_k=20, top_p=0.95, eos_id=5
)


@pytest.fixture(scope="module")
def params():
    if jax.device_count() != 8:
        pytest.fail(
            f"expected 8 simulated devices, found {jax.device_count()}: JAX was "
            "initialised before this module set XLA_FLAGS"
        )
    p = model.init_params(CFG, jax.random.key(0))
    return {**p, "lm_head": p["lm_head"] * 20.0}


@pytest.fixture(scope="module")
def single_device(params):
    return sampling.sample(params, PROMPTS, model_cfg=CFG, cfg=SAMPLING, key=jax.random.key(3))


@pytest.mark.parametrize(
    "data,fsdp,tensor", [(8, 1, 1), (4, 1, 2), (2, 1, 4), (2, 2, 2), (1, 8, 1)]
)
def test_sharded_sampling_equals_one_device(params, single_device, data, fsdp, tensor):
    mesh = partitioning.make_mesh(data, fsdp, tensor)
    sharded_params = jax.device_put(params, model.param_shardings(CFG, mesh))
    if tensor > 1:  # the weights really are split
        q = sharded_params["layer_0"]["attn"]["q_kernel"]
        assert q.sharding.shard_shape(q.shape)[1] == CFG.num_heads // tensor
    out = sampling.sample(
        sharded_params, PROMPTS, model_cfg=CFG, cfg=SAMPLING, key=jax.random.key(3), mesh=mesh
    )
    np.testing.assert_array_equal(out.tokens_BxNxT, single_device.tokens_BxNxT)
    np.testing.assert_array_equal(out.lengths_BxN, single_device.lengths_BxN)
    np.testing.assert_allclose(out.logprobs_BxNxT, single_device.logprobs_BxNxT, atol=1e-4)


@pytest.mark.parametrize("data,fsdp,tensor,slots", [(8, 1, 1, 8), (2, 2, 2, 5), (4, 1, 2, 64)])
def test_continuous_batching_on_a_mesh_equals_the_static_sampler(
    params, single_device, data, fsdp, tensor, slots
):
    """Slots sharded over the batch axes (5 rounds up to the split), refilled from the
    work list: the static single-device sampler's samples."""
    import dataclasses

    mesh = partitioning.make_mesh(data, fsdp, tensor)
    sharded_params = jax.device_put(params, model.param_shardings(CFG, mesh))
    cfg = dataclasses.replace(SAMPLING, num_slots=slots)
    out = sampling.sample(
        sharded_params, PROMPTS, model_cfg=CFG, cfg=cfg, key=jax.random.key(3), mesh=mesh
    )
    np.testing.assert_array_equal(out.tokens_BxNxT, single_device.tokens_BxNxT)
    np.testing.assert_array_equal(out.lengths_BxN, single_device.lengths_BxN)
    np.testing.assert_allclose(out.logprobs_BxNxT, single_device.logprobs_BxNxT, atol=1e-4)


def test_sharded_sample_does_not_depend_on_neighbours(params, single_device):
    mesh = partitioning.make_mesh(4, 1, 2)
    # Problem 1 alone (padded up to the mesh's batch split), then with other neighbours.
    alone = sampling.sample(
        params,
        [PROMPTS[1]],
        model_cfg=CFG,
        cfg=SAMPLING,
        key=jax.random.key(3),
        problem_ids=[1],
        mesh=mesh,
    )
    np.testing.assert_array_equal(alone.tokens_BxNxT[0], single_device.tokens_BxNxT[1])
    shuffled = [PROMPTS[4], [2] * 30, PROMPTS[1]]
    other = sampling.sample(
        params,
        shuffled,
        model_cfg=CFG,
        cfg=SAMPLING,
        key=jax.random.key(3),
        problem_ids=[4, 17, 1],
        mesh=mesh,
    )
    np.testing.assert_array_equal(other.tokens_BxNxT[2], single_device.tokens_BxNxT[1])
    np.testing.assert_array_equal(other.tokens_BxNxT[0], single_device.tokens_BxNxT[4])


def test_sharded_sampler_compiles_once_per_shape(params):
    mesh = partitioning.make_mesh(2, 2, 2)
    fn = sampling.make_sampler(CFG, SAMPLING, mesh)
    before = fn._cache_size()
    for seed in range(3):
        sampling.sample(
            params, PROMPTS[::-1], model_cfg=CFG, cfg=SAMPLING, key=jax.random.key(seed), mesh=mesh
        )
    assert fn._cache_size() - before <= 1
