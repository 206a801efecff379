"""What determines a run's results, recorded in its workdir, so a resume never mixes two.

A fingerprint is a flat {name: value} dict of JSON values:

  config.<binding>  the config in effect: every gin binding (the launcher), or the
                    EMConfig's fields (a direct `em.run` call)
  model.<field>     the resolved ModelConfig (a Hugging Face config.json included)
  data.<split>      a content hash of each split's problems and prompts
  data.file:<path>  a content hash of each data file the task reads (`Task.data_files`)
  task.*            its name and stop sequences
  tokenizer.*       the tokenizer's type, ids and (Hugging Face) file hash
  teacher.*         distillation: the teacher's model and a checksum of its params
  rest_em.version

The first run writes workdir/fingerprint.json. A rerun computes its own and `check`
compares them before anything is done or written: equal, or only extended (more
`num_iterations`, more evaluation splits), goes on; any other difference stops the run
(`errors.WorkdirConflict`, exit 2) naming each differing value, old -> new, unless
`on_config_change="continue"`, which records the change in fingerprint_history.jsonl.
"""

from __future__ import annotations

import ast
import dataclasses
import hashlib
import json
import pathlib
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from rest_em import errors, partitioning
from rest_em import workdir as workdir_lib

ON_CONFIG_CHANGE = ("refuse", "continue")
_EXTENDABLE = ("EMConfig.num_iterations", "EMConfig.eval_splits")  # (binding suffixes)
# Knobs of how samples are computed, not which: left out, so a workdir resumes with
# another value (continuous batching gives the static sampler's tokens, tested).
_ENGINE = ("EMConfig.decode_slots",)


def _jsonable(x: Any) -> Any:
    """Dataclasses as dicts, tuples as lists: what a JSON round trip gives back."""
    return json.loads(
        json.dumps(
            x, default=lambda o: dataclasses.asdict(o) if dataclasses.is_dataclass(o) else repr(o)
        )
    )


def flatten(prefix: str, obj: Any) -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"<prefix>.a.b": 1} (dataclasses as dicts)."""
    obj = _jsonable(obj)
    if not isinstance(obj, dict):
        return {prefix: obj}
    out: dict[str, Any] = {}
    for k, v in obj.items():
        out.update(flatten(f"{prefix}.{k}", v) if isinstance(v, dict) else {f"{prefix}.{k}": v})
    return out


def gin_bindings(config_str: str) -> dict[str, str]:
    """Every binding of a gin config (`gin.config_str()`) as `config.<scope/name.param>`
    -> the value's text; ModelConfig's bindings are left to `model.*` (the resolved
    config, which also covers a config read from a checkpoint)."""
    import gin
    from gin import config_parser

    out = {}
    for st in config_parser.ConfigParser(config_str, gin.config.ParserDelegate(skip_unknown=True)):
        if not isinstance(st, config_parser.BindingStatement):
            continue
        name = (f"{st.scope}/" if st.scope else "") + st.selector
        if st.arg_name:
            name += f".{st.arg_name}"
        if st.selector.split(".")[-1] == "ModelConfig":
            continue
        out[f"config.{name}"] = repr(st.value)
    return out


def file_hash(path: str | pathlib.Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def problems_hash(problems: Iterable[Any], prompt: Any) -> str:
    """A content hash of problems (every field) and their prompts."""
    h = hashlib.sha256()
    for p in problems:
        row = _jsonable(p)
        if row.get("tests") is None:  # as before Problem had tests: old workdirs still match
            row.pop("tests", None)
        h.update(json.dumps([row, prompt(p)], sort_keys=True).encode())
    return h.hexdigest()[:16]


def params_checksum(params: Any) -> str:
    """A cheap content checksum of a params pytree (sums of each leaf, float64)."""
    import jax
    import numpy as np

    leaves = jax.tree.leaves(partitioning.to_host(params))
    sums = [float(np.asarray(x, np.float64).sum()) for x in leaves]
    return hashlib.sha256(json.dumps(sums).encode()).hexdigest()[:16]


def of_run(
    *,
    cfg: Any,
    model_cfg: Any,
    task: Any,
    tokenizer: Any,
    splits: Mapping[str, Sequence[Any]],
    teacher: Any = None,
    config: Mapping[str, Any] | None = None,
    mesh: Any = None,
    transfer: Mapping[str, tuple[Any, Sequence[Any]]] | None = None,
) -> dict[str, Any]:
    """The fingerprint of an `em.run` call; `config` (the launcher's gin bindings,
    `gin_bindings`) replaces the EMConfig's fields. `mesh` and the decoding engine's
    slots are not part of it: a run gives the same results on any mesh and any number
    of slots, so a workdir may be resumed on another one."""
    del mesh
    from rest_em import __version__

    fp: dict[str, Any] = {"rest_em.version": __version__}
    fp.update(config if config is not None else flatten("config.EMConfig", cfg))
    fp.update(flatten("model", model_cfg))
    fp["task.name"] = task.name
    fp["task.stop_sequences"] = list(getattr(task, "stop_sequences", ()))
    for split, problems in splits.items():
        fp[f"data.{split}"] = problems_hash(problems, task.prompt)
    for path in getattr(task, "data_files", ()) or ():
        fp[f"data.file:{path}"] = file_hash(path)
    for name, (t, problems) in (transfer or {}).items():  # evaluated only: may be added
        fp[f"transfer.{name}.data"] = problems_hash(problems, t.prompt)
        fp[f"transfer.{name}.stop_sequences"] = list(t.stop_sequences)
        for path in t.data_files:
            fp[f"transfer.{name}.file:{path}"] = file_hash(path)
    fp["tokenizer.type"] = type(tokenizer).__name__
    for attr in ("vocab_size", "bos_id", "eos_id", "pad_id"):
        fp[f"tokenizer.{attr}"] = getattr(tokenizer, attr, None)
    if getattr(tokenizer, "path", None) is not None:
        fp["tokenizer.file"] = file_hash(tokenizer.path)
    if teacher is not None:
        fp.update(flatten("teacher.model", teacher.model_cfg))
        fp["teacher.params"] = params_checksum(teacher.params)
    return {k: v for k, v in _jsonable(fp).items() if not k.endswith(_ENGINE)}


def _literal(v: Any) -> Any:
    if isinstance(v, str):
        try:
            return ast.literal_eval(v)
        except (ValueError, SyntaxError):
            return v
    return v


def _is_extension(key: str, old: Any, new: Any) -> bool:
    """More iterations, more evaluation splits or transfer tasks (and their data): a run
    may grow."""
    if key.startswith(("data.", "transfer.")) and old is None:
        return True
    if key.endswith(".transfer_tasks"):  # gin: a list of @task() references
        return _transfer_refs({key: old}) <= _transfer_refs({key: new})
    if not key.endswith(_EXTENDABLE):
        return False
    old, new = _literal(old), _literal(new)
    if key.endswith("num_iterations"):
        return isinstance(old, int) and isinstance(new, int) and new >= old
    return (
        isinstance(old, (list, tuple)) and isinstance(new, (list, tuple)) and set(old) <= set(new)
    )


def _new_model_field_at_default(key: str, old: Mapping[str, Any], value: Any) -> bool:
    """A ModelConfig field that a later rest_em added, at its default: the model an older
    workdir recorded computes exactly this (so upgrading never orphans a workdir)."""
    if key in old or not key.startswith(("model.", "teacher.model.")):
        return False
    from rest_em.model import ModelConfig

    defaults = {f.name: f.default for f in dataclasses.fields(ModelConfig)}
    name = key.rsplit(".", 1)[-1]
    return name in defaults and _jsonable(defaults[name]) == value


def differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    """(changes, extensions), each a list of "name: old -> new" lines."""
    changes, extensions = [], []
    added = _added_transfer_tasks(old, new)
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if a == b or (key.startswith("data.") and b is None):  # a split not evaluated now
            continue
        if _new_model_field_at_default(key, old, b):
            continue
        line = (
            f"{key}: {'(unset)' if key not in old else json.dumps(a)} -> "
            f"{'(unset)' if key not in new else json.dumps(b)}"
        )
        # A transfer task added now: the bindings of its configurable are new, not changes.
        new_binding = key not in old and key.rsplit(".", 2)[-2].split("/")[-1] in added
        (extensions if new_binding or _is_extension(key, a, b) else changes).append(line)
    return changes, extensions


def _transfer_refs(fp: Mapping[str, Any]) -> set[str]:
    """The configurables a fingerprint's `transfer_tasks` binding names (`@a.b()` -> b)."""
    values = [v for k, v in fp.items() if k.endswith(".transfer_tasks")]
    return {r.split(".")[-1] for v in values for r in re.findall(r"@([\w./]+)", str(v))}


