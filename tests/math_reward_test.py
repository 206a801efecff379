"""rest_em.rewards.math: extraction, equivalence (precision first), hard timeouts, self-check.

Data: tests/testdata/{gsm8k,math500}_test.jsonl.gz (sources in tests/testdata/README.md).
"""

import collections
import gzip
import json
import os
import pathlib
import random
import re
import subprocess
import sys
import threading
import time

import pytest

from rest_em.rewards import _pool
from rest_em.rewards import math as rm
from rest_em.rewards import math_check as mc
from rest_em.rewards import math_equivalence as meq
from rest_em.rewards.math import Status

REPO = pathlib.Path(__file__).resolve().parents[1]
DATA = REPO / "tests" / "testdata"
GSM8K = DATA / "gsm8k_test.jsonl.gz"
MATH500 = DATA / "math500_test.jsonl.gz"


def _golds(path: pathlib.Path) -> list[str]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [rm.gold_answer(json.loads(line)["answer"]) for line in f]


# ----------------------------------------------------------------------------- extraction


@pytest.mark.parametrize(
    "text, style, expected",
    [
        (r"so $\boxed{\frac{14}{3}}$.", "auto", r"\frac{14}{3}"),
        (r"first \boxed{1}, finally \boxed{2}", "auto", "2"),
        (r"\boxed{\{1, 2\}}", "auto", r"\{1, 2\}"),
        (r"\boxed{\left( 3, \frac{\pi}{2} \right)}", "boxed", r"\left( 3, \frac{\pi}{2} \right)"),
        (r"\fbox{7}", "auto", "7"),
        (r"The answer is $\boxed 5$", "auto", "5"),
        (r"cut off: \boxed{\frac{1}{", "boxed", None),  # truncated: no guess
        ("She makes 9 * 2 = $18.\n#### 18", "auto", "18"),
        ("#### 1,000\n", "gsm8k", "1,000"),
        (r"The answer is $\frac{14}{3}$.", "auto", r"\frac{14}{3}"),
        ("The final answer is $\\boxed{5}$. I hope it is correct.", "auto", "5"),
        ("So the answer is 3.5. Done.", "answer_is", "3.5"),
        (
            "The answer is: \\left( 3, \\frac{\\pi}{2} \\right)",
            "answer_is",
            "\\left( 3, \\frac{\\pi}{2} \\right)",
        ),
        ("Q: 2+2?\nA: 4", "auto", "4"),
        ("A: Let me think.\nIt is four.", "qa", None),  # 'A:' must be the final line
        ("**Answer:** 12", re.compile(r"Answer:\*\*\s*(\S+)"), "12"),
        ("no final answer here", "auto", None),
        ("#### 7\nlater \\boxed{8}", ("gsm8k", "boxed"), "7"),
        ("42", "raw", "42"),
    ],
)
def test_extract_answer(text, style, expected):
    assert rm.extract_answer(text, style=style) == expected


def test_extract_answer_rejects_unknown_style():
    with pytest.raises(ValueError, match="unknown answer style"):
        rm.extract_answer("x", style="latex")


def test_gold_answer_formats():
    assert rm.gold_answer("16 - 3 - 4 = <<16-3-4=9>>9\n#### 18") == "18"
    assert rm.gold_answer(r"Hence $\boxed{\frac{14}{3}}$.") == r"\frac{14}{3}"  # Hendrycks MATH
    assert rm.gold_answer(r"so $\boxed{(3,4]}$.The answer is: (3,4]") == "(3,4]"  # MATH-500
    with pytest.raises(ValueError):
        rm.gold_answer("no answer")


# ----------------------------------------------------------------------------- equivalence

