"""Reliability: a lost node under training and synthesis, a store that goes away mid-write, throttling.

The node-failure scenario runs in its own process (tests/node_failure_scenario.py) on a multi-node
`ray.cluster_utils.Cluster`: this session's process already holds a local Ray (`ray_local`). It is
started with the session (under pytest-xdist, with its test, the other worker running beside it) and
runs while other tests do (it mostly waits: for node start-up, health checks, worker restarts); its
test collects the result last. The store tests
run on the session's Ray against a moto server of their own behind a small HTTP proxy that can
answer 503 SlowDown (S3's throttling) and drops connections while the server is down, as a load
balancer in front of a restarting store would.
"""

from __future__ import annotations

import http.client
import http.server
import json
import logging
import os
import socket
import subprocess
import threading
import time
import uuid

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from fersnet_ray.prepare.job import PrepareConfig, prepare
from fersnet_ray.runtime import root_cause
from fersnet_ray.store import S3_RETRIES, Store, report_retries
from fersnet_ray.synth.job import MANIFEST, SYNTH_SCHEMA, SynthJob, shard_name, synthesize
from fersnet_ray.synth.verify import verify_run
from fersnet_ray.table import read_faces
from fersnet_ray.train.config import make_experiment
from fersnet_ray.checkpoint import checkpoint_name, write_checkpoint_dir
from fersnet_ray.train.loop import FoldState


@pytest.fixture(scope="module")
def demo_table(ray_local, tmp_path_factory) -> str:
    """The demo data set (6 subjects, 3 folds) in a local store, prepared once for this module."""
    local = str(tmp_path_factory.mktemp("reliability") / "demo")
    prepare(PrepareConfig(dataset="demo", store=local, folds=3, options={"subjects": 6}))
    return local


@pytest.fixture
def node_failure_run(node_failure_scenario):
    """The node-failure scenario, running in the background (tests/conftest.py) while other tests do."""
    return node_failure_scenario


# --- the store: outage and throttling --------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


SLOW_DOWN = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
    b"<Message>Please reduce your request rate.</Message></Error>"
)
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "expect", "proxy-connection", "upgrade"}


class FlakyProxy(http.server.ThreadingHTTPServer):
    """Real HTTP in front of an S3 server: answers the next `throttle` requests with 503 SlowDown, and
    drops the connection (no response) of a request the upstream refuses, counting each."""

    daemon_threads = True

    def __init__(self, upstream_port: int):
        super().__init__(("127.0.0.1", 0), _ProxyHandler)
        self.upstream_port = upstream_port
        self.throttle = self.throttled = self.refused = 0
        self.lock = threading.Lock()
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _ProxyHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: FlakyProxy

    def log_message(self, *args) -> None:  # quiet
        pass

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            data = b""
            while size := int(self.rfile.readline().split(b";")[0], 16):
                data += self.rfile.read(size)
                self.rfile.readline()
            self.rfile.readline()
            return data
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _handle(self) -> None:
        body = self._body()
        with self.server.lock:
            throttled = self.server.throttle > 0
            if throttled:
                self.server.throttle -= 1
                self.server.throttled += 1
        if throttled:
            self.send_response(503)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(SLOW_DOWN)))
            self.end_headers()
            self.wfile.write(SLOW_DOWN)
            return
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
        headers["Content-Length"] = str(len(body))
        try:
            upstream = http.client.HTTPConnection("127.0.0.1", self.server.upstream_port, timeout=30)
            upstream.request(self.command, self.path, body=body, headers=headers)
            resp = upstream.getresponse()
            data = resp.read()
            upstream.close()
        except (ConnectionError, http.client.HTTPException, OSError):
            with self.server.lock:
                self.server.refused += 1
            self.close_connection = True  # no response: the client sees a dropped connection
            return
        self.send_response(resp.status)
        for k, v in resp.getheaders():
            if k.lower() not in HOP_BY_HOP and (k.lower() != "content-length" or self.command == "HEAD"):
                self.send_header(k, v)
        if self.command != "HEAD":
            self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle


@pytest.fixture
def flaky_s3(ray_local, monkeypatch):
    """A moto server of this test's own on a fixed port (so it can be stopped and started again), behind
    a FlakyProxy; AWS_ENDPOINT_URL points at the proxy for stores resolved in this test.

    Depends on `ray_local` so the session's Ray has started (with the session's endpoint) before the
    environment changes here.
    """
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    proxy = FlakyProxy(port)
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint)
    S3_RETRIES.take()  # count from zero
    state = {"server": server, "port": port, "proxy": proxy}
    yield state
    proxy.shutdown()
    proxy.server_close()
    state["server"].stop()


