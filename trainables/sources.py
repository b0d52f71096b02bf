"""Data sources, registered by name: where a dataset's rows come from.

``digits`` and ``npz`` give numeric inputs. The file sources give image, text and
table inputs with labels (numeric and categorical columns together form the input
``table``; a missing number is NaN, a missing category None): a manifest (CSV, JSONL or Parquet) whose image paths
are relative to the manifest, an ImageFolder tree, or a Hugging Face ``datasets``
folder written by ``save_to_disk``. Every row is checked as it is read (missing or
corrupt image, empty text, unknown label or split); a bad row is an error naming
its row number, or, with ``skip_bad_rows``, left out and counted.

Images stay where they are: a source keeps an ``ImageRef`` per row (the file's path
or the encoded bytes, and their digest), never decoded pixels. Checking that every
image decodes is the slow part of reading a data set, so it runs in chunks in
parallel (``parallel_map``): as Ray tasks over the nodes when the search runs on a
cluster of several, else in processes forked on this machine.
"""

from __future__ import annotations

import io
import json
import math
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, TypeVar

import numpy as np
import pandas as pd
import torch
from PIL import Image

from trainables.preprocess import AudioRef, Column, FileRef, ImageRef, Table
from trainables.registry import Registry

SPLIT_NAMES = {"train": "train", "val": "val", "valid": "val", "validation": "val", "dev": "val", "test": "test"}
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
MANIFEST_SUFFIXES = (".csv", ".jsonl", ".parquet")
CHECK_CHUNK = 256  # images checked per parallel task


@dataclass(frozen=True)
class SourceOptions:
    """What the spec says about its data (``data.*``), in the form sources read."""

    path: Path | None = None
    images: tuple[tuple[str, str], ...] = (("image", "image"),)  # (input name, column) of each image column
    texts: tuple[tuple[str, str], ...] = (("text", "text"),)  # the same for text columns
    audios: tuple[tuple[str, str], ...] = ()  # the same for audio columns (file paths or encoded bytes)
    numeric: tuple[str, ...] = ()  # numeric and categorical columns: together the input ``table``
    categorical: tuple[str, ...] = ()
    label_column: str = "label"
    split_column: str | None = None
    classes: tuple[str, ...] | None = None
    skip_bad_rows: bool = False
    task: str | None = None  # binary, multiclass or regression; None: inferred from the labels
    domain_column: str | None = None  # which domain each row is from; target rows may have no label
    source_domains: tuple[str, ...] = ()
    target_domains: tuple[str, ...] = ()


REGRESSION_DISTINCT = 20  # integer labels with more distinct values than this are a regression target
TABLE_INPUT = "table"  # the input a data set's numeric and categorical columns form together


@dataclass
class RawData:
    """A source's rows: raw input columns, label strings or ids, and what was left out."""

    inputs: dict[str, Column]
    labels: np.ndarray  # int64 class ids, or float32 targets (regression)
    class_names: list[str]  # none for regression
    split: np.ndarray | None = None  # "train" / "val" / "test" per row, when the data says
    skipped: list[str] = field(default_factory=list)
    task: str = "multiclass"
    target: np.ndarray | None = None  # per row, whether it is of a target domain (with a domain column)
    labelled: np.ndarray | None = None  # per row, whether it has a label (a target row may not: its label id is then 0, never read)


@dataclass(frozen=True)
class SourceFacts:
    """What a data source needs besides its factory: what ``data.path`` must be, if it reads one."""

    path: str | None = None  # "file", "folder", or None (no path)


SOURCES: Registry[Callable[[SourceOptions], RawData]] = Registry("data source")


def source_facts(name: str) -> SourceFacts:
    return SOURCES.get(name).facts or SourceFacts()


def plural(count: int) -> str:
    return "row" if count == 1 else "rows"


class RowProblem(ValueError):
    """What is wrong with one row."""


