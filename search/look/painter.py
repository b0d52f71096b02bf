"""The search's pictures, drawn by a process of its own beside the driver.

Drawn on a thread of the driver, the pictures (3-4 s of matplotlib, fANOVA and Optuna's plots at
8 trials) held the interpreter lock that making the candidates and registering the champion need,
and were most of the time between a small search's last trial and its end. The painter is a
Python process started with the search, at the lowest priority (``nice`` 19): it imports what
drawing needs (MLflow, Optuna, matplotlib, fANOVA's scikit-learn; about 4 s of CPU) on cycles the
search leaves idle, then draws each picture as soon as the search has stored what it shows: the
data's as the trials start (``DATA_PICTURES``), the trials' and the interactive page when they end
(``TRIAL_PICTURES``), while the driver makes the candidates, and the others once the champion is
recorded (``CHAMPION_PICTURES``, the Pareto front's). Everything comes from the store, as for
``fusion-search report``.

Its standard input carries one JSON line per stage; an input that ends before a stage (the
driver stopped) ends the painter without drawing; on Linux it is killed with the driver. A stage
that finds the tracking server unreachable is drawn again when it answers (as the trial runs'
records wait). It ignores Ctrl+C, which the driver handles for both.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from types import TracebackType
from typing import IO, Any

from search.errors import SearchFailed

# The pictures' libraries, imported while the painter waits for the trials.
DRAWING_MODULES = (
    "search.look.pareto",
    "matplotlib.backends.backend_agg",
    "optuna.visualization",
    "optuna.visualization.matplotlib",
    "optuna.importance",
    "sklearn.ensemble",
    "plotly.io",
)


class PaintingFailed(SearchFailed):
    """The painter stopped with an error (its traceback is on the search's standard error)."""


class Painter:
    """The driver's side: start the process, give it each stage, wait for its pictures."""

    def __init__(self) -> None:
        self.process = subprocess.Popen([sys.executable, "-m", __name__], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)

    def __enter__(self) -> "Painter":
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None) -> None:
        self.close()

    @property
    def stdin(self) -> IO[str]:
        assert self.process.stdin is not None
        return self.process.stdin

    def send(self, stage: dict[str, Any]) -> None:
        try:
            self.stdin.write(json.dumps(stage) + "\n")
            self.stdin.flush()
        except BrokenPipeError:  # it stopped already: ``wait`` says why
            pass

    def search_started(self, tracking_uri: str, parent: str) -> None:
        """Draw the data's pictures of the search whose parent run is ``parent``."""
        self.send({"tracking_uri": tracking_uri, "parent": parent})

    def trials_ended(self) -> None:
        """Draw the trials' pictures (every trial run written)."""
        self.send({})

    def champion_recorded(self, tradeoff: bool) -> None:
        """Draw the others (the Pareto front's too, when the search trades objectives off)."""
        self.send({"tradeoff": tradeoff})
        with contextlib.suppress(BrokenPipeError):
            self.stdin.close()

    def wait(self) -> None:
        """Until every picture is logged; ``PaintingFailed`` if the painter failed."""
        code = self.process.wait()
        if code != 0:
            raise PaintingFailed(f"drawing the search's pictures failed (the painter exited with {code}); its error is above")

    def close(self) -> None:
        """End the painter if it still runs (the search stopped before its pictures)."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        if self.process.stdin is not None and not self.process.stdin.closed:
            self.stdin.close()


def painting(painter: Painter | None) -> AbstractContextManager[Painter]:
    """``painter``, left to the caller that started it, or a new one, ended on leaving."""
    return nullcontext(painter) if painter is not None else Painter()


def next_stage() -> dict[str, Any] | None:
    line = sys.stdin.readline()
    return json.loads(line) if line else None


def warm() -> None:
    """Import the drawing libraries and draw a first figure (matplotlib's fonts load then)."""
    import importlib

    for module in DRAWING_MODULES:
        importlib.import_module(module)
    from search.look.plots import figure, png_of

    fig, ax = figure(2, 1)
    ax.set_title("warm")
    png_of(fig)


def end_with_the_driver() -> None:
    """On Linux, be killed when the driver dies (SIGKILL included), not at the end of the imports."""
    if sys.platform == "linux":
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def when_reachable(tracking_uri: str, stage: Callable[[], None]) -> None:
    """Run ``stage``, again every ``RETRY_S`` while the tracking server is unreachable, as the
    search does with its trial runs' records (for at most ``WAIT_S``; then its error)."""
    from search.look.store_reader import RETRY_S, WAIT_S, unreachable
    from search.locations import redact

    deadline, said = time.monotonic() + WAIT_S, False
    while True:
        try:
            return stage()
        except Exception as error:  # noqa: BLE001 - retried only when the server is unreachable
            if not unreachable(error) or time.monotonic() > deadline:
                raise
            if not said:
                print(f"MLflow unreachable at {redact(tracking_uri)}: the pictures wait", file=sys.stderr, flush=True)
                said = True
            time.sleep(RETRY_S)


def main() -> int:
    end_with_the_driver()
    os.nice(19)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    warm()
    from search.look.pareto import log_pareto
    from search.look.plots import CHAMPION_PICTURES, DATA_PICTURES, TRIAL_PICTURES, SearchRecord, log_plots
    from search.look.store_reader import StoreReader

    started = next_stage()
    if started is None:
        return 0
    uri, parent = started["tracking_uri"], started["parent"]
    when_reachable(uri, lambda: log_plots(SearchRecord.of_run(StoreReader(uri), parent), DATA_PICTURES))
    if next_stage() is None:
        return 0
    when_reachable(uri, lambda: log_plots(SearchRecord.of_run(StoreReader(uri), parent), TRIAL_PICTURES))
    champion = next_stage()
    if champion is None:
        return 0

    def champion_pictures() -> None:
        record = SearchRecord.of_run(StoreReader(uri), parent)
        log_plots(record, CHAMPION_PICTURES)
        if champion["tradeoff"]:
            log_pareto(record)

    when_reachable(uri, champion_pictures)
    return 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # without the interpreter's teardown of the modules it loaded (about 1 s)
