"""A real Ray head with its dashboard and Jobs API, started for the tests on 127.0.0.1.

The head is a separate `ray start --head --block` process group with its own ports and temp dir, so
it neither joins nor disturbs any other Ray on the machine (never `ray stop`: that would end them
all), and it is independent of the in-process `ray_local` fixture. `conftest.head` starts one per
session; it inherits the environment (the moto S3 endpoint and fake credentials included), as
cluster nodes inherit an instance role.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import requests

from fersnet_ray import jobs

# The head uses Ray's token auth (the default of Ray >= 2.5x clusters); every request carries the token as
# a header, and no output of any command here may show it.
TOKEN = "s3cr3t-token-4f1d9a7c2b"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
HEADER = f"Authorization: Bearer {TOKEN}"


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _jobs_api_up(address: str) -> bool:
    try:
        return requests.get(f"{address}/api/jobs/", headers=AUTH, timeout=2).status_code == 200
    except requests.RequestException:
        return False


def start_head():
    """A Ray head with dashboard and Jobs API on 127.0.0.1; yields its http:// address."""
    proc, address, temp_dir = _launch()
    try:
        yield address
    finally:
        _stop_running_jobs(address)
        _kill_group(proc)
        subprocess.run(["rm", "-rf", temp_dir], check=False)


def _launch(attempts: int = 3) -> tuple[subprocess.Popen, str, str]:
    # free_ports() releases its ports before Ray binds them, and other Ray clusters of the suite (the
    # node-failure scenario) start at the same time: one may take a port in between, and the GCS then dies
    # with "Failed to start the grpc server". A fresh set of ports on each attempt.
    for attempt in range(1, attempts + 1):
        proc, address, temp_dir, log = _start_once()
        deadline = time.monotonic() + 90
        while not _jobs_api_up(address):
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = log.read_text(errors="replace")[-3000:]
                _kill_group(proc)
                subprocess.run(["rm", "-rf", temp_dir], check=False)
                if attempt == attempts:
                    pytest.fail(f"Ray head did not come up at {address} after {attempts} attempts:\n{tail}")
                break
            time.sleep(0.5)
        else:
            return proc, address, temp_dir
    raise AssertionError("unreachable")


def _start_once() -> tuple[subprocess.Popen, str, str, Path]:
    ray_bin = Path(sys.executable).with_name("ray")
    # Short: Ray's socket paths under it must stay below 108 characters.
    temp_dir = tempfile.mkdtemp(prefix="/tmp/rh")
    gcs, dash, client, agent, agent_grpc, renv_agent, metrics, node_mgr, obj_mgr = free_ports(9)
    drop = ("RAY_ADDRESS", "RAY_JOB_HEADERS", "RAY_AUTH_TOKEN_PATH")
    env = {k: v for k, v in os.environ.items() if k not in drop} | {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": TOKEN}
    # The test machine is shared and at times overloaded: a late heartbeat must not end the head (5 → 30 misses).
    env["RAY_health_check_failure_threshold"] = "30"
    # Job entrypoints run `python -m fersnet_ray.cli`: this interpreter, as a cluster image would have it.
    env["PATH"] = f"{ray_bin.parent}{os.pathsep}{env.get('PATH', '')}"
    cmd = [
        str(ray_bin), "start", "--head", "--block", "--disable-usage-stats", "--num-cpus=2",
        f"--temp-dir={temp_dir}", "--node-ip-address=127.0.0.1", f"--port={gcs}",
        "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}",
        f"--ray-client-server-port={client}", f"--dashboard-agent-listen-port={agent}",
        f"--dashboard-agent-grpc-port={agent_grpc}", f"--runtime-env-agent-port={renv_agent}",
        f"--metrics-export-port={metrics}", f"--node-manager-port={node_mgr}",
        f"--object-manager-port={obj_mgr}", "--object-store-memory=200000000",
    ]  # fmt: skip
    log = Path(temp_dir, "head.log")
    with log.open("wb") as out:  # the child keeps its own copy of the descriptor
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    return proc, f"http://127.0.0.1:{dash}", temp_dir, log


def _stop_running_jobs(address: str) -> None:
    # Job drivers live in their own sessions, outside the head's process group: stop them through the API.
    try:
        running = [
            j["submission_id"]
            for j in requests.get(f"{address}/api/jobs/", headers=AUTH, timeout=5).json()
            if j.get("submission_id") and j["status"] not in jobs.TERMINAL
        ]
        for sid in running:
            requests.post(f"{address}/api/jobs/{sid}/stop", headers=AUTH, timeout=5)
        deadline = time.monotonic() + 15
        while running and time.monotonic() < deadline:
            time.sleep(0.5)
            running = [s for s in running if jobs.status(s, address, AUTH).status not in jobs.TERMINAL]
    except (requests.RequestException, jobs.JobsError):
        pass


def _kill_group(proc: subprocess.Popen) -> None:
    pgid = proc.pid  # start_new_session: the group id is the leader's pid
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        proc.poll()
        try:
            os.killpg(pgid, 0)  # anyone left in the group?
        except ProcessLookupError:
            return
        time.sleep(0.2)
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=10)