def input_columns(kind: str, names: str | list[str] | None) -> tuple[tuple[str, str], ...]:
    """(input name, column) of a kind's columns as a spec names them: one column is the input named
    after the kind (``image``, ``text``), each of a list the input named after its column."""
    if names is None:
        return ()
    if isinstance(names, str):
        return ((kind, names),)
    return tuple((name, name) for name in names)


@dataclass
class Record:
    """One row as read, before checking: ``where`` names it in messages; ``images``, ``texts`` and
    ``audios`` by input name, ``cells`` of numeric and categorical columns by column."""

    where: str
    images: dict[str, Any] = field(default_factory=dict)
    texts: dict[str, Any] = field(default_factory=dict)
    label: Any = None
    split: Any = None
    cells: dict[str, Any] = field(default_factory=dict)
    domain: Any = None
    audios: dict[str, Any] = field(default_factory=dict)


def is_missing(value: Any) -> bool:
    return value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)) or (isinstance(value, str) and not value.strip())


def label_text(value: Any) -> str:
    """A label as a class name: ``3``, ``3.0``, ``"3"`` and ``"3.0"`` are the same class."""
    if isinstance(value, (list, tuple, dict, set, np.ndarray)):
        raise RowProblem(f"the label is of type {type(value).__name__}, not one class")
    text = str(value).strip()
    try:
        number = float(text)
    except ValueError:
        return text
    return str(int(number)) if number.is_integer() else text


def sort_classes(names: Iterable[str]) -> list[str]:
    """Class names in a natural order: numerically when they are all integers."""
    unique = set(names)
    if all(n.lstrip("-").isdigit() for n in unique):
        return sorted(unique, key=int)
    return sorted(unique)


def number(value: Any, column: str) -> float:
    """A numeric cell as a float; NaN when it is missing."""
    if is_missing(value):
        return math.nan
    if isinstance(value, bool) or not isinstance(value, (int, float, str, np.number)):
        raise RowProblem(f"column {column!r} holds {type(value).__name__}, not a number")
    try:
        result = float(value)
    except ValueError:
        raise RowProblem(f"column {column!r} holds {str(value)[:40]!r}, not a number") from None
    if math.isinf(result):
        raise RowProblem(f"column {column!r} holds an infinite number")
    return result


def category(value: Any, column: str) -> str | None:
    """A categorical cell as its value's text (``3`` and ``3.0`` alike); None when it is missing."""
    if is_missing(value):
        return None
    if isinstance(value, (list, tuple, dict, set, np.ndarray, bytes)):
        raise RowProblem(f"column {column!r} holds {type(value).__name__}, not one category")
    return label_text(value)


def gather_table(records: list[Record], kept: list[int], options: SourceOptions) -> Table:
    """The kept rows' numeric and categorical columns as one ``Table``; a column that cannot tell rows
    apart (no numbers at all, or one category only) is an error naming it."""
    table = Table.of(
        options.numeric,
        options.categorical,
        [[records[i].cells[c] for i in kept] for c in options.numeric],
        [[records[i].cells[c] for i in kept] for c in options.categorical],
    )
    for j, column in enumerate(options.categorical):
        values = sorted({v for v in table.categories[:, j] if v is not None})
        if len(values) < 2:
            found = f"one value only ({values[0]!r})" if values else "no values"
            raise ValueError(f"column {column!r} has {found}: it cannot tell rows apart; leave it out of data.columns.categorical")
    for j, column in enumerate(options.numeric):
        if np.isnan(table.numbers[:, j]).all():
            raise ValueError(f"column {column!r} has no numbers: leave it out of data.columns.numeric")
    return table


def file_cell(value: Any, base: Path | None, what: str) -> str | bytes:
    """One cell of an image or audio column as a path (relative to ``base``, resolved) or encoded
    bytes (a Hugging Face ``Image(decode=False)`` / ``Audio(decode=False)`` dict gives either)."""
    if isinstance(value, dict):
        value = value.get("bytes") or value.get("path")
    if is_missing(value):
        raise RowProblem(f"no {what}")
    if isinstance(value, str):
        path = Path(value) if base is None or Path(value).is_absolute() else base / value
        if not path.is_file():
            raise RowProblem(f"{what} file {value!r} does not exist")
        return str(path.resolve())
    if not isinstance(value, bytes):
        raise RowProblem(f"an {what} cell holds a path or encoded bytes, not {type(value).__name__}")
    return value


