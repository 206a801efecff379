"""Llama-family decoder-only transformer (Llama, Mistral, Qwen2, Qwen3, Gemma 2, Gemma 3)
in Flax linen.

RMSNorm, rotary embeddings (configurable theta, optional Llama-3 or linear frequency
scaling), SwiGLU MLP, grouped-query attention, optional q/k/v bias (Qwen2), optional
q/k RMSNorm over each head before RoPE (Qwen3, Gemma 3), optional sliding window on all
layers (Mistral) or some (Gemma 2 and 3: `sliding_layers`, with their own rope theta in
Gemma 3), tied or untied embeddings, f32 or bf16 compute. Gemma's differences are flags:
(1 + w) norm scales, sqrt(hidden)-scaled embeddings, GeGLU, norms after attention and the
MLP as well as before ("sandwich"), a query scale of its own, and tanh soft-capping of
attention scores and logits.

Layers are unrolled modules `layer_0 ... layer_{L-1}`; the KV cache is a tuple with
one `(k, v)` pair per layer, each `[batch, kv_heads, cache_length, head_dim]`. The
cache is explicit state passed in and returned, never a hidden mutable collection.

Attention is always "queries over key slots with a boolean mask": the caller
(training, prefill or one decode step) builds `attn_mask_BxTxS`, which keeps the
model free of padding and caching policy. Positions are passed explicitly too, so a
left-padded prompt gets the same rotary phases as the unpadded one.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from rest_em import partitioning

Array = jax.Array
_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
_ACTIVATIONS = {"silu": jax.nn.silu, "gelu_tanh": functools.partial(jax.nn.gelu, approximate=True)}
# ModelConfig.remat -> the jax.checkpoint policy of each decoder layer (None: no remat).
REMAT_POLICIES = {
    "none": None,
    "block": jax.checkpoint_policies.nothing_saveable,
    "block_dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Architecture hyper-parameters. Frozen and hashable: it is a static jit argument."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int | None = None  # defaults to hidden_size // num_heads
    max_seq_len: int = 2048
    rope_theta: float = 10000.0
    # Llama-3 style frequency scaling: (factor, low_freq_factor, high_freq_factor,
    # original_max_position_embeddings), or None.
    rope_llama3_scaling: tuple[float, float, float, int] | None = None
    rope_linear_factor: float | None = None  # linear ("position interpolation") scaling
    rms_norm_eps: float = 1e-6
    qkv_bias: bool = False
    qk_norm: bool = False  # RMSNorm of each query / key head before RoPE (Qwen3)
    tie_embeddings: bool = False
    sliding_window: int | None = None
    sliding_layers: tuple[int, ...] | None = None  # the layers with the window (None: all)
    rope_local_theta: float | None = None  # sliding layers' theta, unscaled (Gemma 3)
    # Gemma 2 / 3:
    norm_offset: bool = False  # RMSNorm scales by (1 + w), in f32 (w is stored as in HF)
    embed_scale: bool = False  # embeddings times sqrt(hidden_size)
    hidden_act: str = "silu"  # "silu" (SwiGLU) or "gelu_tanh" (GeGLU)
    sandwich_norms: bool = False  # also a norm after attention and after the MLP
    query_pre_attn_scalar: float | None = None  # scores scale by this**-0.5 (else head_dim)
    attn_softcap: float | None = None  # scores -> cap * tanh(scores / cap)
    final_softcap: float | None = None  # the same on the logits
    dtype: str = "float32"  # compute dtype
    param_dtype: str = "float32"
    # Activation rematerialisation in full (uncached) forward passes, i.e. training:
    #   "none"        keep every activation for the backward pass (fastest)
    #   "block"       keep only each decoder layer's input; recompute the layer in the
    #                 backward pass (least memory, about one extra forward)
    #   "block_dots"  like "block" but also keep the layer's weight-matmul outputs
    #                 (attention scores and everything elementwise are recomputed)
    # Sampling (cached decoding) never rematerialises. Parameters are the same either way.
    # On XLA:CPU remat saves memory only with XLA_FLAGS=
    # --xla_cpu_enable_concurrency_optimized_scheduler=false: the default CPU schedule
    # recomputes every layer right after the forward pass (benchmarks/fsdp_memory.py).
    remat: str = "none"
    # Training loss over chunks of this many sequence positions (None: all at once): the
    # LM head, log-softmax and their backward run one chunk at a time (recomputed in the
    # backward pass), so [B, L, V] float32 logits never exist whole (vocab 150k-256k).
    # The loss and gradients are the same; sampling is unaffected.
    loss_chunk: int | None = None

    def __post_init__(self):
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_heads={self.num_heads} must be a multiple of num_kv_heads={self.num_kv_heads}"
            )
        for name in ("dtype", "param_dtype"):
            if getattr(self, name) not in _DTYPES:
                raise ValueError(f"{name}={getattr(self, name)!r}; expected one of {list(_DTYPES)}")
        if self.remat not in REMAT_POLICIES:
            raise ValueError(f"remat={self.remat!r}; expected one of {list(REMAT_POLICIES)}")
        if self.hidden_act not in _ACTIVATIONS:
            raise ValueError(
                f"hidden_act={self.hidden_act!r}; expected one of {list(_ACTIVATIONS)}"
            )
        if self.sliding_layers is not None and self.sliding_window is None:
            raise ValueError("sliding_layers is set but sliding_window is not")
        if self.loss_chunk is not None and self.loss_chunk < 1:
            raise ValueError(f"loss_chunk={self.loss_chunk}; expected None or >= 1")

    def layer_kind(self, i: int) -> str:
        """ "sliding" (attends within `sliding_window`) or "full": layer i's mask."""
        if self.sliding_window is None:
            return "full"
        return "sliding" if self.sliding_layers is None or i in self.sliding_layers else "full"

    @property
    def resolved_head_dim(self) -> int:
        return self.head_dim or self.hidden_size // self.num_heads

    @property
    def compute_dtype(self) -> Any:
        return _DTYPES[self.dtype]

    @property
    def params_dtype(self) -> Any:
        return _DTYPES[self.param_dtype]


