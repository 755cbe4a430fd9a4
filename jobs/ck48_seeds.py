"""The CPU protocol's rows on CK+48 pooled over seeds, from per-fold numbers that outlived their stores.

    python jobs/ck48_seeds.py                                             # the three seeds recorded below
    python jobs/ck48_seeds.py --report .data/cpu-store/runs/RUN/report/report.json   # and a run's report
    python jobs/ck48_seeds.py --probe probe-results.jsonl   # and a probe_fold.py run, paired per seed
    python jobs/ck48_seeds.py --e90                                       # jobs/cpu_fesda.sh's seeds instead
    python jobs/ck48_seeds.py --e90 --old-seed0                           # with seed 0 of sessions 12-13

`fersnet report --run R --seeds R-s1,R-s2` pools seed replicates that live in one store. The stores of the
session-15 runs (`RUN=ck48-s15 bash jobs/cpu_ckplus48.sh`, seed 0, and `RUN=ck48-s15-s1 SET="train.seed=1"
MIN_SCORE= ...`, both at c6b499d on an AMD EPYC 2-core machine with AVX512-BF16) did not outlive their
machine, so their per-fold accuracies are kept here as README printed them: seed 0's table, and seed 1
recovered from the two-seed means (2 × mean − seed 0, rounded to the fold's k / n). Runs on one CPU type
are deterministic (session 17 reproduced seed 0's Table V recogniser on every fold to the hundredth), so
re-running those commands on that machine type gives these numbers again. Session 18's seed 2 (`RUN=ck48-s2
SET="train.seed=2" MIN_SCORE= bash jobs/cpu_ckplus48.sh` at 0e37dda) lost its store the same way; its
numbers are its report's table (docs/results-cpu.md, "Session 18"), and pool to the README's "Three seeds"
tables exactly as that report did.

`--e90` pools `jobs/cpu_fesda.sh`'s runs instead (the same protocol, 90 epochs, the FES-DA question
alone): seed 0 (`ck48-fesda-e90-s0`, session 22), seed 1 (`ck48-fesda-e90-s1`, session 21) and seed 2
(`ck48-fesda-e90-s2`, session 20), all on AMD EPYC machines with AVX512-BF16, with session 22's
score-filtered rows refilled to FES-DA's steps; `--old-seed0` takes seed 0 as sessions 12-13 measured
it on two machines (`ck48-fesda-e90`), as README pooled it before; `--report` then takes only runs of
that protocol.

Each `--report` adds one run (a `runs/<run>/report/report.json`); a report of seed 0, 1 or 2 replaces the
recorded numbers of that seed. The pooling is `fersnet report
--seeds`': a row's accuracy on a fold is its mean over the seeds that have it; a pair's difference on a
fold is the mean of the per-seed differences over the seeds that have both rows (a fine-tuning is
compared only with the network of its own seed), and the paired statistics (`report.job.paired`: mean ±
std, folds better / tied / worse, Student's t 95% interval, exact sign test) run over the ten folds.
"""

from __future__ import annotations

import argparse
import json

from fersnet_ray.report.job import RECOGNIZER, pool_pairs, pool_rows
from fersnet_ray.train.config import make_experiment

# Test faces per fold of `fersnet prepare --dataset ckplus48 --folds 10` (seed 0): accuracies are k / n.
TEST_FACES = (96, 99, 99, 99, 99, 99, 96, 99, 99, 96)