# (gold, answer, equal?) — each hand-checked. The answer goes through style="raw".
PAIRS = [
    # The known traps.
    (r"2\sqrt{2}", r"\sqrt{8}", True),
    ("10,000", "10000", True),
    ("0.05", "5", False),
    ("(1,2]", "[1,2]", False),
    (r"1/2^{99}", r"1/2^{98}", False),
    (r"\frac{1}{2^{99}}", r"\frac{1}{2^{98}}", False),
    ("1", "1.0001", False),
    ("500", "5", False),
    ("9", r"9\%", False),  # percentages only when the gold is one
    (r"50\%", "0.5", False),  # no x100 leniency
    (r"\frac{\sqrt{2}}{2}", "0.70710678", False),  # no float tolerance
    (r"\pi", "3.14159265", False),
    ("e", "2.718281828", False),
    (r"\frac{1}{3}", "0.333333", False),
    (r"2\sqrt{2}", "2.828427", False),
    ("1", "0.9999999999", False),
    ("1000000000000000000001", "1000000000000000000000", False),
    (r"10^{-20}", "0", False),
    (r"\sqrt{10^{100}+1}", "10^{50}", False),  # differs by 5e-51: no relative tolerance
    (r"\infty", r"-\infty", False),
    # Numbers: integers, decimals, fractions, separators, units, signs.
    ("18", "18.00", True),
    ("6", "6.0", True),
    ("10{,}000", "10000", True),
    ("1,000,000", "1000000", True),
    (r"11,\! 111,\! 111,\! 100", "11111111100", True),
    (r"\$32,\!348", "32348", True),
    ("12", r"\$12", True),
    ("12", "12 dollars", True),
    (r"5.4 \text{ cents}", "5.4", True),
    (r"864 \mbox{ inches}^2", "864", True),
    (r"\frac{270}7\text{ degrees}", r"\frac{270}{7}", True),
    (r"\frac{14}{3}", "14/3", True),
    (r"\frac{14}{3}", r"\dfrac{14}{3}", True),
    ("0.5", r"\frac{1}{2}", True),
    (r"\frac{3}{4}", "0.75", True),
    (r"\frac12", "1/2", True),
    (r"3\frac{1}{2}", r"\frac{7}{2}", True),  # mixed number
    (r"-\frac{1}{2}", r"\frac{-1}{2}", True),
    ("1024", "2^{10}", True),
    (r"\frac{1}{2^{99}}", "2^{-99}", True),
    ("1500", r"1.5\times10^{3}", True),
    ("-3", "\u22123", True),  # unicode minus
    ("12", "1.2", False),
    ("-5", "5", False),
    ("1000000", "10^{5}", False),
    ("5", "5 million", False),
    ("10,000", "10", False),
    (r"\frac{7}{2}", r"3\frac{1}{3}", False),
    ("2", "2 3", False),  # digits separated by a space are ambiguous
    # Degrees and percentages.
    (r"90^\circ", "90", True),
    ("90", r"90^{\circ}", True),
    (r"25\%", "25", True),
    (r"25\%", "25 percent", True),
    (r"25\%", "0.25", False),
    ("12", r"12\%", False),
    # Assignments, text, choices.
    ("x=5", "5", True),
    ("5", "x = 5", True),
    (r"x \in [-2,7]", "[-2, 7]", True),
    (r"\text{Evelyn}", "Evelyn", True),
    (r"\text{(C)}", "C", True),
    (r"\text{(C)}", "(C)", True),
    (r"\text{east}", r"\text{seat}", False),  # not the product e*a*s*t
    ("A", "B", False),
    (r"\text{Sunday}", r"\text{Monday}", False),
    # Radicals, pi, expressions.
    (r"\frac{\sqrt{6}}{3}", r"\sqrt{\frac{2}{3}}", True),
    (r"\frac{1}{\sqrt{2}}", r"\frac{\sqrt2}{2}", True),
    (r"3\sqrt{3}", r"\sqrt{27}", True),
    ("4", r"\sqrt{16}", True),
    (r"\frac{\sqrt{3}}{3}", r"\sqrt{3}/3", True),
    (r"2\pi", r"\pi \cdot 2", True),
    ("x^2+2x+1", "(x+1)^2", True),
    (r"\log_2 8", "3", True),
    ("x>2", "2<x", True),
    ("x>2", r"x\geq 2", False),
    ("3+4i", "3-4i", False),
    (r"1 \pm \sqrt{2}", r"1+\sqrt{2}", False),
    ("y = 2x + 3", "y=3+2x", True),
    ("5x - 7y + 11z + 4 = 0", "5x-7y+11z+4=0", True),
    (r"\frac{3}{2}", r"\frac123", True),  # TeX reads \frac123 as \frac{1}{2}3
    (r"\frac{1}{23}", r"\frac123", False),
    ("3", r"3\pi", False),
    (r"\sqrt{2}", r"\sqrt{3}", False),
    ("x^2", "x^3", False),
    ("2x+3", "2x+4", False),
    # Tuples, intervals, sets, matrices.
    (r"(3, \frac{\pi}{2})", r"\left( 3, \frac{\pi}{2} \right)", True),
    (r"\left( 3, \frac{\pi}{2} \right)", r"(3, \pi/2)", True),
    (r"(3, \frac{\pi}{2})", r"(3, \frac{\pi}{3})", False),
    ("(1,2)", "(2,1)", False),
    ("(2,4)", "2, 4", False),  # interval-or-point vs a bare list
    (r"(-\infty, 0]", r"(-\infty,0]", True),
    (r"(0,9) \cup (9,36)", r"(0, 9)\cup(9, 36)", True),
    ("[1,2]", "[1,2)", False),
    (r"\infty", r"-\infty", False),
    (r"\{1,2\}", r"\{2,1\}", True),
    ("1,-2", "-2, 1", True),
    (r"\{1,2\}", r"\{1,2,3\}", False),
    ("1,2", "1", False),
    (
        r"\begin{pmatrix} 1/5 \\ -18/5 \end{pmatrix}",
        r"\begin{pmatrix} \frac{1}{5} \\ -\frac{18}{5} \end{pmatrix}",
        True,
    ),
    (r"\begin{pmatrix} 1 \\ 2 \end{pmatrix}", r"\begin{pmatrix} 2 \\ 1 \end{pmatrix}", False),
    (r"\begin{pmatrix} 1 \\ 2 \end{pmatrix}", "3", False),
]