def _added_transfer_tasks(old: Mapping[str, Any], new: Mapping[str, Any]) -> set[str]:
    return _transfer_refs(new) - _transfer_refs(old)


def check(
    paths: workdir_lib.RunPaths, new: Mapping[str, Any], *, on_config_change: str = "refuse"
) -> None:
    """Records `new` in a fresh workdir; in a used one, refuses a different config (see
    the module docstring). Raises before anything is written."""
    if on_config_change not in ON_CONFIG_CHANGE:
        raise errors.ConfigError(
            f"on_config_change={on_config_change!r}; expected one of {ON_CONFIG_CHANGE}"
        )
    path = paths.fingerprint
    if not workdir_lib.exists(path):
        used = sorted(p.name for p in paths.root.glob("iter_*")) if paths.root.exists() else []
        if used and on_config_change == "refuse":  # written by a rest_em without fingerprints
            raise errors.WorkdirConflict(
                f"{paths.root} holds iterations ({', '.join(used[:3])}...) but no "
                "fingerprint.json: it was written by an older rest_em and its config cannot "
                "be checked. Use a new --workdir, or pass --on_config_change=continue to "
                "adopt it with the current config."
            )
        if used:
            _record(paths, ["(no fingerprint) -> adopted with the current config"], [])
        workdir_lib.write_json(path, {"fingerprint": dict(new)})
        return
    old = workdir_lib.read_json(path)["fingerprint"]
    changes, extensions = differences(old, new)
    if changes and on_config_change == "refuse":
        raise errors.WorkdirConflict(
            f"{paths.root} holds results of another configuration; these values differ "
            f"(recorded -> now): {'; '.join(changes)}. Use a new --workdir, or pass "
            "--on_config_change=continue to keep this workdir's finished units and go on "
            "with the new values (recorded in fingerprint_history.jsonl)."
        )
    if changes or extensions:
        _record(paths, changes, extensions)
        workdir_lib.write_json(path, {"fingerprint": dict(new)})


def _record(paths: workdir_lib.RunPaths, changes: list[str], extensions: list[str]) -> None:
    """Appends a change of config to the workdir's fingerprint_history.jsonl."""
    path = paths.fingerprint_history
    history = workdir_lib.read_jsonl(path) if path.exists() else []
    when = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    history.append({"time": when, "changes": changes, "extensions": extensions})
    workdir_lib.write_jsonl(path, history)


__all__ = [
    "ON_CONFIG_CHANGE",
    "check",
    "differences",
    "file_hash",
    "flatten",
    "gin_bindings",
    "of_run",
    "params_checksum",
    "problems_hash",
]
