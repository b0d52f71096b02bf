"""The search spec: one YAML file, validated completely before anything starts.

``load_spec(path)`` returns a ``Spec`` or raises ``SpecError`` whose message is one
line naming the file, the field and what is wrong. Nothing here starts Ray, opens
an Optuna study or touches MLflow, so a bad spec costs nothing.

Relative paths inside the spec (``data.path``, ``members[*].weights``) are read
relative to the spec file; ``storage`` and a ``ray_storage`` folder are relative to
the working directory. ``Spec.with_environment`` fills the tracking URI and the two
storages from the environment when the spec leaves them empty (``ENVIRONMENT``).
"""

from __future__ import annotations

import inspect
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator, model_validator

from search.errors import SpecError
from search.spec.objectives import METRICS, SELECT_RULES, Bound, Goal, Objectives
from search.spec.samplers import DEFAULT_SAMPLER, SAMPLERS
from search.locations import ENVIRONMENT, RAY_STORAGE_SCHEMES, default_tracking_uri, redact, uri_scheme
from trainables.adaptation import NONE, adaptation_names
from trainables.composite import CLASS_WEIGHTS, REGRESSION_LOSSES
from trainables.fusion import OPERATORS
from trainables.members import MEMBERS, check_policy, member_facts
from trainables.metrics import CLASS_METRICS, COST_METRICS, QUALITY_METRICS
from trainables.preprocess import AUDIO_AUGMENTS, AUGMENTS
from trainables.registry import Choice, FieldError, FloatRange, IntRange, ParamSpace, default_of, is_searched, parse_space, values_of
from trainables.sources import SOURCES, TABLE_INPUT, SourceOptions, input_columns, source_facts
from trainables.precision import PRECISIONS

NAME_PATTERN = r"^[A-Za-z][A-Za-z0-9_-]{0,63}$"
def field_error(field: str, message: str) -> ValueError:
    """An error a model validator raises about one of its fields (``first_error`` places it)."""
    return ValueError(f"@{field}@ {message}")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def parse_searchable(value: Any) -> Any:
    """A fixed scalar, a ``{low, high, log}`` range or a non-empty list of choices, as the
    registry's search-space types (``trainables.registry``: one vocabulary for the spec and the
    operators' declarations)."""
    try:
        return parse_space(value)
    except FieldError as error:
        raise ValueError(f"{error.field}: {error}" if error.field else str(error)) from None


# A searchable value: fixed (a number or string), a range (IntRange / FloatRange), or a Choice.
Searchable = Annotated[Any, BeforeValidator(parse_searchable)]


class Splits(Strict):
    val: float = Field(0.2, gt=0, lt=1)
    test: float = Field(0.2, gt=0, lt=1)

    @model_validator(mode="after")
    def _room_to_train(self) -> "Splits":
        if self.val + self.test >= 0.9:
            raise field_error("test", f"val + test = {self.val + self.test:g} leaves under 10% of rows to train on")
        return self


class Columns(Strict):
    """Which column holds what, in a manifest or a Hugging Face dataset (``null``: no such input).
    One image (text) column is the input ``image`` (``text``); each of a list of them is the input
    named after its column. Numeric and categorical columns together are the input ``table``."""

    image: str | list[str] | None = "image"
    text: str | list[str] | None = "text"
    audio: str | list[str] | None = None  # recordings: file paths or encoded bytes (WAV, FLAC, Ogg/Vorbis, MP3)
    numeric: str | list[str] | None = None
    categorical: str | list[str] | None = None
    label: str = "label"
    split: str | None = None
    domain: str | None = None  # which domain a row is from (data.domains says which are source, which target)

    @model_validator(mode="after")
    def _some_input(self) -> "Columns":
        if not (self.image or self.text or self.audio or self.numeric or self.categorical):
            raise field_error("image", "name an image, text, audio, numeric or categorical column")
        seen: set[str] = set()
        named = [("image", n) for n, _ in self.images] + [("text", n) for n, _ in self.texts] + [("audio", n) for n, _ in self.audios]
        named += [(kind, c) for kind in ("numeric", "categorical") for c in getattr(self, f"{kind}_columns")]
        if self.numeric_columns or self.categorical_columns:
            named.append(("numeric" if self.numeric_columns else "categorical", TABLE_INPUT))
        for kind, name in named:
            if name in seen:
                why = f"the input numeric and categorical columns form is {TABLE_INPUT!r}" if name == TABLE_INPUT else "column names must be distinct"
                raise field_error(kind, f"input {name!r} is named twice ({why})")
            seen.add(name)
        for kind in ("numeric", "categorical"):
            if self.label in getattr(self, f"{kind}_columns"):
                raise field_error(kind, f"{self.label!r} is the label column")
        return self

    @property
    def images(self) -> tuple[tuple[str, str], ...]:
        return input_columns("image", self.image)

    @property
    def texts(self) -> tuple[tuple[str, str], ...]:
        return input_columns("text", self.text)

    @property
    def audios(self) -> tuple[tuple[str, str], ...]:
        return input_columns("audio", self.audio)

    @property
    def numeric_columns(self) -> tuple[str, ...]:
        return (self.numeric,) if isinstance(self.numeric, str) else tuple(self.numeric or ())

    @property
    def categorical_columns(self) -> tuple[str, ...]:
        return (self.categorical,) if isinstance(self.categorical, str) else tuple(self.categorical or ())


