"""The M-step: fine-tune on selected samples with weighted NLL, keep the best on D_val.

Pieces, each usable alone:
  TrainBatch / make_batch   right-padded prompt+completion rows with a target mask
  make_optimizer            optax AdamW (+ clipping) with a warmup/cosine schedule
  TrainState, train_step    a pure step over `[A, B, L]` micro-batches (exact accumulation)
  train_state_shardings     where the state lives on a mesh: params by the rules table,
                            the optimizer state like its params (FSDP / tensor parallel)
  make_train_step           `jax.jit` with shardings and state donation
  fit                       the M-step loop: batches from the seed, validation every K
                            steps, best-params selection, resumable orbax checkpoints,
                            a clean save and `Preempted` on SIGTERM
  install_preemption_handler  SIGTERM -> preemption request (the launcher installs it)
  PairBatch, dpo_train_step per-step DPO pairs with reference log-probs, a pure step
  fit_dpo                   the same loop for per-step DPO pairs (frozen reference model)
"""

from __future__ import annotations

import dataclasses
import functools
import math
import pathlib
import signal
import threading
from collections.abc import Callable, Sequence
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import tqdm

from rest_em import errors, losses, partitioning
from rest_em import lora as lora_lib
from rest_em import model as model_lib

Array = jax.Array


class TrainingDiverged(FloatingPointError):
    """The loss became NaN/inf; the last good checkpoint is left in place."""


class Preempted(Exception):
    """The run was asked to stop (SIGTERM: a preemption). Inside `fit`, the state was saved
    at `step` in `checkpoint_dir` first (None: no checkpoint dir, or stopped outside `fit`),
    on every host at the same step; running the same command again resumes."""

    def __init__(
        self,
        step: int | None,
        checkpoint_dir: str | pathlib.Path | None = None,
        desc: str | None = None,
    ):
        self.step, self.checkpoint_dir, self.desc = step, checkpoint_dir, desc
        where = "outside the M-step" if step is None else f"at step {step}"
        saved = (
            f" ({desc}; state saved in {checkpoint_dir})"
            if checkpoint_dir is not None
            else f" ({desc}; no checkpoint dir: it restarts)"
            if desc
            else ""
        )
        super().__init__(f"preempted {where}; run the same command to resume{saved}")


@flax.struct.dataclass
class TrainBatch:
    """One (micro-)batch. Right padded: row b is prompt + completion, then padding.

    inputs_BxL / targets_BxL are the row shifted by one; loss_mask_BxL is 1 on the
    positions whose target is a completion token (the prompt is never a target);
    weights_B the per-example reward; token_weights_BxL optional per-token weights.
    Stacked micro-batches carry a leading axis A (`[A, B, L]`).
    """

    inputs_BxL: Array
    targets_BxL: Array
    valid_BxL: Array
    loss_mask_BxL: Array
    weights_B: Array
    token_weights_BxL: Array


def make_batch(
    prompts: Sequence[Sequence[int]],
    completions: Sequence[Sequence[int]],
    *,
    length: int,
    pad_id: int = 0,
    weights: Sequence[float] | None = None,
    token_weights: Sequence[Sequence[float]] | None = None,
) -> TrainBatch:
    """Host numpy TrainBatch of `len(prompts)` rows padded to `length` (+1 for the shift).

    token_weights[i] (optional) has one weight per completion token of row i. Raises
    ValueError naming the row when prompt + completion does not fit.
    """
    b = len(prompts)
    seq = np.full((b, length + 1), pad_id, np.int32)
    mask = np.zeros((b, length), np.float32)
    tok_w = np.ones((b, length), np.float32)
    valid = np.zeros((b, length), bool)
    for i, (p, c) in enumerate(zip(prompts, completions, strict=True)):
        n = len(p) + len(c)
        if n > length + 1:
            raise ValueError(
                f"row {i}: prompt ({len(p)}) + completion ({len(c)}) tokens exceed "
                f"the training length {length + 1}"
            )
        if len(p) == 0 or len(c) == 0:
            raise ValueError(f"row {i}: empty prompt or completion")
        seq[i, :n] = np.concatenate([np.asarray(p, np.int32), np.asarray(c, np.int32)])
        valid[i, : n - 1] = True
        mask[i, len(p) - 1 : n - 1] = 1.0  # inputs[t] predicts seq[t+1]: the completion
        if token_weights is not None:
            tok_w[i, len(p) - 1 : n - 1] = np.asarray(token_weights[i], np.float32)
    w = np.ones((b,), np.float32) if weights is None else np.asarray(weights, np.float32)
    return TrainBatch(seq[:, :-1], seq[:, 1:], valid, mask, w, tok_w)


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    """AdamW with global-norm clipping and linear warmup into a constant or cosine decay."""

    learning_rate: float = 1e-4
    warmup_steps: int = 0
    schedule: str = "constant"  # "constant" | "cosine"
    weight_decay: float = 0.0
    b1: float = 0.9
    b2: float = 0.95
    eps: float = 1e-8
    clip_norm: float | None = 1.0

    def __post_init__(self):
        if self.schedule not in ("constant", "cosine"):
            raise ValueError(f"schedule={self.schedule!r}; expected 'constant' or 'cosine'")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")


