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

Multi-host (one process per host, `initialize_distributed` first): `make_mesh` spans
every process's devices (`jax.devices()` is global); `to_global` / `to_host` move
identical host data in and out of arrays on such a mesh, `agree` / `sync` keep the
processes' control flow and files consistent, `split_over_processes` shares host work.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
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
    """Builds a (data, fsdp, tensor) mesh; `data=-1` takes all remaining devices.

    The devices default to `jax.devices()`: with several processes, all of them."""
    devices = list(jax.devices() if devices is None else devices)
    n = len(devices)
    if data == -1:
        if n % (fsdp * tensor):
            raise ValueError(f"{n} devices cannot be split into fsdp={fsdp} x tensor={tensor}")
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
        is_leaf=lambda x: isinstance(x, tuple) and all(a is None or isinstance(a, str) for a in x),
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


# --- multi-host ---------------------------------------------------------------
# JAX's multi-controller model: every process runs the same program on the same host
# data (SPMD); jitted computations over a mesh of ALL processes' devices exchange data
# through collectives. These helpers move host data in and out of such global arrays
# and let processes agree on decisions (does a file exist?) and share host work (the
# reward checker). On one process every one of them is the identity / a no-op.


def initialize_distributed(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    local_device_ids: Sequence[int] | None = None,
    initialization_timeout: int = 300,
) -> None:
    """Starts JAX's distributed runtime; call once per process, before any other JAX use.

    Without arguments `jax.distributed.initialize` detects the cluster itself (Cloud
    TPU pod slices, SLURM, Open MPI; `JAX_COORDINATOR_ADDRESS` / `JAX_COORDINATOR_PORT` /
    `JAX_LOCAL_DEVICE_IDS` override parts of it); elsewhere give the coordinator
    (process 0's `host:port`), the number of processes and this process's id. CPU
    collectives across processes go through gloo, which must be chosen first.
    """
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address,
        num_processes,
        process_id,
        local_device_ids=local_device_ids,
        initialization_timeout=initialization_timeout,
    )


def is_multiprocess() -> bool:
    return jax.process_count() > 1


def is_main_process() -> bool:
    """Process 0: the one that writes the run's files (metrics, samples, markers)."""
    return jax.process_index() == 0


def sync(name: str) -> None:
    """A barrier across processes (e.g. after process 0 wrote a file the others read)."""
    if is_multiprocess():
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def agree(value: bool) -> bool:
    """Process 0's `value` on every process: one decision for control flow that must be
    identical everywhere (`agree(path.exists())` on a shared workdir)."""
    if not is_multiprocess():
        return bool(value)
    from jax.experimental import multihost_utils

    return bool(multihost_utils.broadcast_one_to_all(np.asarray(int(bool(value)), np.int32)))


def process_slice(n: int) -> slice:
    """This process's contiguous share of `n` items (process-major: shares in order)."""
    per = -(-n // jax.process_count())
    start = min(jax.process_index() * per, n)
    return slice(start, min(start + per, n))


def allgather_strings(items: Sequence[str]) -> list[str]:
    """Every process's `items` (any lengths), concatenated in process order."""
    if not is_multiprocess():
        return list(items)
    from jax.experimental import multihost_utils

    blob = np.frombuffer(json.dumps(list(items)).encode(), np.uint8)
    sizes = np.asarray(multihost_utils.process_allgather(np.asarray([blob.size], np.int64)))
    padded = np.zeros((int(sizes.max()),), np.uint8)
    padded[: blob.size] = blob
    blobs = np.asarray(multihost_utils.process_allgather(padded))
    out: list[str] = []
    for size, row in zip(sizes.reshape(-1), blobs):
        out.extend(json.loads(row[: int(size)].tobytes().decode()))
    return out


def split_over_processes(fn):
    """`fn(items...) -> list` (per-item results, e.g. a reward checker) evaluated with
    each process doing its `process_slice` of the items; every process gets all the
    results in order, identical to `fn` on one process. Results must be JSON values."""

    def wrapped(*columns: Sequence[Any]) -> list:
        if not is_multiprocess():
            return list(fn(*columns))
        n = len(columns[0])
        part = process_slice(n)
        mine = list(fn(*(list(c)[part] for c in columns))) if part.stop > part.start else []
        out = [json.loads(s) for s in allgather_strings([json.dumps(r) for r in mine])]
        if len(out) != n:
            raise RuntimeError(f"split_over_processes: gathered {len(out)} results for {n} items")
        return out

    return wrapped


def to_global(tree: Any, shardings: Any) -> Any:
    """Host arrays that are IDENTICAL on every process -> global arrays in `shardings`
    (a tree like `tree`, or one sharding). Needed when a mesh spans processes: jit does
    not accept numpy inputs for shardings that other processes' devices hold."""
    if not is_multiprocess():
        return tree
    return jax.device_put(tree, shardings)


def to_host(tree: Any) -> Any:
    """Arrays -> numpy; arrays spread over several processes are all-gathered first, so
    every process gets the full value."""
    if not is_multiprocess():
        return jax.device_get(tree)
    from jax.experimental import multihost_utils

    def one(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return np.asarray(multihost_utils.process_allgather(x, tiled=True))
        return np.asarray(jax.device_get(x))

    return jax.tree.map(one, tree)
