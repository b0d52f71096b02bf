"""Plain text for the terminal: tables (leaderboards, the test-split comparison) and error summaries."""

from __future__ import annotations

from typing import Any, Sequence

from search.names import row_model


def error_summary(text: str) -> str:
    """The last line of a traceback: the exception and its message."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "unknown error"


def first_line(error: BaseException) -> str:
    """The first line of an error's message (drivers add hints and URLs on the next ones), or its type."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def format_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return "" if value is None else str(value)


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[format_value(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    line = lambda values: "  ".join(v.ljust(w) for v, w in zip(values, widths, strict=True)).rstrip()  # noqa: E731
    return "\n".join([line(headers), line(["-" * w for w in widths]), *(line(r) for r in cells)])


COST_COLUMNS = {"p95_ms": "latency_ms_p95", "size_mb": "size_mb"}
QUALITY_COLUMNS = ("accuracy", "log_loss")  # always shown, besides the objectives' metrics
REGRESSION_COLUMNS = ("rmse", "mae", "r2")  # in their place for a regression


def test_rows(
    table: dict[str, dict[str, float]], marks: dict[str, str] | None = None, objectives: Sequence[str] = ()
) -> tuple[list[str], list[list[Any]]]:
    """The test table's headers and rows: each model's test metrics (accuracy and log-loss, or a
    regression's RMSE, MAE and R², and those of the ``objectives``' validation metrics) and its cost
    beside them, and (given ``marks``) whether the champion rule could pick it."""
    regression = any("test_rmse" in row for row in table.values())
    always = REGRESSION_COLUMNS if regression else QUALITY_COLUMNS
    named = {name.removeprefix("val_"): f"test_{name.removeprefix('val_')}" for name in objectives if name.startswith("val_")}
    columns = {**{k: f"test_{k}" for k in always}, **named, **COST_COLUMNS}
    headers = ["model", *columns, *(["candidate"] if marks is not None else [])]
    rows = [[label, *(row.get(key) for key in columns.values()), *([marks.get(row_model(label), "no")] if marks is not None else [])] for label, row in table.items()]
    return headers, rows


def listed(words: list[str], most: int = 8) -> str:
    """``a, b, c and 5 more``."""
    return ", ".join(words[:most]) + (f" and {len(words) - most} more" if len(words) > most else "")


def describe_tried(record: dict[str, Any]) -> str:
    """A search's structure coverage (``coverage.json``) in one line."""
    line = f"structure coverage: {len(record['tried'])} of {len(record['structures'])} structures tried"
    return line + (f"; not tried: {listed(record['not_tried'])}" if record["not_tried"] else "")
