"""Where the driver runs: an embedded local Ray instance, or an existing cluster."""

from __future__ import annotations

import logging
import os

import ray

from search.errors import SpecError


def connect(address: str | None = None, verbose: bool = False) -> None:
    """Start (``address=None``) or join a Ray instance; quiet unless ``verbose``.

    The embedded default starts a private local Ray with no dashboard; workers'
    output reaches the terminal only with ``verbose``.
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
    else:
        # Joining a cluster: Ray leaves token authentication off for a client unless
        # RAY_AUTH_MODE says otherwise, and a cluster started with tokens (``cluster.local``)
        # refuses it. Ray's own helper turns it on, for this process too, when a token exists.
        from ray._private.authentication.authentication_token_setup import maybe_enable_token_auth_if_token_available

        maybe_enable_token_auth_if_token_available(warn_if_disabled=False)
    ray.init(address=address, **options)


def start(cpu: float, gpu: float, address: str | None = None, verbose: bool = False) -> None:
    """Start or join Ray for a search whose trials take ``cpu`` and ``gpu``; the embedded default
    first checks that this machine can give them (a ``SpecError`` otherwise)."""
    if address is None and not os.environ.get("RAY_ADDRESS"):
        check_fits_locally(cpu, gpu)
    connect(address, verbose)


def check_fits_locally(cpu: float, gpu: float) -> None:
    """Refuse per-trial resources this machine cannot give, before a local Ray waits forever.

    Only for the embedded default: an existing cluster may have bigger nodes.
    """
    cores = os.cpu_count() or 1
    if cpu > cores:
        raise SpecError(f"resources.cpu: a trial asks for {cpu:g} CPUs but this machine has {cores}")
    if gpu > 0:
        import torch

        gpus = torch.cuda.device_count()
        if gpu > gpus:
            raise SpecError(f"resources.gpu: a trial asks for {gpu:g} GPUs but this machine has {gpus}")