# README "Every row on all ten folds, in one run, and a second seed (session 15)", accuracy in %.
SEED0 = {
    "fer_only": (87.50, 90.91, 88.89, 90.91, 86.87, 91.92, 91.67, 88.89, 93.94, 92.71),
    "fersnet_hard": (82.29, 91.92, 88.89, 90.91, 83.84, 97.98, 87.50, 87.88, 93.94, 95.83),
    "fersnet": (81.25, 87.88, 92.93, 90.91, 82.83, 93.94, 92.71, 85.86, 93.94, 96.88),
    "fersnet+real-only": (84.38, 87.88, 92.93, 90.91, 83.84, 95.96, 90.62, 83.84, 93.94, 96.88),
    "fersnet+fes-da": (78.12, 87.88, 90.91, 93.94, 76.77, 91.92, 75.00, 85.86, 86.87, 91.67),
    RECOGNIZER: (93.75, 86.87, 91.92, 87.88, 85.86, 98.99, 93.75, 91.92, 92.93, 96.88),
    "table-v": (55.38, 60.44, 63.80, 63.47, 65.32, 48.32, 61.46, 63.30, 54.55, 63.54),
}
MEAN01 = {  # the same README section's two-seed means (seed 1 had no fersnet_hard: SEED1_HARD)
    "fer_only": (86.46, 91.41, 89.90, 90.91, 87.37, 95.96, 94.27, 89.39, 93.43, 94.27),
    "fersnet": (84.38, 93.94, 91.41, 89.90, 85.35, 93.43, 93.75, 87.88, 90.91, 93.75),
    "fersnet+real-only": (85.94, 91.92, 90.40, 90.40, 86.36, 94.44, 92.71, 86.36, 90.91, 95.31),
    "fersnet+fes-da": (82.81, 90.40, 89.90, 92.42, 79.29, 94.44, 77.60, 89.90, 85.86, 93.23),
    RECOGNIZER: (89.06, 90.91, 91.41, 87.88, 86.87, 99.49, 93.23, 89.90, 91.92, 96.88),
    "table-v": (57.03, 59.93, 64.31, 61.95, 63.30, 47.90, 59.81, 60.94, 56.31, 59.98),
}
# Seed 1 never trained fersnet_hard in the protocol; session 20 trained it with the protocol's loop and
# seeds in plain PyTorch (`python jobs/probe_fold.py --store .data/cpu-store --folds 0,1,2,3,4 --threads 1
# --variant fersnet_hard --set model.match_capacity=true --set train.seed=1`, and folds 5-9 beside it, at
# e29281e; docs/results-cpu.md, "Sessions 19 and 20").
SEED1_HARD = (85.42, 91.92, 91.92, 88.89, 87.88, 94.95, 89.58, 83.84, 93.94, 93.75)

# docs/results-cpu.md "Session 18": seed 2 (`RUN=ck48-s2 SET="train.seed=2" MIN_SCORE= bash
# jobs/cpu_ckplus48.sh` at 0e37dda), as its report printed it; that store did not outlive its machine either.
SEED2 = {
    "fer_only": (87.50, 84.85, 90.91, 93.94, 88.89, 94.95, 97.92, 86.87, 90.91, 94.79),
    "fersnet_hard": (86.46, 84.85, 87.88, 91.92, 88.89, 92.93, 88.54, 85.86, 96.97, 91.67),
    "fersnet": (84.38, 93.94, 86.87, 91.92, 82.83, 95.96, 91.67, 86.87, 90.91, 93.75),
    "fersnet+real-only": (85.42, 93.94, 85.86, 87.88, 84.85, 98.99, 92.71, 88.89, 90.91, 91.67),
    "fersnet+fes-da": (81.25, 82.83, 91.92, 92.93, 90.91, 79.80, 83.33, 87.88, 84.85, 96.88),
    "fersnet+fes-da-w0.17": (81.25, 85.86, 87.88, 94.95, 86.87, 91.92, 86.46, 89.90, 87.88, 95.83),
    RECOGNIZER: (93.75, 90.91, 89.90, 87.88, 93.94, 95.96, 91.67, 85.86, 92.93, 96.88),
    "table-v": (57.47, 59.26, 58.92, 57.41, 57.07, 47.64, 54.86, 63.47, 61.62, 58.51),
}
# The recorded runs by their training seed.
RECORDED = {0: "ck48-s15 (seed 0)", 1: "ck48-s15-s1 (seed 1)", 2: "ck48-s2 (seed 2)"}