KVCache = tuple[tuple[jax.Array, jax.Array], ...]  # per layer (k, v)
KV_CACHE_AXES = ("cache_batch", "act_kv_heads", "cache_length", "head_dim")


def _einsum(spec: str, x: Array, w: Array, out: Any = None) -> Array:
    """einsum in the narrower of the two dtypes, accumulated in f32, cast to `out`
    (default: x's dtype).

    bf16 weights with f32 activations (param_dtype="bfloat16", dtype="float32") read
    half the bytes and hit the CPU's AMX / the GPU's tensor cores, while norms,
    softmax and residuals stay f32.
    """
    dt = x.dtype if jnp.dtype(x.dtype).itemsize <= jnp.dtype(w.dtype).itemsize else w.dtype
    y = jnp.einsum(spec, x.astype(dt), w.astype(dt), preferred_element_type=jnp.float32)
    return y.astype(out or x.dtype)


def _dense(x: Array, w: Array, contract: int = 1, out: Any = None) -> Array:
    """x[..., K...] @ w[K..., N...] as ONE 2-D matmul ([rows, K] x [K, N]).

    Same numbers as the einsum, but XLA's CPU backend then needs no transposes in the
    backward pass (they cost ~25% of a train step with the einsum forms). A
    `lora.LoraWeight` (training with adapters) adds its low-rank update to the same rows.
    """
    adapter = None
    if not isinstance(w, jax.Array) and hasattr(w, "delta"):  # a lora.LoraWeight
        adapter, w = w, w.w
    dt = x.dtype if jnp.dtype(x.dtype).itemsize <= jnp.dtype(w.dtype).itemsize else w.dtype
    k_shape, n_shape = w.shape[:contract], w.shape[contract:]
    lead = x.shape[: x.ndim - contract]
    k = math.prod(k_shape)
    rows = x.reshape(-1, k).astype(dt)
    y = jnp.dot(rows, w.reshape(k, -1).astype(dt), preferred_element_type=jnp.float32)
    if adapter is not None:
        y = y + adapter.delta(rows)
    return y.reshape(*lead, *n_shape).astype(out or x.dtype)


def _param(module: nn.Module, name: str, shape, axes, init, dtype):
    return module.param(name, nn.with_logical_partitioning(init, axes), shape, dtype)