def put_tree(local: str, store: Store) -> None:
    """Copies a local store folder into `store` (setup, not under test)."""
    for root, _, files in os.walk(local):
        for name in files:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                store.write_bytes(store.path(os.path.relpath(path, local)), f.read())


def write_untrained_run(store: Store, tmp: str) -> None:
    """Run "r" on the demo set with one (untrained) fold-0 checkpoint, written by the library's own
    writer: exactly-once does not depend on the generator's quality, and training would cost 20 s."""
    exp = make_experiment("tiny", epochs=2)
    store.write_json(f"{store.run('r').dir}/config.json", {"dataset": "demo", "experiment": exp.to_dict()})
    write_checkpoint_dir(FoldState.create(exp, torch.device("cpu")).state_dict(), tmp)
    put_tree(tmp, Store(store.protocol, f"{store.run('r').fold(0)}/{checkpoint_name(0)}", store.endpoint))


def test_store_outage_mid_synthesis_retried_and_rerun_is_exactly_once(flaky_s3, demo_table, tmp_path, caplog, capsys):
    import boto3

    proxy = flaky_s3["proxy"]
    bucket = f"outage-{uuid.uuid4().hex[:8]}"
    boto3.client("s3", endpoint_url=proxy.endpoint).create_bucket(Bucket=bucket)
    uri = f"s3://{bucket}/fer"
    store = Store.from_uri(uri)
    assert store.endpoint == proxy.endpoint
    put_tree(demo_table, store)
    write_untrained_run(store, str(tmp_path))
    folder = store.run("r").synthetic(0)
    job = SynthJob(store=uri, run="r", folds=(0,), rows_per_shard=96, quality=False)

    # What an earlier outage leaves behind, none of it done: a shard file cut short, a complete-looking
    # shard file whose sidecar was never written, a temporary file. None may count as a written shard.
    store.write_bytes(f"{folder}/{shard_name(1)}", b"PAR1" + bytes(60))
    empty = pa.BufferOutputStream()
    pq.write_table(SYNTH_SCHEMA.empty_table(), empty)
    store.write_bytes(f"{folder}/{shard_name(2)}", empty.getvalue().to_pybytes())
    store.write_bytes(f"{folder}/_tmp-{uuid.uuid4().hex}-{shard_name(3)}", b"PAR1")

    outage: dict = {}

    def cut_the_store_when_a_shard_lands() -> None:
        """Stops the S3 server when the first sidecar appears; starts it again on the same port once
        at least one request has hit the outage (and at least 2 s have passed)."""
        deadline = time.time() + 120
        while time.time() < deadline:
            if any("/_part-" in p for p in store.fs.ls(folder, detail=False)):
                break
            time.sleep(0.05)
        else:
            return
        flaky_s3["server"].stop()
        stopped, refused = time.time(), proxy.refused
        while time.time() < stopped + 60 and (proxy.refused == refused or time.time() < stopped + 2):
            time.sleep(0.05)
        from moto.server import ThreadedMotoServer

        flaky_s3["server"] = ThreadedMotoServer(ip_address="127.0.0.1", port=flaky_s3["port"], verbose=False)
        flaky_s3["server"].start()  # moto keeps its data in-process: the bucket is still there
        outage.update(seconds=round(time.time() - stopped, 1), refused=proxy.refused - refused)

    cutter = threading.Thread(target=cut_the_store_when_a_shard_lands, daemon=True)
    proxy.throttle = 2  # the first requests are throttled too: retried, then counted in the log
    cutter.start()
    first_error = None
    with caplog.at_level(logging.WARNING, logger="fersnet_ray.store"):
        try:
            synthesize(job)
        except Exception as e:  # noqa: BLE001 - allowed outcome: one clear line, then a re-run completes it
            first_error = root_cause(e)
    cutter.join(timeout=90)
    out = capsys.readouterr().out
    assert "fold 0: 6 shards, 0 already written, 6 to write" in out  # the leftovers were not counted
    assert outage and outage["refused"] >= 1, "the outage hit no request"
    with capsys.disabled():
        print(f"\noutage {outage}, throttled {proxy.throttled}, first attempt: {first_error or 'completed'}")
    if first_error is not None:
        assert "\n" not in first_error and "testing-secret-value" not in first_error
        assert uri in first_error or store.endpoint in first_error, first_error
    else:
        # What happens: botocore retries every request through the outage; the stage completes.
        assert store.exists(f"{folder}/{MANIFEST}")
        assert "s3: retried" in caplog.text and "while synthesising fold 0" in caplog.text, caplog.text
        assert int(caplog.text.split("s3: retried ")[1].split()[0]) >= proxy.throttled == 2
    assert "Retry needed" not in caplog.text  # botocore's DEBUG lines stay out of the log

    # A re-run completes what is not done (nothing, when the stage rode out the outage) and rewrites
    # nothing that is; the fold verifies: every (face, target) pair exactly once, checksums match.
    manifest = synthesize(job)[0]
    assert verify_run(store, "r", (0,)) == {0: []}
    names = {p.rsplit("/", 1)[-1] for p in store.fs.ls(folder, detail=False)}
    assert not [n for n in names if n.startswith("_tmp-")]
    assert {s["file"] for s in manifest["shards"]} == {n for n in names if n.endswith(".parquet")}
    for shard in (1, 2):
        rows = pq.ParquetFile(f"{folder}/{shard_name(shard)}", filesystem=store.arrow_fs).metadata.num_rows
        assert rows == manifest["shards"][shard]["rows"] > 0
    train_faces = sum(f != 0 for f in read_faces(store, "demo", columns=["fold"])["fold"].to_pylist())
    assert manifest["rows"] == 6 * train_faces


