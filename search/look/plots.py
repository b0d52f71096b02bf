"""Pictures of a search, made from what it recorded: its MLflow runs, the small JSON facts on its parent
run, and its trials in the Optuna study.

``SearchRecord`` reads a search back (from the store a search wrote, or a copy of it); ``pictures``
turns it into PNGs (matplotlib; Optuna's own ``visualization.matplotlib`` for what Optuna learned)
and ``interactive`` into one self-contained HTML page of Optuna's plotly figures, where hovering
over a trial shows its parameters. ``log_plots`` puts both under ``plots/`` on the parent run, each
picture as soon as the search has its data (``DATA_PICTURES``, ``TRIAL_PICTURES`` with the page,
``CHAMPION_PICTURES``: ``search.look.painter``). A picture the search has no data for (fANOVA needs two finished trials; a
search without an ensemble has no weights) is a picture that says so, not a missing file.
"""

from __future__ import annotations

import io
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Collection

import numpy as np
import optuna
from mlflow.entities import Run
from mlflow.tracking import MlflowClient
from optuna.trial import FrozenTrial, TrialState

from search.spec.objectives import Objectives
from search.names import CANDIDATES_FILE, PLOTS_DIR, RUN_ATTR, TRIAL_ID_TAG
from search.look.store_reader import StoreReader
from search.look.store_reader import logged_objectives, trial_runs_of
from search.names import CLASS_BALANCE, CONFUSION, DOMAIN_PROJECTION, ENSEMBLE_FILE, FEATURE_CACHE, PREDICTED, RUNGS_PARAM, STATE_TAG

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

INTERACTIVE = "interactive.html"


@dataclass
class SearchRecord:
    """One search as it was recorded: parent run, trial runs, objectives, facts and Optuna trials."""

    reader: StoreReader
    parent: Run
    trials: list[Run]
    objectives: Objectives
    study: optuna.Study | None  # this search's trials only; None when the study's storage is gone
    facts: dict[str, Any] = field(default_factory=dict)  # artifact name -> its JSON

    @classmethod
    def of_run(cls, reader: StoreReader, parent_run_id: str) -> "SearchRecord":
        parent = reader.client.get_run(parent_run_id)
        objectives = logged_objectives(parent)
        trials = sorted(trial_runs_of(reader.client, parent.info.experiment_id, parent_run_id), key=lambda r: r.info.start_time)
        names = (CLASS_BALANCE, FEATURE_CACHE, CONFUSION, PREDICTED, ENSEMBLE_FILE, CANDIDATES_FILE, DOMAIN_PROJECTION)
        facts = {name: reader.json(parent, name) for name in names}
        return cls(reader, parent, trials, objectives, search_study(reader, parent, objectives), {k: v for k, v in facts.items() if v})

    @property
    def client(self) -> MlflowClient:
        return self.reader.client

    @property
    def name(self) -> str:
        return self.reader.search_name(self.parent)

    def rungs(self) -> list[int]:
        text = self.parent.data.params.get(RUNGS_PARAM, "")
        return [int(r) for r in text.split(",") if r]

    def label(self, run: Run) -> str:
        """A trial run's name without its fusion (``t03``)."""
        return (run.info.run_name or run.info.run_id[:6]).split(" ")[0]


def search_study(reader: StoreReader, parent: Run, objectives: Objectives) -> optuna.Study | None:
    """This search's trials of the study (a study may hold several searches of one name), in memory."""
    url = reader.study_url(parent)
    if url is None:
        return None
    try:
        stored = optuna.load_study(study_name=reader.search_name(parent), storage=url)
    except (KeyError, ValueError):  # no such study in that storage
        return None
    mine = [t for t in stored.get_trials(deepcopy=False) if t.user_attrs.get(RUN_ATTR, parent.info.run_id) == parent.info.run_id]
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # not "a new study created in memory"
    try:
        study = optuna.create_study(directions=[g.direction.optuna for g in objectives.goals])
    finally:
        optuna.logging.set_verbosity(verbosity)
    study.add_trials(mine)
    return study


# --- the pictures -------------------------------------------------------------------------------


