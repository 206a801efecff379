"""The M-step on 8 simulated CPU devices: `fit` and `fit_dpo` on a data x fsdp x tensor
mesh give the single-device result (XLA_FLAGS is set before jax is imported, as in the
other *_multidevice tests)."""

import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
)

# pylint: disable=wrong-import-position
import jax
import numpy as np
import pytest

from helpers import tiny_model_cfg
from helpers import token_data as _data
from helpers import token_pairs as _pairs
from rest_em import model as model_lib
from rest_em import partitioning, training

CFG = tiny_model_cfg()
FIT = training.FitConfig(batch_size=8, micro_batches=2, num_steps=4, max_length=16, eval_every=2)


@pytest.fixture(scope="module")
def mesh():
    if jax.device_count() < 8:
        pytest.fail("jax started before this module set XLA_FLAGS: run it in its own process")
    return partitioning.make_mesh(data=2, fsdp=2, tensor=2)


def _on(mesh, params):
    return jax.device_put(params, model_lib.param_shardings(CFG, mesh))


def _assert_close(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=2e-4, atol=2e-6)


def test_sharded_fit_equals_one_device(mesh):
    prompts, comps = _data(16)
    params = model_lib.init_params(CFG, jax.random.key(0))
    one = training.fit(params, prompts, comps, model_cfg=CFG, cfg=FIT, seed=2)
    many = training.fit(
        _on(mesh, params), prompts, comps, model_cfg=CFG, cfg=FIT, seed=2, mesh=mesh
    )
    assert [h["step"] for h in many.history] == [2, 4]
    np.testing.assert_allclose(
        [h["loss"] for h in many.history], [h["loss"] for h in one.history], rtol=1e-4
    )
    _assert_close(many.params, one.params)
    assert (
        many.params["layer_0"]["mlp"]["gate_kernel"].sharding.spec != jax.sharding.PartitionSpec()
    )  # really sharded, not gathered onto one device


def test_sharded_fit_dpo_equals_one_device(mesh):
    prompts, chosen, rejected = _pairs(16, seed=1)
    params = model_lib.init_params(CFG, jax.random.key(0))
    ref = model_lib.init_params(CFG, jax.random.key(1))
    one = training.fit_dpo(
        params,
        prompts,
        chosen,
        rejected,
        model_cfg=CFG,
        cfg=FIT,
        seed=2,
        beta=0.5,
        reference_params=ref,
    )
    many = training.fit_dpo(
        _on(mesh, params),
        prompts,
        chosen,
        rejected,
        model_cfg=CFG,
        cfg=FIT,
        seed=2,
        beta=0.5,
        reference_params=_on(mesh, ref),
        mesh=mesh,
    )
    np.testing.assert_allclose(
        [h["loss"] for h in many.history], [h["loss"] for h in one.history], rtol=1e-4
    )
    _assert_close(many.params, one.params)