def test_pair_table_is_large_enough():
    assert len(PAIRS) >= 60
    assert sum(eq for *_, eq in PAIRS) >= 25 and sum(not eq for *_, eq in PAIRS) >= 25


def test_equivalence_table():
    verdicts = rm.check_batch([a for _, a, _ in PAIRS], [g for g, _, _ in PAIRS], style="raw")
    wrong = [
        (g, a, eq, v)
        for (g, a, eq), v in zip(PAIRS, verdicts)
        if v.status is not (Status.CORRECT if eq else Status.INCORRECT)
    ]
    assert not wrong, "\n".join(
        f"gold={g!r} answer={a!r} expected equal={eq}: {v}" for g, a, eq, v in wrong
    )


def test_is_correct_and_statuses():
    assert rm.is_correct("Thus $\\boxed{\\frac{14}{3}}$.", r"\frac{14}{3}")
    assert not rm.is_correct("#### 17", "18")
    assert rm.check("I do not know.", "18").status is Status.NO_ANSWER
    bad_gold = rm.check(r"\boxed{5}", r"\frac{1}{")
    assert bad_gold.status is Status.CHECKER_ERROR, bad_gold  # a broken gold is not "wrong"


def test_batch_keeps_order_and_counts_statuses_apart():
    responses = ["#### 18", "#### 17", "nothing", r"\boxed{\sqrt{8}}", r"\boxed{5}"]
    golds = ["18", "18", "18", r"2\sqrt{2}", r"\frac{1}{"]
    statuses = [v.status for v in rm.check_batch(responses, golds)]
    assert statuses == [
        Status.CORRECT,
        Status.INCORRECT,
        Status.NO_ANSWER,
        Status.CORRECT,
        Status.CHECKER_ERROR,
    ]
    with pytest.raises(ValueError):
        rm.check_batch(["a"], [])


