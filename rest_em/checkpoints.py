"""Getting weights in and out: Hugging Face safetensors import/export, orbax save/restore.

Hugging Face import (`load_hf_checkpoint`) reads Llama / Mistral / Qwen2 / Qwen3 / Gemma /
Gemma 2 / Gemma 3 (text, `Gemma3ForCausalLM`) checkpoints
(one `model.safetensors` or shards listed in `model.safetensors.index.json`), checks
every tensor name and shape before reading any data, and places each parameter
straight into its target sharding: a device's callback reads only that device's block
from memory-mapped files, so the host never holds more than one parameter's worth of
data and never one copy per device.

The safetensors files are memory-mapped here rather than opened with
`safetensors.safe_open(framework="numpy")`: numpy has no bfloat16, and safetensors 0.8
refuses BF16 tensors with that framework (`framework="flax"` would stage every tensor
on the default accelerator first). The format is an 8-byte header length, a JSON
header of `{name: {dtype, shape, data_offsets}}`, then raw little-endian data, and
`ml_dtypes` supplies bfloat16 / float8 for numpy views of it.

Orbax (`save_params` / `restore_params`) is the format for our own checkpoints; restore
writes each array directly into the requested sharding.

A checkpoint that cannot be used (missing or unreadable config.json, a missing, truncated
or corrupt safetensors file, a missing tensor, an index naming absent shards, an
incomplete orbax directory, an unsupported architecture) raises
`rest_em.errors.CheckpointError` (a ValueError) naming the directory or file, what is
wrong and what to do.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pathlib
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import jax
import ml_dtypes
import numpy as np
import orbax.checkpoint as ocp
import safetensors.numpy
from jax.sharding import Mesh, Sharding, SingleDeviceSharding

from rest_em import model, partitioning
from rest_em.errors import CheckpointError
from rest_em.model import ModelConfig

PathLike = str | os.PathLike
Params = dict[str, Any]

SUPPORTED_ARCHITECTURES: tuple[str, ...] = (
    "LlamaForCausalLM",
    "MistralForCausalLM",
    "Qwen2ForCausalLM",
    "Qwen3ForCausalLM",
    "GemmaForCausalLM",
    "Gemma2ForCausalLM",
    "Gemma3ForCausalLM",
)
_GEMMA = ("GemmaForCausalLM", "Gemma2ForCausalLM", "Gemma3ForCausalLM")
_MODEL_TYPES = {
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "gemma": "GemmaForCausalLM",
    "gemma2": "Gemma2ForCausalLM",
    "gemma3_text": "Gemma3ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
}
_HF_DTYPES = {
    "float32": "float32",
    "bfloat16": "bfloat16",
    "float16": "float16",
    "torch.float32": "float32",
    "torch.bfloat16": "bfloat16",
    "torch.float16": "float16",
}
# Buffers some exporters write that carry no learned weights.
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


# --- config ------------------------------------------------------------------

_REDOWNLOAD = "download or copy the checkpoint again"


def _read_json(path: pathlib.Path) -> dict[str, Any]:
    """A JSON object from `path`; CheckpointError if unreadable or not an object."""
    try:
        with open(path, encoding="utf-8") as f:
            value = json.load(f)
    except (OSError, ValueError) as e:  # ValueError: JSONDecodeError, UnicodeDecodeError
        raise CheckpointError(
            f"{path}: unreadable ({e}); the file is damaged or incomplete: {_REDOWNLOAD}"
        ) from e
    if not isinstance(value, dict):
        raise CheckpointError(
            f"{path}: expected a JSON object, found {type(value).__name__}: {_REDOWNLOAD}"
        )
    return value


def _hf_config_dict(config: Mapping[str, Any] | PathLike) -> tuple[dict[str, Any], str]:
    """(config dict, where it came from) for messages."""
    if isinstance(config, Mapping):
        return dict(config), "Hugging Face config"
    path = pathlib.Path(config)
    if path.is_dir():
        path = path / "config.json"
    if not path.is_file():
        raise CheckpointError(
            f"{path}: no Hugging Face config.json; a checkpoint directory "
            "holds config.json and model.safetensors (or shards listed in "
            "model.safetensors.index.json), as save_pretrained writes them"
        )
    return _read_json(path), str(path)


def _architecture(hf: Mapping[str, Any]) -> str:
    archs = hf.get("architectures") or []
    arch = archs[0] if archs else _MODEL_TYPES.get(hf.get("model_type", ""), None)
    if arch not in SUPPORTED_ARCHITECTURES:
        found = archs or f"model_type={hf.get('model_type')!r}"
        hint = (
            " (a Gemma 3 vision-language checkpoint: save its text model, "
            "Gemma3ForCausalLM, with save_pretrained)"
            if arch == "Gemma3ForConditionalGeneration"
            else ""
        )
        raise CheckpointError(
            f"unsupported architecture {found}{hint}; supported: {list(SUPPORTED_ARCHITECTURES)}"
        )
    return arch


def _rope(hf: Mapping[str, Any]) -> dict[str, Any]:
    """ModelConfig's rope fields (theta, llama3 or linear scaling) from transformers 5
    `rope_parameters` or the older top-level `rope_theta` + `rope_scaling`."""
    params = dict(hf.get("rope_parameters") or {})
    # transformers 5 may nest per layer type ({"full_attention": {...}}); all must agree.
    nested = [v for v in params.values() if isinstance(v, Mapping)]
    if nested:
        if any(n != nested[0] for n in nested):
            raise CheckpointError(f"per-layer-type rope_parameters differ: {params}")
        params = dict(nested[0])
    scaling = dict(hf.get("rope_scaling") or params)
    theta = float(params.get("rope_theta", hf.get("rope_theta", 10000.0)))
    if float(params.get("partial_rotary_factor", hf.get("partial_rotary_factor", 1.0))) != 1.0:
        raise CheckpointError("partial_rotary_factor != 1 is not supported")
    kind = scaling.get("rope_type", scaling.get("type")) or "default"
    if kind == "default":
        return {"rope_theta": theta}
    if kind == "llama3":
        original = scaling.get(
            "original_max_position_embeddings", hf.get("max_position_embeddings")
        )
        llama3 = (
            float(scaling["factor"]),
            float(scaling["low_freq_factor"]),
            float(scaling["high_freq_factor"]),
            int(original),
        )
        return {"rope_theta": theta, "rope_llama3_scaling": llama3}
    if kind == "linear":
        return {"rope_theta": theta, "rope_linear_factor": float(scaling["factor"])}
    raise CheckpointError(
        f"unsupported rope type {kind!r}; supported: 'default', 'llama3', 'linear'"
    )


def _gemma3_rope(hf: Mapping[str, Any]) -> dict[str, Any]:
    """Gemma 3's rope: the full-attention layers' (theta, maybe linear scaling) and the
    sliding layers' own theta (`rope_local_theta`, unscaled)."""
    params = dict(hf.get("rope_parameters") or {})
    full = params.get("full_attention")
    local = params.get("sliding_attention")
    if full is None:  # older configs: top-level rope_theta / rope_scaling / rope_local_base_freq
        full = {"rope_theta": hf.get("rope_theta", 1_000_000.0), **(hf.get("rope_scaling") or {})}
        local = {"rope_type": "default", "rope_theta": hf.get("rope_local_base_freq", 10_000.0)}
    local = dict(local or {"rope_type": "default", "rope_theta": 10_000.0})
    if local.get("rope_type", "default") != "default":
        raise CheckpointError(f"scaled rope on sliding layers is not supported: {local}")
    return {**_rope({"rope_parameters": full}), "rope_local_theta": float(local["rope_theta"])}