def named(value: str | bytes) -> str:
    return f" {Path(value).name!r}" if isinstance(value, str) else ""


def check_image(value: Any, base: Path | None) -> ImageRef:
    """A reference to one image cell, after checking that it decodes; the pixels are not kept."""
    value = file_cell(value, base, "image")
    try:
        reference = ImageRef.read(value)
        reference.decode()
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        raise RowProblem(f"corrupt image{named(value)}: {str(error).splitlines()[0]}") from None
    return reference


MAX_AUDIO_SECONDS = 600.0  # a longer recording is refused: members read clips of seconds


def check_audio(value: Any, base: Path | None) -> AudioRef:
    """A reference to one audio cell, after checking that it decodes to samples, not too many;
    the samples are not kept."""
    import soundfile

    value = file_cell(value, base, "audio")
    try:
        info = soundfile.info(io.BytesIO(value) if isinstance(value, bytes) else value)
    except (OSError, RuntimeError, ValueError) as error:  # soundfile.LibsndfileError is a RuntimeError
        raise RowProblem(f"unreadable audio{named(value)}: {str(error).splitlines()[0]}") from None
    if info.frames == 0:
        raise RowProblem(f"empty audio{named(value)} (no samples)")
    if info.duration > MAX_AUDIO_SECONDS:
        raise RowProblem(f"audio{named(value)} is {info.duration:.0f} s long (at most {MAX_AUDIO_SECONDS:.0f} s; cut it into clips)")
    return AudioRef.read(value)


def check_cells(cells: list[Any], base: Path | None, check: Callable[[Any, Path | None], FileRef]) -> list[FileRef | str]:
    """``check`` for each cell: its reference, or what is wrong with it."""
    checked: list[FileRef | str] = []
    for cell in cells:
        try:
            checked.append(check(cell, base))
        except RowProblem as problem:
            checked.append(str(problem))
    return checked


T = TypeVar("T")


def parallel_map(function: Callable[..., T], chunks: list[Any], *args: Any) -> list[T]:
    """``function(chunk, *args)`` for every chunk, in parallel: Ray tasks over the cluster when Ray
    spans several nodes, else processes forked from this one (on one machine they are as parallel,
    and start without importing anything), inline for a single chunk."""
    import ray

    if ray.is_initialized() and len(chunks) > 1 and len([n for n in ray.nodes() if n["Alive"]]) > 1:
        task = ray.remote(function).options(name=function.__name__)
        return ray.get([task.remote(chunk, *args) for chunk in chunks])
    if len(chunks) > 1 and (os.cpu_count() or 1) > 1:
        workers = min(os.cpu_count() or 1, len(chunks))
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
            return list(pool.map(function, chunks, *([a] * len(chunks) for a in args)))
    return [function(chunk, *args) for chunk in chunks]


def checked_cells(cells: list[Any], base: Path | None, check: Callable[[Any, Path | None], FileRef]) -> list[FileRef | str]:
    """``check_cells`` of a column, in parallel chunks."""
    chunks = [cells[i : i + CHECK_CHUNK] for i in range(0, len(cells), CHECK_CHUNK)]
    return [checked for chunk in parallel_map(check_cells, chunks, base, check) for checked in chunk]


def text_problem(value: Any) -> str | None:
    """What is wrong with a text cell, or None."""
    if is_missing(value):
        return "empty text"
    if not isinstance(value, str):
        return f"the text is of type {type(value).__name__} ({str(value)[:40]}), not a string"
    return None