def test_status_is_its_value_as_text_and_json():
    """Statuses go into JSONL (the E-step's shards) and compare with plain strings."""
    statuses = [v.status for v in rm.check_batch(["#### 18", "#### 17", "x"], ["18"] * 3)]
    assert statuses == ["correct", "incorrect", "no_answer"]
    assert [str(s) for s in statuses] == [f"{s}" for s in statuses] == [s.value for s in statuses]
    assert json.dumps({"status": statuses[0]}) == '{"status": "correct"}'
    assert collections.Counter(statuses)["correct"] == 1 and {"correct": 1}[statuses[0]] == 1
    assert Status(json.loads(json.dumps(statuses[1]))) is Status.INCORRECT


def test_no_false_positives_on_10000_pairs_of_different_golds():
    """Pairs of golds from different problems, minus those that are equal.

    "Not mathematically equal" is decided without the checker's symbolic layer: the pair
    is dropped when the two normalised spellings are identical, or when both are plain
    numbers with the same exact rational value. Every remaining pair must be judged not
    correct. (Sampled: 40% GSM8K-GSM8K, 40% MATH-MATH, 20% across, seed 0.)
    """
    gsm8k, math500 = _golds(GSM8K), _golds(MATH500)
    rng = random.Random(0)
    pairs, dropped = [], collections.Counter()
    while len(pairs) < 10_000:
        r = rng.random()
        a, b = (
            rng.sample(gsm8k, 2)
            if r < 0.4
            else rng.sample(math500, 2)
            if r < 0.8
            else [rng.choice(gsm8k), rng.choice(math500)]
        )
        if rng.random() < 0.5:
            a, b = b, a
        (na, _), (nb, _) = meq._normalize(a), meq._normalize(b)
        if na == nb:
            dropped["same spelling"] += 1
            continue
        va, vb = meq._exact_value(na), meq._exact_value(nb)
        if va is not None and va == vb:
            dropped["same exact value"] += 1
            continue
        pairs.append((a, b))
    start = time.monotonic()
    verdicts = rm.check_batch(
        [b for _, b in pairs], [a for a, _ in pairs], style="raw", use_cache=False
    )
    elapsed = time.monotonic() - start
    counts = collections.Counter(v.status for v in verdicts)
    accepted = [(a, b, v) for (a, b), v in zip(pairs, verdicts) if v.correct]
    assert not accepted, accepted[:20]
    undecided = counts[Status.CHECKER_ERROR] + counts[Status.TIMEOUT]
    assert undecided <= 10, (
        counts,
        [
            (p, v)
            for p, v in zip(pairs, verdicts)
            if v.status not in (Status.CORRECT, Status.INCORRECT)
        ],
    )
    print(f"10,000 pairs in {elapsed:.1f} s; dropped as equal: {dict(dropped)}; {counts}")


# ----------------------------------------------------------------------------- self-check


def test_every_gsm8k_gold_verifies_against_its_reference():
    n_rows, failures = rm.self_check(str(GSM8K))
    assert n_rows == 1319
    assert not failures, failures[:10]


def test_math500_golds_verify_against_their_references():
    n_rows, failures = rm.self_check(str(MATH500))
    assert n_rows == 500
    assert len(failures) <= 2, failures  # >= 99.5%
    for f in failures:
        print(f"line {f.line}: {f.verdict.status.value} gold={f.gold!r} {f.verdict.reason}")