def _layer_types(hf: Mapping[str, Any], arch: str, num_layers: int) -> list[str]:
    """Each layer's attention kind, as transformers defaults it when the config omits it."""
    every = {"Gemma2ForCausalLM": 2, "Gemma3ForCausalLM": hf.get("sliding_window_pattern", 6)}
    if hf.get("layer_types"):
        return list(hf["layer_types"])
    if arch in every:
        n = every[arch]
        return ["sliding_attention" if (i + 1) % n else "full_attention" for i in range(num_layers)]
    return [  # Qwen2 / Qwen3: the layers at index >= max_window_layers
        "sliding_attention" if i >= hf.get("max_window_layers", 28) else "full_attention"
        for i in range(num_layers)
    ]


def _gemma_windows(hf: Mapping[str, Any], arch: str, num_layers: int) -> dict[str, Any]:
    """sliding_window / sliding_layers of Gemma 2 / 3 (a window on some layers)."""
    if arch == "GemmaForCausalLM":
        return {}
    if hf.get("use_bidirectional_attention", False):
        raise CheckpointError("use_bidirectional_attention=True (an encoder) is not supported")
    types = _layer_types(hf, arch, num_layers)
    sliding = tuple(i for i, t in enumerate(types) if t == "sliding_attention")
    if not sliding or hf.get("sliding_window") is None:
        return {}
    return {
        "sliding_window": int(hf["sliding_window"]),
        "sliding_layers": None if len(sliding) == num_layers else sliding,
    }


def _sliding_window(hf: Mapping[str, Any], arch: str, num_layers: int) -> int | None:
    window = hf.get("sliding_window")
    if arch == "LlamaForCausalLM" or arch in _GEMMA or window is None:
        return None
    if arch == "MistralForCausalLM":
        return int(window)
    # Qwen2 / Qwen3: the window applies only with use_sliding_window, and only to layers listed
    # as "sliding_attention" (those at index >= max_window_layers).
    if not hf.get("use_sliding_window", False):
        return None
    types = _layer_types(hf, arch, num_layers)
    if all(t == "full_attention" for t in types):
        return None
    if all(t == "sliding_attention" for t in types):
        return int(window)
    raise CheckpointError(
        f"{arch} with sliding window on only some layers ({types}) is not "
        "supported: ModelConfig has one sliding_window for all layers"
    )


