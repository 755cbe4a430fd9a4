"""Running stages as Ray jobs on a cluster, and watching them: the library behind `fersnet submit` and `fersnet jobs`.

    sid = submit("train", ["--store", "s3://b/fer", "--preset", "tiny"], address="http://head:8265")
    for chunk in follow(sid, address="http://head:8265"):
        print(chunk, end="")

A job runs `python -m fersnet_ray.cli STAGE ARGS…` on the head node. This package travels with it
(`py_modules`), so the cluster image needs Python, torch and Ray only. The stage's arguments are parsed
here first with the stage's own command, so a typo fails before anything reaches the cluster.

The address is the dashboard's (Jobs API) URL, from the argument or RAY_ADDRESS; optional HTTP headers
(an auth proxy's token) from the argument or RAY_JOB_HEADERS (a JSON object), as for `ray job`. Every
failure becomes one `JobsError` line that names the dashboard but never a header value or a password.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import shlex
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

# The stage commands a job may run. Some join the CLI later, so each is looked up in the app when
# submitted, never assumed to exist.
STAGES = (
    "prepare", "train", "evaluate", "synthesize", "verify", "finetune", "report", "run", "ablation", "predict", "export"
)  # fmt: skip

# Provided by the cluster image: a runtime-env pip install would fetch a second multi-GB torch (CPU or
# the wrong CUDA build) per job, and a Ray that differs from the cluster's cannot join it.
CLUSTER_PROVIDED = frozenset({"torch", "ray"})

# The job's environment is shown by the dashboard to anyone who can see the job, so credentials must
# come from each node's own chain (instance role, mounted config), never from `--env`.
SECRET_NAME_PARTS = ("SECRET", "TOKEN", "PASSWORD", "PASSWD", "CREDENTIAL", "API_KEY", "PRIVATE_KEY")
SECRET_NAMES = frozenset({"AWS_ACCESS_KEY_ID", "AWS_SESSION_TOKEN"})

TERMINAL = frozenset({"SUCCEEDED", "FAILED", "STOPPED"})
_AUTH_SCHEMES = frozenset({"bearer", "basic", "token", "digest", "negotiate", "apikey"})  # not secrets
PROBE_TIMEOUT_S = 10.0


class JobsError(RuntimeError):
    """A job request that cannot be done; the message is one line, safe to print (no tokens)."""


@dataclass(frozen=True)
class JobSummary:
    """One job as `fersnet jobs` shows it; times are Unix seconds (None while not started/ended)."""

    submission_id: str
    status: str
    stage: str | None
    entrypoint: str
    message: str
    start_time: float | None
    end_time: float | None


# --- where and how to connect -------------------------------------------------------------------


def resolve_address(address: str | None) -> str:
    """The dashboard URL from `address` or RAY_ADDRESS; other kinds of Ray address get a fix-it message."""
    raw = (address or os.environ.get("RAY_ADDRESS") or "").strip()
    hint = "use the dashboard's URL, e.g. --address http://HEAD:8265 (or RAY_ADDRESS=http://HEAD:8265)"
    if not raw:
        raise JobsError(f"no Ray dashboard address: {hint}")
    if raw in ("auto", "local"):
        raise JobsError(f"Ray address {raw!r} names no dashboard to submit to; {hint}")
    if raw.startswith("ray://"):
        raise JobsError(f"Ray address {raw} is a Ray Client address; jobs go to the dashboard: {hint}")
    if "://" not in raw:
        # Usually the GCS address (port 6379) that `ray.init` takes; the Jobs API is HTTP on the dashboard.
        raise JobsError(f"Ray address {raw} has no http:// or https://; jobs go to the dashboard: {hint}")
    if urlsplit(raw).scheme not in ("http", "https"):
        raise JobsError(f"Ray address {raw} is not an http(s) URL; {hint}")
    return raw.rstrip("/")


def parse_headers(items: Sequence[str]) -> dict[str, str]:
    """`Name: value` strings (as for curl -H) → a dict. Values are never echoed: they are usually tokens."""
    headers = {}
    for item in items:
        name, sep, value = item.partition(":")
        name = name.strip()
        if not sep or not re.fullmatch(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+", name):
            raise JobsError("--header takes 'Name: value', e.g. --header 'Authorization: Bearer …'")
        headers[name] = value.strip()
    return headers


def resolve_headers(headers: Mapping[str, str] | None) -> dict[str, str]:
    """`headers` if given, else RAY_JOB_HEADERS (a JSON object, as the `ray job` CLI reads it)."""
    if headers:
        return {str(k): str(v) for k, v in headers.items()}
    raw = os.environ.get("RAY_JOB_HEADERS")
    if not raw:
        return {}
    try:
        parsed = json.loads(raw)
    except json.JSONDecodeError:
        parsed = None
    if not isinstance(parsed, dict):
        raise JobsError('RAY_JOB_HEADERS must be a JSON object of header names to values: {"Name": "value"}')
    return {str(k): str(v) for k, v in parsed.items()}


def client(address: str | None = None, headers: Mapping[str, str] | None = None):
    """A connected `JobSubmissionClient`; an unreachable or refusing dashboard raises `JobsError`."""
    url, hdrs = resolve_address(address), resolve_headers(headers)
    with _errors(url, hdrs):
        return _connect(url, hdrs)


def _connect(url: str, headers: dict[str, str]):
    from ray.job_submission import JobSubmissionClient

    # Ray's SDK logs every package upload and websocket close at INFO on stderr (its modules pin their
    # loggers to INFO), where the CLI prints only what the user asked for.
    for name in ("ray.dashboard.modules.dashboard_sdk", "ray.dashboard.modules.job.sdk", "ray._private.runtime_env"):
        logging.getLogger(name).setLevel(logging.WARNING)
    _probe(url, headers)
    # JobSubmissionClient lets RAY_ADDRESS / RAY_API_SERVER_ADDRESS override its argument; the URL
    # resolved and probed here must win, so they are hidden while it connects.
    saved = {k: os.environ.pop(k) for k in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS") if k in os.environ}
    try:
        return JobSubmissionClient(url, headers=dict(headers))
    finally:
        os.environ.update(saved)


def _probe(url: str, headers: dict[str, str]) -> None:
    # Ray's client sends its requests without a timeout: a blackholed address would hang forever. One
    # request with a timeout first turns every way of not reaching the Jobs API into a clear line.
    import requests

    where = f"cannot reach Ray dashboard at {url}"
    try:
        r = requests.get(f"{url}/api/version", headers=headers, timeout=PROBE_TIMEOUT_S)
    except requests.exceptions.Timeout:
        raise JobsError(f"{where}: no answer within {PROBE_TIMEOUT_S:g} s") from None
    except requests.exceptions.SSLError:
        raise JobsError(f"{where}: TLS handshake failed (certificate or http/https mismatch)") from None
    except requests.exceptions.ConnectionError as e:
        raise JobsError(f"{where}: {_connection_reason(e)}") from None
    if r.status_code in (401, 403):  # an auth proxy; Ray's own token auth leaves /api/version open
        raise JobsError(_refused(url, r.status_code))
    try:
        ok = r.status_code == 200 and "ray_version" in r.json()
    except ValueError:
        ok = False
    if not ok:
        raise JobsError(f"{url} does not answer as a Ray dashboard (GET /api/version: HTTP {r.status_code})")


def _refused(url: str, status: int) -> str:
    # Ray >= 2.5x clusters may use token auth: the `ray job` way is RAY_AUTH_MODE=token plus the token in
    # RAY_AUTH_TOKEN or ~/.ray/auth_token (Ray's client then adds it); a header works for Ray and proxies alike.
    what = "no token was accepted" if status == 401 else "the token was rejected"
    return (
        f"Ray dashboard at {url} refused the request (HTTP {status}: {what}): pass the cluster's token with "
        "--header 'Authorization: Bearer …' or RAY_JOB_HEADERS, or set RAY_AUTH_MODE=token and RAY_AUTH_TOKEN"
    )


def _connection_reason(e: BaseException) -> str:
    text = str(e).lower()
    for needle, reason in (
        ("refused", "connection refused"),
        ("name or service not known", "unknown host"),
        ("nodename nor servname", "unknown host"),
        ("temporary failure in name resolution", "unknown host"),
        ("no address associated", "unknown host"),
        ("network is unreachable", "network unreachable"),
        ("no route to host", "no route to host"),
        ("timed out", "connection timed out"),
        ("reset by peer", "connection reset"),
    ):
        if needle in text:
            return reason
    return "connection failed"


@contextlib.contextmanager
def _errors(url: str, headers: Mapping[str, str], submission_id: str | None = None):
    """Turns any failure inside into one scrubbed `JobsError` line (404 → no such job)."""
    try:
        yield
    except JobsError as e:
        raise JobsError(_scrub(str(e), headers)) from None
    except Exception as e:  # noqa: BLE001 - requests, aiohttp and Ray's RuntimeErrors all end here
        # `from None`: the chained error may carry a request with its headers.
        status = getattr(e, "status", None) or getattr(getattr(e, "response", None), "status_code", None)
        if submission_id is not None and (status == 404 or "status code 404" in str(e)):
            raise JobsError(_scrub(f"no job {submission_id!r} on {url}", headers)) from None
        if status in (401, 403) or type(e).__name__ == "AuthenticationError":
            message = _refused(url, status or (401 if "required" in str(e) else 403))
        elif isinstance(e, ConnectionError) or "connect" in type(e).__name__.lower():
            message = f"cannot reach Ray dashboard at {url}: {_connection_reason(e)}"
        else:
            message = f"Ray dashboard at {url}: {_one_line(e)}"
        raise JobsError(_scrub(message, headers)) from None


@contextlib.contextmanager
def _session(address: str | None, headers: Mapping[str, str] | None, submission_id: str | None = None):
    url, hdrs = resolve_address(address), resolve_headers(headers)
    with _errors(url, hdrs, submission_id):
        yield _connect(url, hdrs)


def _one_line(e: BaseException) -> str:
    # Ray's errors read "Request failed with status code 400: <server traceback>." (the final "." on a
    # line of its own); the traceback's last line says what went wrong.
    text = re.sub(r"^Request failed with status code \d+: ", "", str(e).strip())
    lines = [ln.strip() for ln in text.splitlines() if ln.strip(" .")]
    return lines[-1] if lines else type(e).__name__


def _scrub(text: str, headers: Mapping[str, str]) -> str:
    """Removes header values (whole, and each word of them: 'Bearer <token>'), Ray's token, URL credentials."""
    from fersnet_ray.store import redact

    # RAY_AUTH_TOKEN: the token Ray's client adds by itself when RAY_AUTH_MODE=token.
    for value in [*headers.values(), os.environ.get("RAY_AUTH_TOKEN", "")]:
        parts = {value, *(w for w in value.split() if w.lower() not in _AUTH_SCHEMES)}
        for part in sorted(parts, key=len, reverse=True):
            if len(part) >= 4:
                text = text.replace(part, "***")
    return redact(text)