def make_optimizer(cfg: OptimizerConfig, total_steps: int) -> optax.GradientTransformation:
    """The optax chain for `total_steps` steps (the cosine decays to 10% at the end)."""
    warmup = min(cfg.warmup_steps, max(total_steps - 1, 0))
    if cfg.schedule == "cosine":
        lr = optax.warmup_cosine_decay_schedule(
            0.0 if warmup else cfg.learning_rate,
            cfg.learning_rate,
            warmup,
            max(total_steps, warmup + 1),
            end_value=0.1 * cfg.learning_rate,
        )
    elif warmup:
        lr = optax.join_schedules(
            [
                optax.linear_schedule(0.0, cfg.learning_rate, warmup),
                optax.constant_schedule(cfg.learning_rate),
            ],
            [warmup],
        )
    else:
        lr = optax.constant_schedule(cfg.learning_rate)
    parts = [optax.clip_by_global_norm(cfg.clip_norm)] if cfg.clip_norm else []
    parts.append(optax.adamw(lr, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay))
    return optax.chain(*parts)


@flax.struct.dataclass
class TrainState:
    step: Array
    params: Any
    opt_state: Any


def opt_state_shardings(
    optimizer: optax.GradientTransformation, param_shardings: Any, abstract_params: Any
) -> Any:
    """NamedShardings of `optimizer.init(params)`: every params-shaped tree in it (Adam's
    mu and nu, ...) sharded exactly like the params, everything else (step counts)
    replicated. `param_shardings`: NamedShardings on one mesh, a tree like the params."""
    mesh = jax.tree.leaves(param_shardings)[0].mesh
    abstract = jax.eval_shape(optimizer.init, abstract_params)
    return optax.tree_map_params(
        optimizer,
        lambda _, sh: sh,
        abstract,
        param_shardings,
        transform_non_params=lambda _: partitioning.replicated(mesh),
    )


def train_state_shardings(
    model_cfg: model_lib.ModelConfig,
    optimizer: optax.GradientTransformation,
    mesh: jax.sharding.Mesh,
    rules: partitioning.Rules = partitioning.LOGICAL_AXIS_RULES,
) -> TrainState:
    """A TrainState of NamedShardings: params from the rules table (FSDP shards their
    "embed" dimension, tensor parallelism heads / mlp / vocab), the optimizer state like
    its params, the step replicated."""
    param_sh = model_lib.param_shardings(model_cfg, mesh, rules)
    opt_sh = opt_state_shardings(optimizer, param_sh, model_lib.abstract_params(model_cfg))
    return TrainState(partitioning.replicated(mesh), param_sh, opt_sh)


def init_train_state(params: Any, optimizer: optax.GradientTransformation) -> TrainState:
    """A state that owns a copy of `params` (train steps donate it; the caller's params,
    e.g. the base model every ReST^EM iteration restarts from, stay valid).

    Params placed on a mesh keep their shardings, and the optimizer state is created
    directly in the same ones (see `opt_state_shardings`): with FSDP, Adam's moments are
    split like the weights instead of landing whole on one device.
    """
    params = _copy(params)
    shardings = jax.tree.map(lambda x: x.sharding, params)
    leaves = jax.tree.leaves(shardings)
    if (
        leaves
        and all(isinstance(sh, jax.sharding.NamedSharding) for sh in leaves)
        and len({sh.mesh for sh in leaves}) == 1
    ):
        opt_sh = opt_state_shardings(optimizer, shardings, params)
        step = jax.device_put(jnp.zeros((), jnp.int32), partitioning.replicated(leaves[0].mesh))
        return TrainState(step, params, jax.jit(optimizer.init, out_shardings=opt_sh)(params))
    return TrainState(jnp.zeros((), jnp.int32), params, jax.jit(optimizer.init)(params))


@jax.jit
def _copy(tree: Any) -> Any:
    return jax.tree.map(jnp.copy, tree)


