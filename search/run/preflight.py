"""Checks that need the data or the storage, run before Ray starts (by ``validate`` and ``run``).

The data loads and splits (a bad row is an error naming it, or skipped and
counted); every member reads an input the data has; every member builds (loading
its pretrained weights) and runs on two rows of its input. A member that cannot
read its input fails here in one line, not in every trial. Every place the search
will write is checked too, without writing anything that stays.
"""

from __future__ import annotations

import os
import time
import uuid
import zipfile
from dataclasses import replace
from pathlib import Path

import pyarrow.fs
import sqlalchemy
import torch

from search.text import error_summary, first_line
from search.errors import SpecError
from search.locations import redact, uri_scheme
from search.spec.schema import MemberSpec, Spec
from trainables.registry import values_of
from trainables.data import ADAPT, Dataset, load_dataset
from trainables.metrics import BINARY_ONLY, QUALITY_METRICS, REGRESSION_METRICS
from trainables.members import build_member, member_facts, with_defaults
from trainables.preprocess import take
from trainables.sources import plural


def load_data(spec: Spec) -> Dataset:
    """Load and split the spec's data, and check every member's input exists in it and the metrics
    fit its task (``Spec.for_task``: the spec as the data's task makes it)."""
    try:
        options = replace(spec.data.options(), task=spec.task)
        data = load_dataset(spec.data.source, options, spec.data.splits.val, spec.data.splits.test, spec.data_seed)
    except (OSError, ValueError, zipfile.BadZipFile) as error:
        where = f"data.path: {spec.data.path}" if spec.data.path else f"data.source: {spec.data.source}"
        raise SpecError(f"{where}: {error_summary(str(error))}") from None
    for i, member in enumerate(spec.members):
        if member.input not in data.inputs:
            known = ", ".join(sorted(data.inputs))
            raise SpecError(f"members[{i}].input: the data has no input {member.input!r} (inputs: {known})")
    check_metrics(spec.for_task(data.task), data)
    if spec.adapts and ADAPT not in data.splits:
        raise SpecError("hyperparameters.adaptation: the data has no target rows without a label (or put in train by the split column) to adapt to")
    return data


FITTED_DIR = "fitted"  # under the storage folder: members fitted before the search (boosted trees)


def fit_members(spec: Spec, data: Dataset, folder: Path) -> Spec:
    """Fit the members whose kind is fitted before the search (on the training split) into ``folder``,
    and return the spec with each one's parameters pointing at what was fitted; one line per member."""
    members = list(spec.members)
    train = data.splits["train"]
    for i, m in enumerate(members):
        fit = member_facts(m.kind).fit
        if fit is None:
            continue
        started = time.monotonic()
        try:
            added = fit(with_defaults(m.kind, m.default_params), train.inputs[m.input], train.labels, data.num_classes, spec.seed, folder)
        except (OSError, ValueError) as error:
            raise SpecError(f"members[{i}] ({m.name}): cannot fit on input {m.input!r}: {error_summary(str(error))}") from None
        members[i] = m.model_copy(update={"params": {**m.params, **added}})
        print(f"{m.name}: {m.kind} fitted on {len(train)} training rows in {time.monotonic() - started:.1f} s ({next(iter(added.values()))})", flush=True)
    return spec.model_copy(update={"members": members}) if members != list(spec.members) else spec


def check_metrics(spec: Spec, data: Dataset) -> None:
    """The metrics fit the task: a regression's are RMSE, MAE and R², a classifier's the others; the
    positive class's metrics, and a decision threshold other than ``auto``, need two classes; class
    weights are for classes."""
    regression = data.task == "regression"
    named = [(f"objective[{i}].metric", o.metric) for i, o in enumerate(spec.objective)] + [(f"constraints.{m}", m) for m in spec.constraints]
    for where, metric in named:
        if metric in QUALITY_METRICS and (metric in REGRESSION_METRICS) != regression:
            fits = ", ".join(m for m in QUALITY_METRICS if (m in REGRESSION_METRICS) == regression)
            raise SpecError(f"{where}: {metric} does not apply to the task, {data.task} (use {fits})")
    if regression and "balanced" in values_of(spec.hyperparameters.class_weight):
        raise SpecError("hyperparameters.class_weight: balanced weighs classes, and the task is regression")
    if not regression and values_of(spec.hyperparameters.loss) != ["mse"]:
        raise SpecError(f"hyperparameters.loss: a regression's loss, and the task is {data.task} (classifiers train on cross-entropy)")
    if spec.decision_threshold != "auto" and data.num_classes != 2:
        raise SpecError(f"decision_threshold: {spec.decision_threshold!r} applies to two classes; the data has {data.num_classes}")
    for where, metric in named:
        if metric in BINARY_ONLY and data.num_classes != 2:
            raise SpecError(
                f"{where}: {metric} is the positive class's, for two classes; the data has {data.num_classes} "
                f"(use {metric}_macro)"
            )