def collect(records: Iterable[Record], options: SourceOptions, base: Path | None, label_names: list[str] | None = None) -> RawData:
    """Check every record and gather the good ones into a ``RawData``.

    ``label_names`` maps integer labels to names (an HF ``ClassLabel``). Images are checked in
    parallel chunks and kept as references. With several columns of a kind, a problem names the column.
    """
    records = list(records)
    files = {name: checked_cells([r.images[name] for r in records], base, check_image) for name, _ in options.images}
    files.update({name: checked_cells([r.audios[name] for r in records], base, check_audio) for name, _ in options.audios})
    labels: list[str | None] = []
    splits: list[str] = []
    targets_of: list[bool] = []
    kept: list[int] = []
    problems: list[str] = []
    known = set(options.classes) if options.classes else None
    for i, record in enumerate(records):
        try:
            target = row_domain(record.domain, options)
            label = None if is_missing(record.label) else label_names[int(record.label)] if label_names is not None else label_text(record.label)
            if label is None and not target:
                raise RowProblem("empty label" if options.domain_column else "empty label (a row without one belongs to a target domain: set data.columns.domain)")
            if known is not None and label is not None and label not in known:
                raise RowProblem(f"unknown label {label!r} (data.classes: {', '.join(options.classes or ())})")
            if options.split_column is not None:
                if str(record.split).strip().lower() not in SPLIT_NAMES:
                    raise RowProblem(f"unknown split {record.split!r} (use train, val or test)")
            for name, column in options.texts:
                problem = text_problem(record.texts[name])
                if problem is not None:
                    raise RowProblem(f"{problem} in column {column!r}" if len(options.texts) > 1 else problem)
            for name, column in (*options.images, *options.audios):
                if isinstance(files[name][i], str):
                    raise RowProblem(f"{files[name][i]} in column {column!r}" if len(files) > 1 else files[name][i])
            record.cells = {c: number(record.cells.get(c), c) for c in options.numeric} | {
                c: category(record.cells.get(c), c) for c in options.categorical
            }
        except RowProblem as problem:
            problems.append(f"{record.where}: {problem}")
            continue
        labels.append(label)
        targets_of.append(target)
        kept.append(i)
        if options.split_column is not None:
            splits.append(SPLIT_NAMES[str(record.split).strip().lower()])
    if problems and not options.skip_bad_rows:
        more = f" (and {len(problems) - 1} more bad {plural(len(problems) - 1)})" if len(problems) > 1 else ""
        raise ValueError(f"{problems[0]}{more}; fix the data or set data.bad_rows: skip to leave bad rows out")
    if not labels:
        raise ValueError("no usable rows")
    target = np.array(targets_of) if options.domain_column else None
    labelled = np.array([label is not None for label in labels])
    check_domains(records, kept, options)
    named = [label for label in labels if label is not None]
    inputs: dict[str, Column] = {name: [files[name][i] for i in kept] for name, _ in (*options.images, *options.audios)}
    inputs.update({name: [str(records[i].texts[name]) for i in kept] for name, _ in options.texts})
    if options.numeric or options.categorical:
        inputs[TABLE_INPUT] = gather_table(records, kept, options)
    split = np.array(splits) if options.split_column is not None else None
    if options.task == "regression" or (options.task is None and looks_like_regression(named, options, label_names)):
        values = np.zeros(len(labels), dtype=np.float32)
        values[labelled] = targets(named, [records[i].where for i, has in zip(kept, labelled, strict=True) if has])
        return RawData(inputs, values, [], split, problems, "regression", target, labelled)
    class_names = list(options.classes) if options.classes else (label_names or sort_classes(named))
    task = class_task(options.task, class_names, "the label column")
    index = {name: i for i, name in enumerate(class_names)}
    ids = np.array([index[label] if label is not None else 0 for label in labels], dtype=np.int64)
    return RawData(inputs, ids, class_names, split, problems, task, target, labelled)