def config_from_hf(config: Mapping[str, Any] | PathLike, **overrides: Any) -> ModelConfig:
    """Our `ModelConfig` from a Hugging Face config dict, config.json or checkpoint dir.

    Refuses (CheckpointError, a ValueError) anything the model cannot reproduce exactly,
    rather than loading weights into an architecture that silently computes something
    else. `overrides` replace fields afterwards, e.g. `dtype="float32"`.
    """
    hf, where = _hf_config_dict(config)
    try:
        fields = _config_fields(hf)
    except CheckpointError as e:
        raise CheckpointError(f"{where}: {e}") from None
    except KeyError as e:
        raise CheckpointError(
            f"{where}: no {e.args[0]!r} field; the config is incomplete: {_REDOWNLOAD}"
        ) from None
    except (TypeError, ValueError) as e:
        raise CheckpointError(
            f"{where}: a field has an invalid value ({e}): {_REDOWNLOAD}"
        ) from None
    fields.update(overrides)
    return ModelConfig(**fields)


def _config_fields(hf: Mapping[str, Any]) -> dict[str, Any]:
    arch = _architecture(hf)
    # Gemma's "gelu" is a legacy name of the tanh approximation (transformers maps it so).
    wanted = ("gelu_pytorch_tanh", "gelu") if arch in _GEMMA else ("silu",)
    act = hf.get("hidden_activation") or hf.get("hidden_act") or wanted[0]
    if act not in wanted:
        raise CheckpointError(f"unsupported hidden_act {act!r} for {arch}; only {wanted[0]!r}")
    if arch in _GEMMA and hf.get("attention_bias", False):
        raise CheckpointError("Gemma attention_bias=True is not supported")
    if hf.get("mlp_bias", False):
        raise CheckpointError("mlp_bias=True is not supported")
    if arch == "LlamaForCausalLM" and hf.get("attention_bias", False):
        # HF Llama's attention_bias also adds an o_proj bias, which our model lacks.
        raise CheckpointError(
            "Llama attention_bias=True (q/k/v AND o_proj biases) is not "
            "supported; only Qwen2-style q/k/v biases are"
        )
    if arch == "Qwen3ForCausalLM" and hf.get("attention_bias", False):
        raise CheckpointError(
            "Qwen3 attention_bias=True (q/k/v AND o_proj biases) is not supported"
        )
    num_layers = int(hf["num_hidden_layers"])
    raw_dtype = hf.get("dtype") or hf.get("torch_dtype") or "float32"
    if str(raw_dtype) not in _HF_DTYPES:
        raise CheckpointError(
            f"unsupported checkpoint dtype {raw_dtype!r}; "
            f"expected one of {sorted(set(_HF_DTYPES.values()))}"
        )
    dtype = _HF_DTYPES[str(raw_dtype)]
    fields = dict(
        vocab_size=int(hf["vocab_size"]),
        hidden_size=int(hf["hidden_size"]),
        intermediate_size=int(hf["intermediate_size"]),
        num_layers=num_layers,
        num_heads=int(hf["num_attention_heads"]),
        num_kv_heads=int(hf.get("num_key_value_heads") or hf["num_attention_heads"]),
        head_dim=int(hf["head_dim"]) if hf.get("head_dim") else None,
        max_seq_len=int(hf.get("max_position_embeddings", 2048)),
        **(_gemma3_rope(hf) if arch == "Gemma3ForCausalLM" else _rope(hf)),
        rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        qkv_bias=arch == "Qwen2ForCausalLM",
        qk_norm=arch == "Qwen3ForCausalLM",
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
        sliding_window=_sliding_window(hf, arch, num_layers),
        dtype=dtype,
        param_dtype=dtype,
    )
    if arch in _GEMMA:
        softcaps = ("attn_logit_softcapping", "final_logit_softcapping")
        attn_cap, final_cap = (
            float(hf[k]) if hf.get(k) is not None and arch != "GemmaForCausalLM" else None
            for k in softcaps
        )
        fields.update(
            norm_offset=True,
            embed_scale=True,
            hidden_act="gelu_tanh",
            sandwich_norms=arch != "GemmaForCausalLM",
            qk_norm=arch == "Gemma3ForCausalLM",
            tie_embeddings=bool(hf.get("tie_word_embeddings", True)),
            attn_softcap=attn_cap,
            final_softcap=final_cap,
            **_gemma_windows(hf, arch, num_layers),
        )
        if arch != "GemmaForCausalLM":
            fields["query_pre_attn_scalar"] = float(hf.get("query_pre_attn_scalar", 256))
    return fields


