"""Hugging Face import / export and orbax save / restore (single device).

Multi-device placement is tested in checkpoints_multidevice_test.py, which needs
XLA_FLAGS set before jax starts.
"""

import copy
import dataclasses
import json
import re
import shutil

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
import safetensors.numpy
import torch
import transformers

from helpers import assert_trees_equal
from hf_testing import SMALL, make_hf_model
from rest_em import checkpoints
from rest_em.errors import CheckpointError


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    hf = make_hf_model("Llama")
    path = tmp_path_factory.mktemp("llama")
    hf.save_pretrained(path)
    return hf, path


@pytest.fixture(scope="module")
def llama_loaded(llama):
    return checkpoints.load_hf_checkpoint(llama[1])


@pytest.fixture
def llama_copy(llama, tmp_path):
    """A private copy of the checkpoint dir that a test may damage."""
    return shutil.copytree(llama[1], tmp_path / "ckpt")


def _rewrite(path, edit):
    file = path / "model.safetensors"
    tensors = safetensors.numpy.load_file(file)
    edit(tensors)
    safetensors.numpy.save_file(tensors, file, metadata={"format": "pt"})


def _edit_config(path, **changes):
    config = json.loads((path / "config.json").read_text())
    config.update(changes)
    (path / "config.json").write_text(json.dumps(config))


# --- import ------------------------------------------------------------------


def test_sharded_checkpoint_loads_like_single_file(llama, llama_loaded, tmp_path):
    hf, _ = llama
    hf.save_pretrained(tmp_path, max_shard_size="40KB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    assert len(list(tmp_path.glob("*.safetensors"))) > 2
    cfg, params = checkpoints.load_hf_checkpoint(tmp_path)
    assert cfg == llama_loaded[0]
    assert_trees_equal(params, llama_loaded[1])


def test_layouts_follow_hf(llama, llama_loaded):
    hf, _ = llama
    cfg, params = llama_loaded
    sd = {k: v.numpy() for k, v in hf.state_dict().items()}
    d, hd = cfg.hidden_size, cfg.resolved_head_dim
    assert sorted(params) == ["embedding", "final_norm", "layer_0", "layer_1", "lm_head"]
    q = sd["model.layers.1.self_attn.q_proj.weight"]  # [H*hd, D]
    np.testing.assert_array_equal(
        params["layer_1"]["attn"]["q_kernel"], q.T.reshape(d, cfg.num_heads, hd)
    )
    k = sd["model.layers.0.self_attn.k_proj.weight"]  # [K*hd, D]
    np.testing.assert_array_equal(
        params["layer_0"]["attn"]["k_kernel"], k.T.reshape(d, cfg.num_kv_heads, hd)
    )
    o = sd["model.layers.1.self_attn.o_proj.weight"]  # [D, H*hd]
    np.testing.assert_array_equal(
        params["layer_1"]["attn"]["o_kernel"], o.T.reshape(cfg.num_heads, hd, d)
    )
    np.testing.assert_array_equal(params["lm_head"], sd["lm_head.weight"].T)
    np.testing.assert_array_equal(
        params["layer_0"]["mlp_norm"]["scale"], sd["model.layers.0.post_attention_layernorm.weight"]
    )
    assert all(x.devices() == {jax.devices()[0]} for x in jax.tree.leaves(params))


def test_bf16_checkpoint_loads_exactly(llama, tmp_path):
    hf, _ = llama
    copy.deepcopy(hf).to(torch.bfloat16).save_pretrained(tmp_path)
    cfg, params = checkpoints.load_hf_checkpoint(tmp_path)
    assert cfg.param_dtype == cfg.dtype == "bfloat16"
    assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(params))
    ref = hf.model.layers[1].mlp.down_proj.weight.detach().to(torch.bfloat16).float().numpy()
    got = params["layer_1"]["mlp"]["down_kernel"]
    np.testing.assert_array_equal(np.asarray(got, np.float32), ref.T)
    cfg32, params32 = checkpoints.load_hf_checkpoint(tmp_path, dtype="float32")
    assert cfg32.param_dtype == cfg32.dtype == "float32"
    np.testing.assert_array_equal(params32["layer_1"]["mlp"]["down_kernel"], ref.T)


