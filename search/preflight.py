"""Checks that need the data, run before Ray starts (by ``validate`` and ``run``).

The data loads and splits (a bad row is an error naming it, or skipped and
counted); every member reads an input the data has; every member builds (loading
its pretrained weights) and runs on two rows of its input. A member that cannot
read its input fails here in one line, not in every trial.
"""

from __future__ import annotations

import zipfile

import torch

from search.report import error_summary
from search.spec import Spec, SpecError
from trainables.data import Dataset, load_dataset
from trainables.members import BuildContext, build_member
from trainables.preprocess import take
from trainables.sources import plural


def load_data(spec: Spec) -> Dataset:
    """Load and split the spec's data, and check every member's input exists in it."""
    try:
        data = load_dataset(spec.data.source, spec.data.options(), spec.data.splits.val, spec.data.splits.test, spec.data_seed)
    except (OSError, ValueError, zipfile.BadZipFile) as error:
        where = f"data.path: {spec.data.path}" if spec.data.path else f"data.source: {spec.data.source}"
        raise SpecError(f"{where}: {error_summary(str(error))}") from None
    for i, member in enumerate(spec.members):
        if member.input not in data.inputs:
            known = ", ".join(sorted(data.inputs))
            raise SpecError(f"members[{i}].input: the data has no input {member.input!r} (inputs: {known})")
    return data


def data_summary(data: Dataset) -> str:
    """One line: rows per split, classes, and bad rows left out (with the first one)."""
    sizes = ", ".join(f"{name} {len(split)}" for name, split in data.splits.items())
    line = f"data: {data.rows} rows ({sizes}), {data.num_classes} classes"
    if data.skipped:
        line += f"; skipped {len(data.skipped)} bad {plural(len(data.skipped))} (first: {data.skipped[0]})"
    return line


def check_members(spec: Spec, data: Dataset) -> None:
    """Build each member, prepare two training rows and run it on them; one line per failure."""
    rows = {k: take(v, [0, 1]) for k, v in data.splits["train"].inputs.items()}
    for i, m in enumerate(spec.members):
        source = data.inputs[m.input]
        context = BuildContext(source.kind, tuple(source.shape))
        try:
            member = build_member(m.name, m.kind, m.input, context, dict(m.params), weights=m.weights).eval()
            with torch.no_grad():
                features = member(member.prepare(rows))
        except Exception as error:  # any failure here would fail every trial that uses the member
            message = error_summary(str(error).strip() or type(error).__name__)
            what = f"tensor {source.shape}" if source.kind == "tensor" else source.kind
            raise SpecError(f"members[{i}] ({m.name}): cannot run on input {m.input!r} ({what}): {message}") from None
        if features.shape != (2, member.width):
            raise SpecError(f"members[{i}] ({m.name}): gives features of shape {list(features.shape)}, expected [2, {member.width}]")
