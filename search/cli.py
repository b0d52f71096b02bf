"""``fusion-search``: validate a spec, run a search, read the leaderboard, fetch the champion.

Exit codes: 0 success, 1 the search ran but failed, 2 bad input (spec, name, path),
130 interrupted (Ctrl+C).
"""

from __future__ import annotations

import argparse
import atexit
import os
import shlex
import sys
import tempfile
import traceback
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Callable, Sequence

from cluster.errors import ResourcesUnavailable
from search.api import USER_ENVIRONMENT
from search.errors import SpecError
from search.locations import default_tracking_uri, is_server, redact, store_option, ui_link
from search.look.painter import Painter
from search.text import format_table, test_rows

if TYPE_CHECKING:
    from search.run.driver import SearchOutcome
    from search.spec.schema import Spec

BAD_INPUT = 2
INTERRUPTED = 130




def tracking_uri(args: argparse.Namespace) -> str:
    return args.tracking_uri or USER_ENVIRONMENT.get("MLFLOW_TRACKING_URI") or default_tracking_uri(Path(args.storage))


def read_spec(path: str) -> Spec:
    """The spec at ``path``, what it leaves empty filled from the user's environment (how clusters
    name their server and storage)."""
    from search.api import read

    return read(path)[0]


def cmd_validate(args: argparse.Namespace) -> int:
    from search.run.preflight import check_members, check_storage, data_summary, fit_members, load_data

    given = read_spec(args.spec)
    data = load_data(given)
    spec = given.for_task(data.task)
    with tempfile.TemporaryDirectory() as fitted:  # validating writes nothing that stays
        check_members(fit_members(spec, data, Path(fitted)).members, data)
    check_storage(spec)
    print(
        f"{args.spec}: OK: search {spec.name!r}, {len(spec.members)} members, "
        f"operators {', '.join(sorted(spec.fusion.operators))}, {spec.budget.num_samples} trials; {data_summary(data, given)}"
    )
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from search import api

    with Painter() as painter:  # first: it imports its libraries while the spec is read
        spec = read_spec(args.spec)  # a bad spec is one line, before the search starts
        return finish(spec, lambda: api.run_spec(spec, Path(args.spec).read_text(), Path(args.spec), args.address, args.verbose, painter))


def cmd_resume(args: argparse.Namespace) -> int:
    from search import api

    with Painter() as painter:
        spec, parent, experiment = api.resumable(args.name, tracking_uri(args))
        return finish(spec, lambda: api.resume_spec(spec, parent, experiment, args.address, args.verbose, painter))


def finish(spec: Spec, search: Callable[[], SearchOutcome]) -> int:
    """Run ``search`` and print its outcome: trials, the test-split table, the champion."""
    from search.errors import SearchFailed, SearchInterrupted

    try:
        outcome = search()
    except SearchFailed as error:
        print(redact(f"error: {error}"), file=sys.stderr)
        return 1
    except SearchInterrupted as error:
        print(f"interrupted: {error}", file=sys.stderr)
        return INTERRUPTED
    objectives = outcome.objectives
    trials = sorted(outcome.trials, key=objectives.sort_key)
    print("\nTrials (best first):")
    print(format_table(list(trials[0]), [list(r.values()) for r in trials]))
    if outcome.front:
        print(f"\nPareto front ({objectives.describe()}):")
        print(format_table(list(outcome.front[0]), [list(r.values()) for r in outcome.front]))
    print("\nTest split:")
    print(format_table(*test_rows(outcome.test_table, outcome.marks, [g.metric for g in objectives.goals])))
    print(f"\nchampion: {outcome.champion}")
    print(f"model URI: {outcome.champion_uri}")
    uri = redact(spec.tracking_uri)
    if is_server(uri):
        print(f"MLflow: {ui_link(uri, outcome.experiment_id, outcome.parent_run_id)}")
    else:
        print(f"MLflow: fusion-search ui {shlex.quote(spec.name)}{store_option(spec.tracking_uri)}  (the UI on this store, at the search's runs)")
    print(f"report: fusion-search report {shlex.quote(spec.name)}{store_option(spec.tracking_uri)} --out {shlex.quote(spec.name)}.html")
    return 0