# `jobs/cpu_fesda.sh` (the protocol at 90 epochs): README "Does fine-tuning on synthetic faces help?".
# "fersnet+fes-da@0.5": the kept rows refilled to FES-DA's steps (session 22, `fersnet finetune --min-score
# 0.5`, c797824, on each store); "... one pass": the rows scored >= 0.5 once an epoch, fewer steps (session 21).
E90_SEED0 = {  # `RUN=ck48-fesda-e90-s0 FOLDS=all MIN_SCORE= SET="train.seed=0" bash jobs/cpu_fesda.sh` at b87663f
    "fersnet": (83.33, 91.92, 91.92, 90.91, 84.85, 97.98, 89.58, 84.85, 93.94, 93.75),
    "fersnet+real-only": (83.33, 89.90, 89.90, 90.91, 83.84, 97.98, 91.67, 85.86, 93.94, 96.88),
    "fersnet+fes-da": (87.50, 92.93, 90.91, 87.88, 86.87, 88.89, 91.67, 91.92, 90.91, 90.62),
    "fersnet+fes-da@0.5": (85.42, 85.86, 89.90, 86.87, 83.84, 93.94, 93.75, 89.90, 93.94, 92.71),
    # the small CNN on real faces, from the run's report (session 22)
    RECOGNIZER: (93.75, 86.87, 91.92, 87.88, 85.86, 98.99, 93.75, 91.92, 92.93, 96.88),
    "table-v": (71.18, 75.08, 72.22, 72.90, 79.97, 73.06, 77.08, 72.73, 72.39, 73.09),
}
# Seed 0 as sessions 12-13 measured it, on two machines: folds 0-3 at fd561f9 (AMD, session 12), 4-9 at
# 9d5c7b8 (Intel, 2026-12-06); README pooled it with seeds 1 and 2 until session 22 (`--old-seed0`).
E90_OLD_NAME = "ck48-fesda-e90 (seed 0, sessions 12-13)"
E90_SEED0_OLD = {
    "fersnet": (87.50, 93.94, 89.90, 87.88, 82.83, 100.00, 89.58, 83.84, 92.93, 93.75),
    "fersnet+real-only": (87.50, 90.91, 91.92, 87.88, 85.86, 95.96, 88.54, 83.84, 93.94, 94.79),
    "fersnet+fes-da": (90.62, 92.93, 92.93, 89.90, 80.81, 87.88, 90.62, 83.84, 91.92, 90.62),
    "table-v": (73.61, 72.90, 71.89, 71.55, 77.78, 69.19, 71.18, 74.75, 73.57, 70.14),
}
E90_SEED2 = {  # `RUN=ck48-fesda-e90-s2 FOLDS=all MIN_SCORE= SET="train.seed=2" bash jobs/cpu_fesda.sh` at 4e0d010
    "fersnet": (84.38, 92.93, 93.94, 91.92, 86.87, 96.97, 90.62, 91.92, 90.91, 94.79),
    "fersnet+real-only": (84.38, 90.91, 95.96, 91.92, 86.87, 93.94, 91.67, 85.86, 93.94, 91.67),
    "fersnet+fes-da": (88.54, 88.89, 94.95, 89.90, 83.84, 82.83, 90.62, 86.87, 88.89, 92.71),
    "fersnet+fes-da@0.5": (86.46, 87.88, 89.90, 90.91, 86.87, 88.89, 92.71, 91.92, 90.91, 92.71),
    # session 21: the same command with MIN_SCORE left at 0.5, at 553bd2c (the other stages skipped)
    "fersnet+fes-da@0.5 one pass": (88.54, 85.86, 94.95, 89.90, 88.89, 93.94, 94.79, 87.88, 91.92, 96.88),
    # the small CNN on real faces, from the run's report (session 22)
    RECOGNIZER: (93.75, 90.91, 89.90, 87.88, 93.94, 95.96, 91.67, 85.86, 92.93, 96.88),
    "table-v": (74.13, 73.91, 73.74, 73.57, 81.99, 67.51, 71.53, 73.40, 72.90, 70.31),
}
E90_SEED1 = {  # `RUN=ck48-fesda-e90-s1 FOLDS=all SET="train.seed=1" bash jobs/cpu_fesda.sh` at 553bd2c (session 21)
    "fersnet": (86.46, 96.97, 88.89, 89.90, 89.90, 96.97, 94.79, 92.93, 88.89, 90.62),
    "fersnet+real-only": (87.50, 100.00, 87.88, 88.89, 90.91, 94.95, 93.75, 90.91, 87.88, 89.58),
    "fersnet+fes-da": (87.50, 92.93, 88.89, 91.92, 88.89, 87.88, 94.79, 92.93, 87.88, 85.42),
    "fersnet+fes-da@0.5": (83.33, 93.94, 92.93, 87.88, 85.86, 94.95, 92.71, 90.91, 92.93, 92.71),
    "fersnet+fes-da@0.5 one pass": (78.12, 94.95, 89.90, 87.88, 83.84, 95.96, 92.71, 92.93, 90.91, 91.67),
    # the small CNN on real faces, from the run's report (session 22)
    RECOGNIZER: (84.38, 94.95, 90.91, 87.88, 87.88, 100.00, 92.71, 87.88, 90.91, 96.88),
    "table-v": (72.74, 70.88, 75.76, 72.39, 74.75, 69.36, 75.17, 76.94, 70.54, 69.44),
}
E90_RECORDED = {
    0: ("ck48-fesda-e90-s0 (seed 0)", E90_SEED0),
    1: ("ck48-fesda-e90-s1 (seed 1)", E90_SEED1),
    2: ("ck48-fesda-e90-s2 (seed 2)", E90_SEED2),
}
E90_PAIRS = (
    ("fersnet+fes-da", "fersnet+real-only", "the fair test of the synthetic faces"),
    ("fersnet", RECOGNIZER, "FERSNet against the small CNN on real faces"),
    ("fersnet+fes-da", "fersnet", "FES-DA against the network it was fine-tuned from"),
    ("fersnet+real-only", "fersnet", "the control against the network it was fine-tuned from"),
    ("fersnet+fes-da@0.5", "fersnet+real-only", "FES-DA on rows scored >= 0.5 against the control"),
    ("fersnet+fes-da@0.5", "fersnet+fes-da", "rows scored >= 0.5 against every synthetic row"),
    ("fersnet+fes-da@0.5", "fersnet+fes-da@0.5 one pass", "rows scored >= 0.5: refilled against one pass"),
    ("fersnet+fes-da@0.5 one pass", "fersnet+real-only", "rows scored >= 0.5 once an epoch against the control"),
)
PAIRS = (
    ("fersnet", "fer_only", "multi-task learning"),
    ("fersnet", "fersnet_hard", "ConvFLU"),
    ("fersnet_hard", "fer_only", "hard sharing"),
    ("fersnet", RECOGNIZER, "FERSNet against the small CNN on real faces"),
    ("fer_only", RECOGNIZER, "the single-task network against the small CNN"),
    ("fersnet+fes-da", "fersnet+real-only", "the fair test of the synthetic faces"),
    ("fersnet+fes-da", "fersnet", "FES-DA against the network it was fine-tuned from"),
    ("fersnet+fes-da-w0.17", "fersnet+real-only", "synthetic rows weighted 0.17 against the control"),
    ("fersnet+fes-da-w0.17", "fersnet+fes-da", "synthetic rows weighted 0.17 against weight 1"),
)


