"""Tasks: problems, prompts, reference solutions and checkers (no seqio import here)."""

from rest_em.tasks.problems import DataError, Problem, Task, read_jsonl

__all__ = ["DataError", "Problem", "Task", "read_jsonl"]
