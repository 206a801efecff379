"""The one status type of every reward: what a checker says about one sample.

`Status` is what tasks' `score`, the math checker and (via `OUTCOME_STATUS`) the code
reward report; only CORRECT earns reward 1. It is a `str` enum, so a status is its value
wherever a string is expected: `Status.CORRECT == "correct"`, `str(Status.CORRECT)`,
`f"{Status.CORRECT}"` and `json.dumps(Status.CORRECT)` give exactly `correct` /
`"correct"` on every Python version, and statuses written to JSONL by the E-step read
back as plain strings that compare equal to the members.

`Outcome` is the code reward's detailed verdict (why a program failed); `OUTCOME_STATUS`
maps it onto `Status`:

    PASSED                                     -> CORRECT
    WRONG_ANSWER, RUNTIME_ERROR, OUTPUT_LIMIT  -> INCORRECT   (a verdict on the program)
    TIMEOUT                                    -> TIMEOUT
    CHECKER_ERROR                              -> CHECKER_ERROR (no verdict: the sandbox or
                                                                 the test itself failed)

A program that ran too long is TIMEOUT, as for the math checker, so that "the checker
could not decide in time" and "wrong" stay countable apart (the loop counts TIMEOUT with
the checker errors). The code reward never reports NO_ANSWER; a task that extracts a
program from a completion reports it when there is none.

Standard library only: the pool workers load this file by path.
"""

from __future__ import annotations

import enum

__all__ = ["OUTCOME_STATUS", "Outcome", "Status"]


class _StrEnum(str, enum.Enum):
    """A str enum whose str() and format() are its value on every Python version
    (Python 3.12 changed the format() of `(str, Enum)` members to str(), which is the
    qualified name unless overridden)."""

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return self.value.__format__(spec)


class Status(_StrEnum):
    """Outcome of one check; only CORRECT earns a reward."""

    CORRECT = "correct"
    INCORRECT = "incorrect"
    NO_ANSWER = "no_answer"  # nothing to check was found in the response
    CHECKER_ERROR = "checker_error"  # the checker could not decide (e.g. a broken gold)
    TIMEOUT = "timeout"  # the check overran its time limit


class Outcome(_StrEnum):
    """The code reward's detailed verdict on one program (see OUTCOME_STATUS)."""

    PASSED = "passed"
    WRONG_ANSWER = "wrong_answer"  # an assert failed / output or return value differs
    RUNTIME_ERROR = "runtime_error"  # the program raised, crashed, exited early, non-zero exit
    TIMEOUT = "timeout"  # wall-clock or CPU limit
    OUTPUT_LIMIT = "output_limit"  # more than max_output_bytes on stdout
    CHECKER_ERROR = "checker_error"  # the sandbox or the test itself failed: not a verdict


OUTCOME_STATUS: dict[Outcome, Status] = {
    Outcome.PASSED: Status.CORRECT,
    Outcome.WRONG_ANSWER: Status.INCORRECT,
    Outcome.RUNTIME_ERROR: Status.INCORRECT,
    Outcome.OUTPUT_LIMIT: Status.INCORRECT,
    Outcome.TIMEOUT: Status.TIMEOUT,
    Outcome.CHECKER_ERROR: Status.CHECKER_ERROR,
}
