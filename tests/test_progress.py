"""Progress: plain lines off a terminal, a board that Ray workers report to when bars are drawn."""

from __future__ import annotations

from fersnet_ray import progress


def test_plain_lines_off_a_terminal(capsys, monkeypatch):
    monkeypatch.setenv("FERSNET_PROGRESS", "plain")
    with progress.Progress("synthesize") as p:
        p.update("fold 0", 1, 3, "shards written")
        p.update("fold 0", 3, 3, "shards written")
    assert capsys.readouterr().out.splitlines() == [
        "synthesize: fold 0 1/3 shards written",
        "synthesize: fold 0 3/3 shards written",
    ]
    progress.report("fold 0", 1, 3)  # no board, no Ray needed: does nothing, never raises


def test_workers_report_to_the_drivers_bars(ray_local, monkeypatch):
    monkeypatch.setenv("FERSNET_PROGRESS", "rich")
    ray = ray_local

    @ray.remote(num_cpus=0)
    def worker(fold: int) -> None:
        import ray

        from fersnet_ray import progress

        for epoch in range(1, 4):
            progress.report(f"fold {fold}", epoch, 3, f"test_acc 0.{epoch}")
        progress.report("faces", 5, add=True)
        progress.report("faces", 7, add=True)
        # A caller's actor calls run in order: once this returns, the reports above are on the board.
        ray.get(ray.get_actor(progress.BOARD_NAME).snapshot.remote())

    with progress.Progress("train", board=True) as p:
        progress.start(p, "faces", 24)
        ray.get([worker.remote(0), worker.remote(1)])
    bars = {t.description: t for t in p.bars.tasks}  # read after the final sync on exit
    assert bars["fold 0"].completed == 3 and bars["fold 0"].total == 3
    assert bars["fold 1"].fields["note"] == "test_acc 0.3"
    assert bars["faces"].completed == 24 and bars["faces"].total == 24  # two workers × (5 + 7)