def _gemma_arch(cfg: ModelConfig) -> tuple[str, str] | None:
    """Gemma's (architecture, model_type) for `cfg`, None for the Llama family; a mix
    of the two families' features raises."""
    gemma = (cfg.norm_offset, cfg.embed_scale, cfg.hidden_act == "gelu_tanh")
    extra = cfg.sandwich_norms or cfg.attn_softcap or cfg.final_softcap
    extra = extra or cfg.query_pre_attn_scalar or cfg.rope_local_theta or cfg.sliding_layers
    if not any(gemma) and not extra:
        return None
    if not all(gemma) or cfg.qkv_bias or cfg.rope_llama3_scaling:
        raise ValueError(f"{cfg} mixes Gemma and Llama-family features: no HF architecture")
    if not cfg.sandwich_norms:
        if extra:
            raise ValueError("Gemma 2 / 3 features need sandwich_norms=True")
        return "GemmaForCausalLM", "gemma"
    if cfg.qk_norm:
        return "Gemma3ForCausalLM", "gemma3_text"
    if cfg.rope_local_theta is not None or cfg.rope_linear_factor is not None:
        raise ValueError("Gemma 2 has one unscaled rope for every layer")
    return "Gemma2ForCausalLM", "gemma2"


def _gemma_to_hf(cfg: ModelConfig, arch: str, rope: dict[str, Any]) -> dict[str, Any]:
    if cfg.query_pre_attn_scalar is not None and not float(cfg.query_pre_attn_scalar).is_integer():
        raise ValueError(
            f"query_pre_attn_scalar={cfg.query_pre_attn_scalar}: HF Gemma takes an int"
        )
    hf: dict[str, Any] = {"hidden_activation": "gelu_pytorch_tanh", "attention_bias": False}
    hf["head_dim"] = cfg.resolved_head_dim
    if arch == "GemmaForCausalLM":
        return {**hf, "hidden_act": "gelu_pytorch_tanh"}
    kinds = [cfg.layer_kind(i) for i in range(cfg.num_layers)]
    hf.update(
        query_pre_attn_scalar=int(cfg.query_pre_attn_scalar or cfg.resolved_head_dim),
        attn_logit_softcapping=cfg.attn_softcap,
        final_logit_softcapping=cfg.final_softcap,
        sliding_window=cfg.sliding_window or cfg.max_seq_len,
        layer_types=[f"{kind}_attention" for kind in kinds],
    )
    if arch == "Gemma3ForCausalLM":
        local = {"rope_type": "default", "rope_theta": cfg.rope_local_theta or cfg.rope_theta}
        hf["rope_parameters"] = {"full_attention": rope, "sliding_attention": local}
    return hf


def config_to_hf(cfg: ModelConfig) -> dict[str, Any]:
    """A Hugging Face config dict for `cfg` (Gemma 1/2/3 if it has Gemma's features,
    Qwen3 if it has q/k norms, Qwen2 if it has q/k/v biases, Mistral if it has a sliding
    window, Llama otherwise), so exports load with `from_pretrained`."""
    if cfg.qk_norm and cfg.qkv_bias:
        raise ValueError("q/k norms with q/k/v biases match no Hugging Face architecture")
    gemma = _gemma_arch(cfg)
    if gemma is not None:
        arch, model_type = gemma
    elif cfg.qk_norm:
        arch, model_type = "Qwen3ForCausalLM", "qwen3"
    elif cfg.qkv_bias:
        arch, model_type = "Qwen2ForCausalLM", "qwen2"
    elif cfg.sliding_window is not None:
        arch, model_type = "MistralForCausalLM", "mistral"
    else:
        arch, model_type = "LlamaForCausalLM", "llama"
    rope: dict[str, Any] = {"rope_theta": cfg.rope_theta, "rope_type": "default"}
    if cfg.rope_llama3_scaling is not None:
        if arch != "LlamaForCausalLM":
            raise ValueError(f"llama3 rope scaling cannot be exported as {arch}")
        factor, low, high, original = cfg.rope_llama3_scaling
        rope.update(
            rope_type="llama3",
            factor=factor,
            low_freq_factor=low,
            high_freq_factor=high,
            original_max_position_embeddings=original,
        )
    if cfg.rope_linear_factor is not None:
        if cfg.rope_llama3_scaling is not None:
            raise ValueError("llama3 and linear rope scaling together cannot be exported")
        rope.update(rope_type="linear", factor=cfg.rope_linear_factor)
    hf = {
        "architectures": [arch],
        "model_type": model_type,
        "hidden_act": "silu",
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_heads,
        "num_key_value_heads": cfg.num_kv_heads,
        "max_position_embeddings": cfg.max_seq_len,
        "rms_norm_eps": cfg.rms_norm_eps,
        "tie_word_embeddings": cfg.tie_embeddings,
        "rope_parameters": rope,
        "dtype": cfg.param_dtype,
    }
    if cfg.head_dim is not None:
        hf["head_dim"] = cfg.head_dim
    if gemma is not None:
        del hf["hidden_act"]
        hf.update(_gemma_to_hf(cfg, arch, rope))
    if arch == "MistralForCausalLM":
        hf["sliding_window"] = cfg.sliding_window
    if arch in ("Qwen2ForCausalLM", "Qwen3ForCausalLM"):
        hf.update(
            sliding_window=cfg.sliding_window,
            use_sliding_window=cfg.sliding_window is not None,
            max_window_layers=0,
        )
    if arch in ("LlamaForCausalLM", "Qwen3ForCausalLM"):
        hf.update(attention_bias=False)
    if arch == "LlamaForCausalLM":
        hf.update(mlp_bias=False)
    if arch == "Qwen3ForCausalLM":
        hf["head_dim"] = cfg.resolved_head_dim  # Qwen3Config defaults it to 128
    return hf


