"""Math checking in batches: extraction and the in-process fast path, then the symbolic
checks in a pool of killable workers, with a cache of their verdicts.

`check_batch` returns one Verdict per item: CORRECT, INCORRECT, NO_ANSWER (nothing
extracted), CHECKER_ERROR (the checker could not decide, e.g. the gold does not parse)
or TIMEOUT, so callers can count failures apart from wrong answers. The symbolic checks
(`_math_symbolic.py`) run in a process-wide HardTimeoutPool that is made on first use
(again in a forked child) and SIGKILLs a worker that overruns its timeout, so checking
works from any thread and cannot hang the caller. The library side imports neither
sympy nor math-verify.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import os
import threading
from collections.abc import Sequence

from rest_em.rewards import _pool
from rest_em.rewards.math_answers import Style, extract_answer
from rest_em.rewards.math_equivalence import Verdict, _fast_compare, _normalize
from rest_em.rewards.status import Status

__all__ = ["DEFAULT_TIMEOUT_S", "check", "check_batch", "is_correct", "shutdown_pool"]

DEFAULT_TIMEOUT_S = 5.0

_SYMBOLIC_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_math_symbolic.py")


# ------------------------------------------------------------------------ pool and cache


def _new_pool(max_workers: int | None) -> _pool.HardTimeoutPool:
    return _pool.HardTimeoutPool(
        _SYMBOLIC_FILE,
        max_workers=max_workers or max(1, min(4, os.cpu_count() or 1)),
        init="_worker_init",
    )


_default_pool: _pool.PerProcess[_pool.HardTimeoutPool] = _pool.PerProcess(
    _new_pool, _pool.HardTimeoutPool.close
)
_cache_lock = threading.Lock()
_cache: dict[tuple[str, str], tuple[str, str]] = {}
_CACHE_SIZE = 200_000


def _get_pool(max_workers: int | None = None) -> _pool.HardTimeoutPool:
    """The process-wide pool, made on first use (again after a fork, or when
    `max_workers` asks for another size)."""
    return _default_pool.get(
        max_workers, reuse=lambda pool: not max_workers or pool.max_workers == max_workers
    )


def shutdown_pool() -> None:
    """Kills the symbolic workers (they restart on the next symbolic check)."""
    _default_pool.reset()


def _symbolic_verdict(
    key: tuple[str, str], answer: str, timeout_s: float, max_workers: int | None, use_cache: bool
) -> Verdict:
    if use_cache:
        with _cache_lock:  # another thread may be clearing it
            hit = _cache.get(key)
        if hit is not None:
            status, reason = hit
            return Verdict(Status(status), answer, reason + " (cached)")
    try:
        status, reason = _get_pool(max_workers).call("_symbolic_compare", *key, timeout_s=timeout_s)
    except _pool.TaskTimeout as e:
        return Verdict(Status.TIMEOUT, answer, str(e))
    except _pool.PoolError as e:
        return Verdict(Status.CHECKER_ERROR, answer, f"{type(e).__name__}: {e}")
    if use_cache and status in (Status.CORRECT, Status.INCORRECT):
        with _cache_lock:
            if len(_cache) >= _CACHE_SIZE:
                _cache.clear()
            _cache[key] = (status, reason)
    return Verdict(Status(status), answer, reason)


# ---------------------------------------------------------------------- public checks

_MAX_ANSWER_CHARS = 2000


def _in_process(
    response: str, gold: str, style: Style, fast_path: bool
) -> Verdict | tuple[tuple[str, str], str]:
    """Extraction and the fast path: a Verdict, or ((gold, answer) for sympy, answer)."""
    answer = None
    try:
        answer = extract_answer(response, style)
        if answer is None:
            return Verdict(Status.NO_ANSWER, None, "no answer found")
        if len(gold) > _MAX_ANSWER_CHARS:
            return Verdict(Status.CHECKER_ERROR, answer, "gold answer too long")
        if len(answer) > _MAX_ANSWER_CHARS:  # degenerate output; also bounds regex work
            return Verdict(Status.INCORRECT, answer, "answer too long")
        if fast_path:
            fast = _fast_compare(answer, gold)
        else:
            (g, _), (p, _) = _normalize(gold), _normalize(answer)
            fast = (g, p) if g and p else Verdict(Status.CHECKER_ERROR, answer, "empty")
    except Exception as e:  # noqa: BLE001 - a checker bug must not look like "incorrect"
        return Verdict(Status.CHECKER_ERROR, answer, f"{type(e).__name__}: {e}"[:500])
    return fast if isinstance(fast, Verdict) else (fast, answer)


def check_batch(
    responses: Sequence[str],
    golds: Sequence[str],
    *,
    style: Style = "auto",
    timeout_s: float = DEFAULT_TIMEOUT_S,
    max_workers: int | None = None,
    use_cache: bool = True,
    fast_path: bool = True,
) -> list[Verdict]:
    """One Verdict per (response, gold) pair; symbolic checks run in parallel workers.

    Args:
      responses: model outputs; the answer is found with `extract_answer(style=style)`.
      golds: reference final answers (see `gold_answer`), e.g. "18", "\\frac{14}{3}".
      timeout_s: per symbolic check; an overrun kills that worker and yields TIMEOUT.
      max_workers: size of the shared worker pool (default min(4, cores)).
      use_cache: remember symbolic verdicts for repeated (gold, answer) pairs.
      fast_path: False sends every pair to the symbolic checker, even identical strings
        (the self-check uses it to prove each gold parses); True is the normal mode.
    """
    if len(responses) != len(golds):
        raise ValueError(f"{len(responses)} responses but {len(golds)} golds")
    extract_answer("", style)  # a bad style is the caller's error: raise it here
    verdicts: list[Verdict | None] = [None] * len(responses)
    pending: dict[tuple[str, str], list[tuple[int, str]]] = {}
    for i, (response, gold) in enumerate(zip(responses, golds)):
        fast = _in_process(response, gold, style, fast_path)
        if isinstance(fast, Verdict):
            verdicts[i] = fast
        else:
            key, answer = fast
            pending.setdefault(key, []).append((i, answer))
    if pending:
        keys = list(pending)
        n_threads = min(len(keys), _get_pool(max_workers).max_workers)

        def run(key: tuple[str, str]) -> Verdict:
            return _symbolic_verdict(key, "", timeout_s, max_workers, use_cache)

        if n_threads == 1:
            results = [run(k) for k in keys]
        else:
            with concurrent.futures.ThreadPoolExecutor(n_threads) as ex:
                results = list(ex.map(run, keys))
        for key, result in zip(keys, results):
            for i, answer in pending[key]:
                verdicts[i] = dataclasses.replace(result, answer=answer)
    return verdicts  # type: ignore[return-value]


def check(
    response: str, gold: str, *, style: Style = "auto", timeout_s: float = DEFAULT_TIMEOUT_S
) -> Verdict:
    """The Verdict for one response; see check_batch."""
    return check_batch([response], [gold], style=style, timeout_s=timeout_s)[0]


def is_correct(
    response: str, gold: str, *, style: Style = "auto", timeout_s: float = DEFAULT_TIMEOUT_S
) -> bool:
    """True only when the answer is verified equal to the gold.

    Timeouts and checker errors are False here (never train on an unverified sample);
    use check / check_batch to count them apart from wrong answers.
    """
    return check(response, gold, style=style, timeout_s=timeout_s).correct
