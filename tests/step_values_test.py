"""Step values: Q estimators, Monte-Carlo Q on a toy policy with analytic step success
probabilities, advantages, first pit, token weights, DPO pairs, the dataset for fit(),
and the real sampler path (shapes, determinism, independence of chunking)."""

import dataclasses

import jax
import numpy as np
import pytest

from rest_em import filtering, sampling, step_values, training
from rest_em import model as model_lib
from rest_em.tokenizers import ByteTokenizer

TOK = ByteTokenizer()


# --- estimators, advantages, pits ------------------------------------------------------


def test_estimate_q():
    r = np.array([[0, 0, 0, 0], [1, 0, 0, 0], [1, 1, 1, 1], [0, 1, 1, 0]], float)
    np.testing.assert_allclose(step_values.estimate_q(r, estimator="mean"), [0, 0.25, 1, 0.5])
    np.testing.assert_allclose(step_values.estimate_q(r), [0, 1, 1, 1])  # best of K = 4
    # Best of 2 from 4 rollouts with c successes: 1 - C(4-c, 2) / C(4, 2).
    np.testing.assert_allclose(step_values.estimate_q(r, k=2), [0, 1 - 3 / 6, 1, 1 - 1 / 6])
    with pytest.raises(ValueError, match="estimator"):
        step_values.estimate_q(r, estimator="max")
    with pytest.raises(ValueError, match="0/1"):
        step_values.estimate_q(r * 0.5)
    with pytest.raises(ValueError, match="k"):
        step_values.estimate_q(r, k=5)


def test_advantages_and_first_pit():
    q = np.array([0.8, 0.9, 0.4, 0.0, 0.0])
    np.testing.assert_allclose(step_values.advantages(q), [0.1, -0.5, -0.4, 0.0])
    assert step_values.first_pit(q) == 3
    assert step_values.first_pit(q, threshold=0.5) == 2
    assert step_values.first_pit(np.array([1.0, 1.0, 1.0])) is None  # a positive: no pit
    # Best-of-K values are 0/1: the first pit is the first step with A = -1 (the largest drop).
    q01 = np.array([1.0, 1.0, 0.0, 1.0, 0.0])
    assert step_values.first_pit(q01) == 2 == int(np.argmin(step_values.advantages(q01))) + 1
    assert step_values.first_pit(np.array([0.0, 0.0])) == 1  # hopeless from the start
    np.testing.assert_allclose(step_values.advantages(np.ones((2, 3))), np.zeros((2, 2)))


def test_token_weights():
    w = step_values.token_weights(
        np.array([0.0, -1.0, 2.0]), [(0, 2), (2, 3), (3, 5)], beta=0.5, clip=10.0
    )
    np.testing.assert_allclose(w, [1, 1, np.exp(-2), 10, 10], rtol=1e-6)
    with pytest.raises(ValueError, match="contiguous"):
        step_values.token_weights(np.zeros(2), [(0, 2), (3, 4)], beta=1.0, clip=2.0)