class RMSNorm(nn.Module):
    cfg: ModelConfig

    @nn.compact
    def __call__(self, x: Array) -> Array:
        cfg = self.cfg
        init = nn.initializers.zeros if cfg.norm_offset else nn.initializers.ones
        scale = _param(self, "scale", (x.shape[-1],), ("norm",), init, cfg.params_dtype)
        x32 = x.astype(jnp.float32)
        x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + cfg.rms_norm_eps)
        if cfg.norm_offset:  # Gemma's order: scale by (1 + w) in f32, then cast
            return (x32 * (1.0 + scale.astype(jnp.float32))).astype(cfg.compute_dtype)
        # Llama's order: normalise in f32, cast back, then scale.
        return scale.astype(cfg.compute_dtype) * x32.astype(cfg.compute_dtype)


def rope_inv_freq(cfg: ModelConfig, kind: str = "full") -> Array:
    """Inverse rotary frequencies `[head_dim // 2]` (f32) of a `kind` layer, with Llama-3
    or linear scaling if set; sliding layers with `rope_local_theta` use it, unscaled."""
    d = cfg.resolved_head_dim
    local = kind == "sliding" and cfg.rope_local_theta is not None
    theta = cfg.rope_local_theta if local else cfg.rope_theta
    inv_freq = 1.0 / (theta ** (jnp.arange(0, d, 2, dtype=jnp.float32) / d))
    if local:
        return inv_freq
    if cfg.rope_llama3_scaling is not None:
        factor, low, high, original = cfg.rope_llama3_scaling
        low_wavelen = original / low
        high_wavelen = original / high
        wavelen = 2 * jnp.pi / inv_freq
        smooth = (original / wavelen - low) / (high - low)
        scaled = jnp.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
        mid = (1 - smooth) * scaled / factor + smooth * scaled
        is_mid = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
        inv_freq = jnp.where(is_mid, mid, scaled)
    if cfg.rope_linear_factor is not None:
        inv_freq = inv_freq / cfg.rope_linear_factor
    return inv_freq


def apply_rope(x_BxTxNxH: Array, positions_BxT: Array, inv_freq: Array) -> Array:
    """Rotary embedding, "rotate half" convention (the one HF checkpoints are stored in)."""
    freqs = positions_BxT.astype(jnp.float32)[:, :, None] * inv_freq[None, None, :]
    emb = jnp.concatenate([freqs, freqs], axis=-1)[:, :, None, :]  # BxTx1xH
    cos, sin = jnp.cos(emb), jnp.sin(emb)
    x = x_BxTxNxH.astype(jnp.float32)
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return (x * cos + rotated * sin).astype(x_BxTxNxH.dtype)


def softcap(x: Array, cap: float | None) -> Array:
    """cap * tanh(x / cap) (Gemma 2's soft-capping); x itself if cap is None."""
    return x if cap is None else cap * jnp.tanh(x / cap)


def _cache_write(cache_BxKxSxH: Array, new_BxKxTxH: Array, write_index: Any) -> Array:
    """Writes the new keys (or values) into the cache from slot `write_index`: a scalar
    (every row at the same slot: the static sampler) or one slot per row, `[B]`
    (continuous batching, where each row is at its own length)."""
    new_BxKxTxH = new_BxKxTxH.astype(cache_BxKxSxH.dtype)
    if jnp.ndim(write_index) == 0:
        return jax.lax.dynamic_update_slice(cache_BxKxSxH, new_BxKxTxH, (0, 0, write_index, 0))
    return jax.vmap(lambda c, x, i: jax.lax.dynamic_update_slice(c, x, (0, i, 0)))(
        cache_BxKxSxH, new_BxKxTxH, write_index
    )