def test_throttling_is_retried_with_backoff_and_counted(s3_bucket, caplog):
    proxy = FlakyProxy(int(os.environ["AWS_ENDPOINT_URL"].rsplit(":", 1)[1]))
    try:
        store = Store("s3", f"{s3_bucket[5:]}/fer", proxy.endpoint)
        S3_RETRIES.take()
        proxy.throttle = 2
        t0 = time.time()
        store.write_json(store.path("probe.json"), {"ok": 1})
        assert store.read_json(store.path("probe.json")) == {"ok": 1}
        assert proxy.throttled == 2
        with caplog.at_level(logging.WARNING, logger="fersnet_ray.store"):
            assert report_retries("in this test") == 2
        assert "s3: retried 2 request(s) (throttling, 5xx or dropped connections) in this test" in caplog.text
        assert "Retry needed" not in caplog.text
        assert report_retries("again") == 0  # counted once
        print(f"2 throttled requests retried in {time.time() - t0:.2f}s")
    finally:
        proxy.shutdown()
        proxy.server_close()


# --- node failure (collects the scenario started by `node_failure_run`) --------------------------------


def test_lost_node_training_resumes_from_checkpoint_and_synthesis_stays_exactly_once(node_failure_run):
    proc, workdir = node_failure_run["proc"], node_failure_run["workdir"]
    try:
        proc.wait(timeout=480)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the node-failure scenario is still running after 8 min: see {workdir}/scenario.log")
    log = (workdir / "scenario.log").read_text()[-6000:]
    assert proc.returncode == 0, log
    result = json.loads((workdir / "result.json").read_text())
    assert "exception" not in result, result["exception"] + log
    print(f"node-failure scenario: {time.time() - node_failure_run['started']:.0f}s", json.dumps(result))

    # Training: the worker's node was removed after the epoch-2 checkpoint; the fold restarted on the
    # other node from that checkpoint and finished all 4 epochs, each exactly once.
    train = result["train"]
    assert train["error"] is None and train["finished"] and train["evaluated"], train
    assert train["final_epoch"] == 4
    history = train["history"]
    assert [m["epoch"] for m in history] == list(range(4))
    restarted = [m for m in history if m["start_epoch"] > 0]
    assert restarted and restarted[0]["epoch"] == restarted[0]["start_epoch"] >= train["epoch_at_kill"] >= 2

    # Synthesis: the generator's node was removed mid-fold; the output is complete, with no duplicate.
    synth = result["synth"]
    assert synth["shards_at_kill"] < synth["shards"]  # removed mid-fold, not after
    assert synth["first_attempt"]["finished"] or synth["rerun"] is not None, synth
    assert synth["verify"] == {"0": []} and synth["leftover_tmp"] == []
    assert synth["rows"] == synth["expected_rows"]
