"""Reward checkers: a binary reward r(x, y) for each sampled solution.

  status  the one `Status` every checker and task reports (a str enum: "correct", ...)
  math    final-answer extraction and equivalence (`rest_em.rewards.math`; its parts are
          math_answers, math_equivalence, math_check and _math_symbolic, the workers')
  code    programs run against tests in an OS-level sandbox (`rest_em.rewards.code`;
          the checker worker is _code_worker and _code_host, the sandbox _sandbox_child)
  _pool   killable worker processes (HardTimeoutPool) and the per-process default pool

Nothing here imports JAX; the workers load their files by path, with the standard library.
"""
