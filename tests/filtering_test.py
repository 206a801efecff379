"""Filtering: positives only, per-problem cap, seeded and order-independent choice, dedup."""

import random

from rest_em.filtering import Sample, select, select_with_stats


def _samples():
    out = []
    for pid in range(5):
        for j in range(20):
            out.append(
                Sample(pid, j, f"q{pid}", f"sol {j % 4}", float((pid + j) % 3 == 0 or pid == 4))
            )
    out += [Sample(9, j, "q9", "wrong", 0.0) for j in range(5)]  # never solved
    return out


def test_only_positives_and_cap():
    kept, stats = select_with_stats(_samples(), max_per_problem=3, seed=0)
    assert all(s.reward == 1.0 for s in kept)
    counts = {}
    for s in kept:
        counts[s.problem_id] = counts.get(s.problem_id, 0) + 1
    assert max(counts.values()) == 3 and 9 not in counts
    assert stats.num_problems == 6 and stats.num_problems_solved == 5
    assert kept == sorted(kept, key=lambda s: (s.problem_id, s.sample_index))


def test_choice_is_seeded_and_independent_of_order():
    samples = _samples()
    a = select(samples, max_per_problem=3, seed=0)
    shuffled = samples[:]
    random.Random(1).shuffle(shuffled)
    assert select(shuffled, max_per_problem=3, seed=0) == a
    assert select(samples, max_per_problem=3, seed=1) != a


def test_dedup_before_cap():
    kept, stats = select_with_stats(_samples(), max_per_problem=10, seed=0, dedup=True)
    by_problem = {}
    for s in kept:
        by_problem.setdefault(s.problem_id, []).append(" ".join(s.completion.split()))
    assert all(len(v) == len(set(v)) for v in by_problem.values())
    assert len(by_problem[4]) == 4 and stats.num_duplicates_dropped > 0
    assert len(select(_samples(), max_per_problem=None, seed=0)) == sum(
        s.reward == 1 for s in _samples()
    )
