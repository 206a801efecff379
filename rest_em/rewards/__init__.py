"""Reward checkers: a binary reward r(x, y) for each sampled solution.

  math   final-answer extraction and equivalence (`rest_em.rewards.math`)
  code   programs run against tests in an OS-level sandbox (`rest_em.rewards.code`)
"""