def _fractions(percent: tuple[float, ...], per_face: int = 1) -> dict[str, float]:
    """Printed percentages back to the exact k / n of each fold (Table V: n × 6 synthetic faces, `per_face`)."""
    return {str(k): round(p * n * per_face / 100) / (n * per_face) for k, (p, n) in enumerate(zip(percent, TEST_FACES))}


def recorded_seeds() -> dict[str, dict[str, dict[str, float]]]:
    """{run: {row: {fold: accuracy}}} for the two session-15 seeds and session 18's seed 2."""

    seed0 = {row: _exact(row, p) for row, p in SEED0.items()}
    seed1 = {row: _exact(row, tuple(2 * m - s for m, s in zip(mean, SEED0[row]))) for row, mean in MEAN01.items()}
    for row, mean in MEAN01.items():  # the recovery is exact: the two seeds average back to what README printed
        for k, m in enumerate(mean):
            assert abs(50 * (seed0[row][str(k)] + seed1[row][str(k)]) - m) < 0.006, (row, k)
    seed1["fersnet_hard"] = _exact("fersnet_hard", SEED1_HARD)
    seed2 = {row: _exact(row, p) for row, p in SEED2.items()}
    return {RECORDED[0]: seed0, RECORDED[1]: seed1, RECORDED[2]: seed2}