def test_tied_checkpoint_has_no_lm_head(tmp_path):
    make_hf_model(tie_word_embeddings=True).save_pretrained(tmp_path)
    cfg, params = checkpoints.load_hf_checkpoint(tmp_path)
    assert cfg.tie_embeddings and "lm_head" not in params


def test_missing_tensor_is_named(llama_copy):
    _rewrite(llama_copy, lambda t: t.pop("model.layers.1.mlp.up_proj.weight"))
    with pytest.raises(CheckpointError, match=r"model\.layers\.1\.mlp\.up_proj\.weight") as e:
        checkpoints.load_hf_checkpoint(llama_copy)
    assert str(llama_copy) in str(e.value)


def test_missing_lm_head_when_untied_is_named(llama_copy):
    _rewrite(llama_copy, lambda t: t.pop("lm_head.weight"))
    with pytest.raises(ValueError, match=r"lm_head\.weight.*tie_word_embeddings"):
        checkpoints.load_hf_checkpoint(llama_copy)


def test_extra_tensor_is_named_but_rotary_buffers_are_ignored(llama_copy):
    _rewrite(
        llama_copy,
        lambda t: t.update(
            {"model.layers.0.self_attn.rotary_emb.inv_freq": np.ones(4, np.float32)}
        ),
    )
    checkpoints.load_hf_checkpoint(llama_copy)
    _rewrite(
        llama_copy,
        lambda t: t.update(
            {"model.layers.2.mlp.up_proj.weight": t["model.layers.1.mlp.up_proj.weight"]}
        ),
    )
    with pytest.raises(ValueError, match=r"does not use.*model\.layers\.2\.mlp\.up_proj"):
        checkpoints.load_hf_checkpoint(llama_copy)


def test_wrong_shape_is_named(llama_copy):
    _edit_config(llama_copy, intermediate_size=48)
    with pytest.raises(
        ValueError,
        match=r"wrong shape.*mlp\.gate_proj\.weight: expected "
        r"\(48, 32\), found \(64, 32\)",
    ):
        checkpoints.load_hf_checkpoint(llama_copy)


def test_unsupported_architecture_is_named(llama_copy):
    _edit_config(llama_copy, architectures=["GPT2LMHeadModel"])
    with pytest.raises(ValueError, match=r"GPT2LMHeadModel.*LlamaForCausalLM"):
        checkpoints.load_hf_checkpoint(llama_copy)


def test_missing_files(llama_copy, tmp_path):
    (llama_copy / "config.json").unlink()
    with pytest.raises(CheckpointError, match=re.escape(str(llama_copy)) + ".*no config.json"):
        checkpoints.load_hf_checkpoint(llama_copy)
    with pytest.raises(CheckpointError, match="no Hugging Face config.json"):
        checkpoints.config_from_hf(llama_copy)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "config.json").write_text(json.dumps(SMALL | {"architectures": ["LlamaForCausalLM"]}))
    with pytest.raises(CheckpointError, match=re.escape(str(empty)) + r".*no \*\.safetensors"):
        checkpoints.load_hf_checkpoint(empty)
    with pytest.raises(CheckpointError, match="no such checkpoint directory"):
        checkpoints.load_hf_checkpoint(tmp_path / "absent")


# --- unreadable or incomplete checkpoints: CheckpointError naming the file ---------


