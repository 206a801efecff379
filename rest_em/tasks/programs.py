"""Code tasks' reward: the program in a completion, run by the sandbox against its tests.

    scorer = ProgramScorer(SandboxConfig(time_limit_s=3.0))
    statuses = scorer(programs, tests)        # one Status per (program, tests) pair
    scorer.take_stats()                       # programs, distinct runs, seconds, isolation

`extract_program` finds the program a model wrote (a fenced block if there is one, else
the text before the task's end marker); a completion with none is NO_ANSWER, never run.
Within one call, identical (tests, program) pairs are run once (a model often samples the
same program many times). Programs run in the `rest_em.rewards.code.Sandbox` workers,
never in this process; a degraded sandbox (no network namespace, no Landlock, no PID
namespace) is reported in the stats and, with `require_isolation`, is an error.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import threading
import time
from collections.abc import Sequence
from typing import Any

from rest_em.errors import ConfigError
from rest_em.rewards import _pool
from rest_em.rewards.status import Status

__all__ = [
    "ProgramScorer",
    "SandboxConfig",
    "SandboxNotIsolated",
    "extract_program",
    "missing_isolation",
]

_FENCE = re.compile(r"```[ \t]*(?:python3?|py)?[ \t]*\n(.*?)(?:```|\Z)", re.S | re.I)


def extract_program(completion: str, *, end_markers: Sequence[str] = ()) -> str | None:
    """The program in a completion: the first fenced code block (```python ... ```) if
    there is one, else the text before the first end marker (MBPP's "[DONE]"); None
    when that is blank."""
    m = _FENCE.search(completion)
    text = m.group(1) if m else completion
    for marker in end_markers:
        text = text.split(marker, 1)[0]
    return text if text.strip() else None


@dataclasses.dataclass(frozen=True)
class SandboxConfig:
    """How code tasks run programs (`rest_em.rewards.code.run_tests`' limits, per run).

    max_workers: parallel checker workers (None: one per CPU). require_isolation: a
    sandbox without network namespace, Landlock or PID namespace is an error
    (`SandboxNotIsolated`) instead of a warning and a metric (also set for every task
    by REST_EM_REQUIRE_ISOLATION=1, which `python -m rest_em.main --require_isolation`
    sets).
    """

    time_limit_s: float = 3.0
    memory_mb: int = 512
    max_processes: int = 16
    max_workers: int | None = None
    require_isolation: bool = False

    def limits(self) -> dict[str, Any]:
        return {
            "time_limit_s": self.time_limit_s,
            "memory_mb": self.memory_mb,
            "max_processes": self.max_processes,
        }


class SandboxNotIsolated(ConfigError):
    """require_isolation is set and the sandbox lacks a confinement feature."""


def missing_isolation(isolation: Sequence[str]) -> list[str]:
    """The confinement features a full sandbox has and `isolation` lacks."""
    missing = [f for f in ("netns", "pidns") if f not in isolation]
    if not any(f.startswith("landlock") for f in isolation):
        missing.append("landlock")
    return missing


class ProgramScorer:
    """Scores (program, tests) pairs in a sandbox, each distinct pair once per call.

    Thread-safe (the E-step scores one chunk in a background thread while the sampler
    runs the next). The Sandbox starts on first use and is shared by every task made
    with the same SandboxConfig in this process.
    """

    def __init__(self, config: SandboxConfig | None = None):
        self.config = config or SandboxConfig()
        self._lock = threading.Lock()
        self._stats = _zero_stats()

    def __call__(self, programs: Sequence[str | None], tests: Sequence[Any]) -> list[Status]:
        if len(programs) != len(tests):
            raise ValueError(f"{len(programs)} programs but {len(tests)} tests")
        distinct: dict[tuple[str, str], int] = {}
        jobs: list[tuple[str, Any]] = []
        index = []
        for prog, t in zip(programs, tests):
            if prog is None:
                index.append(None)
                continue
            key = (_tests_key(t), prog)
            if key not in distinct:
                distinct[key] = len(jobs)
                jobs.append((prog, t))
            index.append(distinct[key])
        t0 = time.monotonic()
        verdicts = (
            _sandbox(self.config).run_batch(
                [p for p, _ in jobs], [t for _, t in jobs], **self.config.limits()
            )
            if jobs
            else []
        )
        seconds = time.monotonic() - t0
        isolation = next((v.isolation for v in verdicts if v.isolation), None)
        if isolation is not None and self.require_isolation:
            missing = missing_isolation(isolation)
            if missing:
                raise SandboxNotIsolated(
                    "require_isolation is set, but the code sandbox on this machine has no "
                    + ", ".join(missing)
                    + " (unprivileged user namespaces and Landlock are needed; see "
                    "rest_em.rewards.code)"
                )
        with self._lock:
            s = self._stats
            s["programs"] += len(programs)
            s["no_program"] += index.count(None)
            s["runs"] += len(jobs)
            s["seconds"] += seconds
            if isolation is not None:
                s["isolation"] = ",".join(isolation)
        return [Status.NO_ANSWER if i is None else verdicts[i].reward_status for i in index]

    @property
    def require_isolation(self) -> bool:
        """The config's, or REST_EM_REQUIRE_ISOLATION=1 (the launcher's --require_isolation)."""
        return self.config.require_isolation or os.environ.get("REST_EM_REQUIRE_ISOLATION") == "1"

    def take_stats(self) -> dict[str, Any]:
        """The counters since the last call: programs scored, with no program, distinct
        runs, seconds in the sandbox, the isolation in effect ("" before any run)."""
        with self._lock:
            out, self._stats = self._stats, _zero_stats()
        return out


def _zero_stats() -> dict[str, Any]:
    return {"programs": 0, "no_program": 0, "runs": 0, "seconds": 0.0, "isolation": ""}


def _tests_key(tests: Any) -> str:
    d = dataclasses.asdict(tests) if dataclasses.is_dataclass(tests) else tests
    return json.dumps(d, sort_keys=True, default=repr)


def _sandbox(config: SandboxConfig):
    """The process's shared Sandbox (`rest_em.rewards.code`'s default: one worker per
    CPU), or one with `config.max_workers` (made again after a fork)."""
    from rest_em.rewards import code

    if config.max_workers is None:
        return code._get_default()
    return _SIZED.get(config.max_workers, reuse=lambda s: s.max_workers == config.max_workers)


def _make_sandbox(max_workers: int):
    from rest_em.rewards import code

    return code.Sandbox(max_workers=max_workers)


def _close_sandbox(sandbox) -> None:
    sandbox.close()


_SIZED = _pool.PerProcess(_make_sandbox, _close_sandbox)
