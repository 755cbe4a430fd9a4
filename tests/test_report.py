"""The report across seeds: replicate runs averaged per fold, compared on those means, and refused when they differ
in more than the seed. Real JSON files in a local store, as the stages write them; no Ray, no model."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from fersnet_ray.cli import app
from fersnet_ray.report.job import RECOGNIZER, collect, write_report
from fersnet_ray.store import Store, StoreError
from fersnet_ray.train.config import make_experiment

CLASSES = ["anger", "happy"]


def _run(store: Store, name: str, seed: int, acc: dict[str, dict[int, float]], table_v: dict[int, tuple], **train):
    """A run as `fersnet ablation` leaves it: its config, each row's fold evaluations (the variant runs named
    in ablation.json, FES-DA in finetune/), and each fold's synthetic manifest with its Table V quality."""
    exp = make_experiment("tiny", "fersnet", len(CLASSES), 1).to_dict()
    exp["train"].update(seed=seed, **train)
    cfg = {"dataset": "d", "experiment": exp}
    run = store.run(name)
    store.write_json(run.config(), cfg)
    store.write_json(run.ablation, {"runs": {"fer_only": f"{name}-fer_only", "fersnet": name}})
    other = store.run(f"{name}-fer_only")
    store.write_json(other.config(), {**cfg, "experiment": {**exp, "model": {**exp["model"], "variant": "fer_only"}}})
    store.write_json(run.config("finetune"), {**cfg, "finetune": {}})
    where = {"fersnet": (run, None), "fer_only": (other, None), "fersnet+fes-da": (run, "finetune")}
    for key, per_fold in acc.items():
        layout, stage = where[key]
        for k, a in per_fold.items():
            correct = round(100 * a)
            confusion = [[correct, 0], [100 - correct, 0]]
            store.write_json(layout.evaluation(k, stage), {"accuracy": a, "confusion": confusion, "epochs": 1})
    for k, (tv, recognizer) in table_v.items():
        quality = {"synthetic_test_accuracy": tv, "recognizer_real_test_accuracy": recognizer}
        quality.update(synthetic_test_faces=10, contact_sheet="_contact_sheet.png")  # a sheet not written
        counts = {"real_per_class": {"anger": 3, "happy": 5}, "synthetic_per_class": {"anger": 5, "happy": 3}}
        manifest = {**counts, "total_per_class": {"anger": 8, "happy": 8}, "balanced": True, "rows": 8}
        store.write_json(run.manifest(k), {**manifest, "quality": quality})


@pytest.fixture
def store(tmp_path) -> Store:
    store = Store.from_uri(str(tmp_path / "st"))
    store.write_json(store.dataset("d").card, {"classes": CLASSES, "counts": {c: 1 for c in CLASSES}})
    return store


