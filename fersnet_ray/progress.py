"""Progress of long work: live bars on a terminal, one plain line per step everywhere else.

    with Progress("synthesize") as p:          # on the driver, around a stage
        p.update("fold 0", 3, 12, "shards")    # a bar on a terminal; "synthesize: fold 0 3/12 shards" in a log
    report("fold 0", 5, 30, "test_acc 0.91")   # from a Ray worker (training, fine-tuning, loader tasks)

On a terminal (stdout is a TTY and FERSNET_PROGRESS is not "plain") the driver draws rich bars, one
per task (a fold, the faces of a data set), and starts a small named actor, the board, that workers
report to; a thread on the driver polls it twice a second. Elsewhere (a log file, `fersnet jobs logs`
of a cluster job) there is no board: `report` from a worker does nothing, since the workers print
their own line per epoch, and the driver's `update` prints one line per call.

Ray at one marked place: the board actor and its lookup (`_board`, `report`).
"""

from __future__ import annotations

import os
import sys
import threading

BOARD_NAME = "fersnet-progress"  # one per driver: named actors live in the driver's own namespace


def live() -> bool:
    """Bars when a person watches a terminal; plain lines in logs and cluster jobs."""
    mode = os.environ.get("FERSNET_PROGRESS", "auto")
    return mode == "rich" or (mode == "auto" and sys.stdout.isatty())


class Progress:
    """A stage's progress on the driver: tasks with a count done out of a total and a note."""

    def __init__(self, stage: str, board: bool = False):
        self.stage, self.want_board, self.live = stage, board, live()
        self.bars, self.tasks = None, {}
        self._stop, self._thread, self._board = threading.Event(), None, None

    def __enter__(self) -> "Progress":
        if self.live:
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
            from rich.progress import Progress as Bars

            self.bars = Bars(
                TextColumn(f"{self.stage} {{task.description}}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[note]}"),
                TimeElapsedColumn(),
            )
            self.bars.start()
            if self.want_board:
                self._board = _board(create=True)
                self._thread = threading.Thread(target=self._poll, daemon=True)
                self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._sync()  # the last reports
        if self.bars is not None:
            self.bars.stop()
        if self._board is not None:
            import ray

            ray.kill(self._board)

    def update(self, task: str, done: int, total: int | None, note: str = "") -> None:
        """Sets `task` to `done` of `total` (None: unknown yet)."""
        if self.bars is None:
            of = f"/{total}" if total else ""
            print(f"{self.stage}: {task} {done}{of}{' ' + note if note else ''}", flush=True)
            return
        if task not in self.tasks:
            self.tasks[task] = self.bars.add_task(task, total=total, note=note)
        self.bars.update(self.tasks[task], completed=done, total=total, note=note)

    def _poll(self) -> None:
        while not self._stop.wait(0.5):
            self._sync()

    def _sync(self) -> None:
        import ray

        try:
            for task, (done, total, note) in sorted(ray.get(self._board.snapshot.remote(), timeout=5).items()):
                self.update(task, done, total, note)
        except Exception:  # noqa: BLE001 - progress must never stop the work it shows
            pass


# --- Ray marked place: the board ----------------------------------------------------------------------


class _Board:
    """Holds the latest (done, total, note) of every task; workers write, the driver reads."""

    def __init__(self):
        self.state: dict[str, tuple[int, int | None, str]] = {}

    def set(self, task: str, done: int, total: int | None, note: str) -> None:
        self.state[task] = (done, total, note)

    def add(self, task: str, n: int, total: int | None, note: str) -> None:
        done, known, _ = self.state.get(task, (0, total, note))
        self.state[task] = (done + n, total if total is not None else known, note)

    def snapshot(self) -> dict:
        return dict(self.state)


def _board(create: bool = False):
    """The driver's board: created (num_cpus=0, so it never takes a worker's CPU) or looked up; None if absent.

    Looked up on every report, never cached: Ray reuses worker processes across stages, and each stage
    has its own board.
    """
    import ray

    if create:
        return ray.remote(num_cpus=0)(_Board).options(name=BOARD_NAME).remote()
    if not ray.is_initialized():  # plain PyTorch use (tests, scripts): nobody draws bars
        return None
    try:
        return ray.get_actor(BOARD_NAME)
    except ValueError:  # no driver is drawing bars: plain mode, the worker's own lines are the output
        return None


def report(task: str, done: int, total: int | None = None, note: str = "", add: bool = False) -> None:
    """From a worker: `task` is at `done` of `total` (`add`: `done` more). Never raises."""
    try:
        board = _board()
        if board is not None:
            (board.add if add else board.set).remote(task, done, total, note)
    except Exception:  # noqa: BLE001 - progress must never stop the work it shows
        pass


def start(progress: Progress, task: str, total: int) -> None:
    """On the driver: `task` starts at 0 of `total`, so workers can `report(task, n, add=True)`."""
    if progress._board is not None:
        import ray

        # Waited for: calls from different processes are not ordered, so a set still in flight could
        # land after the workers' first `add`s and wipe them.
        ray.get(progress._board.set.remote(task, 0, total, ""))
    elif progress.bars is not None:
        progress.update(task, 0, total)