# --- name / layout table -----------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Tensor:
    """One parameter: where it lives in our tree and in the HF checkpoint.

    Each of our parameters is exactly one HF tensor. `to_ours` / `to_hf` convert it
    between layouts; both return views (transpose / reshape), so slicing the result of
    `to_ours` reads only the needed block of the memory-mapped file.
    """

    path: tuple[str, ...]
    hf_name: str
    hf_shape: tuple[int, ...]
    to_ours: Callable[[np.ndarray], np.ndarray]
    to_hf: Callable[[np.ndarray], np.ndarray]


def _identity(x: np.ndarray) -> np.ndarray:
    return x


def _transpose(x: np.ndarray) -> np.ndarray:
    return x.T


def _layout(cfg: ModelConfig) -> list[_Tensor]:
    """Every parameter of `cfg`, in a fixed order, with its HF name and layout."""
    d, f, v = cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size
    h, k, hd = cfg.num_heads, cfg.num_kv_heads, cfg.resolved_head_dim

    def in_proj(n: int) -> tuple[Callable, Callable]:  # HF [n*hd, D] <-> ours [D, n, hd]
        return (lambda w: w.T.reshape(d, n, hd), lambda w: w.reshape(d, n * hd).T)

    def bias(n: int) -> tuple[Callable, Callable]:  # HF [n*hd] <-> ours [n, hd]
        return (lambda b: b.reshape(n, hd), lambda b: b.reshape(n * hd))

    out = [
        _Tensor(("embedding",), "model.embed_tokens.weight", (v, d), _identity, _identity),
        _Tensor(("final_norm", "scale"), "model.norm.weight", (d,), _identity, _identity),
    ]
    for i in range(cfg.num_layers):
        ours, hf = f"layer_{i}", f"model.layers.{i}."
        out += [
            _Tensor(
                (ours, "attn_norm", "scale"),
                hf + "input_layernorm.weight",
                (d,),
                _identity,
                _identity,
            ),
        ]
        # Gemma 2 / 3 name the pre-MLP norm "pre_feedforward" and have two more.
        norms = {"mlp_norm": "post_attention_layernorm"}
        if cfg.sandwich_norms:
            norms = {
                "post_attn_norm": "post_attention_layernorm",
                "mlp_norm": "pre_feedforward_layernorm",
                "post_mlp_norm": "post_feedforward_layernorm",
            }
        out += [
            _Tensor((ours, name, "scale"), hf + f"{hf_name}.weight", (d,), _identity, _identity)
            for name, hf_name in norms.items()
        ]
        for name, n in (("q", h), ("k", k), ("v", k)):
            out.append(
                _Tensor(
                    (ours, "attn", f"{name}_kernel"),
                    hf + f"self_attn.{name}_proj.weight",
                    (n * hd, d),
                    *in_proj(n),
                )
            )
            if cfg.qkv_bias:
                out.append(
                    _Tensor(
                        (ours, "attn", f"{name}_bias"),
                        hf + f"self_attn.{name}_proj.bias",
                        (n * hd,),
                        *bias(n),
                    )
                )
            if cfg.qk_norm and name != "v":
                out.append(
                    _Tensor(
                        (ours, "attn", f"{name}_norm", "scale"),
                        hf + f"self_attn.{name}_norm.weight",
                        (hd,),
                        _identity,
                        _identity,
                    )
                )
        out += [
            _Tensor(
                (ours, "attn", "o_kernel"),
                hf + "self_attn.o_proj.weight",
                (d, h * hd),
                lambda w: w.T.reshape(h, hd, d),
                lambda w: w.reshape(h * hd, d).T,
            ),
            _Tensor(
                (ours, "mlp", "gate_kernel"),
                hf + "mlp.gate_proj.weight",
                (f, d),
                _transpose,
                _transpose,
            ),
            _Tensor(
                (ours, "mlp", "up_kernel"),
                hf + "mlp.up_proj.weight",
                (f, d),
                _transpose,
                _transpose,
            ),
            _Tensor(
                (ours, "mlp", "down_kernel"),
                hf + "mlp.down_proj.weight",
                (d, f),
                _transpose,
                _transpose,
            ),
        ]
    if not cfg.tie_embeddings:
        out.append(_Tensor(("lm_head",), "lm_head.weight", (v, d), _transpose, _transpose))
    return out


def _tree_get(tree: Mapping[str, Any], path: tuple[str, ...]) -> Any:
    for key in path:
        tree = tree[key]
    return tree


