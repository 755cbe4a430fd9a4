"""The object store: one place that turns a store URI into filesystems and paths.

Every stage reads and writes only through a `Store`, so a local directory and an S3 bucket
(AWS, MinIO, Ceph: anything S3-compatible) behave the same. The layout is fixed here:

    <store>/datasets/<name>/                       face table (Parquet) + _card.json
    <store>/runs/<run>/config.json                 data set + experiment of the run
    <store>/runs/<run>/evaluation.json             all folds' test accuracy (per fold, mean ± std)
    <store>/runs/<run>/fold-<k>/                   training checkpoints, history.json, evaluation.json,
                                                   recognizer.pt (the Table V recogniser)
    <store>/runs/<run>/final/                      the final model's (every subject, no test split)
    <store>/runs/<run>/synthetic/fold-<k>/         synthetic shards + manifest (synthetic/final/: the whole table's)
    <store>/runs/<run>/<finetune>/fold-<k>/        a fine-tuning stage ("finetune", "finetune-real", ...): the
                                                   same files as training, one folder per stage (and final/)
    <store>/runs/<run>/report/                     the results report

`Run` owns every path of that layout below `runs/<run>/`, and `DatasetLayout` those below `datasets/`:
every stage asks them for a path instead of joining strings.

A fold key is a fold number k or "final" (`fersnet_ray.foldkey`); `fold_name` turns it into its folder.

A `Store` is a small frozen value (URI + S3 endpoint), cheap to pickle into Ray tasks; each
process builds its filesystem on first use. S3 credentials come from the standard AWS chain
(environment, shared config, instance role) on every node and are never held here, so they
cannot leak into pickled task specs, logs or run configs.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import re
import threading
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import fsspec
import pyarrow.fs as pafs

from fersnet_ray.foldkey import FINAL, Fold, is_final

DEFAULT_STORE = "./fersnet-store"
# The pyarrow filesystem that reads Parquet on S3: "fsspec" wraps s3fs (`PyFileSystem(FSSpecHandler)`),
# "native" is pyarrow's C++ S3FileSystem. `python jobs/bench_scale.py --store s3` reads the same files with
# both, side by side (whole files, one row group per file, one column): native took about half the time
# on moto (2,100 faces: face table 0.047 vs 0.070 s, 9 shards 0.24 vs 0.50 s whole), so reads use it.
# Writes stay on s3fs (`arrow_write_fs`): the native create_dir leaves empty "dir/" marker objects, which
# s3fs listings then return as entries, and s3fs's retries are the ones counted in the log (S3_RETRIES).
ARROW_S3_KINDS = ("fsspec", "native")
ARROW_S3 = "native"
log = logging.getLogger(__name__)


class StoreError(RuntimeError):
    """A store URI that cannot be used; the message is safe to print (no credentials)."""


class StoreFullError(StoreError):
    """A write the store refused for want of space: the local disk (ENOSPC), a quota (EDQUOT), or an
    S3-compatible server that says it is full. Nothing of the file was left behind."""


# Error codes of S3-compatible servers that mean "out of space" (AWS S3 itself never fills up): MinIO's
# drives past their free-space threshold, Ceph RGW's user or bucket quota. s3fs passes them on in the text.
_S3_FULL = {"XMinioStorageFull": "the S3 server's drives are full", "QuotaExceeded": "the S3 quota is exceeded"}


def out_of_space(e: BaseException) -> str | None:
    """Why a failed write ran out of space ("no space left on device", ...), or None for any other failure."""
    import errno

    while e is not None:
        if isinstance(e, OSError) and e.errno == errno.ENOSPC:
            return "no space left on device"
        if isinstance(e, OSError) and e.errno == errno.EDQUOT:
            return "disk quota exceeded"
        for code, why in _S3_FULL.items():
            if code in str(e):
                return why
        e = e.__cause__ or e.__context__
    return None


_SECRET_PATTERNS = [
    re.compile(r"(?<=://)[^/@\s]+@"),  # user:password@ in URLs
    re.compile(r"(?i)(X-Amz-(?:Signature|Credential|Security-Token)=)[^&\s]+"),
    re.compile(r"(?i)(aws_secret_access_key|aws_session_token|secret|token)(\s*[=:]\s*)\S+"),
]


def redact(text: str) -> str:
    """Removes credentials, signatures and tokens from a message before it is shown or logged."""
    text = _SECRET_PATTERNS[0].sub("***@", text)
    text = _SECRET_PATTERNS[1].sub(r"\1***", text)
    text = _SECRET_PATTERNS[2].sub(r"\1\2***", text)
    for name in ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        value = os.environ.get(name)
        if value and len(value) >= 4:
            text = text.replace(value, "***")
    return text


def _s3_endpoint() -> str | None:
    # The standard variables (botocore reads them too); resolved on the driver so workers that
    # lack the environment still reach the same server. An endpoint is not a secret.
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


class RetryCounter(logging.Filter):
    """Counts the S3 requests botocore retried in this process (throttling, 5xx, dropped connections).

    botocore logs each retry at DEBUG ("Retry needed, retrying request after delay of: …"). The filter
    sits on its retry loggers, which are set to DEBUG so those records exist; it counts them and lets
    them through only where botocore's own logging is turned up to DEBUG, so the log stays quiet.
    """

    LOGGERS = ("botocore.retries.standard", "botocore.retryhandler")  # standard/adaptive mode, legacy mode

    def __init__(self) -> None:
        super().__init__()
        self._count, self._lock = 0, threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        if msg.startswith("Retry needed") and "not retrying" not in msg:
            with self._lock:
                self._count += 1
        return logging.getLogger("botocore").isEnabledFor(record.levelno)

    def install(self) -> None:
        for name in self.LOGGERS:
            logger = logging.getLogger(name)
            if self not in logger.filters:
                logger.addFilter(self)
                if not logger.isEnabledFor(logging.DEBUG):
                    logger.setLevel(logging.DEBUG)

    def take(self) -> int:
        """Retries since the last `take` in this process."""
        with self._lock:
            n, self._count = self._count, 0
        return n


S3_RETRIES = RetryCounter()


def report_retries(where: str, more: int = 0) -> int:
    """Logs a WARNING when S3 requests were retried (this process's since the last report, plus `more`
    counted by workers); returns the number."""
    n = S3_RETRIES.take() + more
    if n:
        log.warning("s3: retried %d request(s) (throttling, 5xx or dropped connections) %s", n, where)
    return n


@functools.lru_cache(maxsize=8)
def _s3fs(endpoint: str | None) -> fsspec.AbstractFileSystem:
    import s3fs

    S3_RETRIES.install()
    client_kwargs = {"endpoint_url": endpoint} if endpoint else {}
    # use_listings_cache=False: stages list folders that other processes just wrote.
    # Retries: botocore's default ("legacy", 4 retries) gives up after a few seconds, so a store that
    # throttles (503 SlowDown) for a while or restarts fails the stage; "standard" mode backs off
    # exponentially (random, up to 20 s) on throttling, 5xx and connection errors, and 10 retries ride
    # out about half a minute of outage. s3fs adds its own retries for a few other errors.
    return s3fs.S3FileSystem(
        client_kwargs=client_kwargs,
        config_kwargs={"retries": {"max_attempts": 10, "mode": "standard"}},
        use_listings_cache=False,
    )


@functools.lru_cache(maxsize=8)
def _native_s3(endpoint: str | None, bucket: str) -> pafs.S3FileSystem:
    # Same retry policy as s3fs above (standard mode, 10 attempts). Without an endpoint the bucket's
    # region is looked up once (AWS answers 301 to a request in the wrong region); an S3-compatible
    # server takes the configured region, or us-east-1.
    kwargs: dict[str, Any] = {"retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=10)}
    if endpoint:
        parts = urlsplit(endpoint)
        kwargs["scheme"] = parts.scheme or "https"
        kwargs["endpoint_override"] = parts.netloc or parts.path
        kwargs["region"] = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    else:
        try:
            kwargs["region"] = pafs.resolve_s3_region(bucket)
        except OSError:  # no permission to ask: the SDK's own default chain decides
            pass
    return pafs.S3FileSystem(**kwargs)


@dataclass(frozen=True)
class Store:
    """A resolved store location: `root` is a filesystem path (local absolute, or `bucket/prefix`)."""

    protocol: str  # "file" or "s3"
    root: str
    endpoint: str | None = None

    @classmethod
    def from_uri(cls, uri: str | None = None) -> "Store":
        """Resolves a local path, `file://` URI or `s3://bucket/prefix` (default `./fersnet-store`)."""
        uri = (uri or DEFAULT_STORE).strip()
        parts = urlsplit(uri)
        if parts.scheme in ("", "file", "local"):
            path = parts.path if parts.scheme else uri
            if parts.scheme and parts.netloc:  # file://host/path is not a local path
                raise StoreError(f"store URI {redact(uri)!r}: file:// URIs take no host (use file:///abs/path)")
            return cls("file", os.path.abspath(os.path.expanduser(path)).rstrip("/") or "/")
        if parts.scheme in ("s3", "s3a"):
            if "@" in parts.netloc or parts.query:
                raise StoreError(
                    f"store URI {redact(uri)!r}: put credentials in the AWS credential chain, not in the URI"
                )
            if not parts.netloc:
                raise StoreError(f"store URI {redact(uri)!r} names no bucket")
            root = (parts.netloc + "/" + parts.path.strip("/")).rstrip("/")
            return cls("s3", root, _s3_endpoint())
        raise StoreError(f"store URI {redact(uri)!r}: unsupported scheme {parts.scheme!r} (use a path or s3://)")

    # --- filesystems -------------------------------------------------------------------------------

    @property
    def fs(self) -> fsspec.AbstractFileSystem:
        """fsspec filesystem for small files (JSON, PNG) and listings."""
        if self.protocol == "s3":
            return _s3fs(self.endpoint)
        return fsspec.filesystem("file")

    @property
    def arrow_fs(self) -> pafs.FileSystem:
        """pyarrow filesystem for Parquet reads (pyarrow, Ray Data's `read_parquet`)."""
        return self.arrow_filesystem(ARROW_S3)

    @property
    def arrow_write_fs(self) -> pafs.FileSystem:
        """pyarrow filesystem for writes (Ray Data's `write_parquet`, Ray Train's storage): s3fs on S3."""
        return self.arrow_filesystem("fsspec")

    def arrow_filesystem(self, kind: str) -> pafs.FileSystem:
        """The pyarrow filesystem of `kind` (ARROW_S3_KINDS) on S3; local stores have one kind."""
        if self.protocol != "s3":
            return pafs.LocalFileSystem()
        if kind == "native":
            return _native_s3(self.endpoint, self.root.split("/", 1)[0])
        if kind == "fsspec":
            return pafs.PyFileSystem(pafs.FSSpecHandler(self.fs))
        raise StoreError(f"unknown pyarrow S3 filesystem {kind!r}; use one of {', '.join(ARROW_S3_KINDS)}")

    # --- layout --------------------------------------------------------------------------------------

    @property
    def uri(self) -> str:
        return f"s3://{self.root}" if self.protocol == "s3" else self.root

    def path(self, *parts: str) -> str:
        """Filesystem path of a location inside the store (for `fs`, `arrow_fs` and Ray Data)."""
        clean = [str(p).strip("/") for p in parts if str(p).strip("/")]
        for p in clean:
            if ".." in p.split("/"):
                raise StoreError(f"store path {p!r} leaves the store")
        return "/".join([self.root.rstrip("/"), *clean]) if clean else self.root

    def uri_of_path(self, path: str) -> str:
        """The URI of a path this store made (`Run.fold`, `Run.synthetic`, …), for messages."""
        return self.uri_of(path[len(self.root) :]) if path.startswith(self.root) else path

    def uri_of(self, *parts: str) -> str:
        """Full URI of a location, for messages and for tools that take URIs."""
        p = self.path(*parts)
        return f"s3://{p}" if self.protocol == "s3" else p

    def run(self, name: str) -> "Run":
        """The layout of run `name` in this store."""
        return Run(self, name)

    def dataset(self, name: str) -> "DatasetLayout":
        """The layout of data set `name` in this store."""
        return DatasetLayout(self, name)

    @staticmethod
    def fold_name(fold: Fold) -> str:
        """A fold key's folder name: `fold-<k>` for fold k, `final` for the model trained on every subject."""
        if is_final(fold):
            return FINAL
        if isinstance(fold, bool) or not isinstance(fold, int) or fold < 0:
            raise StoreError(f"fold {fold!r}: use a fold number (0, 1, …) or {FINAL!r}")
        return f"fold-{fold}"

    # --- small-file helpers --------------------------------------------------------------------------

    def exists(self, path: str) -> bool:
        return self.fs.exists(path)

    def write_bytes(self, path: str, data: bytes) -> None:
        """Writes a whole file, atomically: readers see the old file or the new one, never a part.

        Locally the bytes go to a hidden temporary file beside `path`, moved over it once complete (and
        removed if the write fails); on S3 one PUT (multipart for large files) is atomic already. A store
        that is out of space raises StoreFullError naming the file.
        """
        try:
            if self.protocol == "file":
                self._write_local(path, data)
            else:  # S3 has no folders; s3fs's makedirs would create a missing bucket
                self.fs.pipe_file(path, data)
        except Exception as e:
            why = out_of_space(e)
            if why is None:
                raise
            raise StoreFullError(
                f"{_uri(self, path)}: {why} (writing {len(data):,} bytes); free space and run the same "
                "command again: what was complete is kept"
            ) from None

    @staticmethod
    def _write_local(path: str, data: bytes) -> None:
        folder, name = os.path.split(path)
        os.makedirs(folder, exist_ok=True)
        tmp = os.path.join(folder, f".{name}.tmp-{uuid.uuid4().hex[:12]}")
        try:
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.remove(tmp)  # a full disk gets its space back, and no part is left to be read
            raise

    def read_bytes(self, path: str) -> bytes:
        with self.fs.open(path, "rb") as f:
            return f.read()

    def write_json(self, path: str, obj: Any) -> None:
        self.write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())

    def read_json(self, path: str) -> Any:
        return json.loads(self.read_bytes(path))

    def remove(self, path: str) -> None:
        """Removes a file or folder; missing is fine."""
        if self.fs.exists(path):
            self.fs.rm(path, recursive=True)

    def check_writable(self) -> None:
        """Fails early, with a one-line reason, when the store cannot be written."""
        probe = self.path(".fersnet-write-probe")
        try:
            self.write_bytes(probe, b"ok")
            self.fs.rm(probe)
        except StoreFullError:
            raise
        except Exception as e:  # noqa: BLE001 - any backend error means "not writable"; the reason is kept
            raise StoreError(f"cannot write to store {self.uri}: {redact(_reason(e))}") from None


