"""Pure, jitted, sharded sampling with a KV cache: the E-step's engine.

`generate` is a pure function of (params, left-padded prompts, problem ids, key).
It prefills each prompt once, copies its KV cache to `num_samples` rows, and runs a
`lax.while_loop` that stops as soon as every row has emitted EOS or reached
`max_new_tokens`. Rows that finished keep emitting `pad_id` (their tokens and
log-probs are masked), so a batch costs no more steps than its longest sample.

Randomness is derived, never threaded: row (problem p, sample n) draws step t from
`fold_in(fold_in(fold_in(key, p), n), t)`. A sample therefore depends only on the
key, its problem id and its sample index, never on batch size, neighbours or the
number of devices.

`sample` is the host-side front door: it validates input (clear errors, not XLA
crashes), left-pads prompts into length buckets (few compilations), pads the batch
to a multiple of the mesh's batch split, and calls a cached jitted `generate`
whose shardings come from `rest_em.partitioning`.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from rest_em import losses, partitioning
from rest_em import model as model_lib

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    """How to decode. Frozen and hashable: a static argument of the jitted sampler.

    temperature: 0 decodes greedily (top_k / top_p are then irrelevant); > 0 samples.
    top_k: keep the k most likely tokens (0 = off). top_p: nucleus mass in (0, 1]
    (1 = off). Each works alone or together (temperature, then top-k, then top-p, the
    Hugging Face order); none of them ever silently falls back to greedy.
    Defaults follow the ReST^EM paper's E-step: temperature 0.7, top-k 40.
    """

    max_new_tokens: int = 256
    num_samples: int = 1
    temperature: float = 0.7
    top_k: int = 40
    top_p: float = 1.0
    eos_id: int | None = None
    pad_id: int = 0
    use_kv_cache: bool = True  # False recomputes the whole prefix each step (benchmark baseline)
    # Decode steps attend over the filled part of the cache only, in doubling length
    # buckets (`attend_buckets`): a step at context 100 reads 128 cache slots, not the
    # whole prompt + max_new_tokens. The same tokens either way. Off by default: on
    # XLA:CPU the prefix slice of the cache is copied every step, which the static
    # batch (every row at full context) pays for: llama20m, 64 rows, cap 1024, 0.80x
    # the static sampler's tokens/s. Continuous batching (num_slots) gains from it:
    # 1.21x continuous without buckets in the same run (benchmarks/RESULTS.md).
    bucketed_attention: bool = False
    # Continuous batching (`rest_em.continuous_batching`): decode in this many slots,
    # refilling a slot with the next (prompt, sample) the step its row ends, instead of
    # one static batch of every prompt x num_samples decoded until its longest row ends.
    # The same tokens either way. 0 = the static batch.
    num_slots: int = 0
    # The KV cache's dtype ("bfloat16" halves its memory and traffic; None: the model's
    # compute dtype). Attention then runs q.k and p.v in bf16 with f32 accumulation.
    kv_cache_dtype: str | None = None

    def __post_init__(self):
        if not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise ValueError(
                f"max_new_tokens must be a positive integer, got {self.max_new_tokens!r}"
            )
        if not isinstance(self.num_samples, int) or self.num_samples < 1:
            raise ValueError(f"num_samples must be a positive integer, got {self.num_samples!r}")
        if not (self.temperature >= 0.0) or not np.isfinite(self.temperature):
            raise ValueError(f"temperature must be finite and >= 0, got {self.temperature!r}")
        if not isinstance(self.top_k, int) or self.top_k < 0:
            raise ValueError(f"top_k must be an integer >= 0 (0 disables it), got {self.top_k!r}")
        if not (0.0 < self.top_p <= 1.0):
            raise ValueError(f"top_p must be in (0, 1] (1 disables it), got {self.top_p!r}")
        if not isinstance(self.num_slots, int) or self.num_slots < 0:
            raise ValueError(
                f"num_slots must be an integer >= 0 (0 = a static batch), got {self.num_slots!r}"
            )
        if self.num_slots and not self.use_kv_cache:
            raise ValueError("num_slots (continuous batching) needs use_kv_cache=True")
        if self.kv_cache_dtype not in (None, "float32", "bfloat16"):
            raise ValueError(
                f"kv_cache_dtype must be None, 'float32' or 'bfloat16', got {self.kv_cache_dtype!r}"
            )

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class SampleOutput:
    """Generated continuations, `num_samples` per prompt.

    tokens_BxNxT: generated ids, `pad_id` after EOS / the end. lengths_BxN: number of
    generated tokens including the EOS. logprobs_BxNxT: log p_model(token | prefix)
    under the unmodified model distribution (temperature 1, no top-k/top-p), 0 on
    padding; later stages (reference log-probs, advantages) need exactly that.
    num_steps: decode steps actually run (< max_new_tokens when every row hit EOS).
    """

    tokens_BxNxT: Array
    lengths_BxN: Array
    logprobs_BxNxT: Array
    num_steps: Array


# --- token choice ---------------------------------------------------------------


def filtered_candidates(logits_RxV: Array, cfg: SamplingConfig) -> tuple[Array, Array | None]:
    """Tempered logits of the allowed tokens: `(scores_RxC, token_ids_RxC or None)`.

    With top-k and/or top-p the candidates are the sorted head of the distribution
    (C <= V) and disallowed entries are -inf; otherwise all V tokens (ids None).
    """
    vocab = logits_RxV.shape[-1]
    k = cfg.top_k if 0 < cfg.top_k < vocab else 0
    if k == 0 and cfg.top_p >= 1.0:
        return logits_RxV / cfg.temperature, None
    # Sorted descending: top-k directly, or the whole vocabulary for top-p alone. Ranking
    # is unchanged by a positive temperature, so only the C candidates get divided.
    scores, ids = jax.lax.top_k(logits_RxV, k if k else vocab)
    scores = scores / cfg.temperature
    if cfg.top_p < 1.0:
        probs = jax.nn.softmax(scores, axis=-1)
        mass_before = jnp.cumsum(probs, axis=-1) - probs
        # Keep the smallest prefix whose mass reaches top_p (the first token always).
        keep = mass_before < cfg.top_p
        keep = keep.at[..., 0].set(True)
        scores = jnp.where(keep, scores, -jnp.inf)
    return scores, ids


def choose_tokens(logits_RxV: Array, keys_R: Array, cfg: SamplingConfig) -> Array:
    """One token per row: argmax when greedy, else a draw from the filtered distribution."""
    if cfg.greedy:
        # top_k(., 1) is the first maximal index, like argmax, and several times faster on CPU.
        return jax.lax.top_k(logits_RxV, 1)[1][:, 0].astype(jnp.int32)
    scores, ids = filtered_candidates(logits_RxV, cfg)
    choice = jax.vmap(jax.random.categorical)(keys_R, scores)
    if ids is None:
        return choice.astype(jnp.int32)
    return jnp.take_along_axis(ids, choice[:, None], axis=-1)[:, 0].astype(jnp.int32)


def draw(logits_RxV: Array, keys_R: Array, cfg: SamplingConfig) -> tuple[Array, Array]:
    """Each row's next token and its log-probability under the unmodified model
    distribution (`SampleOutput.logprobs_BxNxT`'s definition)."""
    tok_R = choose_tokens(logits_RxV, keys_R, cfg)
    return tok_R, losses.token_logprobs(logits_RxV, tok_R)[0]


def row_ends(
    tok_R: Array, stop_R: Array, stop_next_SxV: Array | None, cfg: SamplingConfig
) -> tuple[Array, Array]:
    """Whether each row ends with `tok_R` (EOS, or its text now contains a stop sequence:
    the stop automaton reaches its last, absorbing state), and the automaton's new state."""
    ended_R = jnp.zeros(tok_R.shape, bool)
    if cfg.eos_id is not None:
        ended_R = tok_R == cfg.eos_id
    if stop_next_SxV is not None:
        stop_R = stop_next_SxV[stop_R, tok_R]
        ended_R = ended_R | (stop_R == stop_next_SxV.shape[0] - 1)
    return ended_R, stop_R


def sample_keys(key: Array, problem_ids_B: Array, num_samples: int) -> Array:
    """`keys_R` for rows `b * num_samples + n`: fold_in(fold_in(key, problem_id), n)."""
    per_problem = jax.vmap(lambda p: jax.random.fold_in(key, p))(problem_ids_B)
    per_sample = jax.vmap(
        lambda k: jax.vmap(lambda n: jax.random.fold_in(k, n))(jnp.arange(num_samples))
    )(per_problem)
    return per_sample.reshape(-1)


# --- the pure sampler ---------------------------------------------------------------


def attend_buckets(prompt_len: int, cache_len: int, smallest: int = 64) -> list[int]:
    """The cache lengths decode steps attend over: doubling from the first power of two
    (at least `smallest`) above the prompt, up to half of `cache_len`, then `cache_len`.
    A step that writes slot q uses the first bucket > q, so it reads less than twice
    its context. XLA:CPU copies a bucket's prefix of the cache before attending over
    it, which pays only for buckets well short of the whole cache (measured:
    benchmarks/estep.py)."""
    ends, end = [], smallest
    while end <= prompt_len:
        end *= 2
    while 2 * end <= cache_len:
        ends.append(end)
        end *= 2
    return [*ends, cache_len]


def prompt_validity(prompt_lengths_B: Array, p: int, s: int) -> tuple[Array, Array]:
    """`(pad_B, valid_prompt_BxS)`: each left-padded prompt's padding, and which of the
    `s` cache slots hold its tokens (the last `prompt_lengths_B[b]` of the first `p`)."""
    pad_B = p - prompt_lengths_B
    slots_S = jnp.arange(s)
    return pad_B, (slots_S[None, :] >= pad_B[:, None]) & (slots_S[None, :] < p)


def prefill(
    params: Any,
    prompt_BxP: Array,
    prompt_lengths_B: Array,
    s: int,
    *,
    model_cfg: model_lib.ModelConfig,
    cfg: SamplingConfig,
) -> tuple[Array, Any]:
    """Runs the LEFT-padded prompts once: `(logits_BxV after the last prompt token, KV
    cache [B, K, s, H] per layer with the prompts in its first p slots)`; the cache is
    None when `cfg.use_kv_cache` is off. Shared by the static and continuous samplers,
    so both decode from the same numbers."""
    b, p = prompt_BxP.shape
    run = functools.partial(model_lib.Transformer(model_cfg).apply, {"params": params})
    pad_B, valid_prompt_BxS = prompt_validity(prompt_lengths_B, p, s)
    positions_BxP = jnp.maximum(jnp.arange(p)[None, :] - pad_B[:, None], 0)
    prompt_slots_BxP = jnp.broadcast_to(jnp.arange(p), (b, p))
    if not cfg.use_kv_cache:
        mask = model_lib.layer_masks(prompt_slots_BxP, valid_prompt_BxS[:, :p], model_cfg)
        logits_BxPxV, _ = run(prompt_BxP, positions_BxP, mask, None, 0)
        return logits_BxPxV[:, -1, :], None
    cache = model_lib.init_kv_cache(model_cfg, b, s, cfg.kv_cache_dtype)
    cache = jax.tree.map(lambda c: partitioning.constrain(c, model_lib.KV_CACHE_AXES), cache)
    mask = model_lib.layer_masks(prompt_slots_BxP, valid_prompt_BxS, model_cfg)
    logits_BxPxV, cache = run(prompt_BxP, positions_BxP, mask, cache, 0)
    return logits_BxPxV[:, -1, :], cache


def generate(
    params: Any,
    prompt_BxP: Array,
    prompt_lengths_B: Array,
    problem_ids_B: Array,
    key: Array,
    stop_next_SxV: Array | None = None,
    *,
    model_cfg: model_lib.ModelConfig,
    cfg: SamplingConfig,
) -> SampleOutput:
    """Samples `cfg.num_samples` continuations of each LEFT-padded prompt.

    prompt_BxP: ids, the last `prompt_lengths_B[b]` entries of row b are the prompt.
    problem_ids_B: stable ids (e.g. dataset index) that, with `key`, fix each row's
    randomness. stop_next_SxV (`rest_em.stops.token_table`): a row also ends the step its
    text first contains a stop sequence (its state reaches the last, absorbing one); the
    tokens drawn do not change. Pure: call it under `jax.jit` (see `make_sampler`).
    """
    b, p = prompt_BxP.shape
    n, t_max = cfg.num_samples, cfg.max_new_tokens
    r, s = b * n, p + t_max
    run = functools.partial(model_lib.Transformer(model_cfg).apply, {"params": params})
    slots_S = jnp.arange(s)
    pad_B, valid_prompt_BxS = prompt_validity(prompt_lengths_B, p, s)

    # Prefill once per prompt, then give each of the n samples its own copy of the cache.
    logits_BxV, cache = prefill(
        params, prompt_BxP, prompt_lengths_B, s, model_cfg=model_cfg, cfg=cfg
    )
    if cache is not None:
        cache = jax.tree.map(
            lambda c: partitioning.constrain(jnp.repeat(c, n, axis=0), model_lib.KV_CACHE_AXES),
            cache,
        )
    logits_RxV = jnp.repeat(logits_BxV, n, axis=0)
    logits_RxV = partitioning.constrain(logits_RxV, ("batch", "act_vocab"))

    pad_R = jnp.repeat(pad_B, n)
    valid_R_S = jnp.repeat(valid_prompt_BxS, n, axis=0)
    keys_R = sample_keys(key, problem_ids_B, n)
    # Recompute mode keeps the whole sequence (prompt + generated) and re-runs it.
    seq_RxS = jnp.concatenate(
        [jnp.repeat(prompt_BxP, n, axis=0), jnp.full((r, t_max), cfg.pad_id, jnp.int32)], axis=1
    )

    def next_logits(tok_R, t, cache, seq_RxS, attend):
        """The logits after `tok_R` at slot p + t; a cached step attends to slots < attend."""
        slot = p + t
        valid = valid_R_S | ((slots_S[None, :] >= p) & (slots_S[None, :] <= slot))
        if cfg.use_kv_cache:
            mask = model_lib.layer_masks(jnp.full((r, 1), slot), valid[:, :attend], model_cfg)
            logits, cache = run(tok_R[:, None], (slot - pad_R)[:, None], mask, cache, slot)
            return logits[:, 0, :], cache
        query = jnp.broadcast_to(slots_S, (r, s))
        mask = model_lib.layer_masks(query, valid, model_cfg)
        logits, _ = run(seq_RxS, jnp.maximum(query - pad_R[:, None], 0), mask, None, 0)
        return jax.lax.dynamic_index_in_dim(logits, slot, axis=1, keepdims=False), cache

    def body(state, attend):
        t, tokens_RxT, logprobs_RxT, done_R, lengths_R, logits_RxV, cache, seq_RxS, stop_R = state
        step_keys = jax.vmap(lambda k: jax.random.fold_in(k, t))(keys_R)
        tok, logp = draw(logits_RxV, step_keys, cfg)
        tok = jnp.where(done_R, cfg.pad_id, tok)
        logp = jnp.where(done_R, 0.0, logp)
        tokens_RxT = jax.lax.dynamic_update_index_in_dim(tokens_RxT, tok, t, axis=1)
        logprobs_RxT = jax.lax.dynamic_update_index_in_dim(logprobs_RxT, logp, t, axis=1)
        lengths_R = lengths_R + (~done_R).astype(jnp.int32)
        ended_R, stop_R = row_ends(tok, stop_R, stop_next_SxV, cfg)
        done_R = done_R | ended_R
        if not cfg.use_kv_cache:
            seq_RxS = jax.lax.dynamic_update_index_in_dim(seq_RxS, tok, p + t, axis=1)
        logits_RxV, cache = next_logits(tok, t, cache, seq_RxS, attend)
        return (
            t + 1,
            tokens_RxT,
            logprobs_RxT,
            done_R,
            lengths_R,
            logits_RxV,
            cache,
            seq_RxS,
            stop_R,
        )

    state = (
        jnp.int32(0),
        jnp.full((r, t_max), cfg.pad_id, jnp.int32),
        jnp.zeros((r, t_max), jnp.float32),
        jnp.zeros((r,), bool),
        jnp.zeros((r,), jnp.int32),
        logits_RxV,
        cache,
        # The KV-cache path never reads the sequence buffer: carry an empty one.
        seq_RxS if not cfg.use_kv_cache else jnp.zeros((r, 0), jnp.int32),
        jnp.zeros((r,), jnp.int32),  # each row's stop-automaton state
    )
    # One while_loop per attention bucket: steps whose new token lands in slots
    # [previous end, end) attend over `end` cache slots (a static shape per loop).
    for end in attend_buckets(p, s) if cfg.use_kv_cache and cfg.bucketed_attention else [s]:

        def cond(state, end=end):
            t, done_R = state[0], state[3]
            return (t < min(t_max, end - p)) & ~jnp.all(done_R)

        state = jax.lax.while_loop(cond, functools.partial(body, attend=end), state)
    steps, tokens_RxT, logprobs_RxT, _, lengths_R, *_ = state
    return SampleOutput(
        tokens_BxNxT=tokens_RxT.reshape(b, n, t_max),
        lengths_BxN=lengths_R.reshape(b, n),
        logprobs_BxNxT=logprobs_RxT.reshape(b, n, t_max),
        num_steps=steps,
    )


def input_shardings(
    mesh: Mesh, rules: partitioning.Rules = partitioning.LOGICAL_AXIS_RULES
) -> tuple[jax.sharding.NamedSharding, ...]:
    """The shardings of the sampler's (prompt_BxP, prompt_lengths_B, problem_ids_B)."""
    batch = partitioning.logical_to_sharding(
        ("batch",), (partitioning.batch_multiple(mesh, rules),), mesh, rules
    )
    batch2 = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(batch.spec[0], None))
    return batch2, batch, batch


