"""The errors every command turns into one line: bad input (spec, data, name, path; exit status 2)
a search that ran but has no result to register (exit status 1), and one stopped short of its
budget (exit status 130)."""

from __future__ import annotations


class SpecError(ValueError):
    """A problem with what the user gave, as one line: ``FILE: FIELD: what is wrong``."""


class StoreUnreachable(SpecError):
    """The MLflow tracking server did not answer (worth trying again later)."""


class SearchFailed(RuntimeError):
    """The search ran but produced no champion: no trial reported, or none met the constraints."""


class SearchInterrupted(RuntimeError):
    """The search was stopped (Ctrl+C) before its trial budget was spent."""