def test_seed_replicates_are_averaged_per_fold_and_compared_on_the_means(store):
    _run(
        store,
        "r",
        0,
        {"fersnet": {0: 0.90, 1: 0.80, 2: 0.70}, "fer_only": {0: 0.88, 1: 0.82, 2: 0.70}, "fersnet+fes-da": {0: 0.9}},
        {0: (0.60, 0.91), 1: (0.50, 0.80)},
    )
    _run(
        store,
        "r-s1",
        1,
        {"fersnet": {0: 0.94, 1: 0.84, 2: 0.76}, "fer_only": {0: 0.86, 1: 0.80, 2: 0.72}},
        {0: (0.70, 0.93), 1: (0.52, 0.84)},
    )
    seeds = collect(store, "r", seeds=("r-s1",))["seeds"]
    assert seeds["runs"] == {"r": 0, "r-s1": 1}
    rows = {r["key"]: r for r in seeds["rows"]}
    assert rows["fersnet"]["per_fold"] == pytest.approx({0: 0.92, 1: 0.82, 2: 0.73})
    assert rows["fersnet"]["per_run"] == pytest.approx({"r": 0.8, "r-s1": 0.8466667})
    assert rows["fersnet"]["mean"] == pytest.approx(np.mean([0.92, 0.82, 0.73]))
    assert rows["fersnet+fes-da"]["seeds_per_fold"] == {0: 1}  # one run has it: averaged over what exists
    assert rows[RECOGNIZER]["per_fold"] == pytest.approx({0: 0.92, 1: 0.82})
    assert seeds["table_v"] == pytest.approx({0: 0.65, 1: 0.51}) and seeds["table_v_seeds"] == {0: 2, 1: 2}
    pairs = {(p["row"], p["baseline"]): p for p in seeds["paired"]}
    mtl = pairs[("fersnet", "fer_only")]  # on the seed means: +0.05, +0.01, +0.02 over 3 folds (not 6 pairs)
    assert (
        mtl["folds"] == 3 and mtl["mean_diff"] == pytest.approx(0.08 / 3) and (mtl["improved"], mtl["worse"]) == (3, 0)
    )
    # FES-DA (seed 0 only) against the FERSNet of its own seed (0.90), not the seed mean (0.92).
    fesda = pairs[("fersnet+fes-da", "fersnet")]
    assert fesda["folds"] == 1 and fesda["mean_diff"] == pytest.approx(0.0) and fesda["seeds_per_fold"] == {0: 1}
    cnn = pairs[("fersnet", RECOGNIZER)]  # FERSNet against the small CNN, on the folds both have
    assert cnn["folds"] == 2 and cnn["mean_diff"] == pytest.approx(0.0)

    uri = write_report(store.uri, "r", seeds=("r-s1",))
    md = store.read_bytes(store.run("r").report_file()).decode()
    assert uri.endswith("report.md") and "### Across 2 seeds" in md and "`r-s1` (seed 1)" in md
    assert "| FERSNet (original) | 92.00 | 82.00 | 73.00 | 82.33 ± 9.50 | 80.00 | 84.67 |" in md
    assert "Table V averaged over the seeds: 58.00 ± 9.90%" in md
    assert "`fersnet` − `fer_only` | 3 (×2 seeds) | +2.67 ± 2.08 |" in md
    assert json.loads(store.read_bytes(store.run("r").report_file("report.json")))["seeds"]["runs"] == {
        "r": 0,
        "r-s1": 1,
    }


def test_the_cli_prints_the_seed_averages(store):
    _run(store, "r", 0, {"fersnet": {0: 0.9, 1: 0.8}, "fer_only": {0: 0.9, 1: 0.7}}, {})
    _run(store, "r-s1", 1, {"fersnet": {0: 0.7, 1: 0.8}, "fer_only": {0: 0.8, 1: 0.7}}, {})
    out = CliRunner().invoke(app, ["report", "--store", store.uri, "--run", "r", "--seeds", "r-s1"])
    assert out.exit_code == 0, out.output
    assert "averaged per fold over 2 seeds (r, r-s1)" in out.output
    assert "fersnet − fer_only: +2.50 ± 10.61 points over 2 folds, 1 / 0 / 1 better / tied / worse" in out.output


def test_a_replicate_must_differ_in_the_seed_alone(store):
    _run(store, "r", 0, {"fersnet": {0: 0.9}}, {})
    _run(store, "r-lr", 1, {"fersnet": {0: 0.9}}, {}, lr=0.5)
    _run(store, "r-again", 0, {"fersnet": {0: 0.9}}, {})
    with pytest.raises(
        StoreError, match=r"run 'r-lr' differs from 'r' in more than train.seed: experiment.train.lr: 0.001 → 0.5"
    ):
        collect(store, "r", seeds=("r-lr",))
    with pytest.raises(StoreError, match="run 'r-again' has train.seed 0, as 'r' has: not a replicate"):
        collect(store, "r", seeds=("r-again",))
    with pytest.raises(StoreError, match="--seeds: no run 'nope'"):
        collect(store, "r", seeds=("nope",))
    # the same training with another seed, but fine-tuned for other epochs: its FES-DA is not a replicate
    _run(store, "r-ft", 2, {"fersnet": {0: 0.9}}, {})
    store.write_json(store.run("r-ft").config("finetune"), {"dataset": "d", "finetune": {"epochs": 5}})
    with pytest.raises(StoreError, match=r"run 'r-ft' was fine-tuned \(finetune/\) unlike 'r': epochs: None → 5"):
        collect(store, "r", seeds=("r-ft",))
    out = CliRunner().invoke(app, ["report", "--store", store.uri, "--run", "r", "--seeds", "r-lr"])
    assert out.exit_code == 1 and "Traceback" not in out.output and "differs from 'r'" in out.output