def test_rollout_ids_are_distinct_and_range_checked():
    kw = dict(max_samples=4, max_steps=3)
    ids = {
        step_values.rollout_id(p, n, t, **kw) for p in range(5) for n in range(4) for t in range(4)
    }
    assert len(ids) == 5 * 4 * 4
    assert step_values.decode_rollout_id(step_values.rollout_id(7, 2, 3, **kw), **kw) == (7, 2, 3)
    with pytest.raises(ValueError, match="sample_index"):
        step_values.rollout_id(0, 4, 0, **kw)
    with pytest.raises(ValueError, match="step"):
        step_values.rollout_id(0, 0, 4, **kw)
    with pytest.raises(ValueError, match="2\\*\\*31"):
        step_values.rollout_id(2**31 // 16, 0, 0, **kw)


# --- a toy policy with known values ---------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ToyProblem:
    """Solutions are lines "ok"/"bad" then "#### 1"; correct iff no line is "bad". The
    policy writes step j as "ok" with probability success[j-1], independently, so from a
    prefix of i "ok" steps the chance of success is prod(success[i:]) (0 after a "bad")."""

    success: tuple[float, ...]

    def value(self, prefix: str) -> float:
        if "bad" in prefix:
            return 0.0
        return float(np.prod(self.success[prefix.count("\n") :]))


def toy_rollouts(prefixes, num_rollouts):
    out = []
    for p in prefixes:
        done = p.text.count("\n")
        conts = []
        for k in range(num_rollouts):
            rng = np.random.default_rng([p.rollout_id, k])
            lines = ["ok\n" if rng.random() < s else "bad\n" for s in p.problem.success[done:]]
            conts.append("".join(lines) + "#### 1")
        out.append(conts)
    return out


def toy_score(completions, problems):
    assert len(completions) == len(problems)
    return ["incorrect" if "bad" in c else "correct" for c in completions]


@pytest.mark.parametrize(
    "estimator,k,expected",
    [
        ("mean", None, lambda p: p),
        ("best_of_k", None, lambda p: 1 - (1 - p) ** 8),  # best of all K = 8 rollouts
        ("best_of_k", 3, lambda p: 1 - (1 - p) ** 3),  # unbiased best-of-3 from 8
    ],
)
def test_mc_q_converges_to_the_analytic_values(estimator, k, expected):
    problem = ToyProblem((0.9, 0.6, 0.8, 0.5))
    reps, num_rollouts = 400, 8
    for text in ["", "ok\n", "ok\nok\n", "ok\nok\nok\n", "ok\nbad\n"]:
        p = problem.value(text)
        prefixes = [step_values.Prefix(r, problem, (5,), text) for r in range(reps)]
        ro = step_values.rollout_values(
            prefixes,
            rollout_fn=toy_rollouts,
            score_fn=toy_score,
            num_rollouts=num_rollouts,
            estimator=estimator,
            k=k,
        )
        assert ro.rewards_PxK.shape == (reps, num_rollouts) and ro.q_P.shape == (reps,)
        want = expected(p)
        # One estimate's variance is at most that of a 0/1 variable with mean `want`
        # (mean: p(1-p)/K); 4.5 standard errors of the mean over the replicas.
        var = p * (1 - p) / num_rollouts if estimator == "mean" else want * (1 - want)
        bound = 4.5 * np.sqrt(var / reps) + 1e-12
        assert abs(ro.q_P.mean() - want) <= bound, (text, ro.q_P.mean(), want, bound)
        if p == 0:
            assert (ro.q_P == 0).all()


def _sample(pid, n, completion, reward=0.0):
    return filtering.Sample(pid, n, "Q", completion, reward)


SURE = ToyProblem((1.0, 1.0, 1.0, 1.0))  # clean prefixes always succeed
HOPELESS = ToyProblem((0.0, 0.0, 0.0, 0.0))  # nothing ever succeeds
PROBLEMS = {0: SURE, 1: HOPELESS}
PROMPTS = {0: TOK.encode("Q0\n"), 1: TOK.encode("Q1\n")}


class Counting:
    def __init__(self):
        self.prefixes = []

    def __call__(self, prefixes, num_rollouts):
        self.prefixes.extend(prefixes)
        return toy_rollouts(prefixes, num_rollouts)


def _values(samples, **kw):
    counting = Counting()
    vals = step_values.compute_step_values(
        samples,
        problems=PROBLEMS,
        prompt_ids=PROMPTS,
        rollout_fn=counting,
        score_fn=toy_score,
        num_rollouts=4,
        **kw,
    )
    return vals, counting


def test_step_values_advantages_and_pit_on_the_toy_policy():
    neg = _sample(0, 3, "ok\nok\nbad\nok\n#### 1")
    (sv,), counting = _values([neg])
    assert sv.steps == ("ok\n", "ok\n", "bad\n", "ok\n", "#### 1")
    np.testing.assert_allclose(sv.q_Tp1, [1, 1, 1, 0, 0, 0])  # Q_5 = the sample's reward
    np.testing.assert_allclose(sv.advantages_T, [0, 0, -1, 0, 0])
    assert sv.first_pit() == 3
    assert sv.rewards_TxK.shape == (5, 4) and len(sv.continuations) == 5
    # One rollout batch for the 5 prefixes; the empty prefix has the problem's shared id.
    assert [p.text for p in counting.prefixes] == [
        "",
        "ok\n",
        "ok\nok\n",
        "ok\nok\nbad\n",
        "ok\nok\nbad\nok\n",
    ]
    ids = [p.rollout_id for p in counting.prefixes]
    kw = dict(max_samples=256, max_steps=32)
    assert ids[0] == step_values.rollout_id(0, 0, 0, **kw)
    assert ids[1:] == [step_values.rollout_id(0, 3, t, **kw) for t in range(1, 5)]
    assert counting.prefixes[0].prompt_ids == tuple(PROMPTS[0])


def test_shared_prefixes_are_rolled_out_once():
    a = _sample(0, 1, "ok\nbad\n#### 1")
    b = _sample(0, 2, "ok\nok\nbad\n#### 1")
    c = _sample(1, 0, "bad\n#### 1")
    vals, counting = _values([b, c, a])
    # Problem 0: "", "ok\n", "ok\nbad\n", "ok\nok\n", "ok\nok\nbad\n"; problem 1: "", "bad\n".
    assert len(counting.prefixes) == 7
    assert [v.sample for v in vals] == [a, b, c]  # sorted by (problem, sample)
    np.testing.assert_array_equal(vals[0].rewards_TxK[:2], vals[1].rewards_TxK[:2])
    np.testing.assert_allclose(vals[0].q_Tp1, [1, 1, 0, 0])
    np.testing.assert_allclose(vals[2].q_Tp1, [0, 0, 0])


def test_mean_and_best_of_k_differ_as_expected():
    half = ToyProblem((0.5, 0.5))
    neg = _sample(0, 0, "ok\nbad\n#### 1")
    out = {}
    for est in ("mean", "best_of_k"):
        (sv,) = step_values.compute_step_values(
            [neg],
            problems={0: half},
            prompt_ids=PROMPTS,
            rollout_fn=toy_rollouts,
            score_fn=toy_score,
            num_rollouts=64,
            estimator=est,
        )
        out[est] = sv.q_Tp1
    np.testing.assert_allclose(out["mean"], [0.25, 0.5, 0, 0], atol=0.2)
    np.testing.assert_allclose(out["best_of_k"], [1, 1, 0, 0])  # 64 tries: surely one succeeds


def test_weighted_example_puts_step_advantages_on_tokens():
    neg = _sample(0, 3, "ok\nok\nbad\nok\n#### 1")
    (sv,), _ = _values([neg])
    prompt, comp, w = step_values.weighted_example(
        sv, prompt_ids=PROMPTS[0], tokenizer=TOK, beta=0.5, clip=10.0
    )
    assert prompt == PROMPTS[0]
    assert comp == TOK.encode(neg.completion) + [TOK.eos_id]
    expected = [1.0] * 6 + [np.exp(-2.0)] * 4 + [1.0] * 3 + [1.0] * 7  # "#### 1" + EOS
    np.testing.assert_allclose(w, expected, rtol=1e-6)


def test_step_dpo_pairs():
    neg = _sample(0, 3, "ok\nok\nbad\nok\n#### 1")  # pit 3, winners from "ok\nok\n"
    last = _sample(0, 4, "ok\nok\nok\nok\n#### 2")  # Q_T = 0: pit at the last step
    hopeless = _sample(1, 0, "bad\n#### 1")  # pit 1, no rollout ever succeeds
    pos = _sample(1, 5, "ok\n#### 9", 1.0)
    vals, _ = _values([neg, last, hopeless])
    pairs = step_values.step_dpo_pairs(vals, prompt_ids=PROMPTS, tokenizer=TOK)
    assert [(p.problem_id, p.sample_index, p.pit) for p in pairs] == [(0, 3, 3), (0, 4, 5)]
    p = pairs[0]
    assert p.prompt_ids == PROMPTS[0] + TOK.encode("ok\nok\n")
    assert p.rejected_ids == TOK.encode("bad\n")
    assert p.chosen_ids == TOK.encode("ok\nok\n#### 1") + [TOK.eos_id]
    assert p.chosen_source == "rollout"
    q = pairs[1]
    assert q.rejected_ids == TOK.encode("#### 2") + [TOK.eos_id]  # the last step ends the sample
    assert q.chosen_ids == TOK.encode("#### 1") + [TOK.eos_id]
    # With a correct E-step sample, the hopeless problem's pit-1 negative gets it as chosen.
    pairs = step_values.step_dpo_pairs(vals, prompt_ids=PROMPTS, tokenizer=TOK, positives=[pos])
    (h,) = [p for p in pairs if p.problem_id == 1]
    assert (h.pit, h.chosen_source) == (1, "positive")
    assert h.prompt_ids == PROMPTS[1] and h.rejected_ids == TOK.encode("bad\n")
    assert h.chosen_ids == TOK.encode(pos.completion) + [TOK.eos_id]


def test_step_negatives_dataset_with_an_injected_rollout_fn():
    samples = [_sample(0, n, "ok\nbad\n#### 1") for n in range(3)]  # duplicates
    samples += [
        _sample(0, 3, "ok\nok\nbad\nok\n#### 1"),
        _sample(0, 4, "ok\nok\nok\nok\n#### 1", 1.0),
    ]
    samples += [_sample(1, n, f"bad\n#### {n}") for n in range(5)]
    positives = filtering.select(samples, max_per_problem=10, seed=0)
    counting = Counting()
    ds = step_values.step_negatives_dataset(
        None,
        samples,
        problems=PROBLEMS,
        prompt_ids=PROMPTS,
        model_cfg=None,
        tokenizer=TOK,
        sampling_cfg=None,
        score_fn=toy_score,
        key=None,
        positives=positives,
        num_rollouts=4,
        beta=1.0,
        clip=5.0,
        max_per_problem=3,
        rollout_fn=counting,
    )
    negs = [sv.sample for sv in ds.values]
    # Problem 0: the duplicates count once (dedup) -> 2 negatives; problem 1: capped at 3.
    assert sum(s.problem_id == 0 for s in negs) == 2
    assert sum(s.problem_id == 1 for s in negs) == 3
    assert len(ds.prompt_ids) == len(ds.completion_ids) == len(ds.token_weights) == 5 + 1
    for c, w in zip(ds.completion_ids, ds.token_weights):
        assert len(c) == len(w) and c[-1] == TOK.eos_id
    assert ds.token_weights[-1] == [1.0] * len(ds.completion_ids[-1])  # the positive
    assert ds.stats["num_rollouts"] == 4 * len(counting.prefixes)
    assert ds.stats["num_negatives"] == 5 and ds.stats["num_positives"] == 1
    # Same seed, same choice, whatever the input order.
    ds2 = step_values.step_negatives_dataset(
        None,
        samples[::-1],
        problems=PROBLEMS,
        prompt_ids=PROMPTS,
        model_cfg=None,
        tokenizer=TOK,
        sampling_cfg=None,
        score_fn=toy_score,
        key=None,
        positives=positives,
        num_rollouts=4,
        beta=1.0,
        clip=5.0,
        max_per_problem=3,
        rollout_fn=toy_rollouts,
    )
    assert ds2.completion_ids == ds.completion_ids and ds2.token_weights == ds.token_weights
    # What fit() builds its batches with accepts it as is.
    batch = training.make_batch(
        ds.prompt_ids, ds.completion_ids, length=40, token_weights=ds.token_weights
    )
    np.testing.assert_allclose(
        batch.token_weights_BxL[batch.loss_mask_BxL > 0].sum(),
        sum(map(sum, ds.token_weights)),
        rtol=1e-6,
    )


# --- the real sampler -------------------------------------------------------------------------

CFG = model_lib.ModelConfig(
    vocab_size=TOK.vocab_size,
    hidden_size=32,
    intermediate_size=64,
    num_layers=1,
    num_heads=2,
    num_kv_heads=1,
    max_seq_len=64,
)
SAMPLING = sampling.SamplingConfig(
    max_new_tokens=8, temperature=1.0, top_k=0, eos_id=TOK.eos_id, pad_id=TOK.pad_id
)


def parity_score(completions, problems):
    """Any deterministic function of the text will do: the model is random."""
    return ["correct" if len(c) % 2 == 0 else "incorrect" for c in completions]


def test_sampler_rollouts_shapes_determinism_and_chunking():
    params = model_lib.init_params(CFG, jax.random.key(0))
    prompts = {
        0: TOK.encode("Q: 1+2+4\n"),
        1: TOK.encode("Q: a long question, padded out to 40 by\n"),
    }
    samples = [
        _sample(0, 0, "1+2=3\n3+4=7\n#### 7"),
        _sample(0, 1, "1+2=3\n3+4=8\n#### 8"),
        _sample(1, 2, "12345678901234567\n#### 8"),
    ]

    def run(key=0, chunk_size=64):
        fn = step_values.sampler_rollout_fn(
            params,
            model_cfg=CFG,
            sampling_cfg=SAMPLING,
            tokenizer=TOK,
            key=jax.random.key(key),
            chunk_size=chunk_size,
        )
        return step_values.compute_step_values(
            samples,
            problems={0: "p0", 1: "p1"},
            prompt_ids=prompts,
            rollout_fn=fn,
            score_fn=parity_score,
            num_rollouts=3,
        )

    a = run()
    assert [len(v.steps) for v in a] == [3, 3, 2]
    for v in a:
        assert v.rewards_TxK.shape == (len(v.steps), 3) and v.q_Tp1.shape == (len(v.steps) + 1,)
        assert all(len(c) == 3 for c in v.continuations)
    # Problem 1's last prefix (40 + 18 prompt tokens) leaves 6 of the 8 new tokens.
    # (Random bytes may be invalid UTF-8; each decodes to at most one character.)
    assert len(prompts[1]) == 40
    assert max(len(c) for c in a[2].continuations[1]) <= 6
    assert all(x.continuations == y.continuations for x, y in zip(a, run()))
    assert all(x.continuations == y.continuations for x, y in zip(a, run(chunk_size=1)))
    # The one-call front door takes the same rollouts (same key, same ids).
    ds = step_values.step_negatives_dataset(
        params,
        samples,
        problems={0: "p0", 1: "p1"},
        prompt_ids=prompts,
        model_cfg=CFG,
        tokenizer=TOK,
        sampling_cfg=SAMPLING,
        score_fn=parity_score,
        key=jax.random.key(0),
        num_rollouts=3,
        max_per_problem=None,
        chunk_size=64,
    )
    assert [v.continuations for v in ds.values] == [v.continuations for v in a]
    assert ds.stats["num_rollouts"] == 3 * 6  # "", "1+2=3\n", two 2-step prefixes; p1: "", 1
    other = run(key=1)
    assert any(x.continuations != y.continuations for x, y in zip(a, other))
    # Rollouts of different prefixes/ids and different rollout indices differ.
    conts = [c for v in a for cs in v.continuations for c in cs]
    assert len(set(conts)) > len(conts) // 2


def test_a_shorter_budget_only_truncates_a_rollout():
    """The property `_budget` relies on: keys are per decode step, so max_new_tokens=4
    gives the first 4 tokens of max_new_tokens=8."""
    params = model_lib.init_params(CFG, jax.random.key(0))
    prompt = [TOK.encode("Q: 3+4\n")]
    outs = [
        sampling.sample(
            params,
            prompt,
            model_cfg=CFG,
            key=jax.random.key(2),
            cfg=dataclasses.replace(SAMPLING, num_samples=3, max_new_tokens=t),
            problem_ids=[12345],
        )
        for t in (4, 8)
    ]
    np.testing.assert_array_equal(outs[0].tokens_BxNxT, outs[1].tokens_BxNxT[:, :, :4])
    assert step_values._budget(50, 8, 64) == 8
    assert step_values._budget(58, 8, 64) == 6
    assert step_values._budget(20, 64, 64) == 32  # rounded down to 16s
    assert step_values._budget(64, 8, 64) == 0


def test_negatives_the_tokenizer_cannot_round_trip_are_left_out_and_counted():
    class Lossy(ByteTokenizer):
        def decode(self, ids):
            return super().decode(ids).replace("bad", "b")

    neg = _sample(0, 0, "ok\nbad\n#### 1")
    ok = _sample(0, 1, "ok\nok\nok\nok\n#### 3")
    ds = step_values.step_negatives_dataset(
        None,
        [neg, ok],
        problems=PROBLEMS,
        prompt_ids=PROMPTS,
        model_cfg=None,
        tokenizer=Lossy(),
        sampling_cfg=None,
        score_fn=toy_score,
        key=None,
        rollout_fn=toy_rollouts,
    )
    assert ds.stats["num_untokenizable"] == 1 and ds.stats["num_negatives"] == 2
    assert ds.completion_ids == [TOK.encode(ok.completion) + [TOK.eos_id]]