class Attention(nn.Module):
    cfg: ModelConfig
    kind: str = "full"  # "sliding" or "full" (ModelConfig.layer_kind)

    @nn.compact
    def __call__(self, x_BxTxD, positions_BxT, attn_mask_BxTxS, kv_cache, write_index):
        cfg = self.cfg
        d, h, k, hd = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.resolved_head_dim
        dt, pdt = cfg.compute_dtype, cfg.params_dtype
        init = nn.initializers.normal(0.02)

        def proj(name, n, axes):
            w = _param(self, f"{name}_kernel", (d, n, hd), ("embed", axes, "head_dim"), init, pdt)
            y = _dense(x_BxTxD, w)
            if cfg.qkv_bias:
                b = _param(
                    self, f"{name}_bias", (n, hd), (axes, "head_dim"), nn.initializers.zeros, pdt
                )
                y = y + b.astype(dt)
            return y

        q = proj("q", h, "heads")
        k_new = proj("k", k, "kv_heads")
        v_new = proj("v", k, "kv_heads")
        if cfg.qk_norm:  # over head_dim, per head, before the rotation
            q = RMSNorm(cfg, name="q_norm")(q)
            k_new = RMSNorm(cfg, name="k_norm")(k_new)
        inv_freq = rope_inv_freq(cfg, self.kind)
        q = apply_rope(q, positions_BxT, inv_freq)
        k_new = apply_rope(k_new, positions_BxT, inv_freq)
        q = partitioning.constrain(q, ("batch", "length", "act_heads", "head_dim"))

        b, t = q.shape[:2]
        k_new = k_new.transpose(0, 2, 1, 3)  # BxKxTxH
        v_new = v_new.transpose(0, 2, 1, 3)
        if kv_cache is None:
            keys, values, new_cache = k_new, v_new, None
        else:
            cache_k, cache_v = kv_cache
            keys = _cache_write(cache_k, k_new, write_index)
            values = _cache_write(cache_v, v_new, write_index)
            keys = partitioning.constrain(keys, KV_CACHE_AXES)
            values = partitioning.constrain(values, KV_CACHE_AXES)
            new_cache = (keys, values)

        # A mask shorter than the cache (the sampler's attention buckets) attends over
        # the cache's first slots only: the filled part, not prompt + max_new_tokens.
        attend = attn_mask_BxTxS.shape[-1]
        if attend < keys.shape[2]:
            keys, values = keys[:, :, :attend], values[:, :, :attend]
        g = h // k
        q = q.reshape(b, t, k, g, hd)
        scores = _einsum("btkgh,bksh->bkgts", q, keys, out=jnp.float32)
        scores = softcap(scores * (cfg.query_pre_attn_scalar or hd) ** -0.5, cfg.attn_softcap)
        scores = jnp.where(attn_mask_BxTxS[:, None, None, :, :], scores, jnp.finfo(jnp.float32).min)
        probs = jax.nn.softmax(scores, axis=-1).astype(dt)
        # Output heads-major (no transpose of the cache), then the small result moves.
        out = _einsum("bkgts,bksh->bkgth", probs, values)
        out = out.transpose(0, 3, 1, 2, 4).reshape(b, t, h, hd)
        out = partitioning.constrain(out, ("batch", "length", "act_heads", "head_dim"))
        wo = _param(self, "o_kernel", (h, hd, d), ("heads", "head_dim", "embed"), init, pdt)
        return _dense(out, wo, contract=2), new_cache


class MLP(nn.Module):
    cfg: ModelConfig

    @nn.compact
    def __call__(self, x_BxTxD):
        cfg = self.cfg
        d, f, pdt = cfg.hidden_size, cfg.intermediate_size, cfg.params_dtype
        init = nn.initializers.normal(0.02)
        gate = _param(self, "gate_kernel", (d, f), ("embed", "mlp"), init, pdt)
        up = _param(self, "up_kernel", (d, f), ("embed", "mlp"), init, pdt)
        down = _param(self, "down_kernel", (f, d), ("mlp", "embed"), init, pdt)
        hidden = _ACTIVATIONS[cfg.hidden_act](_dense(x_BxTxD, gate)) * _dense(x_BxTxD, up)
        hidden = partitioning.constrain(hidden, ("batch", "length", "act_mlp"))
        return _dense(hidden, down)


class DecoderLayer(nn.Module):
    """One pre-norm block: `(x_BxTxD, ..., kv_cache?) -> (x_BxTxD, kv_cache?)`; with
    `sandwich_norms` each sub-block's output is normalised too, before the residual."""

    cfg: ModelConfig
    kind: str = "full"

    @nn.compact
    def __call__(self, x_BxTxD, positions_BxT, attn_mask_BxTxS, kv_cache, write_index):
        cfg = self.cfg
        attn_out, kv_cache = Attention(cfg, self.kind, name="attn")(
            RMSNorm(cfg, name="attn_norm")(x_BxTxD),
            positions_BxT,
            attn_mask_BxTxS,
            kv_cache,
            write_index,
        )
        if cfg.sandwich_norms:
            attn_out = RMSNorm(cfg, name="post_attn_norm")(attn_out)
        x = x_BxTxD + attn_out
        mlp_out = MLP(cfg, name="mlp")(RMSNorm(cfg, name="mlp_norm")(x))
        if cfg.sandwich_norms:
            mlp_out = RMSNorm(cfg, name="post_mlp_norm")(mlp_out)
        x = x + mlp_out
        x = partitioning.constrain(x, ("batch", "length", "act_embed"))
        return x, kv_cache