def figure(width: float = 8.0, height: float = 5.0, dpi: int = 100) -> tuple[Figure, Axes]:
    """A matplotlib figure drawn off-screen, outside pyplot: no display needed (a cluster node, CI),
    no change to the caller's backend (a notebook), and safe to draw in a thread of its own."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=dpi)
    return fig, fig.subplots()


def png_of(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def message(title: str, text: str) -> bytes:
    """A picture that says why there is nothing to draw."""
    fig, ax = figure(8, 2.5)
    ax.set_title(title)
    ax.text(0.5, 0.5, text, ha="center", va="center", wrap=True, fontsize=11, color="0.3")
    ax.set_axis_off()
    return png_of(fig)


def finished(record: SearchRecord) -> list[FrozenTrial]:
    return record.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if record.study else []


def target(record: SearchRecord) -> tuple[Callable[[FrozenTrial], float], str]:
    """What Optuna's plots draw: the first objective (Optuna's first value)."""
    first = record.objectives.first
    return (lambda trial: trial.values[0]), f"{first.metric} ({first.mode}, at each trial's best epoch)"


def optuna_png(record: SearchRecord, title: str, draw: Callable[..., Axes], needed: int, size: tuple[float, float] = (9, 5.5)) -> bytes:
    """One of Optuna's matplotlib plots of this search's trials, or why it cannot be drawn."""
    count = len(finished(record))
    if record.study is None:
        return message(title, "the search's Optuna study is not in this store")
    if count < needed:
        return message(title, f"needs {needed} trials that ran to their last epoch; this search has {count}")
    how, name = target(record)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Optuna's matplotlib plots are "experimental"
        ax = draw(record.study, target=how, target_name=name)
    fig = ax.figure
    fig.set_size_inches(*size)
    for side in ("left", "right"):
        ax.set_title("", loc=side)  # Optuna's own title
    ax.set_title(title)
    return png_of(fig)


def history(record: SearchRecord) -> bytes:
    """Each trial's first objective in the order the trials started, and the best so far (trials
    ASHA stopped early included: their value is a real measure, at the epoch they reached)."""
    first = record.objectives.first
    title = "Optimisation history: each trial and the best so far"
    points = [(i + 1, r.data.metrics[first.key], r.data.tags.get(STATE_TAG, "")) for i, r in enumerate(record.trials) if first.key in r.data.metrics]
    if not points:
        return message(title, "no trial reported a result")
    fig, ax = figure(9, 5)
    for state, style in (("completed", dict(marker="o", color="tab:blue")), ("stopped_early", dict(marker="x", color="0.5"))):
        mine = [p for p in points if p[2] == state]
        if mine:
            ax.scatter([p[0] for p in mine], [p[1] for p in mine], label=state.replace("_", " "), zorder=3, **style)
    best, steps = None, []
    for number, value, _ in points:
        best = value if best is None or first.direction.better(value, best) else best
        steps.append((number, best))
    ax.step([n for n, _ in steps], [b for _, b in steps], where="post", color="tab:red", label="best so far")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_xlabel("trial (in the order they started)")
    ax.set_ylabel(f"{first.metric} at each trial's best epoch ({first.mode})")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    return png_of(fig)


def fanova() -> optuna.importance.FanovaImportanceEvaluator:
    return optuna.importance.FanovaImportanceEvaluator(seed=0)


def importances(record: SearchRecord) -> bytes:
    from optuna.visualization.matplotlib import plot_param_importances

    def draw(study: optuna.Study, **kwargs: Any) -> Axes:
        return plot_param_importances(study, evaluator=fanova(), **kwargs)

    title = "Parameter importances (fANOVA)"
    try:
        return optuna_png(record, title, draw, 2)
    except RuntimeError as error:  # the finished trials' parameters do not vary ("zero total variance in all trees")
        return message(title, f"fANOVA cannot rank the parameters of these trials: {error}")


def parallel(record: SearchRecord) -> bytes:
    from optuna.visualization.matplotlib import plot_parallel_coordinate

    return optuna_png(record, "Members, operator and hyperparameters against the objective", plot_parallel_coordinate, 1, (13, 6.5))


def intermediate(record: SearchRecord) -> bytes:
    """Each trial's first objective after every epoch (what ASHA compares), with the rungs."""
    key = record.objectives.first.key
    title = f"{key} per epoch, each trial; ASHA compares trials at the dashed rungs"
    curves = {record.label(r): record.client.get_metric_history(r.info.run_id, key) for r in record.trials}
    curves = {label: sorted(points, key=lambda m: m.step) for label, points in curves.items() if points}
    if not curves:
        return message(title, "no trial reported an epoch")
    fig, ax = figure(9, 5.5)
    for label, points in curves.items():
        ax.plot([m.step for m in points], [m.value for m in points], marker="o", label=label, alpha=0.8)
    for rung in record.rungs():
        ax.axvline(rung, linestyle="--", color="0.5", alpha=0.7)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_xlabel("epoch")
    ax.set_ylabel(key)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    return png_of(fig)


