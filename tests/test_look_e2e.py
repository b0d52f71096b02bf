"""Looking at a finished search: its pictures, its report, MLflow's UI and optuna-dashboard on its
store, the last three in a real browser (Debian's Chromium, driven by Playwright; no browser
download). Each browser test keeps a screenshot under ``test-artifacts/`` (or
``$FUSION_SEARCH_TEST_ARTIFACTS``). Without Chromium the browser tests fail: ``make test`` installs it.
"""

from __future__ import annotations

import html.parser
import io
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from cluster.local import free_port
from search.cli import main
from search.look.leaderboard import latest_parent
from search.locations import ui_link
from search.names import RUN_ATTR
from search.look.plots import INTERACTIVE, PICTURES, SearchRecord, pictures, interactive
from search.names import PLOTS_DIR
from search.look.store_reader import StoreReader
from tests.services import Output, answers, wait_until

# the pictures a classifier's search without domains has: predicted_vs_true is a regression's, domain_projection a search's with domains
CLASSIFIER_PICTURES = [name for name in PICTURES if name not in ("predicted_vs_true.png", "domain_projection.png")]

pytestmark = pytest.mark.slow

CHROMIUM = Path(os.environ.get("FUSION_SEARCH_CHROMIUM", "/usr/bin/chromium"))
# As the machine's probe starts it: no sandbox (root), no GPU, no calls home on a closed network.
CHROMIUM_FLAGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync",
]
SHOTS = Path(os.environ.get("FUSION_SEARCH_TEST_ARTIFACTS", Path(__file__).resolve().parents[1] / "test-artifacts"))


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    assert CHROMIUM.is_file(), f"no Chromium at {CHROMIUM}: `make test` installs Debian's (apt-get install chromium), or set $FUSION_SEARCH_CHROMIUM"
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS)
        yield launched
        launched.close()


def screenshot(page, name: str) -> Path:
    SHOTS.mkdir(parents=True, exist_ok=True)
    path = SHOTS / name
    page.screenshot(path=str(path))
    return path


def record_of(searched) -> SearchRecord:
    spec, _, _ = searched
    reader = StoreReader(spec.tracking_uri)
    _, parent = latest_parent(reader.client, spec.name)
    return SearchRecord.of_run(reader, parent)