def train_step(
    state: TrainState,
    batch_AxBxL: TrainBatch,
    *,
    model_cfg: model_lib.ModelConfig,
    optimizer: optax.GradientTransformation,
    frozen: Any = None,
    lora: lora_lib.LoraConfig | None = None,
    seed: int = 0,
) -> tuple[TrainState, dict[str, Array]]:
    """One optimizer update from A stacked micro-batches.

    The loss is sum(weight * nll) / (number of target tokens) over ALL micro-batches,
    accumulated exactly (numerators and token counts summed separately), so A micro-batches
    of B equal one batch of A*B. With `lora`, `state.params` are the adapters and
    `frozen` the base params they attach to (no gradient, no optimizer state); dropout
    masks come from (`seed`, step, micro-batch).
    """

    def sums(params, mb: TrainBatch, i):
        if lora is not None:
            key = jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), state.step), i)
            params = lora_lib.attach(frozen, params, lora, key)
        labels = (mb.targets_BxL, mb.loss_mask_BxL, mb.weights_B, mb.token_weights_BxL)
        if model_cfg.loss_chunk is None:
            logits = model_lib.forward(params, model_cfg, mb.inputs_BxL, mb.valid_BxL)
            _, aux = losses.weighted_nll(logits, *labels)
        else:  # never all [B, L, V] logits at once
            hidden = model_lib.forward(params, model_cfg, mb.inputs_BxL, mb.valid_BxL, head=False)
            head = functools.partial(model_lib.logits_from_hidden, params, model_cfg)
            _, aux = losses.chunked_weighted_nll(hidden, head, *labels, chunk=model_cfg.loss_chunk)
        return aux["loss_sum"], aux

    def accumulate(carry, mb):
        grads, loss_sum, tokens, correct, i = carry
        (ls, aux), g = jax.value_and_grad(sums, has_aux=True)(state.params, mb, i)
        grads = jax.tree.map(jnp.add, grads, g)
        return (
            grads,
            loss_sum + ls,
            tokens + aux["num_tokens"],
            correct + aux["accuracy"] * aux["num_tokens"],
            i + 1,
        ), None

    zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), state.params)
    init = (zeros, jnp.float32(0), jnp.float32(0), jnp.float32(0), jnp.int32(0))
    (grads, loss_sum, tokens, correct, _), _ = jax.lax.scan(accumulate, init, batch_AxBxL)
    denom = jnp.maximum(tokens, 1.0)
    grads = jax.tree.map(lambda g, p: (g / denom).astype(p.dtype), grads, state.params)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {
        "loss": loss_sum / denom,
        "token_accuracy": correct / denom,
        "num_tokens": tokens,
        "grad_norm": optax.tree.norm(grads),
    }
    return TrainState(state.step + 1, params, opt_state), metrics


def make_train_step(
    model_cfg: model_lib.ModelConfig,
    optimizer: optax.GradientTransformation,
    state: TrainState,
    mesh: jax.sharding.Mesh | None = None,
    rules: partitioning.Rules = partitioning.LOGICAL_AXIS_RULES,
) -> Callable:
    """`train_step` jitted with the state's own shardings and the state donated.

    With a mesh the batch is split over the mesh's data axes (`batch` logical axis); on a
    mesh over several processes every process passes the same host batch.
    """
    fn = jax.tree_util.Partial(train_step, model_cfg=model_cfg, optimizer=optimizer)
    return _jit_step(fn, state, mesh, rules, _train_batch_shardings)


def _lora_train_step(state, frozen, batch, **kwargs):
    """`train_step` with the frozen base params as an argument (`_jit_step`'s extra)."""
    return train_step(state, batch, frozen=frozen, **kwargs)


def _train_batch_shardings(row, row2) -> TrainBatch:
    return TrainBatch(row2, row2, row2, row2, row, row2)


def _jit_step(
    fn: Callable,
    state: TrainState,
    mesh: jax.sharding.Mesh | None,
    rules: partitioning.Rules,
    batch_shardings: Callable[[Any, Any], Any],
    extra: Sequence[Any] = (),
) -> Callable:
    """`fn(state, *extra, batch)` jitted with the state donated. With a mesh: the state
    keeps its shardings, `extra` (e.g. frozen reference params) keeps its own, and the
    stacked `[A, B, ...]` batch is split on B over the data axes
    (`batch_shardings(row_AxB, row_AxBxL)` builds the batch's tree of shardings)."""
    if mesh is None:
        return jax.jit(fn, donate_argnums=0)
    state_sh = jax.tree.map(lambda x: x.sharding, state)
    extra_sh = [jax.tree.map(lambda x: x.sharding, e) for e in extra]
    spec = partitioning.logical_to_spec(
        ("batch",), (partitioning.batch_multiple(mesh, rules),), mesh, rules
    )
    row = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(None, spec[0]))
    row2 = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(None, spec[0], None))
    batch_sh = batch_shardings(row, row2)

    def traced(state, *args):
        with partitioning.activation_sharding(mesh, rules):
            return fn(state, *args)

    step = jax.jit(
        traced,
        in_shardings=(state_sh, *extra_sh, batch_sh),
        out_shardings=(state_sh, partitioning.replicated(mesh)),
        donate_argnums=0,
    )
    if not partitioning.is_multiprocess():
        return step

    def global_step(state, *args):
        # A mesh over several processes: every process builds the same host batch (the
        # same seeded indices), placed here as one global batch split over all devices.
        *rest, batch = args
        return step(state, *rest, partitioning.to_global(batch, batch_sh))

    return global_step


