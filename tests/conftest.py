"""Shared fixtures: a real S3-compatible server (moto) and one real local Ray for the session.

Order matters: the S3 server's endpoint and fake credentials go into the environment before
Ray starts, so Ray's worker processes inherit them like cluster nodes inherit an instance role.
"""

from __future__ import annotations

import json
import logging
import os
import uuid

import pytest

logging.getLogger("werkzeug").setLevel(logging.WARNING)  # moto's server logs every request at INFO
# face-alignment's landmark decoding runs as plain Python instead of being compiled by numba first: the
# same code path, minus a ~15 s compile in every process that aligns (the pytest process, Ray actors).
os.environ.setdefault("NUMBA_DISABLE_JIT", "1")
# Ray Train's controller polls its workers every 2 s, so each of the suite's ~20 short fits waits up to
# 2 s after its last epoch to notice the end; 0.5 s keeps the same checks (set before Ray starts, so its
# actors inherit it).
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
# fp32 on every CPU, so a test gives the same numbers on every machine CI lands on: on CPUs with
# AVX512-BF16 or AMX the loops autocast to bf16, which moves a barely trained model's logits by ~1e-2,
# enough to flip an argmax between a bf16 evaluation and the fp32 export of the same weights. The bf16
# path has its own tests (test_loop's `cpu_bf16` fixture turns it on). Set before Ray starts: its workers
# and the test clusters' job drivers inherit it.
os.environ.setdefault("FERSNET_CPU_BF16", "0")


def _byte_compile_the_package() -> None:
    """Compiles fersnet_ray's modules once, so the suite's ~100 processes that import them (Ray workers,
    job drivers, the scenarios) read bytecode instead of compiling the sources again. pip byte-compiles
    what it installs, but not an editable install's sources, and with PYTHONDONTWRITEBYTECODE=1 (set on
    the CI machines) no process caches what it compiled: ~0.3 s of CPU a process. compileall writes
    regardless of that flag, and only what is stale; __pycache__/ is git-ignored."""
    import compileall
    import importlib.util

    for folder in importlib.util.find_spec("fersnet_ray").submodule_search_locations:
        compileall.compile_dir(folder, quiet=1)


_byte_compile_the_package()


@pytest.fixture(scope="session", autouse=True)
def one_thread():
    """One torch thread in the test process for the whole session, restored at its end: the tensors here
    are tiny, and intra-op threading costs far more than it saves on 2 cores (10-30x on small CI VMs).
    Session scope puts it in force before every other fixture, module-scoped training ones included
    (a module fixture that trains names it, to say so); no test file sets threads by hand."""
    from fersnet_ray.runtime import torch_threads

    with torch_threads(1):
        yield


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory) -> str:
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    os.environ.update(
        AWS_ENDPOINT_URL=endpoint,
        AWS_ACCESS_KEY_ID="testing-key-id",
        AWS_SECRET_ACCESS_KEY="testing-secret-value",
        AWS_DEFAULT_REGION="us-east-1",
    )
    yield endpoint
    server.stop()


@pytest.fixture
def s3_bucket(s3_endpoint) -> str:
    """A fresh, empty bucket on the moto server; returns its s3:// URI."""
    import boto3

    name = f"test-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=name)
    return f"s3://{name}"


@pytest.fixture(scope="session")
def torch_home(tmp_path_factory) -> str:
    """A private TORCH_HOME (set before Ray starts) where staged face-alignment weights land."""
    path = str(tmp_path_factory.mktemp("torch_home"))
    os.environ["TORCH_HOME"] = path
    return path


@pytest.fixture(scope="session")
def ray_local(s3_endpoint, torch_home):
    """A real local Ray with 2 CPUs, shared by every test that needs one."""
    import ray

    from fersnet_ray.runtime import init_ray

    init_ray(num_cpus=2)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def trained_run(ray_local):
    """`fersnet train` of a tiny FERSNet, 4 epochs, on folds 0 and 1 of the demo data set (6 subjects,
    3 folds), on the local Ray into s3://trained/fer, run "r"; its (uri, command).

    test_train checks it (and breaks and repairs fold 1), test_synth synthesises from a copy of fold
    0: one training for both saves a Ray Train start-up, about 20 s on 2 CPUs.
    """
    import boto3
    from typer.testing import CliRunner

    from fersnet_ray.cli import app
    from fersnet_ray.prepare.job import PrepareConfig, prepare

    boto3.client("s3").create_bucket(Bucket="trained")
    uri = "s3://trained/fer"
    prepare(PrepareConfig(dataset="demo", store=uri, folds=3, options={"subjects": 6}))
    args = ["train", "--store", uri, "--dataset", "demo", "--run", "r", "--folds", "0,1", "--preset", "tiny"]
    args += ["--checkpoint-every", "2", "--epochs", "4"]  # epochs last: a test changes it
    out = CliRunner().invoke(app, args)
    assert out.exit_code == 0, out.output
    return uri, args


@pytest.fixture(scope="session")
def small_cnn_run(trained_run):
    """`fersnet finetune --classifier small-cnn --data real`, 1 epoch on fold 0 of a copy of `trained_run`'s
    run "r" in s3://small-cnn/fer; its uri. Only the face table and the run's config are copied: small-cnn
    trains from scratch and real faces need no synthetic shards, so this is one short Ray Train fit.

    test_export and test_predict export it and predict with it (`--classifier small-cnn --data real`).
    """
    import boto3
    from typer.testing import CliRunner

    from fersnet_ray.cli import app
    from fersnet_ray.store import Store

    boto3.client("s3").create_bucket(Bucket="small-cnn")
    source, uri = Store.from_uri(trained_run[0]), "s3://small-cnn/fer"
    store = Store.from_uri(uri)
    for part in ("datasets", "runs/r/config.json"):
        store.fs.copy(source.path(part), store.path(part), recursive=True)
    args = ["finetune", "--store", uri, "--run", "r", "--folds", "0", "--classifier", "small-cnn", "--data", "real"]
    out = CliRunner().invoke(app, args + ["--epochs", "1", "--batch-size", "16", "--cache"])
    assert out.exit_code == 0, out.output
    return uri