# --- what a job is ------------------------------------------------------------------------------


def stage_command(stage: str, commands: Mapping[str, Any]):
    """The click command of a submittable stage among the CLI's `commands` (the CLI passes its own: the
    stages' one source of truth for their arguments; the library never imports the CLI)."""
    if stage not in STAGES or stage not in commands:
        available = ", ".join(s for s in STAGES if s in commands)
        raise JobsError(f"unknown stage {stage!r}; submittable: {available}")
    return commands[stage]


def check_stage_args(stage: str, args: Sequence[str], commands: Mapping[str, Any]) -> list[str]:
    """Parses `args` with the stage's own command, so a bad option fails here and not on the cluster."""
    import typer

    command = stage_command(stage, commands)
    see = f"see `fersnet {stage} --help`"
    try:
        # help_option_names=[]: `--help` must not print the stage's help from inside a library call.
        ctx = command.make_context(stage, list(args), help_option_names=[])
    except typer.TyperException as e:  # Typer's click: NoSuchOption, BadParameter, MissingParameter, …
        if type(e).__name__ == "NoSuchOption":
            maybe = f" (did you mean {', '.join(sorted(e.possibilities))}?)" if e.possibilities else ""
            raise JobsError(f"stage {stage!r} does not take {e.option_name}{maybe}; {see}") from None
        raise JobsError(f"stage {stage!r}: {e.format_message()}; {see}") from None
    if "address" in ctx.params and ctx.get_parameter_source("address").name == "COMMANDLINE":
        # After STAGE, `--address` would go to the stage and point the job's driver somewhere else.
        raise JobsError("--address after the stage: put it before STAGE (`fersnet submit --address URL STAGE …`)")
    return list(args)