def _exact(row: str, percent: tuple[float, ...]) -> dict[str, float]:
    """A row of printed percentages as exact fractions (Table V: six synthetic faces per test face)."""
    return _fractions(percent, 6 if row == "table-v" else 1)  # every test face into each other expression


def e90_seeds(old_seed0: bool = False) -> dict[int, tuple[str, dict[str, tuple[float, ...]]]]:
    """{seed: (run, rows as printed)} of the recorded `jobs/cpu_fesda.sh` seeds; old_seed0: seed 0 as
    sessions 12-13 measured it (`E90_SEED0_OLD`), as README pooled the three seeds before session 22."""
    return {**E90_RECORDED, 0: (E90_OLD_NAME, E90_SEED0_OLD)} if old_seed0 else dict(E90_RECORDED)


def recorded_e90(old_seed0: bool = False) -> dict[str, dict[str, dict[str, float]]]:
    """{run: {row: {fold: accuracy}}} of `e90_seeds(old_seed0)`."""
    return {name: {row: _exact(row, p) for row, p in rows.items()} for name, rows in e90_seeds(old_seed0).values()}


def from_report(data: dict) -> dict[str, dict[str, float]]:
    """{row: {fold: accuracy}} of a report.json's data, the Table V recogniser on real test faces included."""
    rows = {r["key"]: {str(k): v for k, v in r["per_fold"].items()} for r in data["rows"]}
    quality = {k: m["quality"] for k, m in data["synthetic"].items() if m.get("quality")}
    rows[RECOGNIZER] = {str(k): q["recognizer_real_test_accuracy"] for k, q in quality.items()}
    rows["table-v"] = {str(k): v for k, v in data["table_v"].items()}
    return rows


def report_seed(data: dict, path: str, protocol: str = "") -> int:
    """The training seed of a report.json's run (read from `path`), which must be the protocol's: a run with
    other settings (`jobs/cpu_fesda.sh`'s 90 epochs, say) is not a seed of it, and would otherwise replace or
    pool with one. protocol: what the protocol sets otherwise than `cpu48` ("train.epochs=90" for --e90)."""
    exp = data["configs"][data["run"]]["experiment"]
    changed = changed_from_protocol(exp)
    if changed != protocol:
        name = f"cpu48 with {protocol}" if protocol else "cpu48"
        raise SystemExit(
            f"{path}: its run sets {changed or 'nothing'}, not the protocol's {name}; not pooled as a seed of it"
        )
    return exp["train"]["seed"]


def changed_from_protocol(exp: dict, variant: str = "fersnet") -> str:
    """What an experiment (as JSON) sets otherwise than the protocol's `cpu48` of its seed, as --set takes it
    ("train.epochs=90 model.cls_dropout=0.5"); "" for the protocol's own settings."""
    ablation = variant != "fersnet"  # `fersnet ablation` enlarges the others to its parameter count
    preset = make_experiment("cpu48", variant=variant, match_capacity=ablation, seed=exp["train"]["seed"])
    preset = json.loads(json.dumps(preset.to_dict()))  # tuples as JSON's lists
    return " ".join(
        f"{part}.{k}={json.dumps(v)}"  # as --set takes it: true, 0.0, [16, 32]
        for part in ("model", "train")
        for k, v in exp[part].items()
        if preset[part][k] != v
    )