def row_domain(value: Any, options: SourceOptions) -> bool:
    """Whether a row with domain ``value`` is of a target domain (False without a domain column);
    a value in neither list is a problem of that row."""
    if options.domain_column is None:
        return False
    name = label_text(value) if not is_missing(value) else ""
    if name in options.target_domains:
        return True
    if name not in options.source_domains:
        raise RowProblem(f"domain {name!r} is in neither data.domains.source nor data.domains.target")
    return False


def check_domains(records: list[Record], kept: list[int], options: SourceOptions) -> None:
    """Every domain the spec lists has rows, and a target domain at least one."""
    if options.domain_column is None:
        return
    present = {label_text(records[i].domain) for i in kept}
    for role, listed in (("source", options.source_domains), ("target", options.target_domains)):
        absent = [d for d in listed if d not in present]
        if absent:
            raise ValueError(f"data.domains.{role}: no row has domain {absent[0]!r} in column {options.domain_column!r}")


def class_task(given: str | None, class_names: list[str], what: str) -> str:
    """A classifier's task: ``given`` (binary needs two classes: ``what`` names the labels in the
    error), else binary for two classes and multiclass for more."""
    if given == "binary" and len(class_names) != 2:
        more = ", ..." if len(class_names) > 5 else ""
        raise ValueError(f"task: binary, but {what} has {len(class_names)} classes ({', '.join(class_names[:5])}{more})")
    return given or ("binary" if len(class_names) == 2 else "multiclass")


def looks_like_regression(labels: list[str], options: SourceOptions, label_names: list[str] | None) -> bool:
    """Whether the labels ask for a regression: every label is a number and some are not integers or
    there are more than ``REGRESSION_DISTINCT`` of them (and no classes are named)."""
    if options.classes is not None or label_names is not None:
        return False
    try:
        values = [float(v) for v in set(labels)]
    except ValueError:
        return False
    return any(not v.is_integer() for v in values) or len(values) > REGRESSION_DISTINCT


def targets(labels: list[str], wheres: list[str]) -> np.ndarray:
    """Regression targets as float32; a label that is not a finite number is an error naming its row."""
    values = np.empty(len(labels), dtype=np.float32)
    for i, (label, where) in enumerate(zip(labels, wheres, strict=True)):
        try:
            values[i] = float(label)
        except ValueError:
            raise ValueError(f"{where}: the label {label!r} is not a number (task: regression)") from None
        if not math.isfinite(values[i]):
            raise ValueError(f"{where}: the label is {label} (task: regression needs finite numbers)")
    return values


# ---------------------------------------------------------------- numeric sources