def parse_env(items: Sequence[str]) -> dict[str, str]:
    """`KEY=VALUE` strings → a dict; names that look like credentials are refused (values never shown)."""
    env = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise JobsError("--env takes KEY=VALUE with KEY a variable name, e.g. --env FERSNET_DEBUG=1")
        env[name] = value
    return env


def runtime_env(pip: bool = True, env: Mapping[str, str] | None = None) -> dict:
    """The job's runtime env: this package, optionally its pip dependencies, and explicit variables."""
    import fersnet_ray

    for name in env or {}:
        upper = name.upper()
        if upper in SECRET_NAMES or any(part in upper for part in SECRET_NAME_PARTS):
            raise JobsError(
                f"--env {name} looks like a credential; the job's environment is visible in the dashboard, "
                "so secrets must come from the cluster's own credential chain (instance role, mounted config)"
            )
    renv: dict = {
        # The package folder, zipped and unpacked on every node that runs a job task: this checkout's
        # code, whatever fersnet-ray (if any) the image holds.
        "py_modules": [os.path.dirname(os.path.abspath(fersnet_ray.__file__))],
        "excludes": ["__pycache__/", "*.pyc"],
    }
    if pip:
        # Ray installs these into a virtualenv that still sees the image's packages (torch, Ray).
        renv["pip"] = pip_requirements()
    if env:
        renv["env_vars"] = dict(env)
    return renv


