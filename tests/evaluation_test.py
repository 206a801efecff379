"""Metrics: unbiased pass@k against brute-force enumeration, maj@k, per-level summaries."""

import itertools

import numpy as np
import pytest

from rest_em import evaluation


@pytest.mark.parametrize("n", range(1, 8))
def test_pass_at_k_equals_enumeration_over_all_k_subsets(n):
    for c in range(n + 1):
        flags = [True] * c + [False] * (n - c)
        for k in range(1, n + 1):
            subsets = list(itertools.combinations(flags, k))
            brute = np.mean([any(s) for s in subsets])
            assert evaluation.pass_at_k(n, c, k) == pytest.approx(brute, abs=1e-12), (n, c, k)


def test_pass_at_k_rejects_bad_arguments():
    with pytest.raises(ValueError):
        evaluation.pass_at_k(4, 5, 1)
    with pytest.raises(ValueError):
        evaluation.pass_at_k(4, 1, 5)


def test_maj_at_k():
    answers = ["3", "4", "4", None, "3", "3"]
    correct = [True, False, False, False, True, True]
    assert evaluation.maj_at_k(answers, correct, 3) == 0.0  # "4" wins 2-1
    assert evaluation.maj_at_k(answers, correct, 6) == 1.0  # "3" wins 3-2
    assert evaluation.maj_at_k(answers, correct, 2) == 1.0  # tie: first seen ("3")
    assert evaluation.maj_at_k([None, None], [False, False], 2) == 0.0


def test_summarize_with_levels_and_skipped_ks():
    out = evaluation.summarize(
        greedy_correct=[True, False, True, False],
        sample_correct=[[True, False], [False, False], [True, True], [False, True]],
        sample_answers=[["1", "2"], ["5", "5"], ["3", "3"], ["0", "7"]],
        levels=[1, 1, 2, 2],
        ks=(1, 2, 4),
    )
    assert out["greedy_pass@1"] == 0.5 and out["num_problems"] == 4
    assert out["pass@1"] == pytest.approx((0.5 + 0 + 1 + 0.5) / 4)
    assert out["pass@2"] == pytest.approx(3 / 4)
    assert "pass@4" not in out
    assert out["maj@2"] == pytest.approx(2 / 4)  # problems 0 ("1" first) and 2
    assert out["level_1/greedy_pass@1"] == 0.5 and out["level_2/pass@2"] == 1.0
