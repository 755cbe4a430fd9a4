"""The scale benchmark's S3: a moto server on 127.0.0.1, and pyarrow's two S3 filesystems compared on it.

    with moto_server() as uri:          # "s3://fersnet-scale/fer"; start it before Ray, so workers inherit it
        ...
    compare_arrow_s3(store, paths)      # native vs fsspec-wrapped, the same files, alternating, best of 3

The server runs moto's `ThreadedMotoServer` in a child process: the objects it holds (hundreds of MB
at 100k faces) then never count as the driver's memory, and its request handling does not compete
with the driver for the GIL. Credentials are fake and exist only in this process's environment while
the server runs.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from typing import Iterator

from fersnet_ray.store import ARROW_S3_KINDS, Store

_SERVER = """
import logging, sys
from moto.server import ThreadedMotoServer
logging.getLogger("werkzeug").setLevel(logging.WARNING)
server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
server.start()
print("%s:%d" % server.get_host_and_port(), flush=True)
sys.stdin.read()  # until the parent closes our stdin (or exits)
server.stop()
"""

_ENV = {
    "AWS_ACCESS_KEY_ID": "scale-bench",
    "AWS_SECRET_ACCESS_KEY": "scale-bench-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@contextlib.contextmanager
def moto_server(bucket: str = "fersnet-scale") -> Iterator[str]:
    """Starts the server and a bucket; yields the store URI. Needs moto[server] (the test extra)."""
    try:
        import moto.server  # noqa: F401 - fail here, with the fix, rather than in the child
    except ImportError:
        raise RuntimeError("the s3 benchmark needs moto's server: pip install 'moto[server]'") from None
    proc = subprocess.Popen(
        [sys.executable, "-c", _SERVER],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    saved = {k: os.environ.get(k) for k in (*_ENV, "AWS_ENDPOINT_URL")}
    try:
        address = proc.stdout.readline().strip()
        if not address:
            raise RuntimeError("moto's S3 server did not start")
        os.environ.update(_ENV, AWS_ENDPOINT_URL=f"http://{address}")
        store = Store.from_uri(f"s3://{bucket}/fer")
        store.fs.mkdir(bucket)  # s3fs creates a bucket for a bare bucket name
        yield store.uri
    finally:
        proc.stdin.close()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def compare_arrow_s3(store: Store, paths: list[str], column: str = "label", repeats: int = 3) -> dict:
    """Seconds to read `paths` three ways with each pyarrow S3 filesystem, best of `repeats`, in turn.

    whole: every file, every column; row_group: the middle row group of each file (a partial read);
    column: one small column of each file (what planning and verify read). `faster` is the kind
    with the lower sum.
    """
    import pyarrow.parquet as pq

    def whole(fs):
        return lambda: [pq.read_table(p, filesystem=fs) for p in paths]

    def group(fs):
        def run():
            for p in paths:
                pf = pq.ParquetFile(p, filesystem=fs)
                pf.read_row_group(pf.num_row_groups // 2)

        return run

    def one_column(fs):
        return lambda: [pq.ParquetFile(p, filesystem=fs).read(columns=[column]) for p in paths]

    times: dict[str, dict[str, list[float]]] = {k: {"whole": [], "row_group": [], "column": []} for k in ARROW_S3_KINDS}
    for r in range(repeats):
        for kind in ARROW_S3_KINDS if r % 2 == 0 else ARROW_S3_KINDS[::-1]:  # alternate who goes first
            fs = store.arrow_filesystem(kind)
            for name, make in (("whole", whole), ("row_group", group), ("column", one_column)):
                times[kind][name].append(_timed(make(fs)))
    mb = sum(store.fs.size(p) for p in paths) / 2**20
    out: dict = {"files": len(paths), "mb": round(mb, 1)}
    for kind, t in times.items():
        best = {name: min(v) for name, v in t.items()}
        out[kind] = {**{f"{n}_s": round(s, 3) for n, s in best.items()}, "whole_mb_per_s": round(mb / best["whole"], 1)}
    out["faster"] = min(ARROW_S3_KINDS, key=lambda k: sum(out[k][f"{n}_s"] for n in ("whole", "row_group", "column")))
    return out