def cmd_trials(args: argparse.Namespace) -> int:
    from search.look.leaderboard import leaderboard, pareto_front
    from search.look.store_reader import StoreReader

    reader = StoreReader(tracking_uri(args))
    if args.pareto:
        headers, rows, where = pareto_front(reader, args.name)
        print(where)
    else:
        headers, rows = leaderboard(reader, args.name)
    print(format_table(headers, rows))
    return 0


def cmd_best(args: argparse.Namespace) -> int:
    from search.look.leaderboard import download_champion

    path = download_champion(tracking_uri(args), args.name, Path(args.out))
    print(f"champion of {args.name!r} saved to {path}")
    print(f"load it: mlflow.pyfunc.load_model({str(path)!r}).predict({{input name: array}})")
    print(f"     or: trainables.ensemble_model.saved_predictor({str(path)!r})  # a torch module")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from search.look.html_report import write_report
    from search.look.store_reader import StoreReader

    path = write_report(StoreReader(tracking_uri(args)), args.name, Path(args.out))
    print(f"report of {args.name!r} written to {path} (one file: open it in a browser, or send it)")
    return 0


def cmd_ui(args: argparse.Namespace) -> int:
    import subprocess

    from search.look.leaderboard import latest_parent
    from search.look.store_reader import StoreReader

    uri = tracking_uri(args)
    reader = StoreReader(uri)
    experiment_id, parent = latest_parent(reader.client, args.name)
    if is_server(uri):
        print(ui_link(redact(uri), experiment_id))
        return 0
    print(f"MLflow UI on {redact(uri)}: {ui_link(f'http://{args.host}:{args.port}', experiment_id)}  (Ctrl+C stops it)", flush=True)
    mlflow = Path(sys.executable).parent / "mlflow"
    command = [str(mlflow), "ui", "--backend-store-uri", uri, "--host", args.host, "--port", str(args.port), "--workers", "1"]
    try:
        return subprocess.run(command, check=False).returncode
    except KeyboardInterrupt:
        return 0


def cmd_dashboard(args: argparse.Namespace) -> int:
    from optuna_dashboard import run_server

    from search.look.leaderboard import latest_parent
    from search.look.store_reader import StoreReader

    reader = StoreReader(tracking_uri(args))
    _, parent = latest_parent(reader.client, args.name)
    study = reader.study_url(reader.client.get_run(parent))
    if study is None:
        raise SpecError(f"search {args.name!r}: its Optuna study storage is not found (set $FUSION_SEARCH_STUDY_STORAGE to it)")
    print(f"optuna-dashboard on http://{args.host}:{args.port}/dashboard/ (study {args.name!r}; Ctrl+C stops it)", flush=True)
    try:
        run_server(study, host=args.host, port=args.port)
    except OSError as error:
        raise SpecError(f"--port: cannot listen on {args.host}:{args.port}: {error.strerror}") from None
    except KeyboardInterrupt:
        pass
    return 0


def cmd_promote(args: argparse.Namespace) -> int:
    from search.look.leaderboard import promote

    promote(tracking_uri(args), args.name, args.version)
    print(f"{args.name}@champion is version {args.version}")
    return 0


def jobs_address(args: argparse.Namespace) -> str:
    address = args.address or os.environ.get("RAY_API_SERVER_ADDRESS")
    if not address:
        raise SpecError("--address: give the cluster's dashboard address, e.g. http://127.0.0.1:8265")
    return address


def cmd_submit(args: argparse.Namespace) -> int:
    from cluster import jobs
    from search.spec.schema import staged

    address = jobs_address(args)
    job_id = jobs.submit(address, staged(Path(args.spec)))  # every check, before anything is submitted
    print(f"submitted job {job_id} to {address}", flush=True)
    if args.no_follow:
        return 0
    final = jobs.follow(address, job_id)
    print(f"job {job_id}: {final}")
    return 0 if final == "SUCCEEDED" else 1


def cmd_status(args: argparse.Namespace) -> int:
    from cluster import jobs

    print(jobs.status(jobs_address(args), args.job))
    return 0


def cmd_stop(args: argparse.Namespace) -> int:
    from cluster import jobs

    stopped = jobs.stop(jobs_address(args), args.job)
    print(f"job {args.job}: {'stop requested' if stopped else 'was not running'}")
    return 0


