"""Connecting to Ray: a local cluster by default, or the one named by `--address` / `RAY_ADDRESS`.

One of the few places that touch Ray directly. Stages assume Ray is initialised and never call
`ray.init` themselves, so tests and jobs choose the cluster.
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings

# The start of a RayDeprecationWarning that Ray Train raises about its own use of Ray Data (quiet_environment).
_RAY_OWN_DEPRECATION = "`ExecutionOptions.exclude_resources` is deprecated"


def quiet_environment() -> None:
    """The environment that keeps Ray's logs to what a user should read; set before Ray (or a node) starts."""
    # Set before Ray starts, so local workers inherit them (Ray Train forwards its own):
    # Ray Data logs its plan and, off a terminal, its progress at INFO (read when `ray.data` is
    # first imported); Ray Train would print each worker line twice, log a preemption-watcher
    # error per fold, and Ray would fold our per-epoch lines into "[repeated Nx]". Ray Data's
    # progress bars, drawn by the actor that feeds fine-tuning workers, would flood the log.
    for name, value in (
        ("RAY_DATA_DISABLE_PROGRESS_BARS", "1"),
        ("RAY_DATA_LOG_LEVEL", "WARNING"),
        ("RAY_TRAIN_ENABLE_PRINT_PATCH", "0"),
        ("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0"),
        ("RAY_DEDUP_LOGS", "0"),
    ):
        os.environ.setdefault(name, value)
    # Ray Data warns once per process that its bars are off (ours draw progress instead): not an error
    # line a user should read before the one that matters.
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)
    # Ray Train's own DataConfig hands Ray Data's deprecated `exclude_resources` option on (Ray 2.60), so
    # each fine-tuned fold printed a two-line RayDeprecationWarning about code that is not ours. Hidden
    # here and, through PYTHONWARNINGS (read at start-up), in the Ray processes this one starts.
    warnings.filterwarnings("ignore", message=_RAY_OWN_DEPRECATION)
    ignore = f"ignore:{_RAY_OWN_DEPRECATION}"
    current = os.environ.get("PYTHONWARNINGS", "")
    if ignore not in current.split(","):
        os.environ["PYTHONWARNINGS"] = f"{current},{ignore}" if current else ignore


@contextlib.contextmanager
def torch_threads(n: int):
    """torch's intra-op thread count of this process set to `n` for a block, restored after (benchmarks, tests)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def init_ray(address: str | None = None, num_cpus: int | None = None, quiet: bool = True) -> None:
    """Starts or joins Ray once per process; a second call is a no-op."""
    if quiet:
        quiet_environment()
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address and address.startswith(("http://", "https://")):
        # One meaning per address: http(s):// is a dashboard's Jobs API, which `fersnet submit` and
        # `fersnet jobs` use; a stage run here needs a Ray address (Ray's would say "Invalid Ray address").
        raise ValueError(
            f"{address} is a Ray dashboard (Jobs API) address: submit the stage to it with "
            f"`fersnet submit --address {address} STAGE [OPTIONS]`, or give this command a Ray address "
            "(HOST:6379 or ray://HOST:10001), or unset RAY_ADDRESS to run on a local Ray"
        )
    import ray

    if ray.is_initialized():
        return
    kwargs = dict(logging_level=logging.WARNING if quiet else logging.INFO, log_to_driver=True)
    if quiet:
        # Plain worker lines (no "(RayTrainWorker pid=…)" prefix) and no INFO/WARNING chatter from
        # Ray's own actors; errors still come through.
        kwargs["logging_config"] = ray.LoggingConfig(encoding="TEXT", log_level="ERROR")
    if address:
        ray.init(address=address, **kwargs)
    else:
        # address="local": a new local Ray, never a cluster some earlier `ray start` left on this machine
        # (Ray's default would join that one); include_dashboard=False: no web UI, seconds faster.
        with _own_address_for_its_processes():
            ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, **kwargs)


@contextlib.contextmanager
def _own_address_for_its_processes():
    """While a local Ray starts: its GCS on a port chosen here, and RAY_ADDRESS naming it, so that every
    process it starts (the raylet, and from it each worker) inherits its own cluster's address; this
    process's environment is restored after.

    Ray Train's placement-group cleaner, a thread in an actor of every fit, looks its controller up
    through Ray's state API with no address, so Ray searches the machine for a cluster. With two local
    Rays on one machine (two `fersnet run` side by side, or a test session beside a run) that search
    fails ("Found multiple active Ray instances"; or it finds a cluster that has since stopped) and the
    thread dies, printing a 25-line traceback into the run's log: two to six per CK+48 run of
    `jobs/cpu_fesda.sh` beside other work (sessions 21, 22). Training was never affected; the log was.
    (A `worker_process_setup_hook` setting it in each worker did the same, but its job-wide runtime_env
    cost 1 s on the first tasks and 1-2 s on Ray Data's first pass: its workers are not the prestarted ones.)
    """
    import socket

    from ray._private.services import get_node_ip_address

    with socket.socket() as s:  # a free port; Ray binds it a moment later (RAY_GCS_SERVER_PORT)
        s.bind(("", 0))
        port = s.getsockname()[1]
    wanted = {"RAY_GCS_SERVER_PORT": str(port), "RAY_ADDRESS": f"{get_node_ip_address()}:{port}"}
    before = {name: os.environ.get(name) for name in wanted}
    os.environ.update(wanted)
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def root_cause(e: BaseException) -> str:
    """A failure as one line. Ray wraps worker errors, so the innermost cause says what went wrong."""
    from fersnet_ray.store import redact

    while e.__cause__ is not None:
        e = e.__cause__
    lines = [ln.strip() for ln in redact(str(e)).splitlines() if ln.strip()]
    return f"{type(e).__name__}: {lines[-1] if lines else ''}"


def find_cause(e: BaseException, kind: type[BaseException]) -> BaseException | None:
    """The innermost exception of type `kind` behind `e` (Ray wraps a worker's error, Ray Data wraps
    that again), or None. The original is preferred to Ray's copy that subclasses it, whose message
    carries the worker's traceback."""
    found, seen = [], set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, kind):
            found.append(e)
        e = getattr(e, "cause", None) or e.__cause__ or e.__context__
    exact = [f for f in found if type(f) is kind]
    return (exact or found or [None])[-1]
