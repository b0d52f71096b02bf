"""The painter, the process that draws a search's pictures beside the driver: it ends without
drawing when the driver stops before a stage, a failure is one line for the driver (the painter's
traceback on standard error), it dies with a driver that is killed, and a stage that finds the
tracking server unreachable is drawn again. A search's pictures as the painter draws them:
tests/test_look_e2e.py; through a real server's outage: tests/test_mlflow_server.py."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mlflow.exceptions import MlflowException

import search.look.store_reader
from search.look.painter import Painter, PaintingFailed, when_reachable


def test_a_painter_whose_driver_stops_before_a_stage_draws_nothing():
    with Painter() as painter:
        painter.stdin.close()
        painter.wait()
        assert painter.process.returncode == 0


def test_a_painter_that_fails_says_so_in_one_line(tmp_path, capfd):
    with Painter() as painter:
        painter.search_started(f"sqlite:///{tmp_path / 'mlflow.db'}", "no-such-run")
        with pytest.raises(PaintingFailed, match=r"drawing the search's pictures failed \(the painter exited with 1\); its error is above"):
            painter.wait()
    assert str(tmp_path / "mlflow.db") in capfd.readouterr().err, "the painter's own error (no store there), for the user"


@pytest.mark.skipif(sys.platform != "linux", reason="the painter asks Linux to end it with the driver (PR_SET_PDEATHSIG)")
def test_the_painter_dies_with_a_driver_that_is_killed(tmp_path):
    driver = subprocess.Popen(
        [sys.executable, "-c", "import time; from search.look.painter import Painter; p = Painter(); print(p.process.pid, flush=True); time.sleep(600)"],
        stdout=subprocess.PIPE, text=True, cwd=Path(__file__).parents[1],
    )
    assert driver.stdout is not None
    painter = int(driver.stdout.readline())
    time.sleep(2)  # the painter is past its start (it asks to be ended with the driver first thing)
    driver.kill()
    driver.wait()
    deadline = time.monotonic() + 10
    while alive(painter) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not alive(painter), "the painter outlived its driver"


def alive(pid: int) -> bool:
    """Running (a zombie, dead and waiting for init to reap it, is not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_a_stage_is_drawn_again_while_the_server_is_unreachable(monkeypatch, capsys):
    monkeypatch.setattr(search.look.store_reader, "RETRY_S", 0.01)
    tries = []

    def stage() -> None:
        tries.append(1)
        if len(tries) < 3:
            raise MlflowException("API request to http://127.0.0.1:1/api/2.0/mlflow/runs/get failed with exception ConnectionError")

    when_reachable("http://127.0.0.1:1", stage)
    assert len(tries) == 3
    assert capsys.readouterr().err.count("MLflow unreachable at http://127.0.0.1:1: the pictures wait") == 1

    def broken() -> None:
        raise ValueError("not an outage")

    with pytest.raises(ValueError, match="not an outage"):
        when_reachable("http://127.0.0.1:1", broken)
