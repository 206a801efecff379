"""Errors that are the user's to fix: the launcher prints them on one line and exits 2.

Raise one of these (never a bare ValueError or a TypeError from deep inside) when the cause
is the user's input: a flag, a gin file or binding, a data file, a checkpoint directory or
a workdir that belongs to another configuration. The message says what is wrong and what
to do; `rest_em.main` prints `error: <message>` without a traceback (`--verbosity=1` or
REST_EM_TRACEBACK=1 shows it).
"""

from __future__ import annotations


class UserError(Exception):
    """A mistake in the user's input; `str(e)` is the whole message."""

    exit_code = 2


class ConfigError(UserError, ValueError):
    """A gin file, binding, flag or config value is missing or wrong."""


class DataError(UserError, ValueError):
    """A data file is missing or a row is bad: the message names file:line: field."""


class CheckpointError(UserError, ValueError):
    """A checkpoint directory is unreadable, incomplete or of another architecture."""


class WorkdirConflict(UserError):
    """The workdir holds results of another configuration (see rest_em.workdir)."""


__all__ = ["CheckpointError", "ConfigError", "DataError", "UserError", "WorkdirConflict"]