def pip_requirements() -> list[str]:
    """The installed distribution's runtime requirements, minus extras and what the cluster provides."""
    from importlib.metadata import PackageNotFoundError, requires

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    try:
        lines = requires("fersnet-ray") or []
    except PackageNotFoundError:
        raise JobsError(
            "fersnet-ray is not installed here (`pip install -e .`), so its dependencies are unknown; "
            "use --no-pip if the cluster image has them"
        ) from None
    keep = []
    for line in lines:
        req = Requirement(line)
        if req.marker is not None and "extra" in str(req.marker):
            continue  # test-only and other optional dependencies
        if canonicalize_name(req.name) in CLUSTER_PROVIDED:
            continue
        keep.append(str(req))
    return keep


# --- the Jobs API -------------------------------------------------------------------------------


def submit(
    stage: str,
    stage_args: Sequence[str],
    commands: Mapping[str, Any],
    address: str | None = None,
    headers: Mapping[str, str] | None = None,
    pip: bool = True,
    env: Mapping[str, str] | None = None,
    submission_id: str | None = None,
) -> str:
    """Submits `fersnet STAGE ARGS…` as a Ray job; returns its submission id.

    Everything that can be checked locally (stage, arguments, variables, dependencies) is checked
    before the dashboard is contacted. `commands`: the CLI's click commands by name, which parse
    the stage's arguments.
    """
    args = check_stage_args(stage, stage_args, commands)
    renv = runtime_env(pip, env)
    # `python` is the cluster's interpreter: this machine's sys.executable means nothing there.
    entrypoint = shlex.join(["python", "-m", "fersnet_ray.cli", stage, *args])
    # A readable id shows the stage in `ray job list` and the dashboard.
    sid = submission_id or f"fersnet-{stage}-{uuid.uuid4().hex[:8]}"
    with _session(address, headers) as c:
        # Metadata: the stage only, for `jobs list`. The arguments are in the entrypoint already; copying
        # them would spread any credential a URI among them carries.
        return c.submit_job(
            entrypoint=entrypoint, runtime_env=renv, metadata={"fersnet_stage": stage}, submission_id=sid
        )