def test_unreadable_or_incomplete_config_is_named(llama_copy):
    config = llama_copy / "config.json"
    text = config.read_text()
    config.write_text(text[: len(text) // 2])  # a cut-off download
    with pytest.raises(CheckpointError, match=re.escape(str(config)) + ".*unreadable"):
        checkpoints.load_hf_checkpoint(llama_copy)
    config.write_text(
        json.dumps({k: v for k, v in json.loads(text).items() if k != "num_hidden_layers"})
    )
    with pytest.raises(CheckpointError, match=re.escape(str(config)) + ".*'num_hidden_layers'"):
        checkpoints.load_hf_checkpoint(llama_copy)
    config.write_text("[1, 2]")
    with pytest.raises(CheckpointError, match="expected a JSON object"):
        checkpoints.load_hf_checkpoint(llama_copy)


def test_truncated_safetensors_is_named(llama_copy):
    file = llama_copy / "model.safetensors"
    data = file.read_bytes()
    file.write_bytes(data[: len(data) - 100])
    with pytest.raises(CheckpointError, match=re.escape(str(file)) + ".*truncated"):
        checkpoints.load_hf_checkpoint(llama_copy)
    file.write_bytes(data[:4])
    with pytest.raises(CheckpointError, match=re.escape(str(file)) + ".*too short"):
        checkpoints.load_hf_checkpoint(llama_copy)
    n = int.from_bytes(data[:8], "little")
    file.write_bytes(data[: 8 + n // 2])  # cut inside the header
    with pytest.raises(CheckpointError, match="truncated"):
        checkpoints.load_hf_checkpoint(llama_copy)


def test_corrupt_safetensors_header_is_named(llama_copy):
    file = llama_copy / "model.safetensors"
    data = bytearray(file.read_bytes())
    data[8:12] = b"\xff\xfe{["  # not JSON
    file.write_bytes(bytes(data))
    with pytest.raises(
        CheckpointError,
        match=re.escape(str(file)) + ".*unreadable safetensors "
        "header.*download or copy the checkpoint again",
    ):
        checkpoints.load_hf_checkpoint(llama_copy)
    file.write_bytes(b"garbage, not a safetensors file at all" * 4)
    with pytest.raises(CheckpointError, match=re.escape(str(file))):
        checkpoints.load_hf_checkpoint(llama_copy)


def test_index_naming_absent_shard_is_named(llama, tmp_path):
    hf, _ = llama
    hf.save_pretrained(tmp_path, max_shard_size="40KB")
    shard = sorted(tmp_path.glob("model-*.safetensors"))[1]
    shard.unlink()
    match = r"index\.json lists 1 shard.*" + re.escape(shard.name)
    with pytest.raises(CheckpointError, match=match):
        checkpoints.load_hf_checkpoint(tmp_path)
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}}))
    with pytest.raises(CheckpointError, match="weight_map"):
        checkpoints.load_hf_checkpoint(tmp_path)


# --- orbax: incomplete directories and closing the checkpointer ----------------------

_TREE = {"a": np.arange(12, dtype=np.float32).reshape(4, 3), "b": {"c": np.ones(5, np.float32)}}


def _abstract(tree):
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), tree)


@pytest.fixture
def orbax_dir(tmp_path):
    checkpoints.save_params(tmp_path / "params", jax.tree.map(jnp.asarray, _TREE))
    return tmp_path / "params"


def test_orbax_missing_or_unfinished_is_named(tmp_path):
    with pytest.raises(CheckpointError, match=re.escape(str(tmp_path / "x")) + ": no orbax"):
        checkpoints.restore_params(tmp_path / "x")
    (tmp_path / "x.orbax-checkpoint-tmp-1234").mkdir()  # what an interrupted save leaves
    with pytest.raises(CheckpointError, match=r"unfinished save.*save it again"):
        checkpoints.restore_params(tmp_path / "x", abstract=_abstract(_TREE))
    (tmp_path / "x").mkdir()
    with pytest.raises(CheckpointError, match="empty directory"):
        checkpoints.restore_params(tmp_path / "x")
    (tmp_path / "f").write_text("")
    with pytest.raises(CheckpointError, match="not a directory"):
        checkpoints.restore_params(tmp_path / "f")


