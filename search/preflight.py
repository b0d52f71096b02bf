"""Checks that need the data, run before Ray starts (by ``validate`` and ``run``).

The data loads and splits; every member reads an input the data has; every member
builds (loading its weights file) and runs on two rows of its input. A member that
cannot read its input fails here in one line, not in every trial.
"""

from __future__ import annotations

import zipfile

import torch

from search.report import error_summary
from search.spec import Spec, SpecError
from trainables.data import Dataset, load_dataset
from trainables.members import build_member


def load_data(spec: Spec) -> Dataset:
    """Load and split the spec's data, and check every member's input exists in it."""
    try:
        data = load_dataset(spec.data.source, spec.data.path, spec.data.splits.val, spec.data.splits.test, spec.data_seed)
    except (OSError, ValueError, zipfile.BadZipFile) as error:
        where = f"data.path: {spec.data.path}" if spec.data.path else f"data.source: {spec.data.source}"
        raise SpecError(f"{where}: {error}") from None
    for i, member in enumerate(spec.members):
        if member.input not in data.input_shapes:
            known = ", ".join(sorted(data.input_shapes))
            raise SpecError(f"members[{i}].input: the data has no input {member.input!r} (inputs: {known})")
    return data


def check_members(spec: Spec, data: Dataset) -> None:
    """Build each member and run it on two training rows; one line per failure."""
    rows = {k: v[:2] for k, v in data.splits["train"].inputs.items()}
    for i, m in enumerate(spec.members):
        shape = tuple(data.input_shapes[m.input])
        try:
            member = build_member(m.name, m.kind, m.input, shape, dict(m.params), m.frozen, m.weights).eval()
            with torch.no_grad():
                features = member(rows)
        except Exception as error:  # any failure here would fail every trial that uses the member
            message = error_summary(str(error).strip() or type(error).__name__)
            raise SpecError(f"members[{i}] ({m.name}): cannot run on input {m.input!r} of shape {list(shape)}: {message}") from None
        if features.shape != (2, member.width):
            raise SpecError(f"members[{i}] ({m.name}): gives features of shape {list(features.shape)}, expected [2, {member.width}]")