# --- per-step DPO -----------------------------------------------------------------------


@flax.struct.dataclass
class PairBatch:
    """DPO pairs: chosen and rejected rows of the same prompts (two TrainBatches of one
    length), the reference model's log-probs of each, and per-pair weights in
    `chosen.weights_B` (0 = a padding pair). Stacked micro-batches: leading axis A."""

    chosen: TrainBatch
    rejected: TrainBatch
    ref_chosen_logp_B: Array
    ref_rejected_logp_B: Array


def make_pair_batch(
    prompts: Sequence[Sequence[int]],
    chosen: Sequence[Sequence[int]],
    rejected: Sequence[Sequence[int]],
    *,
    length: int,
    pad_id: int = 0,
    weights: Sequence[float] | None = None,
    ref_chosen_logp: Sequence[float] | None = None,
    ref_rejected_logp: Sequence[float] | None = None,
) -> PairBatch:
    """Host numpy PairBatch (e.g. from `step_values.step_dpo_pairs`: prompt = x + y_<c).

    Reference log-probs default to 0; fill them with `reference_logprobs` before training.
    """
    c = make_batch(prompts, chosen, length=length, pad_id=pad_id, weights=weights)
    r = make_batch(prompts, rejected, length=length, pad_id=pad_id, weights=weights)
    zeros = [0.0] * len(prompts)
    rc = np.asarray(zeros if ref_chosen_logp is None else ref_chosen_logp, np.float32)
    rr = np.asarray(zeros if ref_rejected_logp is None else ref_rejected_logp, np.float32)
    return PairBatch(c, r, rc, rr)


def _pair_logprobs(
    params: Any, batch: PairBatch, model_cfg: model_lib.ModelConfig
) -> tuple[Array, Array]:
    """Log-probs of the chosen and the rejected completions: ONE forward over 2B rows."""
    both = jax.tree.map(lambda a, b: jnp.concatenate([a, b], axis=0), batch.chosen, batch.rejected)
    logits = model_lib.forward(params, model_cfg, both.inputs_BxL, both.valid_BxL)
    logp = losses.sequence_logprobs(logits, both.targets_BxL, both.loss_mask_BxL)
    b = batch.chosen.inputs_BxL.shape[0]
    return logp[:b], logp[b:]


def reference_logprobs(
    params: Any, batch: PairBatch, *, model_cfg: model_lib.ModelConfig
) -> PairBatch:
    """`batch` with its reference log-probs computed under `params` (the frozen reference,
    e.g. the model that sampled the data). Pure; jit it or call it once per dataset."""
    rc, rr = _pair_logprobs(params, batch, model_cfg)
    return batch.replace(ref_chosen_logp_B=rc, ref_rejected_logp_B=rr)


def dpo_train_step(
    state: TrainState,
    batch_AxB: PairBatch,
    *,
    model_cfg: model_lib.ModelConfig,
    optimizer: optax.GradientTransformation,
    beta: float,
) -> tuple[TrainState, dict[str, Array]]:
    """One optimizer update of per-step DPO (`losses.step_dpo_loss`) from A stacked
    micro-batches of pairs, with precomputed reference log-probs.

    The loss is sum(w * pair loss) / sum(w) over ALL micro-batches, accumulated exactly like
    `train_step`, so A micro-batches of B equal one batch of A*B.
    """

    def sums(params, mb: PairBatch):
        pc, pr = _pair_logprobs(params, mb, model_cfg)
        _, aux = losses.step_dpo_loss(
            pc,
            pr,
            mb.ref_chosen_logp_B,
            mb.ref_rejected_logp_B,
            beta=beta,
            weights_B=mb.chosen.weights_B,
        )
        return aux["loss_sum"], aux

    keys = ("chosen_reward", "rejected_reward", "reward_accuracy", "margin")

    def accumulate(carry, mb):
        grads, loss_sum, num, totals = carry
        (ls, aux), g = jax.value_and_grad(sums, has_aux=True)(state.params, mb)
        grads = jax.tree.map(jnp.add, grads, g)
        totals = {k: totals[k] + aux[k] * aux["num_pairs"] for k in keys}
        return (grads, loss_sum + ls, num + aux["num_pairs"], totals), None

    zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), state.params)
    init = (zeros, jnp.float32(0), jnp.float32(0), {k: jnp.float32(0) for k in keys})
    (grads, loss_sum, num, totals), _ = jax.lax.scan(accumulate, init, batch_AxB)
    denom = jnp.maximum(num, 1e-9)
    grads = jax.tree.map(lambda g, p: (g / denom).astype(p.dtype), grads, state.params)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {
        "loss": loss_sum / denom,
        "num_pairs": num,
        "grad_norm": optax.tree.norm(grads),
        **{k: v / denom for k, v in totals.items()},
    }
    return TrainState(state.step + 1, params, opt_state), metrics