# --- the layout ------------------------------------------------------------------------------------------

CONFIG_FILE, EVALUATION_FILE, HISTORY_FILE = "config.json", "evaluation.json", "history.json"
RECOGNIZER_FILE, ABLATION_FILE, CARD_FILE = "recognizer.pt", "ablation.json", "_card.json"
DATA_FILE = "faces-{:05d}.parquet"  # a face table file (`prepare.job` names them by write task)
MANIFEST_FILE = "_manifest.json"  # a fold's synthetic set: written last, it marks the set complete
SHARD_FILE, SIDECAR_FILE = "part-{:05d}.parquet", "_part-{:05d}.json"  # synthetic shard i and its sidecar
CHECKPOINT_DIR = "checkpoint-epoch-{:04d}"  # a checkpoint after n epochs (`fersnet_ray.checkpoint`)
REPORT_JSON, REPORT_MD = "report.json", "report.md"  # the report's numbers, and its text (written last)
TRAIN = None  # the stage key of training: its folds sit directly under runs/<run>/


@dataclass(frozen=True)
class Run:
    """Every path of one run below `<store>/runs/<name>/`.

    A *stage* is None for training (folds in `runs/<run>/fold-<k>/`) or the name of a fine-tuning folder
    ("finetune", "finetune-real", "finetune-small-cnn-fes-da@0.5", ...; folds in `runs/<run>/<stage>/fold-<k>/`).
    Each stage folder has the same files: config.json, evaluation.json (all folds), and per fold checkpoints,
    history.json and evaluation.json (written last: the fold is done).

        run = store.run("demo")
        run.config()                      # .../runs/demo/config.json
        run.evaluation(0, "finetune")     # .../runs/demo/finetune/fold-0/evaluation.json
        run.synthetic(0)                  # .../runs/demo/synthetic/fold-0
        run.manifest("final")             # .../runs/demo/synthetic/final/_manifest.json
    """

    store: Store
    name: str

    def __post_init__(self) -> None:
        if not self.name or "/" in self.name or self.name in (".", ".."):
            raise StoreError(f"run name {self.name!r}: must be one folder name (no '/')")

    @property
    def uri(self) -> str:
        return self.store.uri_of("runs", self.name)

    @property
    def dir(self) -> str:
        return self.store.path("runs", self.name)

    def stage(self, stage: str | None = TRAIN) -> str:
        """The folder of a stage: the run's own for training, `runs/<run>/<stage>` for a fine-tuning one."""
        return f"{self.dir}/{stage}" if stage else self.dir

    def fold(self, k: Fold, stage: str | None = TRAIN) -> str:
        """Fold k's (or the final model's) folder of a stage: checkpoints, history.json, evaluation.json."""
        return f"{self.stage(stage)}/{Store.fold_name(k)}"

    def stage_of(self, path: str) -> str | None:
        """The stage whose folder holds `path` (a fold folder, a checkpoint in it): None for training."""
        if not path.startswith(self.dir + "/"):
            raise StoreError(f"{path!r} is not a path of run {self.name!r}")
        first = path[len(self.dir) + 1 :].split("/", 1)[0]
        return TRAIN if first == FINAL or re.fullmatch(r"fold-\d+", first) else first

    def config(self, stage: str | None = TRAIN) -> str:
        return f"{self.stage(stage)}/{CONFIG_FILE}"

    def evaluation(self, k: Fold | None = None, stage: str | None = TRAIN) -> str:
        """Fold k's evaluation.json, or with k None the stage's summary of all folds."""
        return f"{self.stage(stage) if k is None else self.fold(k, stage)}/{EVALUATION_FILE}"

    def history(self, k: Fold, stage: str | None = TRAIN) -> str:
        return f"{self.fold(k, stage)}/{HISTORY_FILE}"

    def checkpoint(self, k: Fold, epochs_done: int, stage: str | None = TRAIN) -> str:
        """Fold k's checkpoint folder after `epochs_done` epochs (state.pt + meta.json: `fersnet_ray.checkpoint`)."""
        return f"{self.fold(k, stage)}/{CHECKPOINT_DIR.format(epochs_done)}"

    def recognizer(self, k: Fold) -> str:
        """Fold k's Table V recogniser (trained on the fold's real training faces)."""
        return f"{self.fold(k)}/{RECOGNIZER_FILE}"

    @property
    def synthetic_root(self) -> str:
        return f"{self.dir}/synthetic"

    def synthetic(self, k: Fold) -> str:
        """Fold k's synthetic shards and manifest (the final model's: the whole table's)."""
        return f"{self.synthetic_root}/{Store.fold_name(k)}"

    def manifest(self, k: Fold) -> str:
        """Fold k's synthetic manifest (`synth.job`): the shards, their rows and checksums, Table V."""
        return f"{self.synthetic(k)}/{MANIFEST_FILE}"

    def synthetic_file(self, k: Fold, name: str) -> str:
        """A file of fold k's synthetic folder by name: a shard the manifest lists, the contact sheet."""
        return f"{self.synthetic(k)}/{name}"

    def shard(self, k: Fold, i: int) -> str:
        """Fold k's synthetic shard i (`part-NNNNN.parquet`)."""
        return self.synthetic_file(k, SHARD_FILE.format(i))

    def sidecar(self, k: Fold, i: int) -> str:
        """The sidecar of fold k's shard i (`_part-NNNNN.json`): written after the shard, it marks it done."""
        return self.synthetic_file(k, SIDECAR_FILE.format(i))

    @property
    def report(self) -> str:
        return f"{self.dir}/report"

    def report_file(self, name: str = REPORT_MD) -> str:
        """A file of the report: report.md (default), report.json, a chart."""
        return f"{self.report}/{name}"

    @property
    def ablation(self) -> str:
        """The variant runs `fersnet ablation` made for this run."""
        return f"{self.dir}/{ABLATION_FILE}"

    def exists(self) -> bool:
        """Whether the run was started (its config.json is there)."""
        return self.store.exists(self.config())

    def read_config(self, stage: str | None = TRAIN) -> dict:
        """The stage's config.json; a StoreError naming the missing file."""
        path = self.config(stage)
        if not self.store.exists(path):
            what = f"run {self.name!r}" if stage is None else f"stage {stage!r} of run {self.name!r}"
            raise StoreError(f"no {what} in {self.store.uri} ({_uri(self.store, path)} is missing)")
        return self.store.read_json(path)

    def folds(self, stage: str | None = TRAIN, under: str | None = None) -> list[int]:
        """The cross-validation fold numbers with a folder in the stage (or in `under`, e.g. `synthetic_root`),
        sorted; the final model's folder is not among them."""
        folder = under or self.stage(stage)
        if not self.store.exists(folder):
            return []
        names = (p.rstrip("/").rsplit("/", 1)[-1] for p in self.store.fs.ls(folder, detail=False))
        return sorted(int(n[5:]) for n in names if n.startswith("fold-") and n[5:].isdigit())


@dataclass(frozen=True)
class DatasetLayout:
    """The paths of one prepared data set below `<store>/datasets/<name>/`: Parquet files + _card.json."""

    store: Store
    name: str

    @property
    def dir(self) -> str:
        return self.store.path("datasets", self.name)

    @property
    def card(self) -> str:
        return f"{self.dir}/{CARD_FILE}"

    def part(self, i: int) -> str:
        """Face table file i (`faces-NNNNN.parquet`; Ray Data's writes may add `-<j>` before the suffix)."""
        return f"{self.dir}/{DATA_FILE.format(i)}"

    @property
    def uri(self) -> str:
        return self.store.uri_of("datasets", self.name)


def _uri(store: Store, path: str) -> str:
    """The URI of a filesystem path of `store` (for messages)."""
    return f"s3://{path}" if store.protocol == "s3" else path


def _reason(e: BaseException) -> str:
    msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}: {msg}" if msg else type(e).__name__


def open_location(uri: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """Filesystem and root path of any local path or s3:// URI (sources, weights), same rules as stores."""
    store = Store.from_uri(uri)
    return store.fs, store.root
