"""LoRA: low-rank adapters on the attention and MLP projections (Hu et al. 2021).

A target kernel W (any of our projection layouts, `[in..., out...]`) gets A `[in, r]`
(random) and B `[r, out]` (zeros, so a fresh adapter is the base model exactly); the
layer computes `x W + (alpha / r) * dropout(x) A B`. Only the adapters train: the base
weights are a frozen argument of the train step, with no gradient and no optimizer
state. ReST^EM's "fine-tune the base model every iteration" is then fresh adapters from
the base each M-step, and the sampler runs on merged weights `W + (alpha / r) A B`
(no per-token adapter cost). `merge` also gives the weights to export to Hugging Face;
`save_peft` writes the adapters alone in PEFT's format (`peft.PeftModel.from_pretrained`
on the base checkpoint loads them; each LoRA M-step leaves them in iter_NNN/adapter),
`load_peft` reads them back.

Adapters are a pytree shaped like the params, holding only the targets:
`{"layer_0": {"attn": {"q_kernel": {"a": [D, r], "b": [r, H*hd]}, ...}, "mlp": ...}}`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pathlib
import re
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import safetensors.numpy

from rest_em.errors import CheckpointError, ConfigError

# Target name -> (module, kernel, number of leading input dims of the kernel).
TARGETS: dict[str, tuple[str, str, int]] = {
    "q": ("attn", "q_kernel", 1),
    "k": ("attn", "k_kernel", 1),
    "v": ("attn", "v_kernel", 1),
    "o": ("attn", "o_kernel", 2),
    "gate": ("mlp", "gate_kernel", 1),
    "up": ("mlp", "up_kernel", 1),
    "down": ("mlp", "down_kernel", 1),
}


@dataclasses.dataclass(frozen=True)
class LoraConfig:
    """rank r, alpha (the update is scaled by alpha / r), dropout on the adapter's input,
    and the target projections (names of TARGETS)."""

    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    targets: tuple[str, ...] = ("q", "k", "v", "o", "gate", "up", "down")

    def __post_init__(self):
        unknown = set(self.targets) - set(TARGETS)
        if unknown or not self.targets:
            raise ConfigError(
                f"LoraConfig.targets={self.targets!r}: expected a non-empty subset of "
                f"{list(TARGETS)}"
            )
        if self.rank < 1 or not 0.0 <= self.dropout < 1.0:
            raise ConfigError(
                f"LoraConfig: rank={self.rank} must be >= 1 and dropout={self.dropout} in [0, 1)"
            )

    @property
    def scale(self) -> float:
        return self.alpha / self.rank


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class LoraWeight:
    """A frozen kernel with its adapter, as the model's `_dense` receives it in training:
    `x @ w + scale * dropout(x) @ a @ b` (the full-size `w + a b` is never formed, so
    neither is its gradient)."""

    w: jax.Array
    a: jax.Array
    b: jax.Array
    key: jax.Array | None = None  # dropout's key (None: no dropout)
    scale: float = dataclasses.field(default=1.0, metadata=dict(static=True))
    rate: float = dataclasses.field(default=0.0, metadata=dict(static=True))

    def delta(self, x_NxK: jax.Array) -> jax.Array:
        """`scale * dropout(x) a b` for flattened rows `[N, K]` -> `[N, out]` (f32)."""
        if self.key is not None and self.rate > 0:
            keep = jax.random.bernoulli(self.key, 1.0 - self.rate, x_NxK.shape)
            x_NxK = jnp.where(keep, x_NxK / (1.0 - self.rate), 0).astype(x_NxK.dtype)
        dt = x_NxK.dtype
        h = jnp.dot(x_NxK, self.a.astype(dt), preferred_element_type=jnp.float32)
        y = jnp.dot(h.astype(dt), self.b.astype(dt), preferred_element_type=jnp.float32)
        return self.scale * y


def _targets(params: Any, cfg: LoraConfig) -> list[tuple[str, str, str, int]]:
    """(layer, module, kernel, contract) of every target kernel in `params`, in order."""
    layers = sorted((k for k in params if k.startswith("layer_")), key=lambda k: int(k[6:]))
    return [(layer, *TARGETS[t]) for layer in layers for t in cfg.targets]


def init_adapters(params: Any, cfg: LoraConfig, key: jax.Array) -> dict[str, Any]:
    """Fresh adapters for `params`' targets: A ~ N(0, 1/in) (Kaiming-like), B = 0, f32."""
    out: dict[str, Any] = {}
    for i, (layer, module, kernel, contract) in enumerate(_targets(params, cfg)):
        w = params[layer][module][kernel]
        k_in, n_out = math.prod(w.shape[:contract]), math.prod(w.shape[contract:])
        a = jax.random.normal(jax.random.fold_in(key, i), (k_in, cfg.rank), jnp.float32)
        out.setdefault(layer, {}).setdefault(module, {})[kernel] = {
            "a": a / math.sqrt(k_in),
            "b": jnp.zeros((cfg.rank, n_out), jnp.float32),
        }
    return out


def attach(
    params: Any, adapters: Any, cfg: LoraConfig, dropout_key: jax.Array | None = None
) -> Any:
    """`params` with each target kernel replaced by its `LoraWeight` (training forward);
    with `dropout_key` (and cfg.dropout > 0) each target draws its own dropout mask."""
    out = jax.tree.map(lambda x: x, params)  # a fresh tree of the same leaves
    for i, (layer, module, kernel, _) in enumerate(_targets(params, cfg)):
        ad = adapters[layer][module][kernel]
        key = None
        if dropout_key is not None and cfg.dropout > 0:
            key = jax.random.fold_in(dropout_key, i)
        out[layer][module][kernel] = LoraWeight(
            params[layer][module][kernel], ad["a"], ad["b"], key, cfg.scale, cfg.dropout
        )
    return out


