"""Every path of a run, and the one way a unit of work is done: skip, or compute and commit.

  workdir/fingerprint.json             what determines the results (rest_em.fingerprint)
  workdir/fingerprint_history.jsonl    accepted changes (--on_config_change=continue)
  workdir/config.gin, operative_config.gin   the launcher's config in effect
  workdir/base/                        the base params (orbax)
  workdir/iter_NNN/samples/shard_*     E-step samples with rewards, one file per chunk
  workdir/iter_NNN/samples/manifest.json
  workdir/iter_NNN/rationalized/shard_*   STaR's hinted re-samples
  workdir/iter_NNN/selected.jsonl      the M-step dataset
  workdir/iter_NNN/step_dataset.jsonl  per-step negatives' rollouts (+ step_pairs.jsonl)
  workdir/iter_NNN/mstep/, dpo/        resumable M-step checkpoints (orbax)
  workdir/iter_NNN/params/             the iteration's model (orbax)
  workdir/iter_NNN/mstep.json          the M-step's metrics: marks params/ complete
  workdir/iter_NNN/eval_<split>.json   evaluation results (transfer: eval_<task>.test.json)
  workdir/iter_NNN/metrics.json        the iteration's metrics: its completion marker
  workdir/metrics.jsonl, tensorboard/, accuracy.png   rebuilt from the markers

A unit (`unit`) is skipped when its file exists; otherwise it is computed, written
atomically (temp file, fsync, rename) and read back, so a run killed at any moment (even
`kill -9`) continues from the last committed unit and a resumed run sees exactly what a
fresh one does. Multi-host: whether a unit exists is process 0's answer, broadcast; only
process 0 writes files (orbax checkpoints are written by every process); a barrier
precedes every read-back.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import shutil
from collections.abc import Callable, Sequence
from typing import Any

from rest_em import partitioning


@dataclasses.dataclass(frozen=True)
class IterationPaths:
    """The files of one EM iteration (iteration 0 evaluates the base model)."""

    dir: pathlib.Path

    @property
    def number(self) -> int:
        return int(self.dir.name.split("_")[-1])

    samples = property(lambda self: self.dir / "samples")
    manifest = property(lambda self: self.dir / "samples" / "manifest.json")
    rationalized = property(lambda self: self.dir / "rationalized")
    selected = property(lambda self: self.dir / "selected.jsonl")
    step_dataset = property(lambda self: self.dir / "step_dataset.jsonl")
    step_pairs = property(lambda self: self.dir / "step_pairs.jsonl")
    mstep_checkpoints = property(lambda self: self.dir / "mstep")
    dpo_checkpoints = property(lambda self: self.dir / "dpo")
    params = property(lambda self: self.dir / "params")
    adapter = property(lambda self: self.dir / "adapter")  # FitConfig.lora: PEFT files
    mstep = property(lambda self: self.dir / "mstep.json")
    marker = property(lambda self: self.dir / "metrics.json")

    def eval(self, split: str) -> pathlib.Path:
        """A split's evaluation; a transfer task's `<task>/test` -> eval_<task>.test.json."""
        return self.dir / f"eval_{split.replace('/', '.')}.json"


@dataclasses.dataclass(frozen=True)
class RunPaths:
    """The files of a run: `RunPaths(workdir).iteration(i)` for an iteration's."""

    root: pathlib.Path

    def __post_init__(self):
        object.__setattr__(self, "root", pathlib.Path(self.root))

    base = property(lambda self: self.root / "base")
    fingerprint = property(lambda self: self.root / "fingerprint.json")
    fingerprint_history = property(lambda self: self.root / "fingerprint_history.jsonl")
    config = property(lambda self: self.root / "config.gin")
    operative_config = property(lambda self: self.root / "operative_config.gin")
    metrics = property(lambda self: self.root / "metrics.jsonl")
    tensorboard = property(lambda self: self.root / "tensorboard")
    plot = property(lambda self: self.root / "accuracy.png")

    def iteration(self, it: int) -> IterationPaths:
        return IterationPaths(self.root / f"iter_{it:03d}")

    def model(self, it: int) -> pathlib.Path:
        """The params after iteration `it` (iteration 0 evaluates the base: its params)."""
        return self.base if it == 0 else self.iteration(it).params

    def completed(self) -> list[IterationPaths]:
        """Iterations with a completion marker, in order."""
        return [IterationPaths(p.parent) for p in sorted(self.root.glob("iter_*/metrics.json"))]


def shard(shard_dir: pathlib.Path, index: int) -> pathlib.Path:
    """The `index`-th chunk of a sharded unit (E-step samples, rationalized samples)."""
    return shard_dir / f"shard_{index:05d}.jsonl"


# --- atomic files ---------------------------------------------------------------------


def write_atomic(path: pathlib.Path, text: str | bytes, *, all_processes: bool = False) -> None:
    """Writes `path` (temp file, fsync, rename): a reader sees the old file or the whole
    new one, even after a crash. With several processes only process 0 writes, unless
    `all_processes` (then each writes its own path)."""
    if not all_processes and not partitioning.is_main_process():
        return
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with tmp.open("wb") as f:
        f.write(text.encode("utf-8") if isinstance(text, str) else text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_json(path: pathlib.Path, obj: Any) -> None:
    write_atomic(path, json.dumps(obj, indent=1, sort_keys=True) + "\n")


def read_json(path: pathlib.Path) -> Any:
    return json.loads(pathlib.Path(path).read_text(encoding="utf-8"))


def write_jsonl(path: pathlib.Path, rows: Sequence[dict]) -> None:
    write_atomic(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))


def read_jsonl(path: pathlib.Path) -> list[dict]:
    with pathlib.Path(path).open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


# --- units of work --------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Codec:
    """How a unit's value is written to and read from its path. `every_process` writers
    (orbax) run on every process; the others on process 0 only."""

    write: Callable[[pathlib.Path, Any], None]
    read: Callable[[pathlib.Path], Any]
    every_process: bool = False


JSON = Codec(write_json, read_json)
JSONL = Codec(write_jsonl, read_jsonl)


def params_codec(abstract: Any) -> Codec:
    """Orbax params restored into `abstract`'s shapes (and shardings). A stale orbax temp
    dir or a half-written one is removed before saving: orbax renames into place only
    once a checkpoint is complete, so an existing `path` is always whole."""
    from rest_em import checkpoints

    def write(path: pathlib.Path, params: Any) -> None:
        if partitioning.is_main_process() and path.exists():
            shutil.rmtree(path)
        partitioning.sync(f"rest_em: remove {path}")
        checkpoints.save_params(path, params)

    return Codec(
        write, lambda path: checkpoints.restore_params(path, abstract=abstract), every_process=True
    )


def exists(path: pathlib.Path) -> bool:
    """Whether a unit is done: process 0's answer on every process."""
    return partitioning.agree(pathlib.Path(path).exists())


def unit(path: pathlib.Path, compute: Callable[[], Any], codec: Codec = JSON) -> Any:
    """The value of the unit at `path`: read back if done, else computed, committed
    atomically, then read back (so a fresh and a resumed run see the same value)."""
    if not exists(path):
        codec.write(path, compute())
        partitioning.sync(f"rest_em: wrote {path}")
    return codec.read(path)


__all__ = [
    "Codec",
    "IterationPaths",
    "JSON",
    "JSONL",
    "RunPaths",
    "exists",
    "params_codec",
    "read_json",
    "read_jsonl",
    "shard",
    "unit",
    "write_atomic",
    "write_json",
    "write_jsonl",
]
