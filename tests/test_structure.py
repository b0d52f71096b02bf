"""The shape of the package: search/ in four parts whose imports go one way, cluster/ below search/,
the read-only commands without the training stack, and a candidate kind added by one registration."""

from __future__ import annotations

import ast
import re
import json
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest

ROOT = Path(__file__).resolve().parent.parent
PARTS = ("spec", "run", "candidates", "look")
# Which part may import which (the CLI and the API sit on top of all four).
ALLOWED = {"spec": set(), "look": {"spec"}, "candidates": {"spec"}, "run": {"spec", "candidates", "look"}}


def imports_of(path: Path) -> set[str]:
    """The project modules a file imports, at any depth of the file (lazy imports included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {m for m in found if m.split(".")[0] in ("search", "cluster", "trainables")}


def part_of(module: str) -> str | None:
    pieces = module.split(".")
    return pieces[1] if pieces[0] == "search" and len(pieces) > 1 and pieces[1] in PARTS else None


def test_the_four_parts_import_one_way_and_look_and_spec_import_no_training():
    for part in PARTS:
        files = sorted((ROOT / "search" / part).glob("*.py"))
        assert files, f"search/{part}/ is a package of modules"
        for path in files:
            for module in imports_of(path):
                other = part_of(module)
                assert other in (None, part) or other in ALLOWED[part], f"search/{part}/{path.name} imports {module}"
                if part in ("look", "spec"):
                    assert module != "trainables.training", f"search/{part}/{path.name} imports the training code"


def test_the_parts_have_no_cycle_and_the_base_modules_import_no_part():
    edges = {part: {part_of(m) for p in (ROOT / "search" / part).glob("*.py") for m in imports_of(p)} - {None, part} for part in PARTS}

    def reaches(start: str, goal: str, seen: frozenset = frozenset()) -> bool:
        return any(n == goal or (n not in seen and reaches(n, goal, seen | {n})) for n in edges[start])

    assert not [p for p in PARTS if reaches(p, p)], edges
    for path in (ROOT / "search").glob("*.py"):
        if path.name not in ("cli.py", "api.py"):
            assert not {m for m in imports_of(path) if part_of(m)}, f"search/{path.name} is a base module: it imports no part"


def test_cluster_does_not_import_search():
    for path in (ROOT / "cluster").glob("*.py"):
        assert not [m for m in imports_of(path) if m.startswith("search")], f"cluster/{path.name} imports search/"


def test_a_trial_and_the_spec_do_not_import_torchvision_until_images_need_it():
    """A trial process starts by importing the trainable, and every command by reading the spec;
    neither imports torchvision (1.5 s) until a member or an image needs it."""
    code = "import sys, trainables.trainable, search.spec.schema; print('torchvision' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert done.stdout.strip() == "False"


@pytest.mark.slow
def test_trials_command_does_not_load_the_training_code(searched):
    spec, _, _ = searched
    code = (
        "import sys; from search.cli import main; "
        f"code = main(['trials', {spec.name!r}, '--tracking-uri', {spec.tracking_uri!r}]); "
        "loaded = [m for m in ('trainables.training', 'search.candidates.champion', 'search.run.driver') if m in sys.modules]; "
        "print('LOADED', loaded); sys.exit(code)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "LOADED []" in done.stdout, done.stdout
    assert "best_val_log_loss" in done.stdout  # the leaderboard was printed


LAST_EPOCH = "last epoch"


@pytest.fixture
def last_epoch_maker():
    """A new kind of candidate, registered here and nowhere else: the best trial at its last epoch."""
    from search.candidates.candidate import Candidate, composite_of, register_maker, unregister_maker
    from search.candidates.weight_fusion import scorer_of

    @register_maker(LAST_EPOCH)
    def make_last_epoch(pool, _):
        best = pool.trials[0]
        state = best.checkpoint.latest_state()
        scorer = scorer_of(pool, best)
        val, test = scorer.proba(state, "val"), scorer.proba(state, "test")
        return [
            Candidate(
                LAST_EPOCH, LAST_EPOCH, pool.val_point(val), f"trial {best.trial_id} at its last epoch", (best.plan,),
                lambda: composite_of(best.plan, state), best.trial_id, {"trial": best.trial_id}, test,
            )
        ]

    yield
    unregister_maker(LAST_EPOCH)


@pytest.mark.slow
def test_a_new_candidate_kind_is_one_registration(last_epoch_maker, tmp_path):
    from search.cli import main
    from search.spec.schema import load_spec
    from tests.conftest import TINY_SPEC, run_search_in

    spec_path = run_search_in(tmp_path, {**TINY_SPEC, "name": "last-epoch", "weight_fusion": {"soups": False, "merges": [], "checkpoint_average": 0}})
    spec = load_spec(spec_path)
    client = mlflow.tracking.MlflowClient(spec.tracking_uri)
    parent = client.search_runs([client.get_experiment_by_name(spec.name).experiment_id], filter_string="tags.`fusion_search.role` = 'search'")[0]
    root = parent.info.artifact_uri
    table = mlflow.artifacts.load_dict(f"{root}/test_table.json")
    assert LAST_EPOCH in table and "test_log_loss" in table[LAST_EPOCH], "a row of the test table"
    stored = mlflow.artifacts.load_dict(f"{root}/candidates.json")["candidates"]
    mine = next(c for c in stored if c["candidate"] == LAST_EPOCH)
    assert mine["kind"] == LAST_EPOCH and mine["eligible"]
    # The rule weighed it: the champion is the best eligible candidate on validation (ties to the earlier).
    eligible = [c for c in stored if c["eligible"]]
    best = min(eligible, key=lambda c: c["best_val_log_loss"])
    assert next(c for c in stored if c["champion"]) is best
    assert parent.data.tags["fusion_search.champion_kind"] == best["candidate"]
    report = tmp_path / "report.html"
    assert main(["report", spec.name, "--tracking-uri", spec.tracking_uri, "--out", str(report)]) == 0
    assert f"<td>{LAST_EPOCH}</td>" in report.read_text()
    json.dumps(stored)  # the record is plain JSON


def test_the_readme_is_short_and_its_links_resolve():
    readme = ROOT / "README.md"
    assert len(readme.read_text().splitlines()) <= 250
    pages = [readme, *sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / "examples").glob("*/README.md"))]
    for page in pages:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
            if "://" not in target:
                assert (page.parent / target).exists(), f"{page.relative_to(ROOT)} links to {target}, which does not exist"


def test_every_figure_in_docs_names_the_commit_it_was_measured_at():
    """A section of docs/ (or of the examples' pages) with a measured table row or a timing in it
    names the commit its figures were measured at."""
    pages = [*sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / "examples").glob("*/README.md"))]
    for page in pages:
        for section in re.split(r"(?m)^(?=#{1,4} )", page.read_text()):
            figures = re.findall(r"(?m)^\|.*\b\d+\.\d{2,}\b.*\|$", section) + re.findall(r"\b\d+(?:\.\d+)? (?:s|min)\b", section)
            if figures:
                assert re.search(r"\b[0-9a-f]{7,40}\b", section), f"{page.name}, {section.splitlines()[0]!r}: figures ({figures[0][:60]}) with no commit"