def ensemble_weights(record: SearchRecord) -> bytes:
    title = "Ensemble weights (greedy selection over the trials)"
    members = record.facts.get(ENSEMBLE_FILE, {}).get("members", [])
    if len(members) < 2:
        return message(title, "no ensemble: greedy selection kept one trial alone")
    names = {r.data.tags.get(TRIAL_ID_TAG): r.info.run_name for r in record.trials}
    fig, ax = figure(8, 1.2 + 0.5 * len(members))
    labels = [names.get(m["trial"]) or m["trial"] for m in members]
    ax.barh(labels, [m["weight"] for m in members], color="tab:purple")
    ax.invert_yaxis()
    ax.set_xlabel("weight")
    ax.set_title(title)
    return png_of(fig)


def confusion(record: SearchRecord) -> bytes | None:
    title = "Champion on the test split: confusion matrix"
    fact = record.facts.get(CONFUSION)
    if record.facts.get(PREDICTED):
        return None  # a regression: its predictions against the targets instead
    if not fact:
        return message(title, "the search registered no champion")
    matrix = np.array(fact["matrix"])
    names = fact["class_names"]
    side = 3 + 0.45 * len(names)
    fig, ax = figure(side + 1, side)
    image = ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
    ax.set_yticks(range(len(names)), names)
    for (i, j), count in np.ndenumerate(matrix):
        ax.text(j, i, str(count), ha="center", va="center", fontsize=8, color="white" if count > matrix.max() / 2 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    accuracy = np.trace(matrix) / max(1, matrix.sum())
    ax.set_title(f"{title} (accuracy {accuracy:.4f})", fontsize=10)
    fig.colorbar(image, ax=ax, fraction=0.046)
    return png_of(fig)


def predicted_vs_true(record: SearchRecord) -> bytes | None:
    """A regression champion's test predictions against the targets, with the diagonal."""
    fact = record.facts.get(PREDICTED)
    if not fact:
        return None
    true, predicted = np.array(fact["true"]), np.array(fact["predicted"])
    fig, ax = figure(6, 6)
    ax.scatter(true, predicted, s=8, alpha=0.5)
    low, high = float(min(true.min(), predicted.min())), float(max(true.max(), predicted.max()))
    ax.plot([low, high], [low, high], color="grey", linewidth=1, label="predicted = true")
    rmse = float(np.sqrt(((predicted - true) ** 2).mean()))
    ax.set_xlabel("true")
    ax.set_ylabel("predicted")
    ax.set_title(f"Champion on the test split: predicted against true (RMSE {rmse:.4g}, {len(true):,} rows)", fontsize=10)
    ax.legend()
    return png_of(fig)


def class_balance(record: SearchRecord) -> bytes:
    fact = record.facts.get(CLASS_BALANCE)
    title = "Targets per split" if fact and fact.get("target") else "Class balance per split"
    if not fact:
        return message(title, "the search recorded no class counts")
    names, splits = fact["class_names"], fact["splits"]
    fig, ax = figure(9, 4.5)
    positions = np.arange(len(names))
    width = 0.8 / len(splits)
    for i, (split, counts) in enumerate(splits.items()):
        ax.bar(positions + i * width, counts, width, label=f"{split} ({sum(counts):,} rows)")
    ax.set_xticks(positions + width * (len(splits) - 1) / 2, names, rotation=45 if len(names) > 12 else 0)
    ax.set_ylabel("rows")
    ax.set_title(title)
    ax.legend()
    return png_of(fig)


def feature_cache(record: SearchRecord) -> bytes:
    title = "Feature cache: frozen members' rows computed and reused"
    reports = record.facts.get(FEATURE_CACHE, [])
    if not reports:
        return message(title, "no member could be frozen, or the feature cache was off")
    fig, ax = figure(8, 1.5 + 0.6 * len(reports))
    members = [r["member"] for r in reports]
    computed = [r["rows_computed"] for r in reports]
    reused = [r["rows"] - r["rows_computed"] for r in reports]
    ax.barh(members, computed, color="tab:orange", label="computed")
    ax.barh(members, reused, left=computed, color="tab:green", label="reused from the cache")
    ax.set_xlabel("rows")
    ax.set_title(title)
    ax.legend()
    return png_of(fig)


def domain_projection(record: SearchRecord) -> bytes | None:
    """Source and target rows' fused features in 2-D, one panel per model (before and after
    adaptation); None for a search without domains."""
    panels = record.facts.get(DOMAIN_PROJECTION)
    if not panels:
        return None
    fig, _ = figure(5.5 * len(panels), 5.2)
    fig.clear()
    for ax, panel in zip(fig.subplots(1, len(panels), squeeze=False)[0], panels, strict=True):
        for domain, colour in (("source", "tab:blue"), ("target", "tab:orange")):
            points = np.array(panel[domain]).reshape(-1, 2)
            ax.scatter(points[:, 0], points[:, 1], s=6, alpha=0.5, color=colour, label=f"{domain} ({len(points)} rows)")
        adaptation = panel["adaptation"] if panel["adaptation"] != "none" else "no adaptation"
        ax.set_title(f"{panel['label']}: {adaptation}\ngap between the domains' means {panel['gap']:.2f}", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.legend(fontsize=8, loc="best")
    fig.suptitle("Fused features of source and target rows (first two principal components)", fontsize=10)
    return png_of(fig)


# File name -> how it is drawn (None: the picture does not apply to the search's task); the order
# the report shows them in.
PICTURES: dict[str, Callable[[SearchRecord], bytes | None]] = {
    "history.png": history,
    "importances.png": importances,
    "parallel_coordinates.png": parallel,
    "intermediate_values.png": intermediate,
    "ensemble_weights.png": ensemble_weights,
    "confusion_matrix.png": confusion,
    "predicted_vs_true.png": predicted_vs_true,
    "class_balance.png": class_balance,
    "feature_cache.png": feature_cache,
    "domain_projection.png": domain_projection,
}


# When each picture can be drawn: from the data and the cache pass (before the trials), from the
# trials alone (their runs and the study), from the champion and its candidates.
DATA_PICTURES = ("class_balance.png", "feature_cache.png")
TRIAL_PICTURES = ("history.png", "importances.png", "parallel_coordinates.png", "intermediate_values.png")
CHAMPION_PICTURES = tuple(name for name in PICTURES if name not in DATA_PICTURES + TRIAL_PICTURES)


def pictures(record: SearchRecord, names: Collection[str] = tuple(PICTURES)) -> dict[str, bytes]:
    """The pictures ``names`` of ``PICTURES`` (those the search has data for)."""
    drawn = {name: PICTURES[name](record) for name in names}
    return {name: png for name, png in drawn.items() if png is not None}


def interactive(record: SearchRecord) -> str:
    """Optuna's plotly figures of the search on one self-contained page (plotly.js included once)."""
    import plotly.io

    from optuna.visualization import plot_optimization_history, plot_parallel_coordinate, plot_param_importances

    parts = []
    count = len(finished(record))
    if record.study is not None and count:
        how, name = target(record)
        figures = [plot_optimization_history(record.study, target=how, target_name=name), plot_parallel_coordinate(record.study, target=how, target_name=name)]
        if count >= 2:
            try:
                figures.append(plot_param_importances(record.study, evaluator=fanova(), target=how, target_name=name))
            except RuntimeError:  # the finished trials' parameters do not vary: no importances to show
                pass
        parts = [plotly.io.to_html(f, include_plotlyjs=i == 0, full_html=False) for i, f in enumerate(figures)]
    body = "\n".join(parts) or "<p>No trial of this search ran to its last epoch: nothing for Optuna's plots.</p>"
    return f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{record.name}: what Optuna learned</title></head><body>{body}</body></html>"


def log_plots(record: SearchRecord, names: Collection[str] = tuple(PICTURES)) -> None:
    """The pictures ``names`` (PNG) under ``plots/`` on the parent run, and the interactive page
    with the trials' pictures."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for name, data in pictures(record, names).items():
            (folder / name).write_bytes(data)
        if not set(TRIAL_PICTURES).isdisjoint(names):
            (folder / INTERACTIVE).write_text(interactive(record), encoding="utf-8")
        record.client.log_artifacts(record.parent.info.run_id, str(folder), PLOTS_DIR)