def _summary(info) -> JobSummary:
    def seconds(ms):
        return ms / 1000 if ms else None

    return JobSummary(
        submission_id=info.submission_id or info.job_id or "?",
        status=str(getattr(info.status, "value", info.status)),
        stage=(info.metadata or {}).get("fersnet_stage"),
        entrypoint=info.entrypoint or "",
        message=_headline(info.message or ""),
        start_time=seconds(info.start_time),
        end_time=seconds(info.end_time),
    )


def _headline(message: str) -> str:
    # Ray appends the job's last logs to a failed job's message; `logs` has those, the summary is one line.
    lines = message.strip().splitlines()
    return re.split(r",? last available logs", lines[0])[0].rstrip(":") if lines else ""


def list_jobs(address: str | None = None, headers: Mapping[str, str] | None = None) -> list[JobSummary]:
    """Every job the cluster knows, oldest first."""
    with _session(address, headers) as c:
        jobs = [_summary(j) for j in c.list_jobs()]
    return sorted(jobs, key=lambda j: j.start_time or 0.0)


def status(submission_id: str, address: str | None = None, headers: Mapping[str, str] | None = None) -> JobSummary:
    with _session(address, headers, submission_id) as c:
        return _summary(c.get_job_info(submission_id))


def logs(submission_id: str, address: str | None = None, headers: Mapping[str, str] | None = None) -> str:
    """The job's output so far (driver stdout and stderr)."""
    with _session(address, headers, submission_id) as c:
        return c.get_job_logs(submission_id)


def follow(submission_id: str, address: str | None = None, headers: Mapping[str, str] | None = None) -> Iterator[str]:
    """Yields the job's output in chunks as it is written, from the start, until the job ends."""
    with _session(address, headers, submission_id) as c:
        # tail_job_logs is an async generator (a websocket); a private loop drives it one chunk at a time
        # so callers stay synchronous.
        loop = asyncio.new_event_loop()
        chunks = c.tail_job_logs(submission_id)
        try:
            while True:
                try:
                    chunk = loop.run_until_complete(chunks.__anext__())
                except StopAsyncIteration:
                    return
                yield chunk
        finally:
            loop.run_until_complete(chunks.aclose())
            loop.close()


def stop(submission_id: str, address: str | None = None, headers: Mapping[str, str] | None = None) -> bool:
    """Asks the job to stop (SIGTERM, then SIGKILL); True if it was still running."""
    with _session(address, headers, submission_id) as c:
        return bool(c.stop_job(submission_id))


def wait(
    submission_id: str,
    timeout: float | None = None,
    address: str | None = None,
    headers: Mapping[str, str] | None = None,
    poll_s: float = 1.0,
) -> JobSummary:
    """Polls until the job is SUCCEEDED, FAILED or STOPPED (or `timeout` seconds pass: JobsError)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    with _session(address, headers, submission_id) as c:
        while True:
            info = _summary(c.get_job_info(submission_id))
            if info.status in TERMINAL:
                return info
            if deadline is not None and time.monotonic() > deadline:
                raise JobsError(f"job {submission_id!r} still {info.status} after {timeout:g} s")
            time.sleep(poll_s)