def test_the_final_model_section_counts_this_runs_folds_only(store):
    from fersnet_ray.foldkey import FINAL

    # the run has fold 0 and its final model; its fer_only ablation has three folds
    _run(store, "r", 0, {"fersnet": {0: 0.9}, "fer_only": {0: 0.8, 1: 0.7, 2: 0.6}}, {})
    facts = {"accuracy": None, "epochs": 1, "training_faces": 16, "training_subjects": 4}
    store.write_json(store.run("r").evaluation(FINAL), facts)
    write_report(store.uri, "r")
    md = store.read_bytes(store.run("r").report_file()).decode()
    assert "**it has no held-out accuracy**" in md and "Table VI above (1 fold(s) of this run" in md
    # one fold has no spread: said so, not "± 0.00"
    assert "| 90.00 (one fold) |" in md and "| 70.00 ± 10.00 |" in md


def test_ck48_seeds_pairs_a_probe_with_the_protocol_of_its_own_seed(tmp_path):
    """jobs/ck48_seeds.py --probe: each probe_fold.py line joins the run of its seed (the line records the
    fold's seed, the run's + the fold), in a row named by what differs from `cpu48`."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).parents[1] / "jobs" / "ck48_seeds.py"
    spec = importlib.util.spec_from_file_location("ck48_seeds", path)
    seeds = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(seeds)

    lines = []
    for fold in (0, 1):
        exp = make_experiment("cpu48", seed=1 + fold, lambda_gan=0.0).to_dict()  # seed 1's fold `fold`
        final = seeds.recorded_seeds()["ck48-s15-s1 (seed 1)"]["fersnet"][str(fold)] + 1 / seeds.TEST_FACES[fold]
        table_v = {"accuracy": 0.5}
        lines.append(
            {"tag": "g0", "variant": "fersnet", "fold": fold, "final": final, "table_v": table_v, "experiment": exp}
        )
    probe = tmp_path / "probe.jsonl"
    probe.write_text("".join(json.dumps(line) + "\n" for line in lines))

    rows, probes = seeds.from_probe(str(probe))
    assert set(rows) == {1} and set(rows[1]) == {"fersnet [train.lambda_gan=0.0]", "table-v [train.lambda_gan=0.0]"}
    assert probes == {("fersnet", "train.lambda_gan=0.0", True)}
    runs = seeds.recorded_seeds()
    runs["ck48-s15-s1 (seed 1)"].update(rows[1])
    _, pairs = seeds.pool(runs, seeds.probe_pairs(probes))
    mine = {(p["row"], p["baseline"]): p for p in pairs}[("fersnet [train.lambda_gan=0.0]", "fersnet")]
    assert mine["folds"] == 2 and mine["improved"] == 2 and mine["seeds_per_fold"] == {0: 1, 1: 1}

    # a probe that changed nothing is the protocol's own row: it fills a row its seed lacks (seed 1 lacked
    # fersnet_hard until such a probe), and must reproduce seed 2's fersnet where that is recorded
    runs = seeds.recorded_seeds()
    del runs["ck48-s15-s1 (seed 1)"]["fersnet_hard"]
    hard = make_experiment("cpu48", "fersnet_hard", match_capacity=True, seed=1 + 3).to_dict()
    own = make_experiment("cpu48", seed=2 + 4).to_dict()
    same = runs["ck48-s2 (seed 2)"]["fersnet"]["4"]
    probe.write_text(
        json.dumps({"variant": "fersnet_hard", "fold": 3, "final": 0.9, "table_v": table_v, "experiment": hard})
        + "\n"
        + json.dumps({"variant": "fersnet", "fold": 4, "final": same, "experiment": own})
        + "\n"
    )
    rows, probes = seeds.from_probe(str(probe))
    # (its Table V is the fersnet_hard generator's, not the protocol's fersnet one: a row of its own)
    hard_rows = {"fersnet_hard": {"3": 0.9}, "table-v of fersnet_hard": {"3": 0.5}}
    assert probes == set() and rows == {1: hard_rows, 2: {"fersnet": {"4": same}}}
    seeds.add_probe_rows(runs["ck48-s15-s1 (seed 1)"], rows[1], "p", seeds.probed_rows(probes))
    seeds.add_probe_rows(runs["ck48-s2 (seed 2)"], rows[2], "p", seeds.probed_rows(probes))
    assert runs["ck48-s15-s1 (seed 1)"]["fersnet_hard"] == {"3": 0.9}
    with pytest.raises(SystemExit, match=r"p: fersnet on fold 4 is 83\.84% here, 82\.83% in the protocol"):
        seeds.add_probe_rows(runs["ck48-s2 (seed 2)"], {"fersnet": {"4": same + 1 / 99}}, "p", set())

    # a run's report pools as a seed only if the run is the protocol's: 90 epochs is another experiment
    def report(epochs: int) -> dict:  # a report.json's run config, as read back (tuples as lists)
        exp = make_experiment("cpu48", seed=2, epochs=epochs).to_dict()
        return json.loads(json.dumps({"run": "x", "configs": {"x": {"experiment": exp}}}))

    assert seeds.report_seed(report(30), "report.json") == 2
    with pytest.raises(SystemExit, match=r"report.json: its run sets train.epochs=90, not the protocol's"):
        seeds.report_seed(report(90), "report.json")

    # --e90 takes jobs/cpu_fesda.sh's runs (90 epochs) and no other
    assert seeds.report_seed(report(90), "report.json", "train.epochs=90") == 2
    with pytest.raises(SystemExit, match=r"sets nothing, not the protocol's cpu48 with train.epochs=90"):
        seeds.report_seed(report(30), "r", "train.epochs=90")
    # its recorded seeds give README's "Does fine-tuning on synthetic faces help?" numbers, seed by seed
    e90 = {**seeds.recorded_e90(), **seeds.recorded_e90(old_seed0=True)}
    for run, (diff, better, tied, worse) in (
        ("ck48-fesda-e90 (seed 0, sessions 12-13)", (-0.91, 5, 1, 4)),
        ("ck48-fesda-e90-s0 (seed 0)", (-0.41, 5, 1, 4)),
        ("ck48-fesda-e90-s2 (seed 2)", (-1.91, 3, 0, 7)),
    ):
        _, pairs = seeds.pool({run: e90[run]}, seeds.E90_PAIRS)
        fair = {(p["row"], p["baseline"]): p for p in pairs}[("fersnet+fes-da", "fersnet+real-only")]
        assert (round(100 * fair["mean_diff"], 2), fair["improved"], fair["tied"], fair["worse"]) == (
            diff,
            better,
            tied,
            worse,
        )

    # the three recorded seeds pool to the README's "Three seeds" headline, as seed 2's own report did
    _, pairs = seeds.pool(seeds.recorded_seeds())
    by_pair = {(p["row"], p["baseline"]): p for p in pairs}
    mtl, flu = by_pair[("fersnet", "fer_only")], by_pair[("fersnet", "fersnet_hard")]
    assert (mtl["improved"], mtl["tied"], mtl["worse"]) == (1, 0, 9) and round(100 * mtl["mean_diff"], 2) == -0.99
    assert set(flu["seeds_per_fold"].values()) == {3} and round(100 * flu["mean_diff"], 2) == 0.32
