"""The Python API, for notebooks and scripts: run or resume a search and get its outcome as values.

    from search import api
    outcome = api.run("examples/digits.yaml")          # or a dict: api.run({...}, base=Path("."))
    outcome.champion_uri, outcome.test_table, outcome.trials

The CLI (``search.cli``) is a thin layer over these functions: it prints what they return.
Bad input raises ``SpecError`` (one line naming the field) before anything starts; a search that
ran but failed raises ``SearchFailed``; Ctrl+C raises ``SearchInterrupted``.
"""

from __future__ import annotations

import importlib
import os
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from search.locations import ENVIRONMENT
from search.look.painter import Painter, painting

if TYPE_CHECKING:
    from search.run.driver import SearchOutcome
    from search.spec.schema import Spec


# What the driver imports while Ray starts: its code, and scikit-learn's parts it calls (data splits,
# metrics; about 1.5 s, on the way to the first trial when imported where first called).
DRIVER_MODULES = ("search.run.driver", "sklearn.model_selection", "sklearn.metrics")

# The variables that fill empty spec fields (MLFLOW_TRACKING_URI, FUSION_SEARCH_*_STORAGE) as the
# user set them when this module was imported: once a search has run in this process,
# mlflow.set_tracking_uri has overwritten $MLFLOW_TRACKING_URI with that search's store.
USER_ENVIRONMENT = {name: os.environ[name] for name in ENVIRONMENT.values() if os.environ.get(name)}


def read(spec: str | Path | Mapping[str, Any], base: Path | None = None, environ: Mapping[str, str] | None = None) -> tuple[Spec, str, Path | None]:
    """A spec file's path or a spec as a dict (its relative paths from ``base``, default the working
    folder), checked, what it leaves empty filled from ``environ`` (default: the process's); returns
    the spec, its text (logged on the parent run) and its file (None for a dict)."""
    from search.spec.schema import load_spec, parse_spec

    environ = USER_ENVIRONMENT if environ is None else environ
    if isinstance(spec, Mapping):
        return parse_spec(dict(spec), base or Path.cwd()).with_environment(environ), yaml.safe_dump(dict(spec), sort_keys=False), None
    path = Path(spec)
    return load_spec(path).with_environment(environ), path.read_text(), path


def run(
    spec: str | Path | Mapping[str, Any], address: str | None = None, verbose: bool = False, base: Path | None = None
) -> SearchOutcome:
    """Run the search ``spec`` (a file or a dict) on local Ray, or on the cluster at ``address``."""
    with Painter() as painter:  # first: it imports its libraries while the spec is read
        checked, text, source = read(spec, base)
        return run_spec(checked, text, source, address, verbose, painter)


def run_spec(
    spec: Spec, text: str, source: Path | None, address: str | None = None, verbose: bool = False, painter: Painter | None = None
) -> SearchOutcome:
    """Run a checked spec, its pictures drawn by ``painter`` (one of its own if None). Ray starts
    (here: it must be the main thread) while the driver's libraries import on another thread;
    after any error Ray is shut down, as the process would at exit."""
    import ray

    from cluster.connect import start
    from trainables import PRELOAD

    began = time.monotonic()  # the search's first phase, ray, counts from here
    with painting(painter) as drawing:
        with ThreadPoolExecutor(max_workers=1) as pool:
            importing = pool.map(importlib.import_module, DRIVER_MODULES)
            start(spec.resources.cpu, spec.resources.gpu, address, verbose, PRELOAD)
        try:
            list(importing)
            from search.run.driver import run_search

            return run_search(spec, text, drawing, address, verbose, source=source, since=began)
        except BaseException:
            ray.shutdown()
            raise


def resume(name: str, tracking_uri: str, address: str | None = None, verbose: bool = False) -> SearchOutcome:
    """Continue the newest run of search ``name`` in the store at ``tracking_uri`` whose driver stopped."""
    with Painter() as painter:
        return resume_spec(*resumable(name, tracking_uri), address, verbose, painter)


def resume_spec(
    spec: Spec, parent: str, experiment: str, address: str | None = None, verbose: bool = False, painter: Painter | None = None
) -> SearchOutcome:
    from search.run.driver import resume_search

    with painting(painter) as drawing:
        return resume_search(spec, parent, experiment, drawing, address, verbose)


def resumable(name: str, tracking_uri: str) -> tuple[Spec, str, str]:
    """The spec, parent run and Tune experiment of the search to resume (one line if there is none)."""
    from search.look.leaderboard import resumable as find

    spec, parent, experiment = find(tracking_uri, name, USER_ENVIRONMENT)
    return spec.with_environment({**USER_ENVIRONMENT, "MLFLOW_TRACKING_URI": tracking_uri}), parent, experiment