def make_dpo_train_step(
    model_cfg: model_lib.ModelConfig, optimizer: optax.GradientTransformation, *, beta: float
) -> Callable:
    """`dpo_train_step` jitted with the state donated (single device; `fit_dpo` is the
    loop, with meshes and in-step reference log-probs)."""
    fn = jax.tree_util.Partial(dpo_train_step, model_cfg=model_cfg, optimizer=optimizer, beta=beta)
    return jax.jit(fn, donate_argnums=0)


def dpo_train_step_with_reference(
    state: TrainState,
    reference_params: Any,
    batch_AxB: PairBatch,
    *,
    model_cfg: model_lib.ModelConfig,
    optimizer: optax.GradientTransformation,
    beta: float,
) -> tuple[TrainState, dict[str, Array]]:
    """`dpo_train_step` whose reference log-probs come from `reference_params` inside the
    step (one more forward per micro-batch, no gradient): nothing to precompute or store,
    so `fit_dpo` resumes and shards exactly like `fit`."""
    rc, rr = jax.lax.map(lambda mb: _pair_logprobs(reference_params, mb, model_cfg), batch_AxB)
    batch = batch_AxB.replace(
        ref_chosen_logp_B=jax.lax.stop_gradient(rc), ref_rejected_logp_B=jax.lax.stop_gradient(rr)
    )
    return dpo_train_step(state, batch, model_cfg=model_cfg, optimizer=optimizer, beta=beta)


def _pair_batch_shardings(row, row2) -> PairBatch:
    return PairBatch(_train_batch_shardings(row, row2), _train_batch_shardings(row, row2), row, row)


# --- preemption ------------------------------------------------------------------------
# A SIGTERM (what cluster schedulers send before taking a machine) only sets a flag; `fit`
# polls it before every step. With several processes the flag is OR-ed over all of them
# at each poll (one tiny all-gather), so a SIGTERM on ANY host makes EVERY host save the
# same step and raise `Preempted`. Outside `fit` the launcher's handler raises at once:
# everything else in the EM loop is an atomic file, as resumable as after `kill -9`.

_PREEMPTION = threading.Event()
_ACTIVE_FITS = [0]  # fits running in this process (a list: mutated by fit)


def request_preemption() -> None:
    """Asks a running `fit` to save at its next step and raise `Preempted` (what the
    SIGTERM handler does; also callable from any thread)."""
    _PREEMPTION.set()


def clear_preemption() -> None:
    _PREEMPTION.clear()


def preemption_requested(*, sync: bool = True) -> bool:
    """Whether a preemption was requested here or, with `sync` and several processes, on
    any process. With `sync` this is a collective: every process must call it at the same
    point (fit does, once per step); on one process it costs nothing."""
    local = _PREEMPTION.is_set()
    if not sync or jax.process_count() == 1:
        return local
    from jax.experimental import multihost_utils

    flags = multihost_utils.process_allgather(np.asarray([int(local)], np.int32))
    agreed = bool(np.asarray(flags).any())
    if agreed:
        _PREEMPTION.set()
    return agreed


def install_preemption_handler(
    signals: Sequence[int] = (signal.SIGTERM,), *, raise_outside_fit: bool = True
) -> None:
    """Handles `signals` (default SIGTERM) as a preemption request. Inside `fit` the loop
    saves a checkpoint at its current step and raises `Preempted`; elsewhere (sampling,
    evaluation) the handler raises `Preempted(None)` at once, unless `raise_outside_fit`
    is False or there are several processes: one process leaving alone would leave the
    others waiting in their next collective, so outside `fit` the request waits for the
    next `fit` (or any caller of `preemption_requested()`, which all processes call at
    the same point). Call from the main thread (e.g. the launcher, `rest_em.main`).

    Multi-host: `jax.distributed.initialize` would start JAX's own preemption service,
    whose notifier also takes SIGTERM (the handler installed last wins). Installed before
    it, this turns that service off (`jax_enable_preemption_service`), so SIGTERM stays
    ours; installed after it, this handler simply replaces the notifier's.
    """
    jax.config.update("jax_enable_preemption_service", False)

    def handler(signum, frame):
        del frame
        request_preemption()
        if raise_outside_fit and not _ACTIVE_FITS[0] and jax.process_count() == 1:
            raise Preempted(None, desc=f"signal {signal.Signals(signum).name}")

    for sig in signals:
        signal.signal(sig, handler)