def add_driver_options(p: argparse.ArgumentParser) -> None:
    """What the commands that drive a search (``run``, ``resume``) take."""
    p.add_argument("--address", help="Ray cluster address (default: start a local Ray)")
    p.add_argument("--verbose", action="store_true", help="show Ray's own progress and trial logs")


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="fusion-search", description=__doc__.splitlines()[0])
    sub = root.add_subparsers(dest="command", required=True)

    p = sub.add_parser("validate", help="check a spec (and its data) without running anything")
    p.add_argument("spec")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("run", help="run a search")
    p.add_argument("spec")
    add_driver_options(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("resume", help="continue a search whose driver was killed or interrupted")
    p.add_argument("name", help="the search's name (the spec's `name`)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or the local store)")
    p.add_argument("--storage", default="fusion_runs", help="storage folder of the local store (default: fusion_runs)")
    add_driver_options(p)
    p.set_defaults(func=cmd_resume)

    p = sub.add_parser("submit", help="submit a search to a Ray cluster as a Ray Job and follow its logs")
    p.add_argument("spec")
    p.add_argument("--address", help="the cluster's dashboard, e.g. http://127.0.0.1:8265 (default: $RAY_API_SERVER_ADDRESS)")
    p.add_argument("--no-follow", action="store_true", help="print the job id and return")
    p.set_defaults(func=cmd_submit)

    for name, func, text in (("status", cmd_status, "a submitted search's status"), ("stop", cmd_stop, "stop a submitted search")):
        p = sub.add_parser(name, help=text)
        p.add_argument("job", help="the job id `submit` printed")
        p.add_argument("--address", help="the cluster's dashboard (default: $RAY_API_SERVER_ADDRESS)")
        p.set_defaults(func=func)

    for name, func, text in (
        ("trials", cmd_trials, "leaderboard of a search's latest run, from MLflow"),
        ("best", cmd_best, "download a search's champion model"),
        ("promote", cmd_promote, "point the champion alias at a registered version of your choice"),
        ("report", cmd_report, "write a search as one self-contained HTML page"),
        ("dashboard", cmd_dashboard, "watch a search's Optuna study live in optuna-dashboard"),
        ("ui", cmd_ui, "open MLflow's UI on a search's store, at its runs"),
    ):
        p = sub.add_parser(name, help=text)
        p.add_argument("name", help="the search's name (the spec's `name`)")
        if name == "promote":
            p.add_argument("version", help="the registered model version")
        p.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or the local store)")
        p.add_argument("--storage", default="fusion_runs", help="storage folder of the local store (default: fusion_runs)")
        if name == "best":
            p.add_argument("--out", required=True, help="folder to write the champion to")
        if name == "report":
            p.add_argument("--out", required=True, help="the HTML file to write")
        if name in ("dashboard", "ui"):
            p.add_argument("--port", type=int, default=8080 if name == "dashboard" else 5000, help="port to listen on (default: %(default)s)")
            p.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, this machine only)")
        if name == "trials":
            p.add_argument("--pareto", action="store_true", help="the Pareto front of the search's objectives (every candidate: trials, the ensemble, soups, merges, the student)")
        p.set_defaults(func=func)
    return root


def redacted_traceback(kind: type[BaseException], error: BaseException, trace: TracebackType | None) -> None:
    """An unexpected error's traceback, with any password in it hidden."""
    print(redact("".join(traceback.format_exception(kind, error, trace))), end="", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    sys.excepthook = redacted_traceback
    try:
        return args.func(args)
    except (SpecError, ResourcesUnavailable, LookupError, FileNotFoundError) as error:
        message = str(error.args[0]) if isinstance(error, LookupError) and error.args else str(error)
        print(redact(f"error: {message}"), file=sys.stderr)
        return BAD_INPUT
    except KeyboardInterrupt:
        print(f"interrupted: fusion-search {args.command} stopped", file=sys.stderr)
        return INTERRUPTED


def entry() -> None:
    """The ``fusion-search`` command: ``main``, then exit once every exit handler has run (Ray's
    shutdown, MLflow's) without the interpreter's teardown of the torch, Ray and MLflow modules a
    search loaded, which writes nothing and took about 3 s of every run. A Ray instance the search
    started is shut down first, as at exit but without the half second Ray waits there for its
    workers' last log lines: the search's workers finished before the work after its trials."""
    code = main()
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        ray.shutdown()
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    entry()
