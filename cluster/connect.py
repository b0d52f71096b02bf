"""Where the driver runs: an embedded local Ray instance, or an existing cluster."""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext

import ray
from ray._private import ray_constants

from cluster.errors import ResourcesUnavailable
from trainables import WARM_MARKS


def connect(address: str | None = None, verbose: bool = False, preload: tuple[str, ...] = ()) -> None:
    """Start (``address=None``) or join a Ray instance; quiet unless ``verbose``.

    The embedded default starts a private local Ray with no dashboard; workers'
    output reaches the terminal only with ``verbose``. Each worker process it starts imports the
    modules ``preload`` names before it takes work, those Ray starts with the instance (one per CPU,
    idle until used) included: the first actor on one finds them imported. A cluster's nodes
    are started with their own settings (``ray start --system-config``), so joining one ignores it.
    """
    if ray.is_initialized():
        return
    options: dict = {
        "log_to_driver": verbose,
        "logging_level": logging.INFO if verbose else logging.WARNING,
    }
    if address is None:
        # "local" always starts a private instance: never attach to a `ray start` cluster that
        # happens to run (or to have run: Ray remembers its address) on this machine.
        address = "local"
        options["include_dashboard"] = False
        if preload:
            options["_system_config"] = preloading(preload)
    else:
        # Joining a cluster: Ray leaves token authentication off for a client unless
        # RAY_AUTH_MODE says otherwise, and a cluster started with tokens (``cluster.local``)
        # refuses it. Ray's own helper turns it on, for this process too, when a token exists.
        from ray._private.authentication.authentication_token_setup import maybe_enable_token_auth_if_token_available

        maybe_enable_token_auth_if_token_available(warn_if_disabled=False)
    with loopback_only() if address == "local" else nullcontext():
        ray.init(address=address, **options)


def preloading(modules: tuple[str, ...]) -> dict:
    """Settings of a private instance whose worker processes import ``modules`` as they start,
    and whose first trials' actors start on the workers it starts with.

    Ray gives an actor only a worker of the actor's own runtime environment, and Tune gives each
    trainable's actor one that sets ``PL_DISABLE_FORK`` (for PyTorch Lightning): the actors would
    start new processes beside the idle ones. The variable is set for every worker here instead
    (they inherit this process's environment) and left out of Tune's. Idle workers are kept for a
    minute (Ray's default: one second once there are more than CPUs), so that the tasks run before
    the trials, in workers of their own, do not end them. Each worker marks that its imports are
    done in a new folder (``WARM_MARKS``, inherited: ``wait_for_warm_workers``)."""
    from ray.tune.execution import class_cache

    for name, value in class_cache.DEFAULT_ENV_VARS.items():
        os.environ.setdefault(name, value)
    class_cache.DEFAULT_ENV_VARS.clear()
    os.environ[WARM_MARKS] = tempfile.mkdtemp(prefix="fusion-search-warm-")
    atexit.register(shutil.rmtree, os.environ[WARM_MARKS], True)
    return {"preload_python_modules": list(modules), "idle_worker_killing_time_threshold_ms": 60_000}


def wait_for_warm_workers(count: int, timeout_s: float = 30.0) -> None:
    """Wait until ``count`` of the embedded instance's workers have imported a trial's code, or
    ``timeout_s`` passed; at once where workers preload nothing (a cluster).

    Tune asks for a new actor for each trial it stages and, when another trial's actor is free
    first, gives it that one and ends the new one. Trials shorter than a worker's start (seconds of
    imports) then keep one actor busy while each new one is started and ended in turn: a search
    whose trials start before their workers are warm can run one trial at a time to its end."""
    marks = os.environ.get(WARM_MARKS)
    deadline = time.monotonic() + timeout_s
    while marks and len(os.listdir(marks)) < count and time.monotonic() < deadline:
        time.sleep(0.05)


@contextmanager
def loopback_only() -> Iterator[None]:
    """While a private instance starts: its servers (GCS, raylet, workers, agents) listen on
    127.0.0.1 alone.

    Ray turns a loopback ``_node_ip_address`` into the machine's reachable address and binds its
    servers to that; only its single-machine mode (the switch Ray reads on macOS and Windows) keeps
    the node on loopback. Ray is imported already, so the switch is set on Ray's constants as well
    as in the environment the instance's processes inherit, and both are put back afterwards (a
    later ``--address`` in this process joins a cluster as usual)."""
    saved_env, saved = os.environ.get(ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR), ray_constants.ENABLE_RAY_CLUSTER
    os.environ[ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved
        if saved_env is None:
            os.environ.pop(ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR)
        else:
            os.environ[ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR] = saved_env


def start(cpu: float, gpu: float, address: str | None = None, verbose: bool = False, preload: tuple[str, ...] = ()) -> None:
    """Start or join Ray for a search whose trials take ``cpu`` and ``gpu``; the embedded default
    first checks that this machine can give them (``ResourcesUnavailable`` otherwise) and has its
    workers import ``preload`` (``connect``)."""
    if address is None and not os.environ.get("RAY_ADDRESS"):
        check_fits_locally(cpu, gpu)
    connect(address, verbose, preload)


def check_fits_locally(cpu: float, gpu: float) -> None:
    """Refuse per-trial resources this machine cannot give, before a local Ray waits forever.

    Only for the embedded default: an existing cluster may have bigger nodes.
    """
    cores = os.cpu_count() or 1
    if cpu > cores:
        raise ResourcesUnavailable(f"resources.cpu: a trial asks for {cpu:g} CPUs but this machine has {cores}")
    if gpu > 0:
        import torch

        gpus = torch.cuda.device_count()
        if gpu > gpus:
            raise ResourcesUnavailable(f"resources.gpu: a trial asks for {gpu:g} GPUs but this machine has {gpus}")