# --- the M-step loop --------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class FitConfig:
    """How long and how the M-step trains. `num_steps` wins over `num_epochs` when set."""

    batch_size: int = 32
    micro_batches: int = 1
    num_epochs: float = 2.0
    num_steps: int | None = None
    max_length: int = 256
    eval_every: int = 50  # validation (and a resumable checkpoint) every K steps
    # Stop at the first validation whose reward reaches this (a model of a chosen
    # strength, e.g. a base that is competent but not saturated); None: the whole schedule.
    stop_at: float | None = None
    optimizer: OptimizerConfig = OptimizerConfig()
    # Train LoRA adapters only (fresh ones from the start params each fit); the result is
    # the merged params. None: full fine-tuning.
    lora: lora_lib.LoraConfig | None = None

    def __post_init__(self):
        if self.batch_size % self.micro_batches:
            raise ValueError(
                f"batch_size={self.batch_size} must be a multiple of "
                f"micro_batches={self.micro_batches}"
            )


@dataclasses.dataclass
class FitResult:
    params: Any  # the best params by validation reward (the last if no eval_fn)
    best_step: int
    best_reward: float | None
    history: list[dict]  # one entry per validation: step, reward, loss
    adapters: Any = None  # with FitConfig.lora: the best adapters (params are merged)


def total_steps(cfg: FitConfig, num_examples: int) -> int:
    if cfg.num_steps is not None:
        return cfg.num_steps
    return max(1, math.ceil(cfg.num_epochs * num_examples / cfg.batch_size))


def batch_indices(num_examples: int, step: int, batch_size: int, seed: int) -> np.ndarray:
    """The example indices of `step`: epochs are seeded permutations, so any step is
    recomputable after a restart (no replayed or skipped data)."""
    start = step * batch_size
    out = []
    while len(out) < batch_size:
        epoch, offset = divmod(start + len(out), num_examples)
        perm = np.random.default_rng([seed, epoch]).permutation(num_examples)
        out.extend(perm[offset : offset + batch_size - len(out)].tolist())
    return np.asarray(out)


def _bucket_length(n: int, cap: int) -> int:
    size = 32
    while size < n:
        size *= 2
    return min(size, cap)


def fit(
    base_params: Any,
    prompts: Sequence[Sequence[int]],
    completions: Sequence[Sequence[int]],
    *,
    model_cfg: model_lib.ModelConfig,
    cfg: FitConfig,
    seed: int,
    weights: Sequence[float] | None = None,
    token_weights: Sequence[Sequence[float]] | None = None,
    eval_fn: Callable[[Any], float] | None = None,
    checkpoint_dir: str | pathlib.Path | None = None,
    mesh: jax.sharding.Mesh | None = None,
    pad_id: int = 0,
    desc: str = "M-step",
    base_reward: float | None = None,
) -> FitResult:
    """Fine-tunes `base_params` on (prompt, completion) pairs; returns the best params.

    Every `cfg.eval_every` steps (and at the end) `eval_fn(params)` gives the validation
    reward; the params with the highest reward are kept (ties: the earlier step). With
    `base_reward` (the validation reward of `base_params`) the start competes too
    (best_step 0): a fine-tune that never beats it returns `base_params`. With
    `cfg.stop_at`, training ends at the first validation that reaches it (those params).
    With `checkpoint_dir`, the state is saved at each validation and a restarted `fit`
    with the same arguments continues from there; the result equals an uninterrupted run.

    Preemption: once `request_preemption()` was called (the SIGTERM handler of
    `install_preemption_handler`) on this or, with several processes, on any process,
    `fit` saves the state at the current step on every process and raises `Preempted`.
    """
    start = base_params
    if cfg.lora is not None:  # train fresh adapters; the base is frozen
        start = lora_lib.init_adapters(base_params, cfg.lora, jax.random.key(seed))
        if mesh is not None:
            start = jax.device_put(start, partitioning.replicated(mesh))
    steps, optimizer, state = _start(start, len(prompts), cfg, "fit() got no training examples")
    if cfg.lora is None:
        step_fn = make_train_step(model_cfg, optimizer, state, mesh)
    else:
        fn = jax.tree_util.Partial(
            _lora_train_step, model_cfg=model_cfg, optimizer=optimizer, lora=cfg.lora, seed=seed
        )
        jitted = _jit_step(
            fn,
            state,
            mesh,
            partitioning.LOGICAL_AXIS_RULES,
            _train_batch_shardings,
            extra=(base_params,),
        )
        merge = jax.jit(functools.partial(lora_lib.merge, cfg=cfg.lora))

        def step_fn(st, b):
            return jitted(st, base_params, b)

        if eval_fn is not None:
            full_eval = eval_fn

            def eval_fn(adapters):
                return full_eval(merge(base_params, adapters))

    lengths = [len(p) + len(c) for p, c in zip(prompts, completions, strict=True)]

    def batch_at(step: int) -> TrainBatch:
        idx, length = _step_rows(step, lengths, cfg, seed)
        return make_batch(
            [prompts[i] for i in idx],
            [completions[i] for i in idx],
            length=length,
            pad_id=pad_id,
            weights=None if weights is None else [weights[i] for i in idx],
            token_weights=None if token_weights is None else [token_weights[i] for i in idx],
        )

    result = _fit_loop(
        start,
        state,
        steps=steps,
        batch_at=batch_at,
        step_fn=step_fn,
        cfg=cfg,
        eval_fn=eval_fn,
        checkpoint_dir=checkpoint_dir,
        desc=desc,
        base_reward=base_reward,
    )
    if cfg.lora is not None:  # the sampler and the next iteration get merged weights
        result = dataclasses.replace(
            result, params=merge(base_params, result.params), adapters=result.params
        )
    return result


