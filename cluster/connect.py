"""Where the driver runs: an embedded local Ray instance, or an existing cluster."""

from __future__ import annotations

import logging

import ray


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
        options["include_dashboard"] = False
    ray.init(address=address, **options)
