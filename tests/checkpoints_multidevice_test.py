"""Checkpoint loading straight into shardings, on 8 simulated CPU devices.

XLA reads XLA_FLAGS when jax first creates its CPU backend, so this module sets it
before importing jax and lives apart from the single-device tests.
"""

import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
)

# pylint: disable=wrong-import-position
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hf_testing import SMALL, make_hf_model
from rest_em import checkpoints, model, partitioning

# With SMALL every sharded dimension divides its mesh axes: D=32 over fsdp, heads /
# kv heads / mlp / vocab over tensor, so each parameter really is split.

# Non-default rules: no fsdp, tensor parallelism 4 ways over (tensor, fsdp), so the
# `rules` argument must reach every parameter (and 2 kv heads fall back to replicated).
TP4_RULES = tuple(
    (
        name,
        ("tensor", "fsdp")
        if name in ("heads", "kv_heads", "mlp", "vocab")
        else None
        if name == "embed"
        else target,
    )
    for name, target in partitioning.LOGICAL_AXIS_RULES
)


@pytest.fixture(scope="module")
def mesh():
    if jax.device_count() < 8:
        pytest.fail("jax started before this module set XLA_FLAGS: run it in its own process")
    return partitioning.make_mesh(data=2, fsdp=2, tensor=2)


@pytest.fixture(scope="module", params=["Llama", "Qwen2", "Qwen3"])
def checkpoint(request, tmp_path_factory):
    hf = make_hf_model(request.param, **({"head_dim": 8} if request.param == "Qwen3" else {}))
    path = tmp_path_factory.mktemp(request.param)
    hf.save_pretrained(path, max_shard_size="40KB")
    return path


def _assert_placed(params, shardings, reference):
    assert jax.tree.structure(params) == jax.tree.structure(shardings)
    for x, s, ref in zip(
        jax.tree.leaves(params), jax.tree.leaves(shardings), jax.tree.leaves(reference)
    ):
        assert x.sharding == s, (x.sharding, s)
        assert len(x.addressable_shards) == 8
        np.testing.assert_array_equal(np.asarray(x), np.asarray(ref))


@pytest.mark.parametrize(
    "rules,q_spec,k_spec",
    [
        (partitioning.LOGICAL_AXIS_RULES, ("fsdp", "tensor", None), ("fsdp", "tensor", None)),
        (TP4_RULES, (None, ("tensor", "fsdp"), None), (None, None, None)),
    ],
    ids=["default_rules", "tp4_rules"],
)
def test_load_into_mesh(checkpoint, mesh, rules, q_spec, k_spec):
    cfg, single = checkpoints.load_hf_checkpoint(checkpoint)
    cfg_m, params = checkpoints.load_hf_checkpoint(checkpoint, mesh=mesh, rules=rules)
    assert cfg_m == cfg
    shardings = model.param_shardings(cfg, mesh, rules)
    for i in range(cfg.num_layers):  # the test really shards, as the rules say
        attn = shardings[f"layer_{i}"]["attn"]
        assert tuple(attn["q_kernel"].spec) == q_spec
        assert tuple(attn["k_kernel"].spec) == k_spec
    _assert_placed(params, shardings, single)


def _auto_mesh():
    return jax.make_mesh(
        (2, 2, 2), partitioning.MESH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * 3
    )


@pytest.mark.parametrize("mesh_kind", ["auto_axes", "make_mesh"])
def test_sharded_forward_matches_single_device(checkpoint, mesh, mesh_kind):
    mesh = _auto_mesh() if mesh_kind == "auto_axes" else mesh
    cfg, single = checkpoints.load_hf_checkpoint(checkpoint)
    _, params = checkpoints.load_hf_checkpoint(checkpoint, mesh=mesh)
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, SMALL["vocab_size"], (4, 8)))
    expected = model.forward(single, cfg, tokens)
    with partitioning.activation_sharding(mesh):
        got = jax.jit(model.forward, static_argnums=1)(params, cfg, tokens)
    np.testing.assert_allclose(np.asarray(got), np.asarray(expected), atol=1e-5, rtol=1e-5)


def test_orbax_restore_into_mesh(checkpoint, mesh, tmp_path):
    cfg, single = checkpoints.load_hf_checkpoint(checkpoint)
    checkpoints.save_params(tmp_path / "ckpt", single)
    restored = checkpoints.restore_params(tmp_path / "ckpt", cfg=cfg, mesh=mesh)
    _assert_placed(restored, model.param_shardings(cfg, mesh), single)
    # ...and a checkpoint saved from a mesh restores onto one device.
    checkpoints.save_params(tmp_path / "sharded", restored)
    back = checkpoints.restore_params(tmp_path / "sharded", cfg=cfg)
    for x, ref in zip(jax.tree.leaves(back), jax.tree.leaves(single)):
        assert len(x.devices()) == 1
        np.testing.assert_array_equal(np.asarray(x), np.asarray(ref))


def test_each_block_is_read_once_and_host_holds_one_copy(checkpoint, mesh, monkeypatch):
    """Replicas share one host block; the distinct blocks of a parameter tile it exactly,
    so no device is handed more than its shard and the host never holds more than
    one copy of any parameter."""
    reads, made = [], []
    original_read = checkpoints._Reader.__call__  # pylint: disable=protected-access
    original_make = jax.make_array_from_callback

    def spy_read(self, name):
        reads.append(name)
        return original_read(self, name)

    def spy_make(shape, sharding, callback):
        handed = []

        def spy_callback(index):
            handed.append((index, callback(index)))
            return handed[-1][1]

        out = original_make(shape, sharding, spy_callback)
        made.append((out, handed))
        return out

    monkeypatch.setattr(checkpoints._Reader, "__call__", spy_read)  # pylint: disable=protected-access
    monkeypatch.setattr(jax, "make_array_from_callback", spy_make)
    cfg, params = checkpoints.load_hf_checkpoint(checkpoint, mesh=mesh)
    assert len(made) == len(jax.tree.leaves(params)) == len(set(reads))  # 1 tensor each
    for out, handed in made:
        # Devices holding the same block (jax may ask only once when all do) get one
        # shared buffer of exactly the shard's shape...
        by_index = {}
        for index, b in handed:
            key = tuple(s.indices(n) for s, n in zip(index, out.shape))
            assert by_index.setdefault(key, b) is b
            assert b.shape == out.sharding.shard_shape(out.shape)
        # ...and the distinct blocks add up to exactly one copy of the parameter.
        assert len({id(b) for b in by_index.values()}) == len(by_index)
        assert sum(b.nbytes for b in by_index.values()) == out.nbytes
    # q: [D@fsdp, H@tensor, hd], replicated over data -> 4 distinct blocks, not 8.
    for i in range(cfg.num_layers):
        assert reads.count(f"model.layers.{i}.self_attn.q_proj.weight") == 4
    # embedding: [V@tensor, D@fsdp], replicated over data -> 4 distinct blocks.
    assert reads.count("model.embed_tokens.weight") == 4
    # A norm scale is replicated everywhere: read once for all 8 devices.
    assert reads.count("model.norm.weight") == 1
    assert reads.count("model.layers.1.input_layernorm.weight") == 1