def data_summary(data: Dataset, spec: Spec) -> str:
    """One line: rows per split, the task (and whether the labels said it), and bad rows left out
    (with the first one)."""
    sizes = ", ".join(f"{name} {len(split)}" for name, split in data.splits.items())
    said = "as the spec says" if spec.task else "inferred from the labels"
    if data.target is not None:
        what = f"task regression ({said}; training targets: mean {data.target[0]:.4g}, std {data.target[1]:.4g})"
    else:
        what = f"task {data.task} ({said}), {data.num_classes} classes"
    line = f"data: {data.rows} rows ({sizes}), {what}"
    if data.skipped:
        line += f"; skipped {len(data.skipped)} bad {plural(len(data.skipped))} (first: {data.skipped[0]})"
    return line if data.domains is None else f"{line}\n{data.domains.words()}"


def check_members(members: list[MemberSpec], data: Dataset, run_elsewhere: frozenset[str] = frozenset()) -> None:
    """Build each member, prepare two training rows and run it on them; one line per failure.
    Members in ``run_elsewhere`` (the feature cache pass builds and runs them on every row, and
    ``member_failed`` words its failures the same way) are not built here unless they augment."""
    rows = {k: take(v, [0, 1]) for k, v in data.splits["train"].inputs.items()}
    for i, m in enumerate(members):
        if m.name in run_elsewhere and values_of(m.augment) == ["none"]:
            continue
        source = data.inputs[m.input]
        context = source.context()
        try:
            member = build_member(m.name, m.kind, m.input, context, m.default_params, weights=m.weights).eval()
            with torch.no_grad():
                features = member(member.prepare(rows))
        except Exception as error:  # any failure here would fail every trial that uses the member
            raise member_failed(members, data, m.name, str(error).strip() or type(error).__name__) from None
        takes = getattr(member.preprocess, "augments", ())
        wrong = [a for a in values_of(m.augment) if a != "none" and a not in takes]
        if wrong:
            which = f"it takes {', '.join(takes)}" if takes else "it takes none"
            raise SpecError(f"members[{i}].augment: {wrong[0]!r} does not apply to {m.name}, which reads {source.kind} ({which})")
        if features.shape != (2, member.width):
            raise SpecError(f"members[{i}] ({m.name}): gives features of shape {list(features.shape)}, expected [2, {member.width}]")


def member_failed(members: list[MemberSpec], data: Dataset, name: str, message: str) -> SpecError:
    """The one-line error for member ``name`` failing to build or to run on its input."""
    i, m = next((i, m) for i, m in enumerate(members) if m.name == name)
    source = data.inputs[m.input]
    what = f"tensor {source.shape}" if source.kind == "tensor" else source.kind
    return SpecError(f"members[{i}] ({m.name}): cannot run on input {m.input!r} ({what}): {error_summary(message)}")


def check_storage(spec: Spec) -> None:
    """Everywhere the search will write can be written, without leaving anything behind: the
    storage folder, Tune's storage (a test write to a URI) and the Optuna study's database (a
    connection). A missing bucket, missing credentials, a read-only folder or a database that
    refuses is one line here rather than a failure after the first epoch."""
    check_writable_folder("storage", spec.storage)
    if spec.ray_storage is not None and uri_scheme(spec.ray_storage) is not None:
        check_writable_uri("ray_storage", spec.ray_storage)
    elif spec.ray_storage is not None:
        check_writable_folder("ray_storage", Path(spec.ray_storage))
    if spec.study_storage is not None:
        check_database("study_storage", spec.study_storage)


def check_writable_folder(field: str, folder: Path) -> None:
    """``folder`` exists as a writable folder or can be created (its nearest existing parent is one)."""
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    if not existing.is_dir():
        raise SpecError(f"{field}: cannot create {folder}: {existing} is a file")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise SpecError(f"{field}: cannot write to {folder}: {existing} is not writable")


def check_writable_uri(field: str, uri: str) -> None:
    """Write and delete one small file under ``uri`` through pyarrow, as Tune will. On a cluster
    every node needs the same access (credentials, network)."""
    try:
        filesystem, root = pyarrow.fs.FileSystem.from_uri(uri)
        probe = f"{root}/.fusion-search-probe-{uuid.uuid4().hex[:8]}"
        with filesystem.open_output_stream(probe) as stream:
            stream.write(b"ok")
        filesystem.delete_file(probe)
    except Exception as error:  # pyarrow raises OSError, ArrowInvalid, ... with the backend's own text
        raise SpecError(redact(f"{field}: cannot write to {uri}: {first_line(error)}")) from None


def check_database(field: str, url: str) -> None:
    """Connect to the database at ``url`` (and disconnect); the password stays out of the message."""
    try:
        engine = sqlalchemy.create_engine(url)
        with engine.connect():
            pass
        engine.dispose()
    except Exception as error:  # SQLAlchemy's errors for a bad URL, a missing driver, a refused connection
        raise SpecError(redact(f"{field}: cannot open {url}: {first_line(error)}")) from None
