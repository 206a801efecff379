"""LoRA: low-rank adapters on the attention and MLP projections (Hu et al. 2021).

A target kernel W (any of our projection layouts, `[in..., out...]`) gets A `[in, r]`
(random) and B `[r, out]` (zeros, so a fresh adapter is the base model exactly); the
layer computes `x W + (alpha / r) * dropout(x) A B`. Only the adapters train: the base
weights are a frozen argument of the train step, with no gradient and no optimizer
state. ReST^EM's "fine-tune the base model every iteration" is then fresh adapters from
the base each M-step, and the sampler runs on merged weights `W + (alpha / r) A B`
(no per-token adapter cost). `merge` also gives the weights to export to Hugging Face.

Adapters are a pytree shaped like the params, holding only the targets:
`{"layer_0": {"attn": {"q_kernel": {"a": [D, r], "b": [r, H*hd]}, ...}, "mlp": ...}}`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp

from rest_em.errors import ConfigError

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


__all__ = ["LoraConfig", "LoraWeight", "attach", "init_adapters", "merge", "num_params"]