@pytest.mark.parametrize("damage", ["_METADATA", "manifest.ocdbt", "d"])
def test_orbax_incomplete_dir_is_named(orbax_dir, damage):
    victim = orbax_dir / damage
    shutil.rmtree(victim) if victim.is_dir() else victim.unlink()
    for kw in ({}, {"abstract": _abstract(_TREE)}):
        if damage == "_METADATA" and kw:
            continue  # the arrays are still all there: restoring into given shapes works
        with pytest.raises(
            CheckpointError,
            match=re.escape(str(orbax_dir))
            + r": (unreadable or )?incomplete orbax checkpoint.*save it again",
        ):
            checkpoints.restore_params(orbax_dir, **kw)


def test_orbax_of_another_shape_is_named(orbax_dir):
    other = {"a": jax.ShapeDtypeStruct((7, 3), np.float32), "b": _abstract(_TREE)["b"]}
    with pytest.raises(CheckpointError, match="does not fit the requested params.*shape"):
        checkpoints.restore_params(orbax_dir, abstract=other)
    with pytest.raises(CheckpointError, match="does not fit"):
        checkpoints.restore_params(orbax_dir, abstract={"a": _abstract(_TREE)["a"]})


def test_orbax_checkpointers_are_closed(orbax_dir, monkeypatch):
    """Every StandardCheckpointer is closed, after a restore and after a failed one (an
    unclosed one keeps its thread pool and metadata store until garbage collection)."""
    made, closed = [], []

    class Recording(checkpoints.ocp.StandardCheckpointer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self)

        def close(self):
            closed.append(self)
            super().close()

    monkeypatch.setattr(checkpoints.ocp, "StandardCheckpointer", Recording)
    for _ in range(3):
        assert_trees_equal(checkpoints.restore_params(orbax_dir), _TREE)
    checkpoints.restore_params(orbax_dir, abstract=_abstract(_TREE))
    with pytest.raises(CheckpointError):
        checkpoints.restore_params(orbax_dir, abstract={"a": _abstract(_TREE)["a"]})
    checkpoints.save_params(orbax_dir.parent / "again", _TREE)
    assert len(made) == 6 and [id(c) for c in closed] == [id(c) for c in made]


# --- config ------------------------------------------------------------------


def _hf(arch="LlamaForCausalLM", **changes):
    return {"architectures": [arch], **SMALL, **changes}


def test_config_rope_formats():
    llama3 = {
        "rope_type": "llama3",
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
    }
    new = checkpoints.config_from_hf(_hf(rope_parameters={"rope_theta": 5e5, **llama3}))
    old = checkpoints.config_from_hf(_hf(rope_theta=5e5, rope_scaling=llama3))
    assert new == old
    assert new.rope_theta == 5e5 and new.rope_llama3_scaling == (8.0, 1.0, 4.0, 8192)
    plain = checkpoints.config_from_hf(_hf(rope_scaling=None))
    assert plain.rope_theta == 10000.0 and plain.rope_llama3_scaling is None
    assert plain.rope_linear_factor is None
    linear = {"rope_type": "linear", "factor": 4.0}
    new = checkpoints.config_from_hf(_hf(rope_parameters={"rope_theta": 1e4, **linear}))
    old = checkpoints.config_from_hf(_hf(rope_scaling={"type": "linear", "factor": 4.0}))
    assert new == old and new.rope_linear_factor == 4.0 and new.rope_llama3_scaling is None
    with pytest.raises(ValueError, match="yarn"):
        checkpoints.config_from_hf(_hf(rope_parameters={"rope_type": "yarn", "factor": 4.0}))
    with pytest.raises(ValueError, match="dynamic"):
        checkpoints.config_from_hf(_hf(rope_scaling={"type": "dynamic", "factor": 2.0}))