def fit_dpo(
    base_params: Any,
    prompts: Sequence[Sequence[int]],
    chosen: Sequence[Sequence[int]],
    rejected: Sequence[Sequence[int]],
    *,
    model_cfg: model_lib.ModelConfig,
    cfg: FitConfig,
    seed: int,
    beta: float,
    reference_params: Any = None,
    weights: Sequence[float] | None = None,
    eval_fn: Callable[[Any], float] | None = None,
    checkpoint_dir: str | pathlib.Path | None = None,
    mesh: jax.sharding.Mesh | None = None,
    pad_id: int = 0,
    desc: str = "DPO",
    base_reward: float | None = None,
) -> FitResult:
    """`fit` for per-step DPO pairs (`step_values.step_dpo_pairs`: prompt = x + y_<c,
    chosen continuation, rejected step): the same seeded batches, validation-based
    selection, resumable checkpoints and preemption. The reference model
    (`reference_params`, default `base_params`) stays frozen. With `base_reward` (the
    validation reward of `base_params`), DPO's params are kept only when they beat it."""
    if cfg.lora is not None:
        raise errors.ConfigError(
            "per-step DPO with LoRA (FitConfig.lora) is not supported yet: give the DPO "
            "phase a full schedule (StepNegativesConfig.dpo_fit without lora)"
        )
    steps, optimizer, state = _start(base_params, len(prompts), cfg, "fit_dpo() got no pairs")
    reference = state.params if reference_params is None else reference_params
    reference = _copy(reference)  # the state's params are donated every step
    fn = jax.tree_util.Partial(
        dpo_train_step_with_reference, model_cfg=model_cfg, optimizer=optimizer, beta=beta
    )
    jitted = _jit_step(
        fn, state, mesh, partitioning.LOGICAL_AXIS_RULES, _pair_batch_shardings, extra=(reference,)
    )
    lengths = [
        len(p) + max(len(c), len(r)) for p, c, r in zip(prompts, chosen, rejected, strict=True)
    ]

    def batch_at(step: int) -> PairBatch:
        idx, length = _step_rows(step, lengths, cfg, seed)
        return make_pair_batch(
            [prompts[i] for i in idx],
            [chosen[i] for i in idx],
            [rejected[i] for i in idx],
            length=length,
            pad_id=pad_id,
            weights=None if weights is None else [weights[i] for i in idx],
        )

    return _fit_loop(
        base_params,
        state,
        steps=steps,
        batch_at=batch_at,
        step_fn=lambda st, b: jitted(st, reference, b),
        cfg=cfg,
        eval_fn=eval_fn,
        checkpoint_dir=checkpoint_dir,
        desc=desc,
        base_reward=base_reward,
    )


def _start(
    base_params: Any, n: int, cfg: FitConfig, empty: str
) -> tuple[int, optax.GradientTransformation, TrainState]:
    """The schedule's length, its optimizer and a fresh state (what `fit` and `fit_dpo`
    both start from); `empty` is the error for no examples."""
    if n == 0:
        raise ValueError(empty)
    steps = total_steps(cfg, n)
    optimizer = make_optimizer(cfg.optimizer, steps)
    return steps, optimizer, init_train_state(base_params, optimizer)