def _tree_set(tree: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


# --- safetensors reading -----------------------------------------------------

_ST_DTYPES = {
    "F64": np.dtype(np.float64),
    "F32": np.dtype(np.float32),
    "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "F8_E4M3": np.dtype(ml_dtypes.float8_e4m3fn),
    "F8_E5M2": np.dtype(ml_dtypes.float8_e5m2),
    "I64": np.dtype(np.int64),
    "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16),
    "I8": np.dtype(np.int8),
    "U8": np.dtype(np.uint8),
    "BOOL": np.dtype(np.bool_),
}


_FLOAT_TAGS = ("F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2")


@dataclasses.dataclass(frozen=True)
class _Entry:
    file: pathlib.Path
    dtype: str  # safetensors dtype tag, e.g. "BF16"
    shape: tuple[int, ...]
    start: int  # absolute byte offsets in the file
    stop: int


def _read_header(file: pathlib.Path) -> dict[str, _Entry]:
    """The tensors of one safetensors file; CheckpointError unless the header is whole and
    every tensor's bytes lie inside the file (a truncated download fails here, not later
    inside a device callback)."""

    def corrupt(what: str) -> CheckpointError:
        return CheckpointError(
            f"{file}: {what}: the file is damaged or was not fully written; {_REDOWNLOAD}"
        )

    try:
        size = file.stat().st_size
        with open(file, "rb") as fh:
            size_bytes = fh.read(8)
            if len(size_bytes) != 8:
                raise corrupt(f"not a safetensors file ({size} bytes, too short)")
            n = int.from_bytes(size_bytes, "little")
            if 8 + n > size:
                raise corrupt(
                    f"not a safetensors file, or truncated (the header claims "
                    f"{n} bytes, the file has {size})"
                )
            header = json.loads(fh.read(n))
    except OSError as e:
        raise CheckpointError(f"{file}: cannot read ({e})") from e
    except (ValueError, UnicodeDecodeError) as e:
        if isinstance(e, CheckpointError):
            raise
        raise corrupt(f"unreadable safetensors header ({e})") from e
    if not isinstance(header, dict):
        raise corrupt("the safetensors header is not a JSON object")
    base = 8 + n
    entries: dict[str, _Entry] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            start, stop = (int(x) for x in info["data_offsets"])
            entry = _Entry(
                file,
                str(info["dtype"]),
                tuple(int(d) for d in info["shape"]),
                base + start,
                base + stop,
            )
        except (KeyError, TypeError, ValueError) as e:
            raise corrupt(f"bad header entry for tensor {name} ({e!r})") from e
        if not base <= entry.start <= entry.stop <= size:
            raise corrupt(
                f"tensor {name} lies at bytes [{entry.start}, {entry.stop}) "
                f"but the file has {size} (truncated?)"
            )
        entries[name] = entry
    return entries


def _safetensors_files(path: pathlib.Path) -> list[pathlib.Path]:
    index = path / "model.safetensors.index.json"
    if index.is_file():
        weight_map = _read_json(index).get("weight_map")
        if not isinstance(weight_map, dict) or not all(
            isinstance(v, str) for v in weight_map.values()
        ):
            raise CheckpointError(
                f'{index}: no "weight_map" of tensor name -> shard file; '
                f"the index is damaged: {_REDOWNLOAD}"
            )
        files = [path / n for n in sorted(set(weight_map.values()))]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise CheckpointError(
                f"{index} lists {len(missing)} shard file(s) that are not "
                f"in {path}: {missing}; the download is incomplete: "
                f"{_REDOWNLOAD}"
            )
        return files
    if (path / "model.safetensors").is_file():
        return [path / "model.safetensors"]
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise CheckpointError(
            f"{path}: no *.safetensors files (nor "
            f"model.safetensors.index.json); the weights are missing: "
            f"{_REDOWNLOAD} (only safetensors weights are read, not "
            f"pytorch_model.bin)"
        )
    return files


class _Reader:
    """Name -> zero-copy numpy view over memory-mapped safetensors files."""

    def __init__(self, entries: Mapping[str, _Entry]):
        self.entries = entries
        self._maps: dict[pathlib.Path, np.memmap] = {}

    def __call__(self, name: str) -> np.ndarray:
        e = self.entries[name]
        if e.file not in self._maps:
            self._maps[e.file] = np.memmap(e.file, dtype=np.uint8, mode="r")
        dtype = _ST_DTYPES[e.dtype]
        raw = self._maps[e.file][e.start : e.stop]
        return raw.view(dtype).reshape(e.shape)


def _check_entries(
    entries: Mapping[str, _Entry], layout: list[_Tensor], cfg: ModelConfig, path: pathlib.Path
) -> None:
    """Fails before any data is read if names, shapes or dtypes do not fit `cfg`."""
    expected = {t.hf_name: t.hf_shape for t in layout}
    missing = [n for n in expected if n not in entries]
    if missing:
        hint = (
            " (config says tie_word_embeddings=false, so lm_head.weight is required)"
            if "lm_head.weight" in missing
            else ""
        )
        raise CheckpointError(
            f"checkpoint {path} is missing {len(missing)} tensor(s): "
            f"{missing}{hint}; the checkpoint is incomplete or its "
            "config.json does not describe its weights"
        )
    tolerated = {"lm_head.weight"} if cfg.tie_embeddings else set()  # a tied copy
    extra = sorted(
        n
        for n in entries
        if n not in expected and n not in tolerated and not n.endswith(_IGNORED_SUFFIXES)
    )
    if extra:
        raise CheckpointError(
            f"checkpoint {path} has {len(extra)} tensor(s) the "
            f"{cfg.num_layers}-layer config does not use: {extra}"
        )
    bad = [
        f"{n}: expected {shape}, found {entries[n].shape}"
        for n, shape in expected.items()
        if entries[n].shape != shape
    ]
    if bad:
        raise CheckpointError(
            f"checkpoint {path} has tensors of the wrong shape for its config.json: {bad}"
        )
    for n in expected:
        e = entries[n]
        if e.dtype not in _FLOAT_TAGS:
            raise CheckpointError(
                f"{n} in {e.file} has dtype {e.dtype}; expected one of {list(_FLOAT_TAGS)}"
            )
        if e.stop - e.start != math.prod(e.shape) * _ST_DTYPES[e.dtype].itemsize:
            raise CheckpointError(
                f"{n} in {e.file}: byte range does not match shape "
                f"{e.shape} and dtype {e.dtype}: the file is damaged; "
                f"{_REDOWNLOAD}"
            )


def _default_sharding() -> Sharding:
    device = jax.config.jax_default_device
    if not isinstance(device, jax.Device):
        device = jax.local_devices()[0]
    return SingleDeviceSharding(device)


def _place(
    t: _Tensor, read: _Reader, shape: tuple[int, ...], dtype: Any, sharding: Sharding
) -> jax.Array:
    """One parameter as a global array; each shard reads only its own block.

    Shards with the same index (replicas) share one host buffer, so the host holds at
    most one copy of the parameter, never one per device.
    """
    blocks: dict[tuple[tuple[int, int, int], ...], np.ndarray] = {}

    def block(index: tuple[slice, ...]) -> np.ndarray:
        key = tuple(s.indices(n) for s, n in zip(index, shape))
        if key not in blocks:
            blocks[key] = np.array(t.to_ours(read(t.hf_name))[index], dtype=dtype)
        return blocks[key]

    return jax.make_array_from_callback(shape, sharding, block)


def load_hf_checkpoint(
    path: PathLike,
    *,
    mesh: Mesh | None = None,
    rules: partitioning.Rules = partitioning.LOGICAL_AXIS_RULES,
    dtype: str | None = None,
    config_overrides: Mapping[str, Any] | None = None,
) -> tuple[ModelConfig, Params]:
    """`(cfg, params)` from a Hugging Face Llama / Mistral / Qwen2 safetensors checkpoint.

    With `mesh`, every parameter is created directly in `model.param_shardings(cfg,
    mesh, rules)` and each device reads only its block; without, parameters land on
    the default device. `dtype` (e.g. "float32") sets both the parameter and compute
    dtype; `config_overrides` replace any other config field. Names, shapes and dtypes
    are all checked before any tensor data is read.
    """
    path = pathlib.Path(path)
    if not path.is_dir():
        raise CheckpointError(
            f"{path}: no such checkpoint directory (a Hugging Face "
            "checkpoint is a directory with config.json and *.safetensors)"
        )
    if not (path / "config.json").is_file():
        raise CheckpointError(
            f"{path}: no config.json in this Hugging Face checkpoint "
            f"directory; the checkpoint is incomplete: {_REDOWNLOAD}"
        )
    overrides = dict(config_overrides or {})
    if dtype is not None:
        overrides.setdefault("dtype", dtype)
        overrides.setdefault("param_dtype", dtype)
    cfg = config_from_hf(path, **overrides)

    entries: dict[str, _Entry] = {}
    for file in _safetensors_files(path):
        for name, entry in _read_header(file).items():
            if name in entries:
                raise CheckpointError(
                    f"tensor {name} appears in both "
                    f"{entries[name].file} and {file}; remove the stray "
                    "file or add a model.safetensors.index.json"
                )
            entries[name] = entry
    layout = _layout(cfg)
    _check_entries(entries, layout, cfg, path)

    abstract = model.abstract_params(cfg)
    if mesh is not None:
        shardings = model.param_shardings(cfg, mesh, rules)
    else:
        shardings = jax.tree.map(lambda _: _default_sharding(), abstract)
    read = _Reader(entries)
    params: Params = {}
    for t in layout:
        target = _tree_get(abstract, t.path)
        _tree_set(
            params,
            t.path,
            _place(t, read, target.shape, target.dtype, _tree_get(shardings, t.path)),
        )
    if jax.tree.structure(params) != jax.tree.structure(abstract):
        raise AssertionError("checkpoint layout table does not cover the model's params")
    return cfg, params


def _hf_tensors(cfg: ModelConfig, params: Params) -> Iterator[tuple[str, np.ndarray]]:
    for t in _layout(cfg):
        value = np.asarray(jax.device_get(_tree_get(params, t.path)))
        yield t.hf_name, np.ascontiguousarray(t.to_hf(value))


def save_hf_checkpoint(path: PathLike, cfg: ModelConfig, params: Params) -> None:
    """Writes `config.json` + `model.safetensors` that transformers' `from_pretrained`
    (and `load_hf_checkpoint`) read back: for evaluating or sharing trained models.

    Gathers each parameter to this host, so use it on models that fit in host memory
    (and, multi-host, on one process after making params fully addressable).
    """
    path = pathlib.Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tensors = dict(_hf_tensors(cfg, params))
    safetensors.numpy.save_file(tensors, str(path / "model.safetensors"), metadata={"format": "pt"})
    with open(path / "config.json", "w", encoding="utf-8") as f:
        json.dump(config_to_hf(cfg), f, indent=2)


# --- orbax ---------------------------------------------------------------------


def save_params(path: PathLike, params: Params, *, force: bool = False) -> None:
    """Saves a params pytree with orbax; returns once the checkpoint is committed.

    Every process of a multi-host job must call it (each writes its own shards).
    """
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(pathlib.Path(path).absolute(), params, force=force)
        ckptr.wait_until_finished()


def restore_params(
    path: PathLike,
    *,
    cfg: ModelConfig | None = None,
    mesh: Mesh | None = None,
    rules: partitioning.Rules = partitioning.LOGICAL_AXIS_RULES,
    abstract: Any = None,
) -> Params:
    """Restores params saved by `save_params`, each array read straight into its target.

    The target is `abstract` (ShapeDtypeStructs; those carrying a `.sharding` keep
    it), else the shapes of `cfg` (cast to `cfg.param_dtype`), else the shapes and
    dtypes recorded in the checkpoint. With `mesh` the shardings are
    `model.param_shardings(cfg, mesh, rules)`, which needs `cfg`; without, arrays
    land on the default device.
    """
    path = pathlib.Path(path).absolute()
    if mesh is not None and cfg is None:
        raise ValueError(
            "restoring into a mesh needs cfg (for the logical axes); or "
            "pass abstract ShapeDtypeStructs that carry shardings"
        )
    _check_orbax_dir(path)
    if abstract is None and cfg is not None:
        abstract = model.abstract_params(cfg)
    with ocp.StandardCheckpointer() as ckptr:
        if abstract is None:
            try:
                metadata = ckptr.metadata(path)
            except (OSError, ValueError) as e:
                raise _orbax_error(path, e) from e
            if metadata is None or getattr(metadata, "item_metadata", None) is None:
                raise CheckpointError(
                    f"{path}: incomplete orbax checkpoint (cannot read the tree of its "
                    "arrays from _METADATA and manifest.ocdbt); the save did not finish or "
                    "files were removed: save it again, or restore from another checkpoint"
                )
            abstract = jax.tree.map(
                lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype), metadata.item_metadata.tree
            )
        if mesh is not None:
            shardings = model.param_shardings(cfg, mesh, rules)
        else:
            shardings = jax.tree.map(
                lambda x: getattr(x, "sharding", None) or _default_sharding(), abstract
            )
        target = jax.tree.map(
            lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract, shardings
        )
        try:
            return ckptr.restore(path, target)
        except (OSError, ValueError) as e:  # tensorstore reports damage as ValueError
            raise _orbax_error(path, e) from e


