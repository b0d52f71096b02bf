"""The errors every command turns into one line: bad input (spec, data, name, path; exit status 2)
and a search that ran but has no result to register (exit status 1)."""

from __future__ import annotations


class SpecError(ValueError):
    """A problem with what the user gave, as one line: ``FILE: FIELD: what is wrong``."""


class SearchFailed(RuntimeError):
    """The search ran but produced no champion: no trial reported, or none met the constraints."""