def test_config_fields_and_overrides():
    cfg = checkpoints.config_from_hf(
        _hf(num_key_value_heads=None, torch_dtype="bfloat16", rms_norm_eps=1e-5, head_dim=16)
    )
    assert cfg.num_kv_heads == 4 and cfg.head_dim == 16 and cfg.rms_norm_eps == 1e-5
    assert cfg.param_dtype == cfg.dtype == "bfloat16" and cfg.max_seq_len == 64
    assert checkpoints.config_from_hf(_hf(dtype="bfloat16"), dtype="float32").dtype == "float32"
    no_arch = {**SMALL, "model_type": "mistral", "sliding_window": None}
    assert checkpoints.config_from_hf(no_arch).sliding_window is None
    with pytest.raises(ValueError, match="o_proj"):
        checkpoints.config_from_hf(_hf(attention_bias=True))
    with pytest.raises(ValueError, match="Qwen3 attention_bias"):
        checkpoints.config_from_hf(_hf("Qwen3ForCausalLM", attention_bias=True))
    qwen3 = checkpoints.config_from_hf({**SMALL, "model_type": "qwen3", "head_dim": 8})
    assert qwen3.qk_norm and not qwen3.qkv_bias and qwen3.head_dim == 8
    with pytest.raises(ValueError, match="gelu"):
        checkpoints.config_from_hf(_hf(hidden_act="gelu"))


def test_config_gemma_formats_and_refusals():
    """Gemma 2 / 3 configs as the Hub has them (older top-level fields, layer_types left to
    the default pattern) and what is refused rather than approximated."""
    gemma2 = checkpoints.config_from_hf(
        {
            **SMALL,
            "num_hidden_layers": 4,
            "model_type": "gemma2",
            "sliding_window": 8,
            "head_dim": 8,
        }
    )
    assert gemma2.sliding_layers == (0, 2) and gemma2.sliding_window == 8
    assert (gemma2.attn_softcap, gemma2.final_softcap) == (None, None)  # absent: none
    assert gemma2.query_pre_attn_scalar == 256.0 and gemma2.tie_embeddings
    old3 = dict(
        SMALL,
        num_hidden_layers=7,
        model_type="gemma3_text",
        sliding_window=8,
        rope_theta=1e6,
        rope_local_base_freq=1e4,
        rope_scaling={"rope_type": "linear", "factor": 8.0},
    )
    gemma3 = checkpoints.config_from_hf(old3)
    assert gemma3.sliding_layers == (0, 1, 2, 3, 4, 6)  # every 6th layer is global
    assert (gemma3.rope_theta, gemma3.rope_local_theta, gemma3.rope_linear_factor) == (
        1e6,
        1e4,
        8.0,
    )
    assert gemma3.qk_norm and gemma3.sandwich_norms and gemma3.hidden_act == "gelu_tanh"
    with pytest.raises(ValueError, match="bidirectional"):
        checkpoints.config_from_hf({**old3, "use_bidirectional_attention": True})
    with pytest.raises(ValueError, match="text model, Gemma3ForCausalLM"):
        checkpoints.config_from_hf(_hf("Gemma3ForConditionalGeneration"))
    with pytest.raises(ValueError, match="hidden_act 'silu' for Gemma2ForCausalLM"):
        checkpoints.config_from_hf(_hf("Gemma2ForCausalLM", hidden_activation="silu"))
    local_scaled = {"rope_type": "linear", "factor": 2.0, "rope_theta": 1e4}
    with pytest.raises(ValueError, match="sliding layers"):
        checkpoints.config_from_hf(
            {**old3, "rope_parameters": {"full_attention": {}, "sliding_attention": local_scaled}}
        )
    with pytest.raises(ValueError, match="mixes Gemma and Llama"):
        checkpoints.config_to_hf(dataclasses.replace(gemma3, qkv_bias=True, qk_norm=False))


