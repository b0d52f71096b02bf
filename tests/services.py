"""Real servers on 127.0.0.1 for tests of a cluster's shared state: an S3 endpoint (moto's server)
for Tune's storage and MLflow's artifacts, and a PostgreSQL server for MLflow's runs and Optuna's study.

Each is a fixture that starts the server as a child process and stops it after the test. Processes
the test starts inherit the S3 fixture's ``AWS_*`` variables (credentials and ``AWS_ENDPOINT_URL``),
which pyarrow and boto3 both read, as they would a real bucket's.
"""

from __future__ import annotations

import importlib.util
import os
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from cluster.local import free_port

MOTO_SERVER = str(Path(sys.executable).parent / "moto_server")


class Output:
    """A child's output (stdout, stderr merged, text), read on a thread so that every wait for a
    line is bounded: a child that hangs fails the test with its last lines, never stalls it."""

    def __init__(self, process: subprocess.Popen) -> None:
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._ended = False
        threading.Thread(target=self._read, args=(process,), daemon=True).start()

    def _read(self, process: subprocess.Popen) -> None:
        for line in process.stdout:
            self._queue.put(line)
        self._queue.put(None)

    @property
    def text(self) -> str:
        return "".join(self.lines)

    def until(self, marker: str | None, timeout_s: float) -> None:
        """Read until a line containing ``marker`` (``None``: until the output ends)."""
        deadline = time.monotonic() + timeout_s
        while not self._ended:
            try:
                line = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no {marker or 'end of output'!r} within {timeout_s:.0f} s:\n" + "".join(self.lines[-40:])) from None
            if line is None:
                self._ended = True
                break
            self.lines.append(line)
            if marker is not None and marker in line:
                return
        assert marker is None, f"output ended before {marker!r}:\n" + "".join(self.lines[-40:])


def wait_until(ready: Callable[[], bool], what: str, process: subprocess.Popen, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode}")
        if ready():
            return
        time.sleep(0.3)
    raise TimeoutError(f"{what} not ready after {timeout_s:.0f} s")


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2):
            return True
    except OSError:
        return False


@pytest.fixture
def s3_bucket(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[str]:
    """``s3://runs``: a bucket on a moto S3 server, with this process's AWS variables pointing at it."""
    import boto3

    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    with (tmp_path / "moto.log").open("wb") as log:
        server = subprocess.Popen([MOTO_SERVER, "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: answers(f"{endpoint}/moto-api/"), "moto_server", server)
        for key, value in {
            "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": endpoint,
        }.items():
            monkeypatch.setenv(key, value)
        boto3.client("s3").create_bucket(Bucket="runs")
        yield "s3://runs"
    finally:
        server.terminate()
        server.wait(timeout=30)


def postgres_bin() -> Path:
    """The folder of PostgreSQL's server programs: those of the ``pgserver`` wheel the test extra
    installs, so no machine skips these tests for want of a system package."""
    found = importlib.util.find_spec("pgserver")
    if found is None or found.origin is None:
        raise RuntimeError("PostgreSQL tests need the pgserver wheel: pip install -e '.[test]'")
    return Path(found.origin).parent / "pginstall" / "bin"


def as_postgres_user(command: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: run its programs as the ``postgres`` user there."""
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """``postgresql://fs@127.0.0.1:PORT``: a throwaway PostgreSQL server with two empty databases,
    ``mlflow`` and ``optuna`` (each keeps its own ``alembic_version`` table, so they cannot share one)."""
    binaries = postgres_bin()
    root = Path(tempfile.mkdtemp(prefix="fspg-"))  # not under pytest's tmp (0700, root's): the server's user must enter it
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
    data, port = root / "data", free_port()

    def run(program: str, *args: str) -> None:
        done = subprocess.run(as_postgres_user([str(binaries / program), *args]), capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"{program} failed: {done.stdout[-500:]} {done.stderr[-500:]}")

    try:
        run("initdb", "-D", str(data), "-U", "fs", "--auth=trust")
        run("pg_ctl", "-D", str(data), "-l", str(root / "server.log"), "-w", "-o", f"-h 127.0.0.1 -p {port} -k {root}", "start")
        for database in ("mlflow", "optuna"):
            run("createdb", "-h", "127.0.0.1", "-p", str(port), "-U", "fs", database)
        yield f"postgresql://fs@127.0.0.1:{port}"
    finally:
        if (data / "postmaster.pid").exists():
            run("pg_ctl", "-D", str(data), "-m", "immediate", "stop")
        shutil.rmtree(root, ignore_errors=True)
