"""The error every command turns into one line and exit status 2: bad input (spec, data, name, path)."""

from __future__ import annotations


class SpecError(ValueError):
    """A problem with what the user gave, as one line: ``FILE: FIELD: what is wrong``."""
