"""What one stage of the scale benchmark cost: wall time, driver peak RSS, Ray object-store peak and spills,
and the Parquet layout it wrote or read.

    with StageProbe() as probe:
        prepare(...)
    probe.result()   # {"wall_s", "driver_rss_start_mb", "driver_peak_rss_mb", "object_store_peak_mb", "spilled_mb"}
    parquet_layout(store, table_files(store, name))   # files, bytes, row groups, rows per group

Driver peak RSS is the kernel's high-water mark of this process (VmHWM), reset when the stage starts
(`/proc/self/clear_refs`, Linux ≥ 4.0); elsewhere it falls back to sampling the current RSS. The
object store is sampled every `interval` seconds with the call `ray memory --stats-only` makes (one
gRPC request to a raylet, which aggregates every node); spilled bytes are the growth of Ray's running
total over the stage.
"""

from __future__ import annotations

import os
import resource
import threading
import time

MB = 2**20


def _status_kb(field: str) -> int | None:
    """A `/proc/self/status` field in kB (VmRSS, VmHWM), or None off Linux."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak_rss() -> bool:
    """Resets VmHWM to the current RSS; False where the kernel does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def object_store_stats() -> tuple[int, int] | None:
    """(bytes in Ray's object stores now, bytes spilled since the cluster started), all nodes; None without Ray."""
    import ray

    if not ray.is_initialized():
        return None
    # Ray's own API behind `ray memory --stats-only` (Ray Data's Dataset.stats() reads spills the same way).
    from ray._private.internal_api import get_memory_info_reply, get_state_from_address

    try:
        reply = get_memory_info_reply(get_state_from_address(ray.get_runtime_context().gcs_address))
    except Exception:  # noqa: BLE001 - a busy raylet that misses one sample must not fail the benchmark
        return None
    return int(reply.store_stats.object_store_bytes_used), int(reply.store_stats.spilled_bytes_total)


class StageProbe:
    """Measures the code inside `with`; `result()` afterwards. One probe per stage; not re-entrant."""

    def __init__(self, interval: float = 0.5):
        self.interval = interval
        self._stop = threading.Event()
        self._store_peak = 0
        self._rss_peak_kb = 0
        self._spilled0 = self._spilled1 = 0

    def _sample(self) -> None:
        stats = object_store_stats()
        if stats is not None:
            self._store_peak = max(self._store_peak, stats[0])
            self._spilled1 = stats[1]
        self._rss_peak_kb = max(self._rss_peak_kb, _status_kb("VmRSS") or 0)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self) -> "StageProbe":
        self._start_kb = _status_kb("VmRSS") or 0
        self._hwm = _reset_peak_rss()
        stats = object_store_stats()
        self._spilled0 = self._spilled1 = stats[1] if stats else 0
        self._sample()
        self._thread = threading.Thread(target=self._loop, name="stage-probe", daemon=True)
        self._start = time.perf_counter()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.wall_s = time.perf_counter() - self._start
        self._stop.set()
        self._thread.join()
        self._sample()
        hwm = _status_kb("VmHWM") if self._hwm else None
        if hwm is None:  # no resettable high-water mark: the samples, or the process's lifetime peak
            hwm = self._rss_peak_kb or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        self._peak_kb = max(hwm, self._rss_peak_kb)

    def result(self) -> dict:
        return {
            "wall_s": round(self.wall_s, 2),
            "driver_rss_start_mb": round(self._start_kb / 1024, 1),  # what earlier stages left in this process
            "driver_peak_rss_mb": round(self._peak_kb / 1024, 1),
            "object_store_peak_mb": round(self._store_peak / MB, 1),
            "spilled_mb": round(max(0, self._spilled1 - self._spilled0) / MB, 1),
        }


def parquet_layout(store, paths: list[str]) -> dict:
    """Files, bytes, rows and row groups of Parquet files in the store, from their footers alone."""
    import pyarrow.parquet as pq

    files, total, rows, groups, group_rows, group_bytes = 0, 0, 0, 0, [], []
    for path in paths:
        meta = pq.ParquetFile(path, filesystem=store.arrow_fs).metadata
        files += 1
        total += store.fs.size(path)
        rows += meta.num_rows
        groups += meta.num_row_groups
        for g in range(meta.num_row_groups):
            group_rows.append(meta.row_group(g).num_rows)
            group_bytes.append(meta.row_group(g).total_byte_size)
    return {
        "files": files,
        "mb": round(total / MB, 2),
        "mb_per_file": round(total / MB / max(files, 1), 2),
        "rows": rows,
        "row_groups": groups,
        "rows_per_group": [min(group_rows, default=0), max(group_rows, default=0)],
        "mb_per_group": round(sum(group_bytes) / MB / max(groups, 1), 2),
    }


def cpu_count() -> int:
    """CPUs this process may use (the container's share where the scheduler says so)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
