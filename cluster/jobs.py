"""Submit a search to a Ray cluster as a Ray Job, and follow, query or stop it (Ray's Jobs API).

The job's working directory carries this project's code (``trainables``, ``search``,
``cluster``) and the spec the caller checked, with its relative paths made absolute: data, weights and
``storage`` must be where the cluster's nodes can read them (a shared filesystem, or
the same machine for ``cluster.local``). The entrypoint, ``python -m search.cli run
spec.yaml --address auto``, runs on the head node with the Python its node was
started with, so the cluster's nodes need this project's dependencies installed.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import time
from pathlib import Path

from typing import Any

import yaml

PROJECT = Path(__file__).resolve().parent.parent
PACKAGES = ("trainables", "search", "cluster")
ENTRYPOINT = "python -m search.cli run spec.yaml --address auto"


def client(address: str):  # noqa: ANN201 - ray.job_submission.JobSubmissionClient, imported lazily
    """A Jobs API client for ``http://HOST:8265``; token authentication on when this user has a token."""
    from ray._private.authentication.authentication_token_setup import maybe_enable_token_auth_if_token_available
    from ray.job_submission import JobSubmissionClient

    maybe_enable_token_auth_if_token_available(warn_if_disabled=False)
    return JobSubmissionClient(address)


def stage(spec: dict[str, Any], folder: Path) -> None:
    """The job's working directory: the project's packages and ``spec`` (checked, its paths absolute) as spec.yaml."""
    for package in PACKAGES:
        shutil.copytree(PROJECT / package, folder / package, ignore=shutil.ignore_patterns("__pycache__"))
    (folder / "spec.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))


SUBMIT_PATIENCE_S = 180.0  # a cluster just started may take a minute or two to have a job agent
SUBMIT_WAIT_S = 3.0
BUSY = "please try again later"  # the head's answer while its job agent is busy (HTTP 500)


def submit(address: str, spec: dict[str, Any]) -> str:
    """Submit the search ``spec`` (checked, its paths absolute: ``search.spec.schema.staged``); returns the job id. A head that answers "try again
    later" (no job agent free yet) is asked again every ``SUBMIT_WAIT_S`` for up to
    ``SUBMIT_PATIENCE_S`` seconds."""
    with tempfile.TemporaryDirectory() as tmp:
        stage(spec, Path(tmp))
        jobs, deadline = client(address), time.monotonic() + SUBMIT_PATIENCE_S
        while True:
            try:
                return jobs.submit_job(entrypoint=ENTRYPOINT, runtime_env={"working_dir": tmp})
            except RuntimeError as error:
                if BUSY not in str(error) or time.monotonic() >= deadline:
                    raise
            print(f"the cluster's job agent is busy; submitting again in {SUBMIT_WAIT_S:.0f} s", flush=True)
            time.sleep(SUBMIT_WAIT_S)


async def _tail(address: str, job_id: str) -> None:
    async for text in client(address).tail_job_logs(job_id):
        print(text, end="", flush=True)


def follow(address: str, job_id: str) -> str:
    """Print the job's logs as they come until it ends; returns its final status."""
    asyncio.run(_tail(address, job_id))
    return status(address, job_id)


def status(address: str, job_id: str) -> str:
    """``PENDING``, ``RUNNING``, ``STOPPED``, ``SUCCEEDED`` or ``FAILED``."""
    return str(client(address).get_job_status(job_id).value)


def stop(address: str, job_id: str) -> bool:
    """Ask the cluster to stop the job; True if it was still running."""
    return bool(client(address).stop_job(job_id))