def from_probe(path: str) -> tuple[dict[int, dict[str, dict[str, float]]], set[tuple[str, str, bool]]]:
    """A `jobs/probe_fold.py` output as rows of the seeds it trained: {seed: {row: {fold: acc}}}, and the
    probes it holds: {(variant, what differs from the protocol's `cpu48`, whether it scored Table V)}.

    A row is named by what the probe changed, "<variant> [train.lambda_gan=0.0]" (and "table-v [...]" with
    --table-v), so probes of one change with other seeds (and tags) pool as one row; a probe that changed
    nothing is the protocol's own row of its seed (`add_probe_rows` checks it where the seed has one). The probe is the
    protocol's loop with the same seeds (session 10 checked that it gives the Ray Train run's numbers), so
    its rows pair per fold with the protocol's of that seed."""
    rows: dict[int, dict[str, dict[str, float]]] = {}
    probes: set[tuple[str, str, bool]] = set()
    with open(path) as f:
        for line in f:
            r = json.loads(line)
            exp, variant, fold = r["experiment"], r["variant"], str(r["fold"])
            seed = exp["train"]["seed"] - r["fold"]  # probe_fold.py records the fold's seed: the run's + the fold
            exp["train"]["seed"] = seed
            changed = changed_from_protocol(exp, variant)
            runs = rows.setdefault(seed, {})
            runs.setdefault(probe_row(variant, changed), {})[fold] = r["final"]
            if r.get("table_v"):
                runs.setdefault(table_v_row(variant, changed), {})[fold] = r["table_v"]["accuracy"]
            if changed:  # nothing changed: the protocol's own row of that seed, which PAIRS already pairs
                probes.add((variant, changed, bool(r.get("table_v"))))
    return rows, probes


def probe_row(variant: str, changed: str) -> str:
    """A probe's row, "fersnet [train.lambda_gan=0.0]"; with nothing changed, the protocol's own "fersnet"."""
    return f"{variant} [{changed}]" if changed else variant


def table_v_row(variant: str, changed: str) -> str:
    """A probe's Table V row: "table-v [...]" for fersnet (the protocol's Table V is fersnet's), and named
    by the variant otherwise, so a fersnet_hard probe of the same change does not share fersnet's row."""
    name = "table-v" if variant == "fersnet" else f"table-v of {variant}"
    return f"{name} [{changed}]" if changed else name


def add_probe_rows(
    run: dict[str, dict[str, float]], probe_rows: dict[str, dict[str, float]], where: str, changed: set[str]
) -> None:
    """A probe's rows into its seed's run, fold by fold; `changed`: the rows of probes that changed a
    setting (`probed_rows`). A probe with the protocol's own settings fills a row that run lacks (seed 1 has
    no `fersnet_hard`) and must give what the protocol gave where it has it: the probe is the protocol's
    loop and seeds, so a difference means another CPU type or other code."""
    for row, folds in probe_rows.items():
        have = run.setdefault(row, {})
        for fold, acc in folds.items():
            if fold in have and row not in changed and abs(have[fold] - acc) > 1e-6:
                raise SystemExit(
                    f"{where}: {row} on fold {fold} is {100 * acc:.2f}% here, {100 * have[fold]:.2f}% in the "
                    "protocol of that seed: not the protocol's machine type or code, so not pooled"
                )
            have[fold] = acc


def probed_rows(probes: set[tuple[str, str, bool]]) -> set[str]:
    """The rows of probes that changed a setting: "fersnet [train.lambda_gan=0.0]", "table-v [...]"."""
    return {probe_row(v, c) for v, c, _ in probes} | {table_v_row(v, c) for v, c, t in probes if t}


def probe_pairs(probes: set[tuple[str, str, bool]]) -> tuple[tuple[str, str, str], ...]:
    """A probe's rows against the protocol's rows of the same seeds."""
    out = []
    for variant, changed, table_v in sorted(probes):
        out.append((probe_row(variant, changed), variant, f"the probe against the protocol's {variant}"))
        if variant != "fer_only":
            out.append((probe_row(variant, changed), "fer_only", "the probe against fer_only"))
        if table_v:
            out.append((table_v_row(variant, changed), "table-v", "the probe's Table V against the protocol's"))
    return tuple(out)


