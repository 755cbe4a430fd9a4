"""Connecting to Ray: a local cluster by default, or the one named by `--address` / `RAY_ADDRESS`.

One of the few places that touch Ray directly. Stages assume Ray is initialised and never call
`ray.init` themselves, so tests and jobs choose the cluster.
"""

from __future__ import annotations

import logging
import os


def init_ray(address: str | None = None, num_cpus: int | None = None, quiet: bool = True) -> None:
    """Starts or joins Ray once per process; a second call is a no-op."""
    if quiet:
        # Ray Data logs its plan and, off a terminal, its progress at INFO; the level must be set
        # before `ray.data` is first imported, which configures its loggers from this variable.
        os.environ.setdefault("RAY_DATA_LOG_LEVEL", "WARNING")
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS") or None
    kwargs = dict(logging_level=logging.WARNING if quiet else logging.INFO, log_to_driver=True)
    if address:
        ray.init(address=address, **kwargs)
    else:
        # include_dashboard=False: a local run needs no web UI and starts seconds faster.
        ray.init(num_cpus=num_cpus, include_dashboard=False, **kwargs)