def test_config_sliding_window_rules():
    mistral = checkpoints.config_from_hf(_hf("MistralForCausalLM", sliding_window=4096))
    assert mistral.sliding_window == 4096 and not mistral.qkv_bias
    assert checkpoints.config_from_hf(_hf(sliding_window=16)).sliding_window is None
    qwen = lambda **kw: checkpoints.config_from_hf(_hf("Qwen2ForCausalLM", sliding_window=16, **kw))
    assert qwen().qkv_bias
    assert qwen(use_sliding_window=False).sliding_window is None
    assert qwen(use_sliding_window=True, max_window_layers=0).sliding_window == 16
    assert qwen(use_sliding_window=True, max_window_layers=28).sliding_window is None
    # One sliding_window for the whole model: a per-layer mix is refused, not approximated.
    with pytest.raises(ValueError, match="only some layers.*one sliding_window"):
        qwen(use_sliding_window=True, max_window_layers=1)
    with pytest.raises(ValueError, match="only some layers"):
        qwen(use_sliding_window=True, layer_types=["sliding_attention", "full_attention"])
    assert qwen(use_sliding_window=True, layer_types=["sliding_attention"] * 2).sliding_window == 16


# --- export and orbax ----------------------------------------------------------


@pytest.mark.parametrize(
    "family,overrides",
    [
        ("Llama", {}),
        ("Qwen2", dict(use_sliding_window=True, sliding_window=3, max_window_layers=0)),
        ("Qwen3", dict(head_dim=16)),
        ("Llama", dict(rope_parameters={"rope_type": "linear", "rope_theta": 1e4, "factor": 2.0})),
        ("Gemma", dict(head_dim=8)),
        ("Gemma2", dict(head_dim=8, sliding_window=3, attn_logit_softcapping=1.0)),
        (
            "Gemma3",
            dict(
                head_dim=8,
                sliding_window=3,
                layer_types=["full_attention", "sliding_attention"],
                rope_parameters={
                    "full_attention": {"rope_type": "linear", "rope_theta": 1e6, "factor": 2.0},
                    "sliding_attention": {"rope_type": "default", "rope_theta": 1e4},
                },
            ),
        ),
    ],
)
def test_hf_export_round_trip(family, overrides, tmp_path):
    hf = make_hf_model(family, **overrides)
    hf.save_pretrained(tmp_path / "in")
    cfg, params = checkpoints.load_hf_checkpoint(tmp_path / "in")
    checkpoints.save_hf_checkpoint(tmp_path / "out", cfg, params)
    cfg2, params2 = checkpoints.load_hf_checkpoint(tmp_path / "out")
    assert cfg2 == cfg
    assert_trees_equal(params2, params)
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(
        tmp_path / "out", attn_implementation="eager"
    ).eval()
    tokens = torch.tensor(np.random.default_rng(0).integers(0, SMALL["vocab_size"], (2, 8)))
    with torch.no_grad():
        np.testing.assert_array_equal(reloaded(tokens).logits.numpy(), hf(tokens).logits.numpy())


def test_orbax_round_trip(llama_loaded, tmp_path):
    cfg, params = llama_loaded
    checkpoints.save_params(tmp_path / "ckpt", params)
    assert_trees_equal(checkpoints.restore_params(tmp_path / "ckpt", cfg=cfg), params)
    assert_trees_equal(checkpoints.restore_params(tmp_path / "ckpt"), params)  # from metadata
    with pytest.raises(ValueError, match="already exists"):
        checkpoints.save_params(tmp_path / "ckpt", params)  # no silent overwrite
    checkpoints.save_params(tmp_path / "ckpt", params, force=True)
    bf16 = checkpoints.restore_params(
        tmp_path / "ckpt",
        abstract=jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, jnp.bfloat16), params),
    )
    assert bf16["embedding"].dtype == jnp.bfloat16
    np.testing.assert_array_equal(
        bf16["embedding"], np.asarray(params["embedding"]).astype(ml_dtypes.bfloat16)
    )
