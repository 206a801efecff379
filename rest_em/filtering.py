"""The filter between E- and M-step: keep verified samples, cap them per problem.

Deterministic: which samples are kept depends only on the seed and the samples'
(problem_id, sample_index), never on their order, batching or sharding.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections import defaultdict
from collections.abc import Iterable


@dataclasses.dataclass(frozen=True)
class Sample:
    """One sampled solution with its reward (1.0 = verified correct)."""

    problem_id: int
    sample_index: int
    prompt: str
    completion: str
    reward: float


@dataclasses.dataclass(frozen=True)
class SelectionStats:
    num_samples: int
    num_positive: int
    num_selected: int
    num_problems: int
    num_problems_solved: int  # problems with at least one kept sample
    num_duplicates_dropped: int


def _rank(seed: int, s: Sample) -> bytes:
    """A stable pseudo-random rank (Python's hash() is salted per process)."""
    return hashlib.blake2b(
        f"{seed}/{s.problem_id}/{s.sample_index}".encode(), digest_size=16
    ).digest()


def _normalized(text: str) -> str:
    return " ".join(text.split())


def select_with_stats(
    samples: Iterable[Sample],
    *,
    max_per_problem: int | None = 10,
    seed: int,
    min_reward: float = 1.0,
    dedup: bool = False,
) -> tuple[list[Sample], SelectionStats]:
    """Samples with reward >= min_reward, at most `max_per_problem` per problem.

    dedup drops repeated completions of a problem (whitespace-normalised) before the cap;
    when a problem has more candidates than the cap, a seeded ranking picks them. The
    result is sorted by (problem_id, sample_index).
    """
    samples = list(samples)
    by_problem: dict[int, list[Sample]] = defaultdict(list)
    problems = set()
    positives = 0
    for s in samples:
        problems.add(s.problem_id)
        if s.reward >= min_reward:
            positives += 1
            by_problem[s.problem_id].append(s)
    kept: list[Sample] = []
    dropped = 0
    for cands in by_problem.values():
        cands.sort(key=lambda s: s.sample_index)
        if dedup:
            seen, unique = set(), []
            for s in cands:
                key = _normalized(s.completion)
                if key not in seen:
                    seen.add(key)
                    unique.append(s)
            dropped += len(cands) - len(unique)
            cands = unique
        if max_per_problem is not None and len(cands) > max_per_problem:
            cands = sorted(cands, key=lambda s: _rank(seed, s))[:max_per_problem]
        kept.extend(cands)
    kept.sort(key=lambda s: (s.problem_id, s.sample_index))
    stats = SelectionStats(
        len(samples),
        positives,
        len(kept),
        len(problems),
        len({s.problem_id for s in kept}),
        dropped,
    )
    return kept, stats


def select(
    samples: Iterable[Sample],
    *,
    max_per_problem: int | None = 10,
    seed: int,
    min_reward: float = 1.0,
    dedup: bool = False,
) -> list[Sample]:
    """The M-step dataset; see `select_with_stats`."""
    return select_with_stats(
        samples, max_per_problem=max_per_problem, seed=seed, min_reward=min_reward, dedup=dedup
    )[0]