def pool(
    runs: dict[str, dict[str, dict[str, float]]], pairs: tuple[tuple[str, str, str], ...] = PAIRS
) -> tuple[list[dict], list[dict]]:
    """Per-fold means over the runs, and the paired comparisons: `fersnet report --seeds`' own pooling."""
    per_key = {
        key: {name: rows[key] for name, rows in runs.items() if key in rows}
        for key in sorted({k for rows in runs.values() for k in rows})
    }
    return pool_rows(per_key), pool_pairs(per_key, pairs)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--report", action="append", default=[], help="a run's report.json (repeatable)")
    p.add_argument(
        "--probe",
        action="append",
        default=[],
        help="a jobs/probe_fold.py --table-v output (JSON lines, repeatable): its rows join the runs of their seeds",
    )
    p.add_argument("--e90", action="store_true", help="jobs/cpu_fesda.sh's seeds (90 epochs), not the protocol's")
    p.add_argument(
        "--old-seed0", action="store_true", help="with --e90: seed 0 of sessions 12-13 (two machines), not session 22's"
    )
    args = p.parse_args()
    if args.e90 and args.probe:
        p.error("--probe pairs with the 30-epoch protocol's seeds, not with --e90")
    if args.old_seed0 and not args.e90:
        p.error("--old-seed0 is a seed of --e90")
    runs = recorded_e90(args.old_seed0) if args.e90 else recorded_seeds()
    recorded = {k: name for k, (name, _) in e90_seeds(args.old_seed0).items()} if args.e90 else RECORDED
    seeds = dict(recorded)
    for path in args.report:  # a report of a recorded seed takes its place: the same run, at full precision
        with open(path) as f:
            data = json.load(f)
        seed = report_seed(data, path, "train.epochs=90" if args.e90 else "")
        if seed in recorded and seeds[seed] == recorded[seed]:
            del runs[recorded[seed]]
        runs[path] = from_report(data)
        seeds[seed] = path
    pairs = E90_PAIRS if args.e90 else PAIRS
    for path in args.probe:
        rows, probes = from_probe(path)
        for seed, probe_rows in rows.items():
            if seed not in seeds:
                p.error(f"{path}: seed {seed} has no run here to pair with (give its --report)")
            add_probe_rows(runs[seeds[seed]], probe_rows, path, probed_rows(probes))
        pairs += tuple(q for q in probe_pairs(probes) if q not in pairs)
    means, pairs = pool(runs, pairs)
    folds = list(range(len(TEST_FACES)))  # pool_rows keys folds by int
    print(f"runs: {', '.join(runs)}")
    print("| row | seeds | " + " | ".join(f"f{k}" for k in folds) + " | mean ± std |")
    print("|---|---|" + "---|" * len(folds) + "---|")
    for r in means:
        pf = r["per_fold"]
        cells = " | ".join(f"{100 * pf[k]:.2f}" if k in pf else "–" for k in folds)
        spread = f" ± {100 * r['std']:.2f}" if len(pf) > 1 else ""
        print(f"| {r['key']} | {len(r['per_run'])} | {cells} | {100 * r['mean']:.2f}{spread} |")
    print()
    print(
        "| comparison, paired per fold | seeds | mean ± std (points) | better / tied / worse | 95% CI | sign test p |"
    )
    print("|---|---|---|---|---|---|")
    for q in pairs:  # one fold leaves no interval and no test: "–"
        ci = f"{100 * q['ci95'][0]:+.2f} to {100 * q['ci95'][1]:+.2f}" if q["ci95"] else "–"
        p_sign = f"{q['p_sign']:.3f}" if q["p_sign"] is not None else "–"
        print(
            f"| {q['row']} − {q['baseline']} ({q['what']}) | {max(q['seeds_per_fold'].values())} | "
            f"{100 * q['mean_diff']:+.2f} ± "
            f"{100 * q['std_diff']:.2f} | {q['improved']} / {q['tied']} / {q['worse']} | {ci} | {p_sign} |"
        )


if __name__ == "__main__":
    main()