def test_self_check_command_lists_failures(tmp_path):
    rows = [
        {"answer": "3 + 4 = 7\n#### 7"},
        {"answer": r"So $\boxed{5}$.The answer is: 6"},  # boxed and stated answers disagree
        {"answer": "no final answer"},
        {"answer": r"Hence $\boxed{\frac{1}{}}$."},  # a gold that does not parse
    ]
    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    proc = subprocess.run(
        [sys.executable, "-m", "rest_em.rewards.math", "--self_check", str(path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 1, proc.stderr[-3000:]
    out = proc.stdout
    assert "line 1:" not in out
    assert "line 2: incorrect" in out
    assert "line 3: checker_error" in out and "no gold" in out
    assert "line 4: checker_error [symbolic]" in out
    assert "1/4 golds verify" in out


# ----------------------------------------------------------------------------- timeouts


def test_pathological_expression_times_out_and_pool_recovers():
    start = time.monotonic()
    verdict = rm.check(r"\boxed{9^{9^{9^{9}}}}", "1", timeout_s=2.0)
    elapsed = time.monotonic() - start
    assert verdict.status in (Status.TIMEOUT, Status.INCORRECT), verdict
    assert elapsed < 2.0 + 60, elapsed  # the timeout, plus a cold worker start at most
    assert rm.check(r"\boxed{\sqrt{8}}", r"2\sqrt{2}", timeout_s=30).status is Status.CORRECT


def test_timeout_from_a_non_main_thread():
    mc._get_pool().start()  # warm, so the measured time is the timeout alone
    result = {}

    def worker():
        start = time.monotonic()
        result["verdict"] = rm.check(r"\boxed{9^{9^{9^{9}}}}", "1", timeout_s=1.5)
        result["elapsed"] = time.monotonic() - start
        result["after"] = rm.check(r"\boxed{x^2+2x+1}", "(x+1)^2", timeout_s=30)

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join(120)
    assert not thread.is_alive()
    assert result["verdict"].status is Status.TIMEOUT, result["verdict"]
    assert result["elapsed"] < 1.5 + 5, result["elapsed"]
    assert result["after"].status is Status.CORRECT, result["after"]


class _SlowReadDict(dict):
    """A dict whose reads pause first, so that an unlocked read races a clear."""

    def __contains__(self, key):
        time.sleep(0.0002)
        return super().__contains__(key)

    def __getitem__(self, key):
        time.sleep(0.0002)
        return super().__getitem__(key)

    def get(self, key, default=None):
        time.sleep(0.0002)
        return super().get(key, default)


def test_cache_cleared_while_other_threads_check(monkeypatch):
    """The result cache is cleared (when full) while other threads read it: no KeyError
    escapes check_batch and every verdict stays right."""
    monkeypatch.setattr(mc, "_cache", _SlowReadDict())
    cases = [
        (r"\boxed{\sqrt{8}}", r"2\sqrt{2}", Status.CORRECT),
        (r"\boxed{\sqrt{3}}", r"2\sqrt{2}", Status.INCORRECT),
        (r"\boxed{\pi/2}", r"\frac{\pi}{2}", Status.CORRECT),
        (r"\boxed{x^2+2x+1}", "(x+1)^2", Status.CORRECT),
    ]
    responses, golds, expected = (list(c) for c in zip(*cases))
    assert [v.status for v in rm.check_batch(responses, golds, timeout_s=60)] == expected
    stop, errors, checked = threading.Event(), [], []

    def clear():
        while not stop.is_set():
            with mc._cache_lock:  # as check_batch clears a full cache
                mc._cache.clear()
            time.sleep(0.001)

    def check():
        try:
            deadline = time.monotonic() + 3.0
            while time.monotonic() < deadline:
                got = [v.status for v in rm.check_batch(responses, golds, timeout_s=60)]
                assert got == expected, got
                checked.append(1)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    clearer = threading.Thread(target=clear)
    checkers = [threading.Thread(target=check) for _ in range(8)]
    clearer.start()
    for t in checkers:
        t.start()
    for t in checkers:
        t.join(120)
    stop.set()
    clearer.join(10)
    assert not errors, errors[:3]
    assert len(checked) >= 8


def test_hard_timeout_pool_kills_and_replaces_workers():
    task = str(DATA / "pool_task.py")
    with _pool.HardTimeoutPool(task, max_workers=1, memory_limit_bytes=None) as pool:
        assert pool.call("echo", {"a": [1, 2]}, timeout_s=60) == {"a": [1, 2]}
        first = pool.call("pid", timeout_s=10)
        start = time.monotonic()
        with pytest.raises(_pool.TaskTimeout):
            pool.call("spin", timeout_s=1.0)  # C code holding the GIL
        assert time.monotonic() - start < 5
        second = pool.call("pid", timeout_s=60)
        assert second != first  # the stuck worker was killed and replaced
        with pytest.raises(_pool.TaskError, match="ValueError: boom"):
            pool.call("boom", timeout_s=10)
        assert pool.call("pid", timeout_s=10) == second  # an exception keeps the worker
        with pytest.raises(_pool.WorkerCrashed):
            pool.call("die", timeout_s=10)
        assert pool.call("sleep", 0.01, timeout_s=60) == "slept"
    with pytest.raises(_pool.PoolError):
        pool.call("echo", 1, timeout_s=1)


def test_pool_serves_concurrent_threads():
    task = str(DATA / "pool_task.py")
    with _pool.HardTimeoutPool(task, max_workers=2, memory_limit_bytes=None) as pool:
        pool.start()
        results = []
        threads = [
            threading.Thread(target=lambda i=i: results.append(pool.call("echo", i, timeout_s=30)))
            for i in range(8)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert sorted(results) == list(range(8))
        assert len(pool.worker_pids()) == 2


def test_per_process_default_is_made_again_in_a_forked_child():
    made, closed = [], []

    def create(n):
        made.append(n)
        return [n]

    default = _pool.PerProcess(create, closed.append)
    first = default.get(1)
    assert default.get(2) is first and made == [1]  # any size will do by default
    assert default.get(2, reuse=lambda obj: obj == [2]) == [2] and closed == [[1]]
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: a new object, and the parent's is not closed
        try:
            ok = default.get(3) == [3] and closed == [[1]] and made == [1, 2, 3]
            os.write(write_fd, b"ok" if ok else repr((made, closed)).encode())
        finally:
            os._exit(0)
    os.close(write_fd)
    reply = os.read(read_fd, 1000)
    os.close(read_fd)
    os.waitpid(pid, 0)
    assert reply == b"ok", reply
    assert default.get(4) == [2] and made == [1, 2]  # the parent keeps its own
    default.reset()
    assert closed == [[1], [2]] and default.get(5) == [5]


# ----------------------------------------------------------------------------- imports


def test_checker_module_imports_no_ml_frameworks():
    """What the workers load (by path, exactly like this) needs the standard library only."""
    code = (
        "import importlib.util, sys\n"
        "for name in ('_pool', '_math_symbolic'):\n"
        f"    path = {str(REPO / 'rest_em' / 'rewards')!r} + '/' + name + '.py'\n"
        "    spec = importlib.util.spec_from_file_location('_t_' + name, path)\n"
        "    mod = importlib.util.module_from_spec(spec)\n"
        "    sys.modules[spec.name] = mod\n"
        "    spec.loader.exec_module(mod)\n"
        "heavy = [m for m in ('jax', 'tensorflow', 'torch', 'sympy', 'math_verify', 'rest_em')\n"
        "         if m in sys.modules]\n"
        "print(heavy)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=str(REPO / "tests"),
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_checker_package_imports_no_ml_frameworks():
    """The library side imports neither JAX nor sympy (they load only in the workers)."""
    code = (
        "import sys\nimport rest_em.rewards.math\n"
        "print([m for m in ('jax', 'tensorflow', 'torch', 'sympy', 'math_verify')\n"
        "       if m in sys.modules])\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=str(REPO),
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


# ----------------------------------------------------------------------------- benchmark


def test_benchmark_quick_run_writes_its_section(tmp_path):
    results = tmp_path / "RESULTS.md"
    results.write_text("# Benchmark results\n\n## Other\n\nkept\n")
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "benchmarks" / "math_reward.py"),
            "--quick",
            "--limit",
            "20",
            "--write",
            "--results",
            str(results),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = results.read_text()
    assert "## Other\n\nkept" in text and "## Math checker" in text
    for row in ("| GSM8K test | rest_em | 40 |", "| MATH-500 | math-verify | 40 |"):
        assert row in text, text