@SOURCES.register("digits")
def digits(options: SourceOptions) -> RawData:
    """scikit-learn's 8x8 handwritten digits: ``image`` (1, 8, 8) and ``flat`` (64,), scaled to [0, 1]."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = torch.from_numpy((bunch.images / 16.0).astype(np.float32))
    inputs: dict[str, Column] = {"image": images[:, None, :, :], "flat": images.reshape(len(images), -1)}
    if options.task not in (None, "multiclass"):
        raise ValueError(f"the digits are ten classes: task {options.task} does not fit them")
    return RawData(inputs, bunch.target.astype(np.int64), [str(c) for c in bunch.target_names])


@SOURCES.register("npz", facts=SourceFacts(path="file"))
def npz(options: SourceOptions) -> RawData:
    """Your own arrays: an ``.npz`` with ``label`` (N,: integer classes, or float targets for
    regression), optional ``class_names``, and one array per input."""
    path = options.path
    if path is None:
        raise ValueError("the npz source needs data.path")
    with np.load(path, allow_pickle=False) as archive:
        arrays = {k: archive[k] for k in archive.files}
    if "label" not in arrays:
        raise ValueError(f"no 'label' array (found: {', '.join(sorted(arrays))})")
    labels = arrays.pop("label")
    names = arrays.pop("class_names", None)
    regression = options.task == "regression" or (options.task is None and np.issubdtype(labels.dtype, np.floating))
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.floating if regression else np.integer):
        kind = "a float array (task: regression)" if regression else "an integer array"
        raise ValueError(f"'label' must be {kind} of one dimension, got {labels.dtype} of shape {labels.shape}")
    if regression and not np.isfinite(labels).all():
        raise ValueError(f"'label' has NaN or infinite values, the first in row {int(np.flatnonzero(~np.isfinite(labels))[0]) + 1}")
    if not regression and labels.min() < 0:
        raise ValueError("'label' has negative values")
    if not arrays:
        raise ValueError("no input arrays besides 'label'")
    for key, value in arrays.items():
        if value.shape[0] != labels.shape[0]:
            raise ValueError(f"input {key!r} has {value.shape[0]} rows but 'label' has {labels.shape[0]}")
        if not np.issubdtype(value.dtype, np.number):
            raise ValueError(f"input {key!r} is {value.dtype}, not numbers")
        bad = np.flatnonzero(~np.isfinite(value.reshape(len(value), -1)).all(axis=1))
        if len(bad):
            raise ValueError(f"input {key!r} has NaN or infinite values in {len(bad)} {plural(len(bad))}, the first row {bad[0] + 1}")
    inputs: dict[str, Column] = {k: torch.from_numpy(v.astype(np.float32)) for k, v in arrays.items()}
    if regression:
        return RawData(inputs, labels.astype(np.float32), [], task="regression")
    num_classes = int(labels.max()) + 1
    class_names = [str(n) for n in names] if names is not None else [str(i) for i in range(num_classes)]
    if len(class_names) < num_classes:
        raise ValueError(f"{len(class_names)} class_names for labels up to {num_classes - 1}")
    return RawData(inputs, labels.astype(np.int64), class_names, task=class_task(options.task, class_names, "'label'"))


# ---------------------------------------------------------------- image + text files


def read_table(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(row number from 1, row) for a CSV, JSONL or Parquet manifest."""
    if path.suffix == ".csv":
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    elif path.suffix == ".parquet":
        frame = pd.read_parquet(path)
    elif path.suffix == ".jsonl":
        rows = []
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as error:
                    raise ValueError(f"line {number}: not valid JSON: {error.msg}") from None
                if not isinstance(rows[-1], dict):
                    raise ValueError(f"line {number}: expected a JSON object, got {type(rows[-1]).__name__}")
        frame = pd.DataFrame(rows)
    else:
        raise ValueError(f"a manifest is {', '.join(MANIFEST_SUFFIXES)}, not {path.suffix or 'a file without suffix'}")
    for number, row in enumerate(frame.to_dict("records"), start=1):
        yield number, row


def check_columns(columns: list[str], wanted: list[tuple[str, str | None]]) -> None:
    """Every column the spec names must exist: ``data.columns.<role>`` names the fix."""
    for role, name in wanted:
        if name is not None and name not in columns:
            unset = " (null when the data has none)" if role in ("image", "text") else ""
            raise ValueError(f"no column {name!r} (columns: {', '.join(map(str, columns))}); set data.columns.{role}{unset}")


def named_columns(options: SourceOptions) -> list[tuple[str, str | None]]:
    """(role, column) of every column the spec names."""
    named = [("image", column) for _, column in options.images] + [("text", column) for _, column in options.texts]
    named += [("audio", column) for _, column in options.audios]
    named += [("numeric", column) for column in options.numeric] + [("categorical", column) for column in options.categorical]
    return named + [("label", options.label_column), ("split", options.split_column), ("domain", options.domain_column)]


def records_from_rows(rows: Iterable[tuple[int, dict[str, Any]]], options: SourceOptions, prefix: str) -> Iterator[Record]:
    for number, row in rows:
        yield Record(
            f"{prefix}row {number}",
            {name: row.get(column) for name, column in options.images},
            {name: row.get(column) for name, column in options.texts},
            row.get(options.label_column),
            row.get(options.split_column) if options.split_column else None,
            {column: row.get(column) for column in (*options.numeric, *options.categorical)},
            row.get(options.domain_column) if options.domain_column else None,
            {name: row.get(column) for name, column in options.audios},
        )


