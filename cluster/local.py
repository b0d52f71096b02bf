"""A multi-node Ray cluster on one machine, for development and tests.

Each node is its own ``ray start --block`` process (a head and N workers, each with
its own CPU count, optional fake GPU count and custom resources), so one node can be
killed alone, as a failing machine would be. Nodes are started on 127.0.0.1 and the
dashboard and job server bind to 127.0.0.1 unless told otherwise (Ray itself may
report the machine's own address for its nodes); they start with this interpreter's
folder first on ``PATH``, so a Ray Job's entrypoint finds this project's venv.

Recent Ray turns token authentication on for local clusters: every node here runs
with ``RAY_AUTH_MODE=token`` and the user's token (``~/.ray/auth_token``, made once
if missing), so workers can join the head and drivers on this machine can connect.

    python -m cluster.local --workers 2 --cpus 1      # start; Ctrl+C stops every node
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType


RAY = str(Path(sys.executable).parent / "ray")


@dataclass(frozen=True)
class NodeSpec:
    """What one node offers: CPUs, fake GPUs and custom resources."""

    cpus: int = 1
    gpus: int = 0
    resources: dict[str, float] = field(default_factory=dict)

    def arguments(self) -> list[str]:
        args = ["--num-cpus", str(self.cpus), "--num-gpus", str(self.gpus)]
        return args + (["--resources", json.dumps(self.resources)] if self.resources else [])


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def node_environment() -> dict[str, str]:
    """Token authentication on, and this venv first on PATH."""
    env = dict(os.environ)
    env["RAY_AUTH_MODE"] = "token"
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def descendants(pid: int) -> list[int]:
    """Every process started, directly or not, by ``pid`` (from ``ps``)."""
    listing = subprocess.run(["ps", "-eo", "pid=,ppid="], capture_output=True, text=True, check=True).stdout
    children: dict[int, list[int]] = {}
    for line in listing.splitlines():
        child, parent = (int(x) for x in line.split())
        children.setdefault(parent, []).append(child)
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def ensure_token() -> None:
    """Make the user's Ray token once, if there is none (``ray get-auth-token --generate``)."""
    if not (Path.home() / ".ray" / "auth_token").is_file():
        subprocess.run([RAY, "get-auth-token", "--generate"], check=True, capture_output=True, env=node_environment())


def forget_cluster(port: int) -> None:
    """Remove Ray's note of the latest ``ray start`` cluster if it is this one, now stopped, so
    that nothing tries to reach it (``ray.init()`` without an address reads it)."""
    note = Path(tempfile.gettempdir()) / "ray" / "ray_current_cluster"
    with contextlib.suppress(OSError):
        if note.read_text().strip().endswith(f":{port}"):
            note.unlink()


