"""`fersnet submit` and `fersnet jobs` against a real Ray head with its dashboard, started here.

The head is a separate `ray start --head --block` process group on 127.0.0.1 with its own ports and
temp dir, so it neither joins nor disturbs any other Ray on the machine (never `ray stop`: that would
end them all), and it is independent of the in-process `ray_local` fixture. A job that succeeds (submit,
status, logs, list, a duplicate submission id) and one stopped while it runs are tests/test_pipeline.py's,
which submits `fersnet run`.
"""

from __future__ import annotations

import http.server
import json
import threading
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fersnet_ray import jobs
from fersnet_ray.cli import app

runner = CliRunner()
from ray_head import AUTH, HEADER, TOKEN, free_ports  # noqa: E402


def cli(*args: str, env: dict | None = None):
    result = runner.invoke(app, list(args), env=env)
    assert TOKEN not in result.output, result.output  # nor in any error
    return result


def assert_one_error_line(result, *absent: str) -> str:
    """Exit 1, one `error:` line on stderr and no traceback; nothing in `absent` shown anywhere."""
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for secret in absent:
        assert secret not in result.output
    return lines[0]


def closed_port_address() -> str:
    (port,) = free_ports(1)
    return f"http://127.0.0.1:{port}"


# --- against the real head ----------------------------------------------------------------------


def test_failed_job_followed_exits_nonzero(head, tmp_path):
    # verify on a run that does not exist: the stage's own error, streamed back, and the job FAILED.
    result = cli("submit", "--address", head, "--header", HEADER, "--no-pip", "--follow", "verify", "--run", "nope",
                 "--store", str(tmp_path))  # fmt: skip
    sid = result.stdout.splitlines()[0]
    assert result.exit_code == 1, result.output
    assert "error: no run 'nope'" in result.stdout  # the job's output
    assert result.stderr == f"error: job {sid} FAILED: Job entrypoint command failed with exit code 1\n"


def test_unknown_submission_id(head):
    for command in (["status"], ["logs"], ["logs", "--follow"], ["stop"]):
        line = assert_one_error_line(cli("jobs", *command, "fersnet-nope-0", "--address", head, "--header", HEADER))
        assert line == f"error: no job 'fersnet-nope-0' on {head}"


def test_bad_stage_option_never_reaches_the_server(head):
    before = len(jobs.list_jobs(head, AUTH))
    submit = ("submit", "--address", head, "--header", HEADER, "--no-pip")
    line = assert_one_error_line(cli(*submit, "prepare", "--no-such-option"))
    assert line == "error: stage 'prepare' does not take --no-such-option; see `fersnet prepare --help`"
    line = assert_one_error_line(cli(*submit, "prepare", "--folds", "two"))
    assert "stage 'prepare'" in line and "--folds" in line
    line = assert_one_error_line(cli(*submit, "prepare", "--address", head))
    assert "put it before STAGE" in line
    line = assert_one_error_line(cli(*submit, "nonsense"))
    assert line.startswith("error: unknown stage 'nonsense'; submittable: prepare, train, evaluate")
    assert len(jobs.list_jobs(head, AUTH)) == before


def test_missing_or_wrong_token_is_refused(head):
    line = assert_one_error_line(
        cli("jobs", "list", "--address", head, "--header", "Authorization: Bearer wr0ng-t0ken")
    )
    assert line.startswith(f"error: Ray dashboard at {head} refused the request (HTTP 403") and "wr0ng" not in line
    line = assert_one_error_line(cli("jobs", "status", "x", "--address", head, "--header", "X-Other: 1"))
    assert f"Ray dashboard at {head} refused the request" in line  # 401, or 403 with ~/.ray/auth_token's


# --- without a cluster --------------------------------------------------------------------------


def test_unreachable_dashboard_is_one_line():
    address = closed_port_address()
    line = assert_one_error_line(
        cli("submit", "--address", address, "--header", f"Authorization: Bearer {TOKEN}", "--no-pip", "prepare"),
        TOKEN,
    )
    assert line == f"error: cannot reach Ray dashboard at {address}: connection refused"
    result = cli("jobs", "list", env={"RAY_ADDRESS": address, "RAY_JOB_HEADERS": json.dumps({"X-Token": TOKEN})})
    assert_one_error_line(result, TOKEN)


@pytest.mark.parametrize(
    ("address", "hint"),
    [
        ("auto", "names no dashboard"),
        ("ray://head:10001", "Ray Client address"),
        ("head:6379", "no http:// or https://"),
        ("http://user:hunter22@127.0.0.1:1", "cannot reach Ray dashboard at http://***@127.0.0.1:1"),
    ],
)
def test_address_that_is_not_a_dashboard(address, hint):
    line = assert_one_error_line(cli("jobs", "list", env={"RAY_ADDRESS": address}), "hunter22")
    assert hint in line


class _Proxy(http.server.BaseHTTPRequestHandler):
    """An auth proxy in front of a dashboard: 401 without the right token, and errors that echo headers."""

    def do_GET(self):  # the name http.server calls
        auth = self.headers.get("Authorization", "")
        if auth != f"Bearer {TOKEN}":
            self._send(401, f"bad credentials: {auth}")
        elif self.path == "/api/version":
            self._send(200, json.dumps({"version": "4", "ray_version": "2.60.0", "ray_commit": "x"}))
        else:
            self._send(500, f"upstream failed\nrequest had Authorization: {auth}")

    def _send(self, code: int, body: str):
        data = body.encode()
        self.send_response(code)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def proxy():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Proxy)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_proxy_errors_never_show_the_token(proxy):
    wrong = "Bearer wr0ng-t0ken-value"
    line = assert_one_error_line(cli("jobs", "list", "--address", proxy, "--header", f"Authorization: {wrong}"), wrong)
    assert line.startswith(f"error: Ray dashboard at {proxy} refused the request (HTTP 401") and "--header" in line
    result = cli("jobs", "list", "--address", proxy, "--header", f"Authorization: Bearer {TOKEN}")
    line = assert_one_error_line(result, TOKEN)
    assert line.startswith(f"error: Ray dashboard at {proxy}: ") and "***" in line


def test_runtime_env_ships_the_package_not_torch_or_ray():
    renv = jobs.runtime_env(pip=True, env={"FERSNET_DEBUG": "1"})
    assert renv["py_modules"] == [str(Path(jobs.__file__).parent)]
    names = {r.split(";")[0].split("[")[0].split("<")[0].split(">")[0].split("=")[0].strip() for r in renv["pip"]}
    assert {"torch", "ray"}.isdisjoint(names) and {"face-alignment", "pyarrow", "typer"} <= names
    assert {"pytest", "moto"}.isdisjoint(names)  # test extras stay home
    assert renv["env_vars"] == {"FERSNET_DEBUG": "1"}
    assert "pip" not in jobs.runtime_env(pip=False) and "env_vars" not in jobs.runtime_env(pip=False)
    for name in ("AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID", "AWS_SESSION_TOKEN", "HF_TOKEN", "DB_PASSWORD"):
        with pytest.raises(jobs.JobsError, match="credential chain"):
            jobs.runtime_env(pip=False, env={name: "x"})
    line = assert_one_error_line(cli("submit", "--env", "MY_API_TOKEN=abcd1234", "prepare"), "abcd1234")
    assert "MY_API_TOKEN looks like a credential" in line
