"""What "better" means for a search: its objectives, its constraints and how a champion is picked.

``Objectives`` is the one object the scheduler, Optuna, ensemble selection, the champion rule, the
alias rule, the leaderboard and the progress line ask. It reads *points*: mappings of the keys a
trial reports (``best_val_log_loss``, ``latency_ms_p95``...) to values; an ensemble or any other
candidate is described by the same keys.

- A quality metric (``val_log_loss``, ``val_accuracy``) is read at the trial's best epoch, under
  ``best_<metric>``; the first objective is one, and it picks that epoch and drives early stopping.
- A cost metric (``trainables.cost.COST_METRICS``) is read as it is.
- A point is *feasible* when it meets every constraint; the *front* is the feasible points no other
  feasible point dominates on the objectives.
- The champion among candidates is the best on the first objective among the feasible ones
  (``select: first``), or, with several objectives, the front's point that ``select`` names: the best on
  another objective (its metric), or the ``knee``, the front's point nearest the ideal point once each
  objective is scaled to [0, 1] over the front. Ties go to the earlier candidate.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from trainables.metrics import COST_METRICS
from trainables.metrics import QUALITY_METRICS, Direction

METRICS: dict[str, str] = {**QUALITY_METRICS, **{name: "min" for name in COST_METRICS}}
SELECT_RULES = ("first", "knee")  # or the name of an objective's metric

Point = Mapping[str, Any]


def reported_key(metric: str) -> str:
    """The key a trial reports ``metric`` under."""
    return f"best_{metric}" if metric in QUALITY_METRICS else metric


@dataclass(frozen=True)
class Goal:
    """One objective: a metric and which way is better."""

    metric: str
    mode: str

    @property
    def direction(self) -> Direction:
        return Direction(self.mode)  # type: ignore[arg-type]

    @property
    def key(self) -> str:
        return reported_key(self.metric)

    def value(self, point: Point) -> float | None:
        value = point.get(self.key)
        return None if value is None or math.isnan(value) else float(value)


@dataclass(frozen=True)
class Bound:
    """A constraint: ``low <= metric <= high`` (either side may be open)."""

    metric: str
    low: float | None = None
    high: float | None = None

    @property
    def key(self) -> str:
        return reported_key(self.metric)

    def slack(self, point: Point) -> float:
        """How far ``point`` is outside the bound (<= 0: inside; infinite: not measured)."""
        value = point.get(self.key)
        if value is None or math.isnan(value):
            return math.inf
        return max(self.low - value if self.low is not None else -math.inf, value - self.high if self.high is not None else -math.inf)

    def describe(self) -> str:
        if self.low is not None and self.high is not None:
            return f"{self.low:g} <= {self.metric} <= {self.high:g}"
        return f"{self.metric} >= {self.low:g}" if self.low is not None else f"{self.metric} <= {self.high:g}"


@dataclass(frozen=True)
class Objectives:
    goals: tuple[Goal, ...]
    bounds: tuple[Bound, ...] = ()
    select: str = "first"

    @property
    def first(self) -> Goal:
        return self.goals[0]

    @property
    def multi(self) -> bool:
        return len(self.goals) > 1

    @property
    def tradeoff(self) -> bool:
        """Whether the search trades the objective against something (objectives or constraints)."""
        return self.multi or bool(self.bounds)

    @property
    def keys(self) -> list[str]:
        return [g.key for g in self.goals]

    @property
    def modes(self) -> list[str]:
        return [g.mode for g in self.goals]

    @property
    def shown(self) -> list[str]:
        """The keys worth a column: each objective's, then each constraint's not among them."""
        keys = self.keys
        return keys + [b.key for b in self.bounds if b.key not in keys]

    def slacks(self, point: Point) -> list[float]:
        return [b.slack(point) for b in self.bounds]

    def feasible(self, point: Point) -> bool:
        return all(s <= 0 for s in self.slacks(point))

    def violations(self, point: Point) -> list[str]:
        """The constraints ``point`` misses, in words (``latency_ms_p95 31.2 > 20``)."""
        out = []
        for bound in self.bounds:
            if bound.slack(point) > 0:
                value = point.get(bound.key)
                out.append(f"{bound.metric} not measured" if value is None else f"{bound.metric} {value:.4g} outside {bound.describe()}")
        return out

    def values(self, point: Point) -> tuple[float, ...] | None:
        """The objectives' values at ``point``; None when one is missing."""
        values = [g.value(point) for g in self.goals]
        return None if any(v is None for v in values) else tuple(values)  # type: ignore[return-value]

    def sort_key(self, point: Point) -> tuple[bool, float]:
        """Best on the first objective first, points without a value last."""
        return self.first.direction.best_first(self.first.value(point))

    def dominates(self, a: Sequence[float], b: Sequence[float]) -> bool:
        """Whether values ``a`` are at least as good as ``b`` on every objective and better on one."""
        no_worse = all(not g.direction.better(y, x) for g, x, y in zip(self.goals, a, b, strict=True))
        return no_worse and any(g.direction.better(x, y) for g, x, y in zip(self.goals, a, b, strict=True))

    def front(self, points: Sequence[Point]) -> list[int]:
        """Indices of the feasible points no other feasible point dominates, in the given order."""
        scored = [(i, self.values(p)) for i, p in enumerate(points) if self.feasible(p)]
        scored = [(i, v) for i, v in scored if v is not None]
        return [i for i, v in scored if not any(self.dominates(w, v) for j, w in scored if j != i)]

    def choose(self, points: Sequence[Point]) -> int | None:
        """The index of the champion among ``points`` (see the module's docstring); None when no
        point is feasible."""
        front = self.front(points)
        if not front:
            return None
        if self.select == "knee":
            return self.knee([self.values(points[i]) for i in front], front)  # type: ignore[misc]
        goal = self.first if self.select == "first" else next(g for g in self.goals if g.metric == self.select)
        best = front[0]
        for i in front[1:]:
            if goal.direction.better(goal.value(points[i]), goal.value(points[best])):  # type: ignore[arg-type]
                best = i
        return best

    def knee(self, values: list[tuple[float, ...]], indices: list[int]) -> int:
        """The point nearest the ideal one, each objective scaled to [0, 1] over ``values`` (0: best)."""
        scaled = []
        for k, goal in enumerate(self.goals):
            column = [v[k] for v in values]
            low, high = min(column), max(column)
            span = (high - low) or 1.0
            scaled.append([(x - low) / span if goal.mode == "min" else (high - x) / span for x in column])
        distances = [math.hypot(*(s[n] for s in scaled)) for n in range(len(values))]
        return indices[distances.index(min(distances))]

    def rule(self) -> str:
        """How ``choose`` picks, in words."""
        among = f"among the candidates meeting {', '.join(b.describe() for b in self.bounds)}" if self.bounds else "among the candidates"
        if self.select == "knee":
            return f"the knee of the Pareto front {among}"
        goal = self.first if self.select == "first" else next(g for g in self.goals if g.metric == self.select)
        return f"the best {goal.metric} {among}" + (" (on the Pareto front)" if self.select != "first" else "")

    def describe(self) -> str:
        """``val_log_loss (min), latency_ms_p95 (min); subject to latency_ms_p95 <= 20``."""
        text = ", ".join(f"{g.metric} ({g.mode})" for g in self.goals)
        if self.bounds:
            text += "; subject to " + ", ".join(b.describe() for b in self.bounds)
        return text

    def to_json(self) -> str:
        return json.dumps(
            {
                "objectives": [{"metric": g.metric, "mode": g.mode} for g in self.goals],
                "constraints": [{"metric": b.metric, "min": b.low, "max": b.high} for b in self.bounds],
                "select": self.select,
            }
        )

    @classmethod
    def from_json(cls, text: str) -> "Objectives":
        raw = json.loads(text)
        return cls(
            tuple(Goal(g["metric"], g["mode"]) for g in raw["objectives"]),
            tuple(Bound(b["metric"], b["min"], b["max"]) for b in raw["constraints"]),
            raw["select"],
        )