class Transformer(nn.Module):
    """`(tokens_BxT, positions_BxT, attn_mask_BxTxS, kv_cache?, write_index)`
    -> `(logits_BxTxV f32, kv_cache)`. The mask is one for every layer, or `layer_masks`'
    {"full": ..., "sliding": ...} when layers differ.

    Layers are unrolled (`layer_0` ... `layer_{L-1}`), each with its own parameters and
    its own cache buffers: decoding then reads weights and cache in place. (A scanned
    stack was measured 1.5x slower per decode step on CPU: XLA copies each layer's
    slice of the stacked weights and cache out on every step.)
    """

    cfg: ModelConfig

    @nn.compact
    def __call__(
        self, tokens_BxT, positions_BxT, attn_mask_BxTxS, kv_cache=None, write_index=0, head=True
    ):
        """`(logits_BxTxV, new_cache)`; with `head=False`, the final-normed hidden states
        `[B, T, D]` instead of logits (`logits_from_hidden` applies the head)."""
        cfg = self.cfg
        embedding = _param(
            self,
            "embedding",
            (cfg.vocab_size, cfg.hidden_size),
            ("vocab", "embed"),
            nn.initializers.normal(0.02),
            cfg.params_dtype,
        )
        x = jnp.take(embedding, tokens_BxT, axis=0)
        if cfg.embed_scale:  # in the weights' dtype, as Hugging Face's Gemma does
            x = x * jnp.asarray(cfg.hidden_size**0.5, x.dtype)
        x = x.astype(cfg.compute_dtype)
        x = partitioning.constrain(x, ("batch", "length", "act_embed"))
        new_cache = []
        layer_cls = DecoderLayer
        if cfg.remat != "none" and kv_cache is None:
            # write_index (argument 5, counting self) is a Python int here: static.
            layer_cls = nn.remat(
                DecoderLayer, policy=REMAT_POLICIES[cfg.remat], static_argnums=(5,)
            )
        for i in range(cfg.num_layers):
            kind = cfg.layer_kind(i)
            mask = attn_mask_BxTxS[kind] if isinstance(attn_mask_BxTxS, dict) else attn_mask_BxTxS
            x, layer_cache = layer_cls(cfg, kind, name=f"layer_{i}")(
                x,
                positions_BxT,
                mask,
                None if kv_cache is None else kv_cache[i],
                write_index,
            )
            new_cache.append(layer_cache)
        x = RMSNorm(cfg, name="final_norm")(x)
        weights = {"embedding": embedding}
        if not cfg.tie_embeddings:
            weights["lm_head"] = _param(
                self,
                "lm_head",
                (cfg.hidden_size, cfg.vocab_size),
                ("embed", "vocab"),
                nn.initializers.normal(0.02),
                cfg.params_dtype,
            )
        out = logits_from_hidden(weights, cfg, x) if head else x
        return out, None if kv_cache is None else tuple(new_cache)


def logits_from_hidden(params: Any, cfg: ModelConfig, x_BxTxD: Array) -> Array:
    """The LM head on final-normed hidden states: f32 logits `[B, T, V]` (tied or untied
    embeddings, Gemma 2's final softcap). `params` needs only "embedding" / "lm_head"."""
    if cfg.tie_embeddings:
        logits = _einsum("btd,vd->btv", x_BxTxD, params["embedding"], out=jnp.float32)
    else:
        logits = _dense(x_BxTxD, params["lm_head"], out=jnp.float32)
    logits = softcap(logits.astype(jnp.float32), cfg.final_softcap)
    return partitioning.constrain(logits, ("batch", "length", "act_vocab"))


# --- pure helpers ------------------------------------------------------------


def attention_mask(
    query_slot_BxT: Array, key_valid_BxS: Array, sliding_window: int | None = None
) -> Array:
    """`attn_mask_BxTxS`: a query at slot q sees valid key slots s <= q (within the window).

    Slots are indices into the (padded) key sequence or KV cache. Padding only ever
    sits before a row's first token, so slot differences equal position differences.
    """
    s = jnp.arange(key_valid_BxS.shape[1])[None, None, :]
    q = query_slot_BxT[:, :, None]
    mask = (s <= q) & key_valid_BxS[:, None, :]
    if sliding_window is not None:
        mask &= s > q - sliding_window
    return mask