def merge(params: Any, adapters: Any, cfg: LoraConfig) -> Any:
    """Plain params with every adapter folded in, `W + scale * A B` (in W's dtype): what
    the sampler runs and what `save_hf_checkpoint` exports."""
    out = jax.tree.map(lambda x: x, params)
    for layer, module, kernel, _ in _targets(params, cfg):
        w, ad = params[layer][module][kernel], adapters[layer][module][kernel]
        delta = cfg.scale * (ad["a"] @ ad["b"])
        out[layer][module][kernel] = (w.astype(jnp.float32) + delta.reshape(w.shape)).astype(
            w.dtype
        )
    return out


def num_params(adapters: Any) -> int:
    return sum(x.size for x in jax.tree.leaves(adapters))


# --- PEFT files ---------------------------------------------------------------

# Target name -> the Hugging Face module it adapts (Llama, Mistral, Qwen and Gemma alike).
HF_MODULES = {
    "q": "self_attn.q_proj",
    "k": "self_attn.k_proj",
    "v": "self_attn.v_proj",
    "o": "self_attn.o_proj",
    "gate": "mlp.gate_proj",
    "up": "mlp.up_proj",
    "down": "mlp.down_proj",
}
_PEFT_NAME = re.compile(r"base_model\.model\.model\.layers\.(\d+)\.(.+)\.lora_([AB])\.weight$")


def save_peft(
    path: str | os.PathLike, adapters: Any, cfg: LoraConfig, *, base_model: str | None = None
) -> None:
    """Writes `adapters` as a PEFT LoRA adapter directory (adapter_config.json,
    adapter_model.safetensors; f32). Our A `[in, r]` / B `[r, out]` are PEFT's lora_A
    `[r, in]` / lora_B `[out, r]` transposed: the flattened in / out orders are the HF
    projections' (checkpoints' layout table), so the update is the same matrix."""
    path = pathlib.Path(path)
    path.mkdir(parents=True, exist_ok=True)
    by_kernel = {(module, kernel): t for t, (module, kernel, _) in TARGETS.items()}
    tensors = {}
    for layer, modules in adapters.items():
        i = int(layer.removeprefix("layer_"))
        for module, kernels in modules.items():
            for kernel, ad in kernels.items():
                name = f"base_model.model.model.layers.{i}.{HF_MODULES[by_kernel[module, kernel]]}"
                tensors[f"{name}.lora_A.weight"] = np.ascontiguousarray(np.asarray(ad["a"]).T)
                tensors[f"{name}.lora_B.weight"] = np.ascontiguousarray(np.asarray(ad["b"]).T)
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "r": cfg.rank,
        "lora_alpha": cfg.alpha,
        "lora_dropout": cfg.dropout,
        "target_modules": sorted(HF_MODULES[t].split(".")[-1] for t in cfg.targets),
        "bias": "none",
        "fan_in_fan_out": False,
        "use_rslora": False,
        "inference_mode": True,
        "base_model_name_or_path": base_model,
    }
    safetensors.numpy.save_file(
        {k: v.astype(np.float32) for k, v in tensors.items()},
        str(path / "adapter_model.safetensors"),
    )
    (path / "adapter_config.json").write_text(json.dumps(config, indent=2) + "\n")


def load_peft(path: str | os.PathLike) -> tuple[dict[str, Any], LoraConfig]:
    """(adapters, LoraConfig) of a PEFT LoRA directory (ours or PEFT's own, for the
    Llama / Qwen / Mistral / Gemma module names); refuses what `merge` cannot apply."""
    path = pathlib.Path(path)
    files = path / "adapter_config.json", path / "adapter_model.safetensors"
    for f in files:
        if not f.is_file():
            raise CheckpointError(
                f"{f}: missing; a PEFT adapter directory holds {[x.name for x in files]}"
            )
    config = json.loads(files[0].read_text())
    if config.get("peft_type") != "LORA" or config.get("use_rslora") or config.get("use_dora"):
        raise CheckpointError(f"{files[0]}: only plain LoRA adapters are supported, not {config}")
    by_module = {m: t for t, m in HF_MODULES.items()}
    adapters: dict[str, Any] = {}
    targets = set()
    for name, x in safetensors.numpy.load_file(str(files[1])).items():
        m = _PEFT_NAME.match(name)
        if m is None or m[2] not in by_module:
            raise CheckpointError(f"{files[1]}: tensor {name!r} is not a supported LoRA target")
        t = by_module[m[2]]
        module, kernel, _ = TARGETS[t]
        entry = (
            adapters.setdefault(f"layer_{m[1]}", {}).setdefault(module, {}).setdefault(kernel, {})
        )
        entry["a" if m[3] == "A" else "b"] = jnp.asarray(x.T, jnp.float32)
        targets.add(t)
    cfg = LoraConfig(
        rank=int(config["r"]),
        alpha=float(config["lora_alpha"]),
        dropout=float(config.get("lora_dropout", 0.0)),
        targets=tuple(t for t in TARGETS if t in targets),
    )
    return adapters, cfg


__all__ = [
    "HF_MODULES",
    "LoraConfig",
    "LoraWeight",
    "attach",
    "init_adapters",
    "load_peft",
    "merge",
    "num_params",
    "save_peft",
]