@SOURCES.register("manifest", facts=SourceFacts(path="file"))
def manifest(options: SourceOptions) -> RawData:
    """A CSV, JSONL or Parquet table: image path, text and label columns (image paths relative to the table)."""
    path = options.path
    if path is None:
        raise ValueError("the manifest source needs data.path (a .csv, .jsonl or .parquet file)")
    rows = list(read_table(path))
    if not rows:
        raise ValueError("the manifest has no rows")
    check_columns(list(rows[0][1]), named_columns(options))
    return collect(records_from_rows(rows, options, ""), options, path.parent)


@SOURCES.register("imagefolder", facts=SourceFacts(path="folder"))
def imagefolder(options: SourceOptions) -> RawData:
    """An ImageFolder tree: ``ROOT/<class>/<image>``, or ``ROOT/{train,val,test}/<class>/<image>``."""
    root = options.path
    if root is None or not root.is_dir():
        raise ValueError("the imagefolder source needs data.path, a folder of class folders")
    subfolders = sorted(p for p in root.iterdir() if p.is_dir())
    if not subfolders:
        raise ValueError(f"{root} has no class folders")
    by_split = {p.name for p in subfolders} <= set(SPLIT_NAMES)
    tops = [(SPLIT_NAMES[p.name], p) for p in subfolders] if by_split else [(None, root)]
    records = []
    for split, top in tops:
        for class_dir in sorted(p for p in top.iterdir() if p.is_dir()):
            for file in sorted(class_dir.iterdir()):
                if file.suffix.lower() in IMAGE_SUFFIXES:
                    records.append(Record(str(file.relative_to(root)), {"image": str(file)}, {}, class_dir.name, split))
    if not records:
        raise ValueError(f"{root} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    if options.task == "regression":
        raise ValueError("an ImageFolder tree labels its images by folder: it is classification, not regression")
    classes = sort_classes(record.label for record in records)
    folder_options = replace(
        options, images=(("image", "image"),), texts=(), numeric=(), categorical=(), label_column="label",
        split_column="split" if by_split else None, task=class_task(options.task, classes, "the class folders"),
    )
    return collect(records, folder_options, None)


@SOURCES.register("hf_disk", facts=SourceFacts(path="folder"))
def hf_disk(options: SourceOptions) -> RawData:
    """A Hugging Face ``datasets`` folder written by ``save_to_disk`` (a Dataset or a DatasetDict of splits)."""
    import datasets

    if options.path is None or not options.path.is_dir():
        raise ValueError("the hf_disk source needs data.path, a folder written by save_to_disk")
    loaded = datasets.load_from_disk(str(options.path))
    parts = loaded.items() if isinstance(loaded, datasets.DatasetDict) else [(None, loaded)]
    label_names: list[str] | None = None
    records: list[Record] = []
    for split, part in parts:
        if split is not None and split not in SPLIT_NAMES:
            raise ValueError(f"split {split!r} is not train, validation or test")
        check_columns(list(part.column_names), named_columns(options))
        feature = part.features.get(options.label_column)
        if isinstance(feature, datasets.ClassLabel):
            label_names = list(feature.names)
        for _, column in options.images:
            if isinstance(part.features[column], datasets.Image):
                part = part.cast_column(column, datasets.Image(decode=False))
        for _, column in options.audios:
            if isinstance(part.features[column], datasets.Audio):
                part = part.cast_column(column, datasets.Audio(decode=False))
        prefix = f"split {split} " if split is not None else ""
        rows = ((i + 1, row) for i, row in enumerate(part))
        for record in records_from_rows(rows, options, prefix):
            record.split = split if split is not None else record.split
            records.append(record)
    split_column = "split" if isinstance(loaded, datasets.DatasetDict) else options.split_column
    return collect(records, replace(options, split_column=split_column), options.path, label_names)