class DomainsSpec(Strict):
    """Which values of ``data.columns.domain`` are source domains (labelled rows to train on) and
    which are target domains (rows that may have no label: what adaptation aligns to; their labelled
    rows validate and test)."""

    source: list[str] = Field(min_length=1)
    target: list[str] = Field(min_length=1)

    @field_validator("source", "target", mode="before")
    @classmethod
    def _names(cls, value: Any) -> Any:
        return [str(v) for v in value] if isinstance(value, list) else [str(value)] if isinstance(value, (str, int)) else value

    @model_validator(mode="after")
    def _apart(self) -> "DomainsSpec":
        both = [d for d in self.target if d in self.source]
        if both:
            raise field_error("target", f"domain {both[0]!r} is in both source and target")
        return self


class DataSpec(Strict):
    source: str
    path: Path | None = None
    columns: Columns = Columns()
    classes: list[str] | None = Field(None, min_length=2)
    bad_rows: Literal["error", "skip"] = "error"
    splits: Splits = Splits()
    seed: int | None = None
    domains: DomainsSpec | None = None

    @model_validator(mode="after")
    def _domains_with_column(self) -> "DataSpec":
        if (self.domains is None) != (self.columns.domain is None):
            field = "domains" if self.domains is None else "columns.domain"
            raise field_error(field, "data.columns.domain and data.domains go together: name the column and which of its values are source and target")
        return self

    @field_validator("source")
    @classmethod
    def _known_source(cls, value: str) -> str:
        SOURCES.get(value)
        return value

    @field_validator("classes")
    @classmethod
    def _distinct(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and len(set(value)) != len(value):
            raise ValueError("class names must be distinct")
        return value

    def options(self) -> SourceOptions:
        return SourceOptions(
            path=self.path,
            images=self.columns.images,
            texts=self.columns.texts,
            audios=self.columns.audios,
            numeric=self.columns.numeric_columns,
            categorical=self.columns.categorical_columns,
            label_column=self.columns.label,
            split_column=self.columns.split,
            classes=tuple(self.classes) if self.classes else None,
            skip_bad_rows=self.bad_rows == "skip",
            domain_column=self.columns.domain,
            source_domains=tuple(self.domains.source) if self.domains else (),
            target_domains=tuple(self.domains.target) if self.domains else (),
        )


class MemberSpec(Strict):
    name: Annotated[str, Field(pattern=NAME_PATTERN)]
    kind: str
    input: str
    params: dict[str, Any] = {}
    weights: Path | None = None
    train: Searchable = "full"
    lr_scale: Searchable = 1.0
    augment: Searchable = "none"

    @field_validator("augment")
    @classmethod
    def _augments(cls, value: Searchable) -> Searchable:
        known = [*AUGMENTS, *AUDIO_AUGMENTS]
        if isinstance(value, (IntRange, FloatRange)):
            raise ValueError(f"give an augmentation ({', '.join(known)}) or a list of them, not a range")
        for name in values_of(value):
            if name not in known:
                raise ValueError(f"{name!r} is not an augmentation (known: {', '.join(known)})")
        return value

    @field_validator("train")
    @classmethod
    def _policies(cls, value: Searchable) -> Searchable:
        if isinstance(value, (IntRange, FloatRange)):
            raise ValueError("give a policy (frozen, full, last_N) or a list of them, not a range")
        for policy in values_of(value):
            check_policy(str(policy))
        return value

    @field_validator("lr_scale")
    @classmethod
    def _positive(cls, value: Searchable) -> Searchable:
        for v in values_of(value):
            if isinstance(v, (bool, str)) or not 0 < v <= 100:
                raise ValueError(f"{v!r} is not a learning-rate multiplier in (0, 100]")
        return value

    @model_validator(mode="after")
    def _known_kind_and_params(self) -> "MemberSpec":
        if self.kind not in MEMBERS:
            raise field_error("kind", f"unknown member kind {self.kind!r} (known: {', '.join(MEMBERS.names())})")
        factory = MEMBERS.get(self.kind).factory
        signature = inspect.signature(factory)
        accepted = [p for p in list(signature.parameters)[1:]]
        for key in self.params:
            if key not in accepted:
                raise field_error(f"params.{key}", f"member kind {self.kind!r} has no parameter {key!r} (parameters: {', '.join(accepted)})")
        missing = [
            p.name
            for p in list(signature.parameters.values())[1:]
            if p.default is inspect.Parameter.empty and p.name not in self.params
        ]
        if missing:
            raise field_error(f"params.{missing[0]}", f"member kind {self.kind!r} needs this parameter")
        facts = member_facts(self.kind)
        if facts.policies is not None and not set(map(str, values_of(self.train))) <= set(facts.policies):
            raise field_error("train", f"a {self.kind} member allows {' or '.join(facts.policies)} only: set train: {facts.policies[0]}")
        if facts.check is not None:
            try:
                facts.check(self.params, self.weights)
            except FieldError as error:
                raise field_error(error.field, str(error)) from None
        augments = [a for a in values_of(self.augment) if a != "none"]
        if augments and values_of(self.train) == ["frozen"]:
            raise field_error("augment", "augmentation applies to members that train, and this one is always frozen (its features are computed once)")
        declared = MEMBERS.get(self.kind).params
        for key, value in self.params.items():
            if key in declared:
                try:
                    check_against(declared[key], parse_space(value), f"params.{key}")
                except FieldError as error:
                    raise field_error(f"params.{key}", str(error)) from None
        searched = [key for key, value in self.param_space.items() if is_searched(value)]
        if searched and "frozen" in values_of(self.train):
            raise field_error(
                f"params.{searched[0]}", "is searched, but the member may be frozen (its features are computed once): fix the value or leave frozen out of train"
            )
        return self

    @property
    def param_space(self) -> dict[str, Any]:
        """The factory's parameters as the search sees them: the spec's values, and each parameter the
        member kind declares searchable as a range or choice (the spec's, else the declared one)."""
        declared = MEMBERS.get(self.kind).params
        return {**self.params, **{key: parse_space(self.params[key]) if key in self.params else space for key, space in declared.items()}}

    @property
    def default_params(self) -> dict[str, Any]:
        """The factory's parameters with each searched one at the value a search starts from."""
        return {key: default_of(value) for key, value in self.param_space.items()}


class FusionSpec(Strict):
    """Which operators the search may pick, each with overrides of its parameter space."""

    operators: dict[str, dict[str, Searchable]]
    min_members: int = Field(1, ge=1)
    max_members: int | None = Field(None, ge=1)
    members_alone: bool = True  # each member alone is a trial (and a candidate) too, whatever min_members says

    @field_validator("operators")
    @classmethod
    def _known_operators(cls, value: dict[str, dict[str, Searchable]]) -> dict[str, dict[str, Searchable]]:
        if not value:
            raise ValueError("name at least one fusion operator")
        for name, params in value.items():
            entry = OPERATORS.get(name)
            declared = {**entry.params, **entry.per_member}
            for key, searchable in (params or {}).items():
                if key not in declared:
                    raise field_error(f"{name}.{key}", f"operator {name!r} has no parameter {key!r} (parameters: {', '.join(declared)})")
                check_against(declared[key], searchable, f"{name}.{key}")
        return value


def check_against(declared: ParamSpace, value: Searchable, what: str) -> None:
    """Reject an override whose type does not fit the declared parameter space."""
    values = values_of(value)
    if isinstance(declared, IntRange) and not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        raise field_error(what, f"takes integers, got {values}")
    if isinstance(declared, FloatRange) and not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        raise field_error(what, f"takes numbers, got {values}")
    if isinstance(declared, Choice) and not all(v in declared.choices for v in values):
        raise field_error(what, f"takes {list(declared.choices)}, got {values}")


class Hyperparameters(Strict):
    lr: Searchable = FloatRange(1e-4, 1e-2, log=True)
    weight_decay: Searchable = FloatRange(1e-6, 1e-2, log=True)
    epochs: Searchable = 10
    batch_size: Searchable = 64
    dropout: Searchable = FloatRange(0.0, 0.5)
    class_weight: Searchable = "none"  # or "balanced", or a choice of both
    loss: Searchable = "mse"  # a regression's: or "huber" (of the standardised target, delta 1), or a choice of both
    adaptation: Searchable = NONE  # domain adaptation on target rows: none, coral, mmd, dann, or a choice
    adaptation_weight: Searchable = FloatRange(0.1, 10.0, log=True)  # the term's weight (sampled when a trial adapts)

    @model_validator(mode="after")
    def _sane(self) -> "Hyperparameters":
        for v in values_of(self.class_weight):
            if v not in CLASS_WEIGHTS:
                raise field_error("class_weight", f"{v!r} is not one of {', '.join(CLASS_WEIGHTS)}")
        for v in values_of(self.loss):
            if v not in REGRESSION_LOSSES:
                raise field_error("loss", f"{v!r} is not one of {', '.join(REGRESSION_LOSSES)}")
        for v in values_of(self.adaptation):
            if v not in adaptation_names():
                raise field_error("adaptation", f"{v!r} is not one of {', '.join(adaptation_names())}")
        for v in values_of(self.adaptation_weight):
            if isinstance(v, (bool, str)) or not v > 0:
                raise field_error("adaptation_weight", f"{v!r} is not a positive number")
        bounds = {"lr": (0, 10), "weight_decay": (0, 1), "dropout": (0, 0.95)}
        for name, (low, high) in bounds.items():
            for v in values_of(getattr(self, name)):
                if isinstance(v, (bool, str)) or not (low <= v <= high) or (name == "lr" and v <= 0):
                    raise field_error(name, f"{v!r} is outside ({low}, {high}]" if name == "lr" else f"{v!r} is outside [{low}, {high}]")
        for name in ("epochs", "batch_size"):
            for v in values_of(getattr(self, name)):
                if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 1 or int(v) != v:
                    raise field_error(name, f"{v!r} is not a positive integer")
        return self

    def max_epochs(self) -> int:
        return int(max(values_of(self.epochs)))


DEFAULT_REGRESSION_OBJECTIVE = "val_rmse"


class ObjectiveSpec(Strict):
    """One objective; ``mode`` defaults to the metric's own direction (and must agree with it)."""

    metric: str = "val_log_loss"
    mode: Literal["min", "max"] | None = None

    @model_validator(mode="after")
    def _consistent(self) -> "ObjectiveSpec":
        if self.metric not in METRICS:
            raise field_error("metric", f"{self.metric!r} is not one of {', '.join(METRICS)}")
        if self.mode is not None and METRICS[self.metric] != self.mode:
            raise field_error("mode", f"{self.metric} must be {METRICS[self.metric]}imised, not {self.mode}imised")
        return self

    @property
    def goal(self) -> Goal:
        return Goal(self.metric, self.mode or METRICS[self.metric])


def parse_objectives(value: Any) -> list[ObjectiveSpec]:
    """``objective:`` as one ``{metric, mode}`` mapping or a non-empty list of them."""
    items = [value] if isinstance(value, dict) else value
    if not isinstance(items, list) or not items:
        raise ValueError("give one objective ({metric, mode}) or a non-empty list of them")
    parsed = []
    for i, item in enumerate(items):
        prefix = "" if isinstance(value, dict) else f"[{i}]"
        if not isinstance(item, dict):
            raise ValueError(f"@{prefix}@ expected {{metric, mode}}, got {item!r}")
        try:
            parsed.append(ObjectiveSpec.model_validate(item))
        except ValidationError as error:
            where, message = first_error(error).split(": ", 1)
            raise ValueError(f"@{prefix}{'.' if prefix and where != 'spec' else ''}{'' if where == 'spec' else where}@ {message}") from None
    return parsed


class BoundSpec(Strict):
    """A constraint on a metric: ``{max: 20}``, ``{min: 0.9}`` or both."""

    min: float | None = None
    max: float | None = None

    @model_validator(mode="after")
    def _some_bound(self) -> "BoundSpec":
        if self.min is None and self.max is None:
            raise field_error("max", "give min, max or both")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise field_error("min", f"{self.min:g} is greater than max ({self.max:g})")
        return self


class Budget(Strict):
    num_samples: int = Field(ge=1)
    max_concurrent: int = Field(1, ge=1)
    time_limit_s: float | None = Field(None, gt=0)


class Scheduler(Strict):
    """ASHA (or none). Left out, the grace period and reduction factor scale with the epochs and
    the budget (``for_budget``): about two trials of the budget run every epoch."""

    type: Literal["asha", "fifo"] = "asha"
    grace_period: int | None = Field(None, ge=1)
    reduction_factor: float | None = Field(None, gt=1)

    def for_budget(self, max_epochs: int, trials: int) -> "Scheduler":
        """The spec's values, else: halving (factor 2) from a grace period that leaves
        ``log2(trials / 2)`` rungs below ``max_epochs``, so that ASHA keeps about two trials to the end."""
        factor = self.reduction_factor or 2.0
        rungs = max(0, math.floor(math.log(max(trials, 2) / 2, factor)))
        grace = self.grace_period or max(1, min(max_epochs, math.ceil(max_epochs / factor**rungs)))
        return self.model_copy(update={"grace_period": grace, "reduction_factor": factor})

    def rungs(self, max_epochs: int) -> list[int]:
        """The epochs at which ASHA compares trials and stops the worse (none under ``fifo``)."""
        if self.type == "fifo":
            return []
        assert self.grace_period is not None and self.reduction_factor is not None, "for_budget gives the values"
        rungs, epoch = [], float(self.grace_period)
        while math.ceil(epoch) < max_epochs:
            rungs.append(math.ceil(epoch))
            epoch *= self.reduction_factor
        return rungs


class Resources(Strict):
    cpu: float = Field(1.0, gt=0)
    gpu: float = Field(0.0, ge=0)
    reuse_actors: bool = True  # run the next trial in a finished trial's process (no process start)
    precision: Literal[PRECISIONS] = "auto"  # type: ignore[valid-type]
    data_workers: int | None = Field(None, ge=0)  # loader processes per trial; None: cpu - 1

    @model_validator(mode="after")
    def _fp16_on_gpu(self) -> "Resources":
        if self.precision == "fp16" and self.gpu == 0:
            raise field_error("precision", "fp16 needs a GPU (resources.gpu > 0); use bf16 or fp32 on the CPU")
        return self

    @property
    def loader_workers(self) -> int:
        """Processes that prepare a trial's batches beside its training loop."""
        return self.data_workers if self.data_workers is not None else max(0, math.ceil(self.cpu) - 1)


class Ensemble(Strict):
    """Greedy ensemble selection after the search; ``rounds: 0`` turns it off. ``cv: k`` fits the
    weights on out-of-fold predictions of the training split (each selected-from trial trained k
    more times); 0 fits them on the validation split."""

    top_k: int = Field(10, ge=1)
    rounds: int = Field(25, ge=0)
    cv: int = Field(0, ge=0)

    @field_validator("cv")
    @classmethod
    def folds(cls, value: int) -> int:
        if value == 1:
            raise ValueError("1 fold is no cross-validation: give 0 (weights fitted on validation) or at least 2 folds")
        return value


class WeightFusion(Strict):
    """Champions made in weight space after the search (``search.candidates.weight_fusion``): soups of trials of
    one structure (with ``ingredients`` more runs of the best trial's plan), the best trial's last checkpoints averaged (``checkpoint_average``: how many; 0 or
    1: off), merges of task vectors with coefficients searched by CMA-ES (``merge_trials`` each)."""

    soups: bool = True
    ingredients: int = Field(0, ge=0)  # more runs of the best trial's plan at other learning rates, for its soup
    checkpoint_average: int = Field(3, ge=0)
    merges: list[Literal["linear", "ties", "dare"]] = ["linear", "ties", "dare"]
    merge_trials: int = Field(20, ge=2)


class Distill(Strict):
    """A student (``search.candidates.distill``): one composite trained on the ensemble's soft predictions mixed
    with the true labels (``label_weight`` of them), the teacher softened by ``temperature``; a list
    of values is searched (a student per combination, the best on validation kept). Its structure:
    the best trial whose members are exactly ``members``, or the best trial's."""

    members: list[str] | None = None
    temperature: float | list[float] = 1.0
    label_weight: float | list[float] = 0.5

    @field_validator("temperature")
    @classmethod
    def _positive(cls, value: float | list[float]) -> float | list[float]:
        if not listed(value) or min(listed(value)) <= 0:
            raise ValueError("give a temperature above 0, or a non-empty list of them")
        return value

    @field_validator("label_weight")
    @classmethod
    def _share(cls, value: float | list[float]) -> float | list[float]:
        if not listed(value) or not all(0.0 <= w <= 1.0 for w in listed(value)):
            raise ValueError("give the share of the true labels in the targets (0 to 1), or a non-empty list of them")
        return value

    def settings(self) -> list[tuple[float, float]]:
        """Every (temperature, label_weight) to train a student with."""
        return [(t, w) for t in listed(self.temperature) for w in listed(self.label_weight)]


def listed(value: float | list[float]) -> list[float]:
    return value if isinstance(value, list) else [value]


class Tracking(Strict):
    uri: str | None = None
    experiment: str | None = None
    register_model: bool = True


class Report(Strict):
    baselines: bool = True


class Spec(Strict):
    name: Annotated[str, Field(pattern=NAME_PATTERN)]
    seed: int = 0
    data: DataSpec
    members: list[MemberSpec] = Field(min_length=1)
    fusion: FusionSpec
    hyperparameters: Hyperparameters = Hyperparameters()
    task: Literal["binary", "multiclass", "regression"] | None = None  # None: inferred from the label column
    objective: Annotated[list[ObjectiveSpec], BeforeValidator(parse_objectives)] = [ObjectiveSpec()]  # regression: val_rmse
    constraints: dict[str, BoundSpec] = {}
    sampler: str = DEFAULT_SAMPLER
    select: str = "first"
    # Two classes: "auto" chooses the champion's threshold on validation for the first objective when
    # it is a metric of predicted classes (else 0.5); a metric's name chooses it for that metric; a number fixes it.
    decision_threshold: float | str = "auto"
    measure_cost: bool | None = None  # None: trials when an objective or a constraint is a cost; the final table always; false: never
    budget: Budget
    scheduler: Scheduler = Scheduler()
    resources: Resources = Resources()
    max_failures: int = Field(0, ge=0)
    feature_cache: bool = True
    ensemble: Ensemble = Ensemble()
    weight_fusion: WeightFusion = WeightFusion()
    distill: Distill | None = None
    tracking: Tracking = Tracking()
    storage: Path = Field(Path("fusion_runs"), validate_default=True)
    ray_storage: str | None = None
    study_storage: str | None = None
    report: Report = Report()

    @model_validator(mode="before")
    @classmethod
    def _regression_objective(cls, raw: Any) -> Any:
        """A regression's default objective is RMSE, not log-loss."""
        if isinstance(raw, dict) and raw.get("task") == "regression" and "objective" not in raw:
            return {**raw, "objective": {"metric": DEFAULT_REGRESSION_OBJECTIVE}}
        return raw

    def for_task(self, task: str) -> "Spec":
        """This spec for data of ``task`` (what the labels say when the spec does not): a regression
        gets RMSE as its objective unless the spec names one."""
        if task == self.task:
            return self
        update: dict[str, Any] = {"task": task}
        if task == "regression" and "objective" not in self.model_fields_set:
            update["objective"] = [ObjectiveSpec(metric=DEFAULT_REGRESSION_OBJECTIVE)]
        return self.model_copy(update=update)

    @field_validator("storage")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        """Fixed at load time, so a later change of working directory cannot move the store."""
        return value.expanduser().resolve()

    @field_validator("constraints")
    @classmethod
    def _known_metrics(cls, value: dict[str, BoundSpec]) -> dict[str, BoundSpec]:
        for metric in value:
            if metric not in METRICS:
                raise field_error(metric, f"not a metric a trial reports (metrics: {', '.join(METRICS)})")
        return value

    @field_validator("decision_threshold")
    @classmethod
    def _threshold(cls, value: float | str) -> float | str:
        if isinstance(value, str) and value != "auto" and value not in CLASS_METRICS:
            raise ValueError(f"{value!r} is not auto, a number between 0 and 1 or a metric of predicted classes ({', '.join(CLASS_METRICS)})")
        if isinstance(value, float) and not 0.0 < value < 1.0:
            raise ValueError(f"{value:g} is not between 0 and 1")
        return value

    @field_validator("sampler")
    @classmethod
    def _known_sampler(cls, value: str) -> str:
        if value not in SAMPLERS:
            raise ValueError(f"{value!r} is not a sampler (samplers: {', '.join(SAMPLERS)})")
        return value

    @field_validator("ray_storage")
    @classmethod
    def _folder_or_uri(cls, value: str | None) -> str | None:
        return None if value is None else ray_storage_location(value)

    @field_validator("study_storage")
    @classmethod
    def _database_url(cls, value: str | None) -> str | None:
        return None if value is None else database_url(value)

    @model_validator(mode="after")
    def _cross_checks(self) -> "Spec":
        names = [m.name for m in self.members]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise field_error("members", f"name {duplicates[0]!r} is used twice")
        most = self.fusion.max_members or len(self.members)
        if self.fusion.min_members > len(self.members):
            raise field_error("fusion.min_members", f"{self.fusion.min_members} but only {len(self.members)} members are listed")
        if most < self.fusion.min_members:
            raise field_error("fusion.max_members", f"{most} is below fusion.min_members ({self.fusion.min_members})")
        self._check_objectives()
        if self.adapts and self.data.domains is None:
            raise field_error("hyperparameters.adaptation", "adaptation needs target rows: set data.columns.domain and data.domains")
        unknown = [n for n in (self.distill.members or []) if n not in names] if self.distill else []
        if unknown:
            raise field_error("distill.members", f"{unknown[0]!r} is not a member (members: {', '.join(names)})")
        if self.scheduler.type == "asha" and (self.scheduler.grace_period or 0) > self.hyperparameters.max_epochs():
            raise field_error(
                "scheduler.grace_period",
                f"{self.scheduler.grace_period} exceeds the most epochs a trial runs "
                f"({self.hyperparameters.max_epochs()})"
            )
        return self

    @property
    def adapts(self) -> bool:
        """Whether some trial may adapt to target domains."""
        return any(v != NONE for v in values_of(self.hyperparameters.adaptation))

    def _check_objectives(self) -> None:
        metrics = [o.metric for o in self.objective]
        if metrics[0] not in QUALITY_METRICS:
            raise field_error(
                "objective[0].metric",
                f"the first objective picks each trial's best epoch and drives early stopping: "
                f"a validation metric ({', '.join(QUALITY_METRICS)}), not {metrics[0]}",
            )
        twice = sorted({m for m in metrics if metrics.count(m) > 1})
        if twice:
            raise field_error("objective", f"{twice[0]} is listed twice")
        rules = [*SELECT_RULES, *metrics[1:]]
        if self.select not in rules:
            raise field_error("select", f"{self.select!r} is not a rule (rules: {', '.join(rules)})")
        if self.select != "first" and len(metrics) == 1:
            raise field_error("select", f"{self.select!r} picks a point of a Pareto front: it needs several objectives")
        costs = [m for m in [*metrics, *self.constraints] if m in COST_METRICS]
        if self.measure_cost is False and costs:
            raise field_error("measure_cost", f"false, but the search needs {costs[0]} (an objective or a constraint)")

    @property
    def measures_cost(self) -> bool:
        """Whether every trial measures its cost: when the spec says so, else when an objective or
        a constraint is a cost (measuring runs every frozen backbone in every trial)."""
        if self.measure_cost is not None:
            return self.measure_cost
        return any(m in COST_METRICS for m in [*(o.metric for o in self.objective), *self.constraints])

    @property
    def objectives(self) -> Objectives:
        """What "better" means for this search: the one object every part asks."""
        bounds = tuple(Bound(metric, b.min, b.max) for metric, b in self.constraints.items())
        return Objectives(tuple(o.goal for o in self.objective), bounds, self.select)

    @property
    def data_seed(self) -> int:
        return self.seed if self.data.seed is None else self.data.seed

    @property
    def asha(self) -> Scheduler:
        """The scheduler with its grace period and reduction factor for this spec's epochs and budget."""
        return self.scheduler.for_budget(self.hyperparameters.max_epochs(), self.budget.num_samples)

    @property
    def tune_storage(self) -> str:
        """Where Tune keeps trial results and checkpoints: ``ray_storage``, else a folder in ``storage``."""
        return self.ray_storage or str(self.storage / "ray_results")

    @property
    def study_url(self) -> str:
        """The Optuna study's database: ``study_storage``, else SQLite in ``storage``."""
        return self.study_storage or f"sqlite:///{(self.storage / 'optuna.db').resolve()}"

    @property
    def tracking_uri(self) -> str:
        return self.tracking.uri or default_tracking_uri(self.storage)

    def with_environment(self, environ: Mapping[str, str]) -> "Spec":
        """This spec with what it leaves empty taken from ``environ`` (see ``ENVIRONMENT``): how a
        cluster names its tracking server and shared storage without editing the spec. A bad
        value is a ``SpecError`` naming the variable."""
        spec = self
        if spec.tracking.uri is None and environ.get(ENVIRONMENT["tracking.uri"]):
            spec = spec.model_copy(update={"tracking": spec.tracking.model_copy(update={"uri": environ[ENVIRONMENT["tracking.uri"]]})})
        for field, check in (("ray_storage", ray_storage_location), ("study_storage", database_url)):
            value = environ.get(ENVIRONMENT[field])
            if getattr(spec, field) is None and value:
                try:
                    spec = spec.model_copy(update={field: check(value)})
                except ValueError as error:
                    raise SpecError(f"${ENVIRONMENT[field]}: {error}") from None
        return spec

    @property
    def experiment_name(self) -> str:
        return self.tracking.experiment or self.name


def ray_storage_location(value: str) -> str:
    """A URI (``s3://bucket/prefix``) as written, trailing slash dropped; a folder made absolute."""
    scheme = uri_scheme(value)
    if scheme is None:
        return str(Path(value).expanduser().resolve())
    if scheme not in RAY_STORAGE_SCHEMES:
        raise ValueError(f"{redact(value)!r}: Tune cannot store to {scheme}:// (use a folder or one of: {', '.join(RAY_STORAGE_SCHEMES)})")
    if not value[len(scheme) + 3 :].strip("/"):
        raise ValueError(f"{redact(value)!r}: name a bucket or folder after {scheme}://")
    return value.rstrip("/")


def database_url(value: str) -> str:
    if uri_scheme(value) is None:
        # Not repeated: a mistyped URL's password would not be recognised to be hidden.
        raise ValueError("not a database URL (e.g. postgresql://user:password@host/db, sqlite:////abs/optuna.db)")
    return value


def format_location(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "spec"


def first_error(error: ValidationError) -> str:
    """One line for pydantic's first error: ``field: message``."""
    detail = error.errors(include_url=False)[0]
    location = format_location(tuple(detail["loc"]))
    message = re.sub(r"^(Value|Assertion) error, ", "", detail["msg"])
    inner = re.match(r"^(?:(.+?): )?@(.+?)@ (.*)$", message)
    if inner:  # a field_error, possibly nested inside a searchable's message
        sub = ".".join(part for part in (inner.group(1), inner.group(2)) if part)
        location = sub if location == "spec" else f"{location}{'' if sub.startswith('[') else '.'}{sub}"
        message = inner.group(3)
    elif detail["type"] == "extra_forbidden":
        message = "unknown field (check its spelling and indentation)"
    elif detail["type"] == "missing":
        message = "required field is missing"
    return f"{location}: {message}"


def staged(path: Path) -> dict[str, Any]:
    """The spec file at ``path`` checked as a run would check it, as a dict whose relative paths are
    absolute and whose storage is spelled out: what a Ray Job carries to the cluster."""
    spec = load_spec(path)
    raw = yaml.safe_load(Path(path).read_text())
    resolve_paths(raw, Path(path).parent.resolve())
    raw["storage"] = str(spec.storage)
    if spec.ray_storage is not None:
        raw["ray_storage"] = spec.ray_storage
    return raw


def resolve_paths(raw: dict[str, Any], base: Path) -> None:
    """Make relative data, weights and local model paths relative to the spec file's folder."""
    data = raw.get("data")
    if isinstance(data, dict) and isinstance(data.get("path"), str):
        try:
            data["path"] = str((base / data["path"]).resolve())
        except (RuntimeError, OSError) as error:  # a symlink loop (RuntimeError before Python 3.13)
            raise SpecError(f"data.path: cannot follow {data['path']}: {error}") from None
    members = raw.get("members")
    for member in members if isinstance(members, list) else []:
        if not isinstance(member, dict):
            continue
        if isinstance(member.get("weights"), str):
            member["weights"] = str((base / member["weights"]).resolve())
        params = member.get("params")
        kind = member.get("kind")
        for name in member_facts(kind).local_paths if isinstance(kind, str) and kind in MEMBERS and isinstance(params, dict) else ():
            if isinstance(params.get(name), str):
                local = (base / params[name]).expanduser()
                if local.exists():  # otherwise a hub name such as sentence-transformers/all-MiniLM-L6-v2
                    params[name] = str(local.resolve())


def check_files(spec: Spec) -> None:
    """Files and folders the spec names must exist now, not when a trial first needs them."""
    wanted = source_facts(spec.data.source).path
    path = spec.data.path
    if wanted is not None and path is None:
        raise SpecError(f"data.path: the {spec.data.source} source needs a {wanted}")
    if path is not None and wanted == "file" and not path.is_file():
        raise SpecError(f"data.path: no such file: {path}")
    if path is not None and wanted == "folder" and not path.is_dir():
        raise SpecError(f"data.path: no such folder: {path}")
    for i, member in enumerate(spec.members):
        if member.weights is not None and not member.weights.is_file():
            raise SpecError(f"members[{i}].weights: no such file: {member.weights}")
        check_files = member_facts(member.kind).check_files
        try:
            if check_files is not None:
                check_files(dict(member.params))
        except FieldError as error:
            raise SpecError(f"members[{i}].{error.field}: {error}") from None


def parse_spec(raw: Any, base: Path) -> Spec:
    """Validate an already-parsed YAML document (paths relative to ``base``)."""
    if not isinstance(raw, dict):
        raise SpecError(f"spec: expected a mapping of fields, got {type(raw).__name__}")
    resolve_paths(raw, base)
    try:
        spec = Spec.model_validate(raw)
    except ValidationError as error:
        raise SpecError(first_error(error)) from None
    check_files(spec)
    return spec


def load_spec(path: str | Path) -> Spec:
    """Read and validate the spec at ``path``; every problem is a one-line ``SpecError``."""
    path = Path(path)
    if not path.is_file():
        raise SpecError(f"{path}: no such spec file")
    try:
        raw = yaml.safe_load(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as error:
        raise SpecError(f"{path}: not a text (UTF-8) file: byte {error.start} is {error.object[error.start]:#04x}") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark else "YAML"
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise SpecError(f"{path}: {where}: {problem}") from None
    try:
        return parse_spec(raw, path.parent)
    except SpecError as error:
        raise SpecError(capped(f"{path}: {error}")) from None


def capped(line: str, limit: int = 500) -> str:
    """An error line no longer than ``limit`` characters (a YAML alias can make a value of millions)."""
    return line if len(line) <= limit else f"{line[:limit]}... ({len(line):,} characters)"