def _step_rows(
    step: int, lengths: Sequence[int], cfg: FitConfig, seed: int
) -> tuple[np.ndarray, int]:
    """The example indices of `step` and their bucketed training length (`lengths[i]`:
    row i's prompt + longest completion, before the shift)."""
    idx = batch_indices(len(lengths), step, cfg.batch_size, seed)
    return idx, _bucket_length(max(lengths[i] for i in idx) - 1, cfg.max_length)


def _fit_loop(
    base_params: Any,
    state: TrainState,
    *,
    steps: int,
    batch_at: Callable[[int], Any],
    step_fn: Callable,
    cfg: FitConfig,
    eval_fn: Callable[[Any], float] | None,
    checkpoint_dir: str | pathlib.Path | None,
    desc: str,
    base_reward: float | None = None,
) -> FitResult:
    """The loop `fit` and `fit_dpo` share: `batch_at(step)` is the step's host batch
    (seeded, so recomputable), split into `cfg.micro_batches`; validation, best-params
    selection, checkpoints, resumption, divergence and preemption live here."""
    best_params, best_step, best_reward, history = base_params, 0, base_reward, []

    manager = None
    if checkpoint_dir is not None:
        manager = ocp.CheckpointManager(
            pathlib.Path(checkpoint_dir).absolute(),
            options=ocp.CheckpointManagerOptions(max_to_keep=1, enable_async_checkpointing=False),
        )
        last = manager.latest_step()
        if last is not None:
            target = {"state": state, "best": best_params}
            restored = manager.restore(
                last,
                args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(target["state"]),
                    best=ocp.args.StandardRestore(target["best"]),
                    meta=ocp.args.JsonRestore(),
                ),
            )
            state, best_params = restored["state"], restored["best"]
            meta = restored["meta"]
            best_step, best_reward, history = (
                meta["best_step"],
                meta["best_reward"],
                meta["history"],
            )

    def save(done: int) -> None:
        meta = {"best_step": best_step, "best_reward": best_reward, "history": history}
        manager.save(
            done,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state),
                best=ocp.args.StandardSave(best_params),
                meta=ocp.args.JsonSave(meta),
            ),
        )
        manager.wait_until_finished()

    def stop_if_preempted(done: int) -> None:
        # A collective with several processes: every process reaches it at the same step.
        if not preemption_requested():
            return
        if manager is not None and done > 0 and manager.latest_step() != done:
            save(done)
        raise Preempted(done, checkpoint_dir if manager is not None else None, desc)

    def reached(reward: float | None) -> bool:
        return cfg.stop_at is not None and reward is not None and reward >= cfg.stop_at

    a = cfg.micro_batches
    mb = cfg.batch_size // a
    start = steps if reached(best_reward) else int(state.step)  # a restart after the stop
    _ACTIVE_FITS[0] += 1
    try:
        bar = tqdm.tqdm(
            range(start, steps),
            desc=desc,
            initial=start,
            total=steps,
            leave=False,
            dynamic_ncols=True,
        )
        for step in bar:
            stop_if_preempted(step)
            batch = jax.tree.map(lambda x: x.reshape((a, mb) + x.shape[1:]), batch_at(step))
            state, metrics = step_fn(state, batch)
            loss = float(metrics["loss"])
            if not math.isfinite(loss):
                raise TrainingDiverged(
                    f"{desc}: loss is {loss} at step {step + 1}; the last good checkpoint "
                    f"(step {manager.latest_step() if manager else None}) is kept in "
                    f"{checkpoint_dir}"
                )
            bar.set_postfix(loss=f"{loss:.4f}")
            done = step + 1
            if done % cfg.eval_every == 0 or done == steps:
                entry = {"step": done, "loss": loss}
                if eval_fn is not None:
                    reward = float(eval_fn(state.params))
                    entry["reward"] = reward
                    if best_reward is None or reward > best_reward:
                        best_params, best_step, best_reward = _copy(state.params), done, reward
                else:
                    best_params, best_step = _copy(state.params), done
                history.append(entry)
                if manager is not None:
                    save(done)
                if reached(entry.get("reward")):
                    break
        bar.close()
        # A request that came during the last step: its checkpoint is already written,
        # and the caller must still stop (the handler left that to this loop).
        stop_if_preempted(steps)
    finally:
        _ACTIVE_FITS[0] -= 1
        if manager is not None:
            manager.close()
    return FitResult(best_params, best_step, best_reward, history)