def layer_masks(query_slot_BxT: Array, key_valid_BxS: Array, cfg: ModelConfig) -> Any:
    """`attention_mask` for `cfg`'s layers: one mask if all layers attend alike, else
    {"full": ..., "sliding": ...} (Gemma 2 / 3), as `Transformer` takes them."""
    kinds = {cfg.layer_kind(i) for i in range(cfg.num_layers)}
    masks = {
        kind: attention_mask(
            query_slot_BxT, key_valid_BxS, cfg.sliding_window if kind == "sliding" else None
        )
        for kind in kinds
    }
    return masks.popitem()[1] if len(masks) == 1 else masks


def causal_mask(valid_BxT: Array, cfg: ModelConfig) -> Any:
    """`layer_masks` for a full (uncached) forward pass over possibly padded rows."""
    b, t = valid_BxT.shape
    return layer_masks(jnp.broadcast_to(jnp.arange(t), (b, t)), valid_BxT, cfg)


def positions_from_valid(valid_BxT: Array) -> Array:
    """Positions counting only valid tokens, so left padding does not shift rotary phases."""
    return jnp.maximum(jnp.cumsum(valid_BxT.astype(jnp.int32), axis=1) - 1, 0)


def forward(
    params: Any,
    cfg: ModelConfig,
    tokens_BxT: Array,
    valid_BxT: Array | None = None,
    *,
    head: bool = True,
) -> Array:
    """Logits `[B, T, V]` (f32) of a full uncached pass; `valid_BxT` masks padding.
    `head=False`: the final-normed hidden states `[B, T, D]` (for a chunked loss)."""
    if valid_BxT is None:
        valid_BxT = jnp.ones(tokens_BxT.shape, bool)
    out, _ = Transformer(cfg).apply(
        {"params": params},
        tokens_BxT,
        positions_from_valid(valid_BxT),
        causal_mask(valid_BxT, cfg),
        head=head,
    )
    return out


def init_kv_cache(cfg: ModelConfig, batch: int, length: int, dtype: Any = None) -> KVCache:
    """Zeroed cache: per layer `(k, v)`, each `[batch, kv_heads, length, head_dim]`.

    kv_heads before length so both attention contractions read the cache without a
    transpose.
    """
    shape = (batch, cfg.num_kv_heads, length, cfg.resolved_head_dim)
    dtype = dtype or cfg.compute_dtype
    return tuple((jnp.zeros(shape, dtype), jnp.zeros(shape, dtype)) for _ in range(cfg.num_layers))


def _abstract_boxed(cfg: ModelConfig):
    tokens = jnp.zeros((1, 1), jnp.int32)
    return jax.eval_shape(
        lambda: Transformer(cfg).init(jax.random.key(0), tokens, tokens, jnp.ones((1, 1, 1), bool))[
            "params"
        ]
    )


def param_logical_axes(cfg: ModelConfig) -> Any:
    """A pytree like the params whose leaves are tuples of logical axis names."""
    boxed = _abstract_boxed(cfg)
    return jax.tree.map(
        lambda b: tuple(b.names), boxed, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned)
    )


def abstract_params(cfg: ModelConfig) -> Any:
    """ShapeDtypeStructs of the params, without allocating them."""
    return nn.meta.unbox(_abstract_boxed(cfg))


def param_shardings(cfg: ModelConfig, mesh, rules=partitioning.LOGICAL_AXIS_RULES) -> Any:
    """NamedShardings for every parameter, from the one rules table."""
    return partitioning.tree_shardings(abstract_params(cfg), param_logical_axes(cfg), mesh, rules)


def init_params(
    cfg: ModelConfig, key: Array, mesh=None, rules=partitioning.LOGICAL_AXIS_RULES
) -> Any:
    """Random params (plain arrays), created directly in their shardings when `mesh` is given."""
    tokens = jnp.zeros((1, 1), jnp.int32)

    def init(k):
        boxed = Transformer(cfg).init(k, tokens, tokens, jnp.ones((1, 1, 1), bool))["params"]
        return nn.meta.unbox(boxed)

    if mesh is None:
        return jax.jit(init)(key)
    return jax.jit(init, out_shardings=param_shardings(cfg, mesh, rules))(key)


def count_params(params: Any) -> int:
    return sum(x.size for x in jax.tree.leaves(params))
