"""``fusion-search report``: one self-contained HTML page of a finished search, for someone without
MLflow: what was searched (the spec), how each trial did (the leaderboard, the Pareto front), the
test-split table, the pictures (embedded, no file beside the page) and how to load the champion.

Everything comes from the store the search wrote (``search.look.store_reader``), so a store copied to
another folder gives the same page.
"""

from __future__ import annotations

import base64
import html
import time
from pathlib import Path
from typing import Any, Sequence

from mlflow.entities import Run

from search.look.leaderboard import latest_parent, leaderboard, pareto_front
from search.names import CANDIDATES_FILE, CHAMPION_KIND_TAG, CHAMPION_URI_TAG, COVERAGE_FILE, PARETO_DIR
from search.look.plots import PICTURES
from search.names import PLOTS_DIR
from search.text import describe_tried, format_value, test_rows
from search.look.store_reader import StoreReader
from search.names import SPEC_FILE
from search.look.store_reader import logged_objectives
from search.names import ENSEMBLE_FILE, TEST_TABLE, THRESHOLD_METRIC

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
h1 { margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: 0.2em; margin-top: 1.6em; }
table { border-collapse: collapse; font-size: 0.9em; } th, td { padding: 0.25em 0.7em; border-bottom: 1px solid #eee; text-align: left; }
th { background: #f4f4f4; } pre { background: #f6f8fa; padding: 1em; overflow-x: auto; }
figure { margin: 1em 0; } img { max-width: 100%; border: 1px solid #eee; } .meta { color: #666; }
"""


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(format_value(v))}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def picture(name: str, data: bytes) -> str:
    encoded = base64.b64encode(data).decode("ascii")
    return f'<figure><img alt="{html.escape(name)}" src="data:image/png;base64,{encoded}"><figcaption>{html.escape(name)}</figcaption></figure>'


def when(millis: int | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(millis / 1000)) if millis else "-"


def champion_section(name: str, run: Run) -> str:
    tags = run.data.tags
    uri = tags.get(CHAMPION_URI_TAG, f"models:/{name}@champion")
    what = tags.get(CHAMPION_KIND_TAG, "none registered")
    code = (
        f"import mlflow\nmodel = mlflow.pyfunc.load_model({uri!r})\nprobabilities = model.predict(inputs)  # the inputs the spec's members read\n"
        f"classes = model.predict(inputs, params={{'output': 'classes'}})  # class names\n\n"
        f"# or, as files:  fusion-search best {name} --out champion/"
    )
    threshold = run.data.metrics.get(THRESHOLD_METRIC)
    cut = "" if threshold is None else f" It predicts the positive class above a probability of {threshold:.4g} (its decision threshold)."
    return f"<h2>Champion</h2><p>The {html.escape(what)}, registered as <code>{html.escape(uri)}</code>.{html.escape(cut)}</p><pre>{html.escape(code)}</pre>"


def test_section(reader: StoreReader, run: Run) -> str:
    marks = (reader.json(run, CANDIDATES_FILE) or {}).get("marks")
    headers, rows = test_rows(reader.json(run, TEST_TABLE) or {}, marks, [g.metric for g in logged_objectives(run).goals])
    return "<h2>Test split</h2>" + (table(headers, rows) if rows else "<p>No test table: the search did not finish.</p>")


def coverage_section(reader: StoreReader, run: Run) -> str:
    """How much of the structure space (member subsets x operators, members alone) the trials tried."""
    record = reader.json(run, COVERAGE_FILE)
    return f"<h2>Structure coverage</h2><p>{html.escape(describe_tried(record))}</p>" if record else ""


def candidates_section(reader: StoreReader, run: Run) -> str:
    """Every candidate for champion (trials, the ensemble, soups, merges, the student...): what it
    is, its validation values, whether it could be picked, and the one that was."""
    stored = reader.json(run, CANDIDATES_FILE)
    if not stored:
        return ""
    shown = logged_objectives(run).shown
    rows = [
        [c["candidate"], c["kind"], c["fusion"], *(c.get(k) for k in shown), "yes" if c["eligible"] else "no (one trial's weights)", "yes" if c["champion"] else ""]
        for c in stored["candidates"] if c["kind"] != "trial" or c["champion"] or c["candidate"] == "best trial"
    ]
    return "<h2>Candidates</h2><p>The best trial, the candidates made after the trials, and the champion (every trial is in the table above).</p>" + table(
        ["candidate", "kind", "what it is", *shown, "eligible", "champion"], rows
    )


def ensemble_section(reader: StoreReader, run: Run) -> str:
    members = (reader.json(run, ENSEMBLE_FILE) or {}).get("members", [])
    if len(members) < 2:  # greedy selection kept the best trial alone
        return ""
    return "<h2>Ensemble</h2>" + table(["trial", "weight"], [[m["trial"], m["weight"]] for m in members])


def pictures_section(reader: StoreReader, run: Run) -> str:
    found = {name: reader.read(run, f"{PLOTS_DIR}/{name}") for name in PICTURES}
    found[f"{PARETO_DIR}/pareto.png"] = reader.read(run, f"{PARETO_DIR}/pareto.png")
    shown = [picture(name, data) for name, data in found.items() if data]
    return "<h2>Pictures</h2>" + ("".join(shown) if shown else "<p>No pictures: the search did not finish.</p>")


def render(reader: StoreReader, name: str) -> str:
    """The page for the newest run of search ``name``."""
    _, parent = latest_parent(reader.client, name)
    run = reader.client.get_run(parent)
    headers, rows = leaderboard(reader, name)
    sections = [
        f"<h1>Search {html.escape(name)}</h1>",
        f"<p class='meta'>MLflow run {parent} ({html.escape(run.info.run_name or '')}), {run.info.status.lower()}; "
        f"started {when(run.info.start_time)}, ended {when(run.info.end_time)}; objective {html.escape(run.data.params.get('objective', ''))}</p>",
        champion_section(name, run),
        test_section(reader, run),
        coverage_section(reader, run),
        f"<h2>Trials ({len(rows)})</h2>" + table(headers, rows),
    ]
    if logged_objectives(run).tradeoff:
        front_headers, front, where = pareto_front(reader, name)
        sections.append(f"<h2>Pareto front</h2><p>{html.escape(where)}</p>" + table(front_headers, front))
    sections += [ensemble_section(reader, run), candidates_section(reader, run), pictures_section(reader, run)]
    spec = (reader.read(run, SPEC_FILE) or b"").decode("utf-8")
    sections.append(f"<h2>Spec</h2><pre>{html.escape(spec)}</pre>")
    body = "\n".join(s for s in sections if s)
    return f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>fusion-search: {html.escape(name)}</title><style>{STYLE}</style></head><body>{body}</body></html>"


def write_report(reader: StoreReader, name: str, out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render(reader, name), encoding="utf-8")
    return out