@pytest.fixture(scope="session")
def fan_weights(tmp_path_factory) -> str:
    from builders import write_face_alignment_weights

    return write_face_alignment_weights(tmp_path_factory.mktemp("fan-weights"), detect=True)


_heads: list = []  # the running `head` fixture's generator, so that it can be stopped early


@pytest.fixture(scope="session")
def head(s3_endpoint, torch_home):
    """A real Ray head with dashboard and Jobs API on 127.0.0.1 (tests/ray_head.py); its http:// address.

    Started after the S3 server, so its job drivers inherit the endpoint and fake credentials. Stopped as
    soon as the last test that uses it has run (`pytest_runtest_teardown`), not at the session's end: an
    idle head with its dashboard takes ~6% of a core, for minutes of the suite on 2 cores.
    """
    from ray_head import start_head

    running = start_head()
    _heads.append(running)
    yield next(running)
    running.close()  # a no-op when it was stopped early


def pytest_runtest_teardown(item, nextitem):
    if _heads and "head" in item.fixturenames:
        items = item.session.items
        if not any("head" in later.fixturenames for later in items[items.index(item) + 1 :]):
            _heads.pop().close()  # runs start_head's clean-up: running jobs stopped, process group ended


def _xdist_worker() -> bool:
    """In a pytest-xdist worker (xdist sets this variable there; test_quickstart reads it too)."""
    return "PYTEST_XDIST_WORKER" in os.environ


def _shared_fixture_files() -> dict[str, str]:
    """Test file name -> the costly session fixture its tests take as a parameter: "trained_run" (a Ray
    Train run of two folds; `small_cnn_run` fine-tunes a copy of it) or "head" (the Jobs-API Ray head)."""
    import ast
    from pathlib import Path

    found = {}
    for path in sorted(Path(__file__).parent.glob("test_*.py")):
        tree = ast.parse(path.read_text())
        params = {a.arg for f in ast.walk(tree) if isinstance(f, ast.FunctionDef) for a in f.args.args}
        if params & {"trained_run", "small_cnn_run"}:
            found[path.name] = "trained_run"
        elif "head" in params:
            found[path.name] = "head"
    return found


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """pytest-xdist (`-n 2 --dist loadfile`, pyproject's addopts) gives each worker its own session fixtures,
    and sends every test of a file to one worker so module fixtures build once. This keeps that, and also
    sends the files that share `trained_run` to one worker and those that share `head` to one, so each is
    built once; those two groups go first, one to each worker (`pytest_collection_modifyitems` puts them
    at the front), since the longest tests are in them."""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadScopeScheduling

    groups = _shared_fixture_files()

    class SharedFixtureScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            file = nodeid.split("::", 1)[0]
            return groups.get(file.rsplit("/", 1)[-1], file)

    config.option.loadscopereorder = False  # keep the collection order: the two shared groups first
    return SharedFixtureScheduling(config, log)


# After the two shared groups, the files whose scenarios run longest (a multi-node Ray, a full disk, the
# quick start's training): started early, they leave the many short files to fill the end evenly.
LONG_FILES = ("test_reliability.py", "test_scale.py", "test_quickstart.py")


def pytest_collection_modifyitems(config, items):
    if _xdist_worker():  # every worker collects the same order, which the scheduler keeps
        groups = _shared_fixture_files()
        order = {"head": 0, "trained_run": 1, **{name: 2 + i for i, name in enumerate(LONG_FILES)}}
        # stable: files keep their order within a rank
        items.sort(key=lambda item: order.get(groups.get(item.path.name, item.path.name), len(order)))


@pytest.fixture(scope="session", autouse=True)
def _node_failure_early(request):
    """Without xdist, starts the node-failure scenario as the session begins when its test is selected: its
    ~1.5 minutes of cluster start-up, training and synthesis then overlap the other tests. Under xdist the
    other worker overlaps it, and it starts when its test does (a worker cannot know its tests in advance)."""
    if not _xdist_worker() and any(i.name.startswith("test_lost_node") for i in request.session.items):
        request.getfixturevalue("node_failure_scenario")
    yield


@pytest.fixture(scope="session")
def node_failure_scenario(tmp_path_factory):
    """Runs tests/node_failure_scenario.py (its own multi-node Ray) in the background; the test collects the
    result."""
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    workdir = tmp_path_factory.mktemp("node-failure")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    scenario = Path(__file__).with_name("node_failure_scenario.py")
    log = open(workdir / "scenario.log", "w")
    proc = subprocess.Popen(
        [sys.executable, str(scenario), str(workdir)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    yield {"proc": proc, "workdir": workdir, "started": time.time()}
    if proc.poll() is None:  # the test failed or was not reached: let the scenario shut its cluster down
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    log.close()


# FERSNET_TEST_TIMELINE=file.jsonl: one line per test phase (worker, test, phase, start, seconds), for
# sizing the suite against its budget: which worker ran what when, and where it waited.
_TIMELINE = os.environ.get("FERSNET_TEST_TIMELINE")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    yield
    if _TIMELINE:
        line = {
            "worker": os.environ.get("PYTEST_XDIST_WORKER", "main"),
            "test": item.nodeid,
            "phase": call.when,
            "start": round(call.start, 2),
            "s": round(call.duration, 2),
        }
        with open(_TIMELINE, "a") as f:
            f.write(json.dumps(line) + "\n")