def _check_orbax_dir(path: pathlib.Path) -> None:
    if path.is_dir():
        if not any(path.iterdir()):
            raise CheckpointError(
                f"{path}: empty directory, not an orbax checkpoint; save "
                "it again, or restore from another checkpoint"
            )
        return
    if path.exists():
        raise CheckpointError(
            f"{path}: not a directory; an orbax checkpoint (save_params) is a directory"
        )
    prefix = path.name + ".orbax-checkpoint-tmp"  # orbax saves there, then renames
    tmp = (
        sorted(p.name for p in path.parent.iterdir() if p.name.startswith(prefix))
        if path.parent.is_dir()
        else []
    )
    if tmp:
        raise CheckpointError(
            f"{path}: no checkpoint, only an unfinished save ({tmp[0]}): "
            "the process writing it stopped before it completed; save "
            "it again (the temporary directory can be deleted)"
        )
    raise CheckpointError(f"{path}: no orbax checkpoint at this path")


def _orbax_error(path: pathlib.Path, e: Exception) -> CheckpointError:
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    first = first.split(" [tensorstore_spec")[0]  # a long JSON spec follows
    if len(first) > 300:
        first = first[:300] + "..."
    if "shape" in first or "structure" in first:
        return CheckpointError(
            f"{path}: the orbax checkpoint does not fit the requested "
            f"params ({first}); it was saved for another model config: "
            "pass the config it was saved with"
        )
    return CheckpointError(
        f"{path}: unreadable or incomplete orbax checkpoint ({first}); "
        "files are missing or damaged (an interrupted save or copy?): "
        "save it again, or restore from another checkpoint"
    )