@functools.lru_cache(maxsize=64)
def make_sampler(
    model_cfg: model_lib.ModelConfig,
    cfg: SamplingConfig,
    mesh: Mesh | None = None,
    rules: partitioning.Rules = partitioning.LOGICAL_AXIS_RULES,
    with_stops: bool = False,
):
    """`generate` (or, with `cfg.num_slots`, `continuous_batching.generate`) jitted for
    these configs (and shardings, with a mesh; `with_stops`: it takes a stop table after
    the key). Cached."""
    fn = functools.partial(generate, model_cfg=model_cfg, cfg=cfg)
    if cfg.num_slots:
        from rest_em import continuous_batching

        multiple = partitioning.batch_multiple(mesh, rules) if mesh is not None else 1
        fn = functools.partial(
            continuous_batching.generate, model_cfg=model_cfg, cfg=cfg, slot_multiple=multiple
        )
    if mesh is None:
        return jax.jit(fn)
    batch2, batch, _ = input_shardings(mesh, rules)
    batch3 = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(batch.spec[0], None, None))
    params_sh = model_lib.param_shardings(model_cfg, mesh, rules)
    out_sh = SampleOutput(batch3, batch2, batch3, partitioning.replicated(mesh))

    def traced(*args):
        with partitioning.activation_sharding(mesh, rules):
            return fn(*args)

    replicated = partitioning.replicated(mesh)
    in_sh = (params_sh, batch2, batch, batch, replicated)
    return jax.jit(
        traced,
        in_shardings=(*in_sh, replicated) if with_stops else in_sh,
        out_shardings=out_sh,
    )