class Parsed(html.parser.HTMLParser):
    """The tags of an HTML page and their attributes (the parser raises nothing: the checks are on what it found)."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.feed(text)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))


def start(command: list[str], marker: str) -> tuple[subprocess.Popen, str]:
    """A ``fusion-search`` command that serves a page, started in its own process group; returns it
    and the line it printed with ``marker``."""
    process = subprocess.Popen(
        [sys.executable, "-m", "search.cli", *command], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    output = Output(process)
    try:
        output.until(marker, timeout_s=90)
    except AssertionError:
        stop(process)
        raise
    return process, output.lines[-1]


def stop(process: subprocess.Popen) -> None:
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def test_each_picture_is_made_from_the_finished_store(searched):
    record = record_of(searched)
    made = pictures(record)
    assert list(made) == CLASSIFIER_PICTURES, "every picture of a classifier's search"
    for name, data in made.items():
        image = Image.open(io.BytesIO(data))
        assert image.format == "PNG" and image.width > 300 and image.height > 150, name
    page = interactive(record)
    divs = [attrs for tag, attrs in Parsed(page).tags if tag == "div" and "plotly-graph-div" in (attrs.get("class") or "")]
    assert len(divs) >= 2, "history and parallel coordinates, interactive"
    assert page.count("<script") >= len(divs) and "Plotly.newPlot" in page


def test_the_search_logged_its_pictures_and_says_what_its_trials_did(searched):
    spec, _, client = searched
    record = record_of(searched)
    logged = {Path(f.path).name for f in client.list_artifacts(record.parent.info.run_id, PLOTS_DIR)}
    assert logged == {*CLASSIFIER_PICTURES, INTERACTIVE}
    names = [r.info.run_name for r in record.trials]
    assert all(re.fullmatch(r"t\d{2} (cnn|mlp)(\+(cnn|mlp))? (weighted|concat_mlp)", n) for n in names), names
    assert sorted(n.split()[0] for n in names) == [f"t{i:02d}" for i in range(1, spec.budget.num_samples + 1)]
    metrics = record.parent.data.metrics
    assert metrics["trials.running"] == 0 and metrics["trials.failed"] == 0
    assert metrics["trials.completed"] + metrics["trials.stopped_early"] == spec.budget.num_samples
    assert {"champion.test_accuracy", "champion.test_log_loss", "champion.val_log_loss"} <= set(metrics)
    assert record.rungs() == spec.asha.rungs(spec.hyperparameters.max_epochs()) == [1]
    assert record.study is not None and len(record.study.trials) == spec.budget.num_samples
    assert {t.user_attrs[RUN_ATTR] for t in record.study.trials} == {record.parent.info.run_id}
    test_rows = sum(record.facts["class_balance.json"]["splits"]["test"])
    assert test_rows == int(record.parent.data.params["data.test_rows"])
    assert sum(map(sum, record.facts["confusion_matrix.json"]["matrix"])) == test_rows


def test_report_is_one_page_that_reads_a_copied_store(searched, tmp_path, browser):
    """The store copied to another folder (its recorded place gone for the while) gives the whole page:
    pictures embedded, nothing read from a path."""
    spec, _, _ = searched
    copy = tmp_path / "elsewhere"
    shutil.copytree(spec.storage, copy)
    away = spec.storage.with_name(spec.storage.name + "-away")
    spec.storage.rename(away)
    try:
        out = tmp_path / "report" / "tiny.html"
        assert main(["report", spec.name, "--tracking-uri", f"sqlite:///{copy / 'mlflow.db'}", "--out", str(out)]) == 0
    finally:
        away.rename(spec.storage)
    text = out.read_text()
    tags = Parsed(text).tags
    images = [attrs["src"] for tag, attrs in tags if tag == "img"]
    assert len(images) == len(CLASSIFIER_PICTURES) and all(src.startswith("data:image/png;base64,") for src in images)
    assert not [a for _, attrs in tags for key, a in attrs.items() if key in ("src", "href") and a and not a.startswith("data:")]
    for heading in ("Champion", "Test split", "Trials (4)", "Pictures", "Spec"):
        assert f"<h2>{heading}</h2>" in text, heading
    assert f"mlflow.pyfunc.load_model(&#x27;models:/{spec.name}@champion&#x27;)" in text

    page = browser.new_page(viewport={"width": 1280, "height": 1000})
    page.goto(out.as_uri())
    widths = page.eval_on_selector_all("img", "images => images.map(i => i.complete ? i.naturalWidth : 0)")
    assert len(widths) == len(CLASSIFIER_PICTURES) and min(widths) > 300, "every picture decodes in the browser"
    assert page.locator("h1").inner_text() == f"Search {spec.name}"
    screenshot(page, "report.png")
    page.close()


def test_mlflow_ui_opens_on_the_search(searched, browser):
    """``fusion-search ui`` serves MLflow's UI on the search's store and prints a link that opens on
    its training runs (not the GenAI overview); the nested trial runs and the parent's pictures are there."""
    spec, _, client = searched
    port = free_port()
    process, line = start(["ui", spec.name, "--tracking-uri", spec.tracking_uri, "--port", str(port)], "MLflow UI on")
    try:
        link = re.search(r"http://\S+", line).group(0)
        record = record_of(searched)
        assert link == ui_link(f"http://127.0.0.1:{port}", record.parent.info.experiment_id)
        wait_until(lambda: answers(f"http://127.0.0.1:{port}/health"), "mlflow ui", process, timeout_s=120)
        page = browser.new_page(viewport={"width": 1440, "height": 800})
        page.goto(link)
        page.wait_for_selector(f"text={record.parent.info.run_name}", timeout=60_000)
        assert "/runs" in page.url and "overview" not in page.url
        row = page.locator("[role='gridcell']").filter(has_text=record.parent.info.run_name).first
        row.locator("button").first.click()  # expand the parent: its nested trial runs
        for trial in record.trials:
            page.wait_for_selector(f"text={trial.info.run_name.split()[0]} ", timeout=20_000)
        screenshot(page, "mlflow_ui_runs.png")

        page.goto(ui_link(f"http://127.0.0.1:{port}", record.parent.info.experiment_id, record.parent.info.run_id).replace("?", "/artifacts?"))
        page.get_by_text(PLOTS_DIR, exact=True).first.click()
        for name in CLASSIFIER_PICTURES:
            page.get_by_text(name, exact=True).wait_for(timeout=20_000)
        page.get_by_text("history.png", exact=True).click()
        image = page.locator("img[src*='history.png'], img[src^='blob:']").first
        image.wait_for(timeout=20_000)
        page.wait_for_function("img => img.complete && img.naturalWidth > 300", arg=image.element_handle(), timeout=20_000)
        screenshot(page, "mlflow_ui_plots.png")
        page.close()
    finally:
        stop(process)


def test_dashboard_serves_the_searchs_study(searched, browser):
    spec, _, _ = searched
    port = free_port()
    process, line = start(["dashboard", spec.name, "--tracking-uri", spec.tracking_uri, "--port", str(port)], "optuna-dashboard on")
    try:
        assert f"http://127.0.0.1:{port}/dashboard/" in line
        wait_until(lambda: answers(f"http://127.0.0.1:{port}/api/studies"), "optuna-dashboard", process, timeout_s=60)
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        page.goto(f"http://127.0.0.1:{port}/dashboard/")
        page.get_by_text(spec.name).first.click()
        page.wait_for_url("**/dashboard/studies/*", timeout=30_000)
        page.get_by_text("Best Trial").first.wait_for(timeout=30_000)  # the study's trials, read from its storage
        screenshot(page, "dashboard.png")
        page.close()
    finally:
        stop(process)
