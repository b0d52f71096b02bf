"""The trade-off a search found, as pictures on its parent run: ``pareto/pareto.png`` (matplotlib),
``pareto/pareto.html`` (plotly, interactive, self-contained), drawn from the candidates the search
stored (``candidates.json``), like every other picture.

Every eligible candidate is a point (trials, the ensemble, soups, merges, the student...): the second objective across (else the first
constraint's metric, else the other validation metric), the first objective up. Candidates that miss a
constraint are grey crosses, the Pareto front is joined in red, the champion is a star, and each
constraint on either axis is a dashed line.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any


from search.spec.objectives import Bound, Objectives, reported_key
from search.look.plots import SearchRecord, figure, png_of
from trainables.metrics import QUALITY_METRICS, REGRESSION_METRICS
from search.names import CANDIDATES_FILE, PARETO_DIR




Option = dict[str, Any]  # a candidate as candidates.json stores it


@dataclass(frozen=True)
class Axes:
    x: str  # reported keys
    y: str

    @classmethod
    def of(cls, objectives: Objectives) -> "Axes":
        shown = objectives.shown
        if len(shown) > 1:
            return cls(shown[1], shown[0])
        regression = objectives.first.metric in REGRESSION_METRICS  # the other axis: a metric of the same task
        other = next(m for m in QUALITY_METRICS if m != objectives.first.metric and (m in REGRESSION_METRICS) == regression)
        return cls(reported_key(other), shown[0])

    def plotted(self, options: list[Option]) -> list[Option]:
        """The eligible candidates that have both values."""
        return [o for o in options if o["eligible"] and o.get(self.x) is not None and o.get(self.y) is not None]

    def log_x(self, options: list[Option]) -> bool:
        """A log scale across when the points span more than 20x (a backbone against a small head)."""
        xs = [o[self.x] for o in self.plotted(options)]
        return bool(xs) and min(xs) > 0 and max(xs) / min(xs) > 20


def axis_title(key: str) -> str:
    """``best_val_accuracy`` -> ``val_accuracy (at each trial's best epoch)``; a cost as it is named."""
    return f"{key.removeprefix('best_')} (at each trial's best epoch)" if key.startswith("best_") else key


def lines(bounds: tuple[Bound, ...], key: str) -> list[tuple[float, str]]:
    """The constraint lines on the axis showing ``key``: (value, label)."""
    out = []
    for bound in (b for b in bounds if b.key == key):
        out += [(value, f"{bound.metric} {sign} {value:g}") for value, sign in ((bound.low, ">="), (bound.high, "<=")) if value is not None]
    return out


MADE_AFTER = "made after the trials"  # any other kind: a soup, a merge, the student...


def groups(options: list[Option]) -> dict[str, list[Option]]:
    """The plotted candidates by marker group (the champion also drawn over its own group)."""
    meets = [o for o in options if o["meets_constraints"]]
    return {
        "misses a constraint": [o for o in options if not o["meets_constraints"]],
        "trial": [o for o in meets if o["kind"] == "trial"],
        "ensemble": [o for o in meets if o["kind"] == "ensemble"],
        MADE_AFTER: [o for o in meets if o["kind"] not in ("trial", "ensemble")],
        "champion": [o for o in options if o["champion"]],
    }


def front_line(options: list[Option], axes: Axes) -> list[Option]:
    """The front's points, in the order the line joins them (across)."""
    return sorted((o for o in options if o["on_front"]), key=lambda o: o[axes.x])


def png(options: list[Option], objectives: Objectives) -> bytes:
    axes = Axes.of(objectives)
    options = axes.plotted(options)
    fig, ax = figure(8, 5.5, dpi=110)
    styles = {
        "misses a constraint": dict(marker="x", color="0.6"),
        "trial": dict(marker="o", color="tab:blue", alpha=0.7),
        "ensemble": dict(marker="D", color="tab:purple", s=60),
        MADE_AFTER: dict(marker="s", color="tab:green", s=50),
        "champion": dict(marker="*", s=320, color="gold", edgecolors="black", zorder=5),
    }
    for label, group in groups(options).items():
        if group:
            ax.scatter([o[axes.x] for o in group], [o[axes.y] for o in group], label=label, **styles[label])
    front = front_line(options, axes)
    if front:
        ax.plot([o[axes.x] for o in front], [o[axes.y] for o in front], "-", color="tab:red", label="Pareto front", zorder=1)
    for o in groups(options)["champion"]:
        ax.annotate(f"champion: {o['candidate']}", (o[axes.x], o[axes.y]), textcoords="offset points", xytext=(8, 8))
    for value, label in lines(objectives.bounds, axes.x):
        ax.axvline(value, linestyle="--", color="tab:red", alpha=0.6, label=label)
    for value, label in lines(objectives.bounds, axes.y):
        ax.axhline(value, linestyle="--", color="tab:orange", alpha=0.6, label=label)
    if axes.log_x(options):
        ax.set_xscale("log")
    ax.set_xlabel(axis_title(axes.x))
    ax.set_ylabel(axis_title(axes.y))
    ax.set_title(objectives.describe(), fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return png_of(fig)


def html(options: list[Option], objectives: Objectives) -> str:
    import plotly.graph_objects as go

    axes = Axes.of(objectives)
    options = axes.plotted(options)
    figure = go.Figure()

    def hover(o: Option) -> str:
        values = "<br>".join(f"{k}: {o[k]:.4g}" for k in objectives.shown if o.get(k) is not None)
        return f"<b>{o['candidate']}</b> ({o['fusion']})<br>{values}"

    styles = {
        "misses a constraint": dict(symbol="x", color="grey"),
        "trial": dict(symbol="circle", color="royalblue"),
        "ensemble": dict(symbol="diamond", color="purple", size=11),
        MADE_AFTER: dict(symbol="square", color="green", size=10),
        "champion": dict(symbol="star", color="gold", size=18, line=dict(color="black", width=1)),
    }
    for label, group in groups(options).items():
        if group:
            figure.add_trace(
                go.Scatter(
                    x=[o[axes.x] for o in group], y=[o[axes.y] for o in group], mode="markers", name=label,
                    marker=styles[label], text=[hover(o) for o in group], hoverinfo="text",
                )
            )
    front = front_line(options, axes)
    if front:
        figure.add_trace(
            go.Scatter(x=[o[axes.x] for o in front], y=[o[axes.y] for o in front], mode="lines", name="Pareto front", line=dict(color="red"))
        )
    for value, label in lines(objectives.bounds, axes.x):
        figure.add_vline(x=value, line_dash="dash", line_color="red", annotation_text=label)
    for value, label in lines(objectives.bounds, axes.y):
        figure.add_hline(y=value, line_dash="dash", line_color="orange", annotation_text=label)
    figure.update_layout(
        title=objectives.describe(), xaxis_title=axis_title(axes.x), yaxis_title=axis_title(axes.y), template="plotly_white",
        xaxis_type="log" if axes.log_x(options) else "linear",
    )
    return figure.to_html(include_plotlyjs=True, full_html=True)


def log_pareto(record: SearchRecord) -> None:
    """The front as a picture and an interactive page under ``pareto/`` on the search's parent run,
    drawn from the candidates it stored (``candidates.json``)."""
    stored = record.facts.get(CANDIDATES_FILE)
    if not stored:
        return
    options, objectives = stored["candidates"], record.objectives
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "pareto.png").write_bytes(png(options, objectives))
        (folder / "pareto.html").write_text(html(options, objectives), encoding="utf-8")
        record.client.log_artifacts(record.parent.info.run_id, str(folder), PARETO_DIR)