# --- host-side front door -------------------------------------------------------------


def _bucket(n: int, minimum: int = 16) -> int:
    """Rounds a prompt length up to a power of two (>= minimum): few distinct compilations."""
    size = minimum
    while size < n:
        size *= 2
    return size


def pad_prompts(
    prompts: Sequence[Sequence[int]],
    *,
    model_cfg: model_lib.ModelConfig,
    cfg: SamplingConfig,
    batch_multiple: int = 1,
) -> tuple[np.ndarray, np.ndarray]:
    """Validates and left-pads prompts: `(prompt_BxP int32, lengths_B int32)`.

    Raises ValueError naming the offending prompt for an empty prompt, ids outside
    the vocabulary, or a prompt that (with max_new_tokens) exceeds the model's length.
    """
    if len(prompts) == 0:
        raise ValueError("sample() got no prompts")
    lengths = []
    for i, prompt in enumerate(prompts):
        ids = np.asarray(prompt)
        if ids.ndim != 1:
            raise ValueError(
                f"prompt {i} must be a 1-D sequence of token ids, got shape {ids.shape}"
            )
        if ids.size == 0:
            raise ValueError(f"prompt {i} is empty: every prompt needs at least one token")
        if not np.issubdtype(ids.dtype, np.integer):
            raise ValueError(f"prompt {i} holds {ids.dtype} values; token ids must be integers")
        bad = (ids < 0) | (ids >= model_cfg.vocab_size)
        if bad.any():
            j = int(np.argmax(bad))
            raise ValueError(
                f"prompt {i} position {j} holds token id {int(ids[j])}, outside the vocabulary "
                f"[0, {model_cfg.vocab_size})"
            )
        if ids.size + cfg.max_new_tokens > model_cfg.max_seq_len:
            raise ValueError(
                f"prompt {i} has {ids.size} tokens; with max_new_tokens={cfg.max_new_tokens} that "
                f"exceeds the model's max length {model_cfg.max_seq_len}"
            )
        lengths.append(ids.size)
    width = _bucket(max(lengths))
    rows = -(-len(prompts) // batch_multiple) * batch_multiple
    padded = np.full((rows, width), cfg.pad_id, np.int32)
    lengths_arr = np.ones((rows,), np.int32)  # dummy rows: a single pad token
    for i, prompt in enumerate(prompts):
        padded[i, width - lengths[i] :] = np.asarray(prompt, np.int32)
        lengths_arr[i] = lengths[i]
    return padded, lengths_arr


def sample(
    params: Any,
    prompts: Sequence[Sequence[int]],
    *,
    model_cfg: model_lib.ModelConfig,
    cfg: SamplingConfig,
    key: Array,
    problem_ids: Sequence[int] | None = None,
    mesh: Mesh | None = None,
    rules: partitioning.Rules = partitioning.LOGICAL_AXIS_RULES,
    stop_table: np.ndarray | None = None,
) -> SampleOutput:
    """Samples `cfg.num_samples` continuations for each prompt (lists of token ids).

    `stop_table` (`rest_em.stops.token_table(stops, tokenizer's token bytes)`) also ends
    a row the step its text first contains one of the stop sequences; cut the decoded
    text with `rest_em.stops.cut`.

    `problem_ids` (default 0..B-1) make each row's randomness independent of batching:
    pass dataset indices so a problem's samples never depend on its neighbours.
    Returns host numpy arrays with leading dimension len(prompts). On a mesh that spans
    several processes, every process calls it with the same arguments (SPMD) and gets
    every row back.
    """
    if problem_ids is None:
        problem_ids = range(len(prompts))
    problem_ids = np.asarray(list(problem_ids), np.int64)
    if problem_ids.shape != (len(prompts),):
        raise ValueError(f"got {len(problem_ids)} problem_ids for {len(prompts)} prompts")
    if (problem_ids < 0).any() or (problem_ids >= 2**31).any():
        raise ValueError("problem_ids must be in [0, 2**31)")
    multiple = partitioning.batch_multiple(mesh, rules) if mesh is not None else 1
    prompt_BxP, lengths_B = pad_prompts(
        prompts, model_cfg=model_cfg, cfg=cfg, batch_multiple=multiple
    )
    ids_B = np.zeros((prompt_BxP.shape[0],), np.int32)
    ids_B[: len(prompts)] = problem_ids
    with_stops = stop_table is not None
    fn = make_sampler(model_cfg, cfg, mesh, tuple(rules), with_stops)
    args = (prompt_BxP, lengths_B, ids_B)
    tail = (key, jnp.asarray(stop_table, jnp.int32)) if with_stops else (key,)
    if mesh is not None and partitioning.is_multiprocess():
        # A mesh over several processes: every process passes the same prompts, placed
        # as global arrays; the outputs are gathered so every process gets all rows.
        args = partitioning.to_global(args, input_shardings(mesh, rules))
        out = partitioning.to_host(fn(params, *args, *tail))
    else:
        out = jax.device_get(fn(params, *args, *tail))
    n = len(prompts)
    return SampleOutput(
        out.tokens_BxNxT[:n], out.lengths_BxN[:n], out.logprobs_BxNxT[:n], out.num_steps
    )
