"""An MLflow tracking server for searches on a cluster: the driver on every node logs to it.

It binds to 127.0.0.1 unless told otherwise, keeps runs in a SQLite file (or any database
URI MLflow takes, e.g. ``postgresql://user:pass@host/db``) and serves the artifacts itself
(``--serve-artifacts``), so clients need no direct access to the artifact store. Point a
search at it with the spec's ``tracking.uri`` or ``MLFLOW_TRACKING_URI=http://HOST:PORT``.

    python -m cluster.mlflow_server --port 5000          # Ctrl+C stops it
    python -m cluster.mlflow_server --host 0.0.0.0 --backend postgresql://mlflow@db/mlflow --artifacts s3://bucket/mlflow
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from types import TracebackType

MLFLOW = str(Path(sys.executable).parent / "mlflow")


class TrackingServer:
    """``mlflow server`` as a child process; a context manager that waits until it answers."""

    def __init__(self, backend: str, artifacts: str, host: str = "127.0.0.1", port: int = 5000, log: Path | None = None) -> None:
        self.backend, self.artifacts, self.host, self.port, self.log = backend, artifacts, host, port, log
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def uri(self) -> str:
        return f"http://{'127.0.0.1' if self.host == '0.0.0.0' else self.host}:{self.port}"

    def command(self) -> list[str]:
        return [
            MLFLOW, "server", "--host", self.host, "--port", str(self.port), "--workers", "1",
            "--backend-store-uri", self.backend, "--artifacts-destination", self.artifacts, "--serve-artifacts",
        ]

    def start(self, timeout_s: float = 120.0) -> "TrackingServer":
        output = self.log.open("wb") if self.log else subprocess.DEVNULL
        self.process = subprocess.Popen(self.command(), stdout=output, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"mlflow server exited with {self.process.returncode}" + (f"; see {self.log}" if self.log else ""))
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as answer:
                    if answer.status == 200:
                        return self
            except OSError:
                time.sleep(0.5)
        self.stop()
        raise TimeoutError(f"mlflow server not answering at {self.uri} after {timeout_s:.0f} s")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def __enter__(self) -> "TrackingServer":
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1; 0.0.0.0 for a cluster)")
    parser.add_argument("--port", type=int, default=5000)
    parser.add_argument("--backend", default=f"sqlite:///{Path('fusion_runs/mlflow-server.db').resolve()}", help="database URI")
    parser.add_argument("--artifacts", default=str(Path("fusion_runs/mlflow-artifacts").resolve()), help="where artifacts are stored")
    args = parser.parse_args(argv)
    if args.backend.startswith("sqlite:///"):
        Path(args.backend.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    with TrackingServer(args.backend, args.artifacts, args.host, args.port) as server:
        print(f"MLflow tracking server at {server.uri}: set MLFLOW_TRACKING_URI={server.uri}; Ctrl+C stops it", flush=True)
        try:
            server.process.wait()
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