class LocalCluster:
    """A head and ``workers`` as separate processes; use as a context manager or call ``start``/``stop``."""

    def __init__(
        self,
        root: Path,
        head: NodeSpec = NodeSpec(),
        workers: list[NodeSpec] | None = None,
        host: str = "127.0.0.1",
        dashboard_host: str = "127.0.0.1",
    ) -> None:
        self.root = root
        self.head, self.workers = head, list(workers or [])
        self.host, self.dashboard_host = host, dashboard_host
        self.port = free_port(host)
        self.dashboard_port = free_port(host)
        self.processes: list[subprocess.Popen[bytes]] = []
        self.temp_dirs: list[Path] = []

    @property
    def address(self) -> str:
        """What ``ray.init(address=...)`` and ``--address`` take."""
        return f"{self.host}:{self.port}"

    @property
    def dashboard_url(self) -> str:
        """The dashboard and Ray Jobs API."""
        return f"http://{self.host if self.dashboard_host == '0.0.0.0' else self.dashboard_host}:{self.dashboard_port}"

    def launch(self, name: str, arguments: list[str]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        log = (self.root / f"{name}.log").open("wb")
        # Each node its own temporary folder, as on separate machines: nodes sharing one would
        # share runtime-environment folders, and one node's clean-up would delete another's
        # Ray Job working directory. Short paths: Ray's socket paths must fit in 107 characters.
        # Likewise each node's dashboard agent its own free port: Ray's default (52365) is one per
        # machine, and a node whose agent cannot bind it has no job agent (Ray Jobs then fail).
        self.temp_dirs.append(Path(tempfile.mkdtemp(prefix=f"fsray-{name[:8]}-")))
        command = [
            RAY, "start", "--block", "--node-ip-address", self.host, "--disable-usage-stats",
            "--temp-dir", str(self.temp_dirs[-1]), "--dashboard-agent-listen-port", str(free_port(self.host)), *arguments,
        ]
        self.processes.append(
            subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=node_environment(), start_new_session=True)
        )

    def start(self, timeout_s: float = 120.0) -> "LocalCluster":
        """Start the head, then the workers, and wait until every node is alive."""
        ensure_token()
        self.launch(
            "head",
            [
                "--head", "--port", str(self.port), "--dashboard-host", self.dashboard_host,
                "--dashboard-port", str(self.dashboard_port), "--include-dashboard", "true", *self.head.arguments(),
            ],
        )
        self.wait_for_nodes(1, timeout_s)
        for i, worker in enumerate(self.workers):  # one at a time: node start-up has its own deadline
            self.launch(f"worker-{i + 1}", ["--address", self.address, *worker.arguments()])
            self.wait_for_nodes(2 + i, timeout_s)
        return self

    def alive_nodes(self) -> list[dict]:
        """Alive nodes as Ray's state API lists them (``ray list nodes``, run with the nodes' token settings)."""
        command = [RAY, "list", "nodes", "--address", self.address, "--format", "json", "--filter", "state=ALIVE"]
        done = subprocess.run(command, capture_output=True, text=True, env=node_environment(), timeout=60)
        if done.returncode != 0:
            raise RuntimeError((done.stderr.strip().splitlines() or ["ray list nodes failed"])[-1])
        return json.loads(done.stdout)

    def wait_for_nodes(self, count: int, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        last_error = ""
        while time.monotonic() < deadline:
            for i, process in enumerate(self.processes):
                if process.poll() is not None:
                    self.stop()
                    raise RuntimeError(f"node {i} exited with {process.returncode}: see {self.root}")
            try:
                if len(self.alive_nodes()) >= count:
                    return
            except Exception as error:  # the dashboard is not up yet
                last_error = type(error).__name__
            time.sleep(1.0)
        self.stop()
        raise TimeoutError(f"{count} Ray nodes not alive after {timeout_s:.0f} s ({last_error}); logs in {self.root}")

    def kill_worker(self, index: int) -> None:
        """SIGKILL worker ``index`` (from 1) and every process it started (its raylet and Ray
        workers, whatever their process group), as a machine failure would."""
        process = self.processes[index]
        children = descendants(process.pid)
        os.killpg(process.pid, signal.SIGKILL)
        for child in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGKILL)
        process.wait()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop the workers, then the head; a node that does not stop in time is killed."""
        for process in reversed(self.processes):
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in reversed(self.processes):
            try:
                process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        self.processes.clear()
        forget_cluster(self.port)
        for folder in self.temp_dirs:
            shutil.rmtree(folder, ignore_errors=True)
        self.temp_dirs.clear()


    def __enter__(self) -> "LocalCluster":
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Start a local multi-node Ray cluster; Ctrl+C stops it.")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--cpus", type=int, default=1, help="CPUs per node")
    parser.add_argument("--gpus", type=int, default=0, help="fake GPUs per worker")
    parser.add_argument("--root", type=Path, default=Path("fusion_runs/local_cluster"), help="node logs")
    parser.add_argument("--dashboard-host", default="127.0.0.1")
    args = parser.parse_args(argv)
    workers = [NodeSpec(args.cpus, args.gpus) for _ in range(args.workers)]
    with LocalCluster(args.root, NodeSpec(args.cpus), workers, dashboard_host=args.dashboard_host) as cluster:
        print(f"Ray cluster up: --address {cluster.address}, dashboard and jobs {cluster.dashboard_url}; Ctrl+C stops it", flush=True)
        try:
            while all(p.poll() is None for p in cluster.processes):
                time.sleep(1.0)
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
