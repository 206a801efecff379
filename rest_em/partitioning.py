"""Meshes and the ONE table that maps logical axis names to mesh axes.

Every parameter and key activation in `rest_em.model` is annotated with logical
axis names ("embed", "heads", ...). This module is the only place that decides how
those names land on devices, t5x style: change `LOGICAL_AXIS_RULES` (or pass your
own rules) and the model, the sampler and the trainer all follow.

Mesh axes:
  data   - pure data parallelism: batch rows split, parameters replicated.
  fsdp   - batch rows split AND parameters sharded along "embed" (ZeRO-3 style).
  tensor - Megatron-style tensor parallelism over heads / mlp / vocab.

A logical axis whose size does not divide evenly over its mesh axes is left
unsharded (replicated) instead of failing deep inside XLA; a 2-kv-head model on a
4-way tensor axis still runs, with the kv projections replicated.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from collections.abc import Iterator, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MESH_AXES: tuple[str, ...] = ("data", "fsdp", "tensor")

LogicalAxes = tuple[str | None, ...]
Rules = Sequence[tuple[str, str | tuple[str, ...] | None]]

# The one table. Batch-like axes split over data and fsdp; weights split over fsdp
# (their "embed" dimension) and tensor (heads / mlp / vocab).
LOGICAL_AXIS_RULES: Rules = (
    ("batch", ("data", "fsdp")),
    ("cache_batch", ("data", "fsdp")),
    ("length", None),
    ("cache_length", None),
    ("embed", "fsdp"),
    ("act_embed", None),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("act_heads", "tensor"),
    ("act_kv_heads", "tensor"),
    ("head_dim", None),
    ("mlp", "tensor"),
    ("act_mlp", "tensor"),
    ("vocab", "tensor"),
    ("act_vocab", "tensor"),
    ("norm", None),
)


def make_mesh(
    data: int = -1,
    fsdp: int = 1,
    tensor: int = 1,
    *,
    devices: Sequence[jax.Device] | None = None,
) -> Mesh:
    """Builds a (data, fsdp, tensor) mesh; `data=-1` takes all remaining devices."""
    devices = list(jax.devices() if devices is None else devices)
    n = len(devices)
    if data == -1:
        if n % (fsdp * tensor):
            raise ValueError(
                f"{n} devices cannot be split into fsdp={fsdp} x tensor={tensor}"
            )
        data = n // (fsdp * tensor)
    if data * fsdp * tensor != n:
        raise ValueError(
            f"mesh data={data} x fsdp={fsdp} x tensor={tensor} = {data * fsdp * tensor}"
            f" does not match the {n} available devices"
        )
    # Auto axes: sharding is decided by the rules and XLA, as in t5x (jax 0.10's
    # make_mesh defaults to Explicit axes, which changes the semantics of indexing).
    axis_types = (jax.sharding.AxisType.Auto,) * len(MESH_AXES)
    if devices == list(jax.devices()):
        return jax.make_mesh((data, fsdp, tensor), MESH_AXES, axis_types=axis_types)
    return Mesh(np.asarray(devices).reshape(data, fsdp, tensor), MESH_AXES, axis_types=axis_types)


def logical_to_spec(
    logical_axes: LogicalAxes,
    shape: Sequence[int] | None = None,
    mesh: Mesh | None = None,
    rules: Rules = LOGICAL_AXIS_RULES,
) -> PartitionSpec:
    """Maps logical axis names to a PartitionSpec using `rules`.

    With `shape` and `mesh`, a dimension that does not divide evenly over its mesh
    axes (or whose mesh axes are already used by an earlier dimension) is replicated.
    """
    table = dict(rules)
    used: set[str] = set()
    out: list[Any] = []
    for dim, name in enumerate(logical_axes):
        target = table.get(name) if name is not None else None
        if name is not None and name not in table:
            raise KeyError(f"logical axis {name!r} has no rule in the partitioning table")
        if target is None:
            out.append(None)
            continue
        axes = (target,) if isinstance(target, str) else tuple(target)
        if mesh is not None:
            axes = tuple(a for a in axes if mesh.shape.get(a, 1) > 1)
        axes = tuple(a for a in axes if a not in used)
        if shape is not None and mesh is not None and axes:
            size = math.prod(mesh.shape[a] for a in axes)
            if shape[dim] % size:
                axes = ()
        used.update(axes)
        out.append(None if not axes else axes[0] if len(axes) == 1 else axes)
    return PartitionSpec(*out)


def logical_to_sharding(
    logical_axes: LogicalAxes,
    shape: Sequence[int],
    mesh: Mesh,
    rules: Rules = LOGICAL_AXIS_RULES,
) -> NamedSharding:
    """A NamedSharding for one array of `shape` annotated with `logical_axes`."""
    return NamedSharding(mesh, logical_to_spec(logical_axes, shape, mesh, rules))


def tree_shardings(
    abstract_tree: Any,
    logical_axes_tree: Any,
    mesh: Mesh,
    rules: Rules = LOGICAL_AXIS_RULES,
) -> Any:
    """NamedShardings for a pytree of arrays / ShapeDtypeStructs and matching axes."""
    return jax.tree.map(
        lambda x, axes: logical_to_sharding(axes, x.shape, mesh, rules),
        abstract_tree,
        logical_axes_tree,
        is_leaf=lambda x: isinstance(x, tuple) and all(
            a is None or isinstance(a, str) for a in x
        ),
    )


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


# --- activation constraints -------------------------------------------------
# The model calls `constrain(x, axes)` on key activations. Outside a
# `activation_sharding(...)` block that is the identity, so single-device users and
# notebooks never think about meshes.

_ACTIVE: contextvars.ContextVar[tuple[Mesh, Rules] | None] = contextvars.ContextVar(
    "rest_em_activation_sharding", default=None
)


@contextlib.contextmanager
def activation_sharding(mesh: Mesh, rules: Rules = LOGICAL_AXIS_RULES) -> Iterator[None]:
    """Within this block (while tracing), `constrain` pins activations to `mesh`."""
    token = _ACTIVE.set((mesh, rules))
    try:
        yield
    finally:
        _ACTIVE.reset(token)


def constrain(x: jax.Array, logical_axes: LogicalAxes) -> jax.Array:
    """Sharding constraint by logical names; identity when no mesh is active."""
    active = _ACTIVE.get()
    if active is None:
        return x
    mesh, rules = active
    if mesh.size == 1:
        return x
    return jax.lax.with_sharding_constraint(
        x, logical_to_sharding(logical_axes, x.shape, mesh, rules)
    )


def batch_multiple(mesh: Mesh, rules: Rules = LOGICAL_AXIS_RULES) -> int:
    """How many ways the "batch" axis splits: batches are padded to a multiple of it."""
    target = dict(rules).get("batch")
    if target is None:
        return 1
    axes = (target,) if isinstance(target, str) else tuple(target)
    return math.prod(mesh.shape.get(a, 1) for a in axes)
