"""Stage 5, report: a Markdown results report with PNG charts, written into the store.

    fersnet report --store URI --run NAME [--compare RUN,RUN] [--seeds RUN,RUN]

Reads only what the other stages wrote (evaluations, histories, manifests, checkpoints, configs)
and writes runs/<run>/report/:
    report.md                 Table VI (per fold, mean ± std of each variant), Table V, class counts,
                              confusion matrices, loss curves, contact sheets, gate maps, configs
    report.json               every number the report shows, for scripts
    *.png                     the charts (and the contact sheets, copied so the folder stands alone)

A run with a final model (`--folds final`: every subject, no test split) gets a section that says
plainly it has no held-out accuracy and points to the cross-validation rows for one.

Rows of Table VI: the runs of an ablation (runs/<run>/ablation.json names them), the run itself
(its variant), its fine-tuned FES-DA result, and any `--compare` runs. `--seeds` names runs of the
same protocol with other seeds: every row averaged per fold over them, and compared on those means.
No Ray here: the report is read and drawn on the driver (a few seconds on CPU).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Callable

import numpy as np
import torch
from scipy import stats

from fersnet_ray.foldkey import FINAL, NO_HELD_OUT
from fersnet_ray.report import charts
from fersnet_ray.store import REPORT_JSON, REPORT_MD, Run, Store, StoreError

REPORT = REPORT_MD  # `Run.report_file()` is its path
# The paper's Table VI on CK+ (10-fold), shown beside the measured rows for reference.
PAPER_CKPLUS = {"fer_only": 94.70, "fersnet_hard": 95.21, "fersnet": 97.35, "fersnet+fes-da": 97.75}
ROW_TITLES = {
    "fer_only": "FERSNet w/o MTL (fer_only)",
    "fersnet_hard": "FERSNet w/o ConvFLU (fersnet_hard)",
    "fersnet": "FERSNet (original)",
    "fersnet+fes-da": "FERSNet w/ FES-DA (fine-tuned on synthetic faces)",
    "fersnet+real-only": "FERSNet fine-tuned on real faces only (control)",
}
# Paired per-fold comparisons the report makes when both rows exist: (row, baseline, what it tests).
PAIRS = (
    ("fersnet", "fer_only", "multi-task learning (FERSNet against its single-task ablation)"),
    ("fersnet", "fersnet_hard", "ConvFLU (FERSNet against hard parameter sharing)"),
    ("fersnet+fes-da", "fersnet", "FES-DA against the trained FERSNet"),
    ("fersnet+fes-da", "fersnet+real-only", "FES-DA against the same fine-tuning on real faces only (the control)"),
)
ROW_PREFIXES = ("fer_only", "fersnet_hard", "fersnet")  # the run's own variants; other prefixes are classifiers
TRAIN_KEYS = ["cls", "gan", "rec", "cyc", "idt", "d_real", "d_fake", "accuracy"]
FINETUNE_KEYS = ["cls", "train_accuracy", "accuracy"]


def _read_json(store: Store, path: str):
    return store.read_json(path) if store.exists(path) else None


def _fold_files(run: Run, stage: str | None, path_of: Callable[[int, str | None], str]) -> dict[int, dict]:
    """{fold: the JSON at path_of(fold, stage)} for every cross-validation fold of the stage that has it.

    path_of: `run.evaluation` or `run.history`; stage None for training, a fine-tuning folder otherwise.
    """
    paths = {k: path_of(k, stage) for k in run.folds(stage)}
    return {k: run.store.read_json(path) for k, path in paths.items() if run.store.exists(path)}


def _row(run: Run, stage: str | None, key: str) -> dict | None:
    """One Table VI row from a stage's fold evaluations (training, stage None, or a fine-tuning folder)."""
    evals = _fold_files(run, stage, run.evaluation)
    if not evals:
        return None
    accs = np.array([e["accuracy"] for e in evals.values()])
    confusion = np.sum([np.array(e["confusion"]) for e in evals.values()], axis=0)
    return {
        "key": key,
        "name": ROW_TITLES.get(key, key),
        "run": run.name,
        "per_fold": {k: e["accuracy"] for k, e in sorted(evals.items())},
        "mean": float(accs.mean()),
        "std": float(accs.std(ddof=1)) if len(accs) > 1 else 0.0,
        "pooled": int(confusion.trace()) / max(int(confusion.sum()), 1),
        "epochs": sorted({e["epochs"] for e in evals.values()}),
        "confusion": confusion.tolist(),
        "paper_ckplus": PAPER_CKPLUS.get(key),
    }


def collect(store: Store, run: str, compare: tuple[str, ...] = (), seeds: tuple[str, ...] = ()) -> dict:
    """Every number the report shows, read from the store; `seeds`: the run's seed replicates (`across_seeds`)."""
    layout = store.run(run)
    config = _read_json(store, layout.config())
    if config is None:
        raise StoreError(f"no run {run!r} in {store.uri}")
    card = store.read_json(store.dataset(config["dataset"]).card)
    ablation = _read_json(store, layout.ablation) or {}
    runs = {**{v: r for v, r in ablation.get("runs", {}).items()}}
    runs.setdefault(config["experiment"]["model"]["variant"], run)
    rows, configs = [], {}
    for other in compare:
        cfg = _read_json(store, store.run(other).config())
        if cfg is None:
            raise StoreError(f"--compare: no run {other!r} in {store.uri}")
        runs.setdefault(f"{cfg['experiment']['model']['variant']} ({other})", other)
    for key, name in runs.items():
        variant_row = _row(store.run(name), None, key)
        if variant_row:
            rows.append(variant_row)
        configs[name] = _read_json(store, store.run(name).config())
    for folder, key in _finetune_folders(layout):
        ft_row = _row(layout, folder, key)
        if ft_row:
            ft_row["name"] = _row_title(key)
            rows.append(ft_row)
            configs[f"{run} ({folder})"] = _read_json(store, layout.config(folder))

    manifests = _synthetic_manifests(store, run)
    data = {
        "run": run,
        "dataset": config["dataset"],
        "classes": card["classes"],
        "card_counts": card["counts"],
        "rows": rows,
        "synthetic": manifests,
        "table_v": {
            k: m["quality"]["synthetic_test_accuracy"] for k, m in manifests.items() if m.get("quality") is not None
        },
        "histories": {
            "train": _fold_files(layout, None, layout.history),
            "finetune": _fold_files(layout, "finetune", layout.history),
        },
        "configs": configs,
        "final": _final(store, run),
    }
    if seeds:
        data["seeds"] = across_seeds(store, data, seeds)
    return data


def _final(store: Store, run: str) -> dict | None:
    """What the run's final model (every subject) trained on, its synthetic set and fine-tunings; None without one.

    No accuracy is collected: the final model has no held-out faces. The facts say what it saw.
    """
    layout = store.run(run)
    trained = _read_json(store, layout.evaluation(FINAL))
    manifest = _read_json(store, layout.manifest(FINAL))
    finetuned = {}
    for folder, key in _finetune_folders(layout):
        e = _read_json(store, layout.evaluation(FINAL, folder))
        if e is not None:
            finetuned[key] = {k: e.get(k) for k in ("epochs", "training_rows", "synthetic_rows", "classifier", "data")}
            finetuned[key]["folder"] = folder
    if trained is None and manifest is None and not finetuned:
        return None
    synthetic = None
    if manifest is not None:
        synthetic = {k: manifest.get(k) for k in ("rows", "balanced", "real_per_class", "total_per_class", "min_score")}
        synthetic["contact_sheet"] = (manifest.get("quality") or {}).get("contact_sheet")
    facts = ("epochs", "training_faces", "training_subjects", "training_faces_accuracy")
    return {
        "note": NO_HELD_OUT,
        "trained": {k: trained.get(k) for k in facts} if trained else None,
        "synthetic": synthetic,
        "finetuned": finetuned,
    }


def _final_section(store: Store, data: dict, files: dict[str, bytes]) -> list[str]:
    """The report's "Final model" section: what it trained on, and plainly that it has no held-out accuracy."""
    run, final = data["run"], data["final"]
    cv_folds = sorted({k for r in data["rows"] if r.get("run", run) == run for k in r["per_fold"]})  # not --compare's
    md = ["## Final model (every subject)", ""]
    t = final["trained"]
    seen = f"all {t['training_subjects']} subjects ({t['training_faces']} faces)" if t else "every subject"
    md.append(
        f"The final model was trained on {seen} of `{data['dataset']}` with no held-out test split, so **it has "
        "no held-out accuracy**: no subject was left out to test it on, and no number in this section is one."
    )
    if cv_folds:
        md.append(
            f"Its expected accuracy on new subjects is what the cross-validation folds measure: Table VI above "
            f"({len(cv_folds)} fold(s) of this run, mean ± std), trained the same way on fewer subjects."
        )
    else:
        md.append(
            "This run has no evaluated cross-validation fold, so nothing here estimates its accuracy on new "
            f"subjects: train the folds for that (`fersnet train --run {run} --folds all`, or "
            f"`fersnet run --run {run}`)."
        )
    md += ["", "| stage | epochs | training faces | held-out accuracy |", "|---|---|---|---|"]
    if t:
        md.append(f"| trained | {t['epochs']} | {t['training_faces']} real | none (no held-out subjects) |")
    m = final["synthetic"]
    if m:
        real, total = sum(m["real_per_class"].values()), sum(m["total_per_class"].values())
        balanced = "balanced" if m["balanced"] else "not balanced"
        md.append(f"| synthesised | – | {real} real + {m['rows']} synthetic = {total} ({balanced}) | – |")
    for key, f in final["finetuned"].items():
        md.append(f"| fine-tuned `{key}` | {f['epochs']} | {f['training_rows']} per epoch | none |")
    md.append("")
    if t and t.get("training_faces_accuracy") is not None:
        md += [
            f"Accuracy on its own training faces after training: {_pct(t['training_faces_accuracy'])}% (a check "
            "of what it learned, not an estimate for new faces).",
            "",
        ]
    if m:
        md += [
            f"Its synthetic faces (`{store.uri_of_path(store.run(run).synthetic(FINAL))}/`) were scored by a "
            "recogniser trained on every real face; with no held-out subjects there is no Table V number for them.",
            "",
        ]
        sheet = store.run(run).synthetic_file(FINAL, m["contact_sheet"]) if m.get("contact_sheet") else None
        if sheet and store.exists(sheet):
            files["contact-sheet-final.png"] = store.read_bytes(sheet)
            md += ["Rows: a training face of each class; columns: every expression (the real one is marked).", ""]
            md += ["![contact sheet final](contact-sheet-final.png)", ""]
    return md


def _finetune_folders(run: Run) -> list[tuple[str, str]]:
    """(folder, row key) of every fine-tuning of the run: FES-DA first, then min-score variants, the control last."""
    from fersnet_ray.finetune.loop import FinetuneConfig

    store = run.store
    found = []
    if store.exists(run.dir):
        for path in sorted(store.fs.ls(run.dir, detail=False)):
            base = path.rsplit("/", 1)[-1]
            cfg = _read_json(store, run.config(base)) if base.startswith("finetune") else None
            if cfg and "finetune" in cfg:
                ft = FinetuneConfig(**cfg["finetune"])
                if ft.folder == base:
                    found.append((base, ft.report_key(cfg["experiment"]["model"]["variant"])))

    def order(folder_key: tuple[str, str]) -> tuple:
        # FERSNet's rows first (Table VI), then each other classifier's; within one, FES-DA first, the control last.
        model, data = folder_key[1].split("+", 1)
        other = _is_other_classifier(folder_key[1])
        return (other, model if other else "", {"fes-da": 0, "real-only": 2}.get(data, 1), folder_key[1])

    return sorted(found, key=order)


def _is_other_classifier(key: str) -> bool:
    """A fine-tuning row of a classifier other than the run's FERSNet ("small-cnn+real-only")."""
    return key.split("+", 1)[0] not in ROW_PREFIXES


def _data_title(data: str) -> str:
    """What an FES-DA row key's data part trains on: "fes-da@0.5-w0.25xscore" → "synthetic rows scored ≥ 0.5,
    weighted 0.25 × their score" (row keys: `FinetuneConfig.row_key`)."""
    base, _, weights = data.partition("-w")
    parts = [f"synthetic rows scored ≥ {base.split('@')[1]}"] if "@" in base else []
    if weights:
        factors = ["their score" if w == "score" else w for w in weights.split("x")]
        parts.append(f"synthetic rows weighted {' × '.join(factors)}")
    return ", ".join(parts)


def _row_title(key: str) -> str:
    """The report's name of a fine-tuning row key ("fersnet+fes-da@0.5", "small-cnn+real-only")."""
    if key in ROW_TITLES:
        return ROW_TITLES[key]
    model, data = key.split("+", 1)
    if not _is_other_classifier(key):
        # "FERSNet w/ FES-DA, synthetic rows scored ≥ 0.5"; an ablation's own fine-tunings name the ablation
        name = "FERSNet" if model == "fersnet" else ROW_TITLES[model]
        if data == "real-only":
            return f"{name} fine-tuned on real faces only (control)"
        variant = _data_title(data)
        return f"{name} w/ FES-DA{', ' + variant if variant else ''}"
    if data == "real-only":
        return f"{model} on real faces only (control)"
    variant = _data_title(data)
    return f"{model} on real + synthetic faces{', ' + variant if variant else ''}"


def classifier_pairs(rows: list[dict]) -> list[tuple[str, str, str]]:
    """Each fine-tuning on real + synthetic faces against its classifier's real-only control, beyond `PAIRS`:
    FERSNet's filtered or weighted FES-DA rows ("fersnet+fes-da@0.5"), an ablation run's own fine-tunings
    ("fersnet_hard+fes-da" against "fersnet_hard+real-only") and every other classifier's rows."""
    keys = {r["key"] for r in rows}
    out = []
    for key in sorted(keys):
        model, data = key.split("+", 1) if "+" in key else (key, "")
        if not data.startswith("fes-da") or f"{model}+real-only" not in keys:
            continue
        if _is_other_classifier(key):
            what = f"{model}: real + synthetic against real faces only, the same steps"
        elif key == "fersnet+fes-da":
            continue  # in PAIRS
        else:  # FERSNet's filtered or weighted rows, and an ablation's (fer_only, fersnet_hard) own fine-tunings
            variant = _data_title(data)
            what = f"FES-DA{' with ' + variant if variant else ''} against the control"
            what = what if model == "fersnet" else f"{model}: {what}"
        out.append((key, f"{model}+real-only", what))
    return out


TIE = 1e-6  # per-fold differences smaller than this are ties (`paired`)


def by_fold(row: str, per_fold: dict) -> dict[int, float]:
    """A row's {fold: accuracy} keyed by int, whether it came from the store (int keys) or from a report.json
    (JSON's str keys), so rows of either kind pair up instead of silently sharing no fold. An accuracy that
    is not a finite number raises a ValueError naming the row and the fold: the paired counts would
    otherwise leave that fold out (NaN is neither better, tied nor worse) without a word."""
    out = {}
    for k, v in per_fold.items():
        if v is None or not np.isfinite(v):
            raise ValueError(f"row {row!r}, fold {k}: accuracy {v!r} is not a number; re-evaluate that fold")
        out[int(k)] = float(v)
    return out


def paired(rows: list[dict], pairs: tuple[tuple[str, str, str], ...] | None = None) -> list[dict]:
    """Paired per-fold differences for `pairs` (row, baseline, what it tests; default `PAIRS` and
    `classifier_pairs`) whose rows both exist, on the folds both have.

    Besides mean ± std and the counts of folds improved / tied / worse, each pair carries what a reader
    needs to tell an effect from the noise of ~100-face folds (±3-4 points a fold on CK+48, README):
    the 95% confidence interval of the mean difference (Student's t over the folds, `ci95`) and the
    two-sided exact sign test's p-value on improved against worse folds, ties dropped (`p_sign`; no
    assumption on how the differences are distributed). None where one fold leaves nothing to test.
    """
    by_key = {r["key"]: r for r in rows}
    out = []
    for key, base, what in (*PAIRS, *classifier_pairs(rows)) if pairs is None else pairs:
        if key not in by_key or base not in by_key:
            continue
        a, b = by_fold(key, by_key[key]["per_fold"]), by_fold(base, by_key[base]["per_fold"])
        folds = sorted(set(a) & set(b))
        if not folds:
            continue
        d = np.array([a[k] - b[k] for k in folds])
        # Accuracies are k / n of ~100 faces (steps of ~0.01); stores written before the Table V
        # recogniser's accuracy was exact hold it as a float32 mean, 4e-9 off the same k / n elsewhere.
        d[np.abs(d) < TIE] = 0.0
        improved, tied, worse = int((d > 0).sum()), int((d == 0).sum()), int((d < 0).sum())
        std = float(d.std(ddof=1)) if len(d) > 1 else 0.0
        ci95 = None
        if len(d) > 1:
            half = float(stats.t.ppf(0.975, len(d) - 1)) * std / np.sqrt(len(d))
            ci95 = [float(d.mean()) - half, float(d.mean()) + half]
        p_sign = float(stats.binomtest(improved, improved + worse, 0.5).pvalue) if improved + worse > 1 else None
        out.append(
            {
                "row": key,
                "baseline": base,
                "what": what,
                "folds": len(folds),
                "mean_diff": float(d.mean()),
                "std_diff": std,
                "ci95": ci95,
                "p_sign": p_sign,
                "improved": improved,
                "tied": tied,
                "worse": worse,
            }
        )
    return out


RECOGNIZER = "table-v-recognizer"  # the seeds section's row for each fold's Table V recogniser on real test faces
RECOGNIZER_TITLE = "the Table V recogniser (small CNN, real faces only)"


def _seed(config: dict) -> int:
    return config["experiment"]["train"]["seed"]


def across_seeds(store: Store, data: dict, seeds: tuple[str, ...]) -> dict:
    """The run's rows averaged per fold with those of its seed replicates, and paired comparisons on those means.

    A replicate is a run of the same protocol with another `train.seed` (`fersnet ablation --run R-s1 --set
    train.seed=1`): its config may differ from the run's in the seed alone, or this raises a StoreError
    naming the difference. One training run moves by ±3-4 points on a fold of ~100 faces (README), so a
    1-2 point difference between rows needs several seeds. Each row's accuracy on a fold is the mean over
    the runs that have that row and fold (`seeds_per_fold` says how many). A paired comparison (`paired`)
    takes a fold's difference as the mean of the per-run differences over the runs that have both rows
    there, and runs over folds on those. The fold stays the unit: the seeds of a fold share its test
    subjects, so counting (fold, seed) pairs as independent would overstate the evidence. The Table V
    recogniser's accuracy on the real test faces joins as a row, since FERSNet has to beat that small CNN.
    """
    from fersnet_ray.train.config import config_diff

    run = data["run"]
    base = store.read_json(store.run(run).config())

    def without_seed(cfg: dict) -> dict:
        exp = cfg["experiment"]
        return {**cfg, "experiment": {**exp, "train": {**exp["train"], "seed": None}}}

    runs, seed_of = {run: data}, {run: _seed(base)}
    for other in seeds:
        cfg = _read_json(store, store.run(other).config())
        if cfg is None:
            raise StoreError(f"--seeds: no run {other!r} in {store.uri}")
        diff = config_diff(without_seed(base), without_seed(cfg))
        if diff:
            raise StoreError(f"--seeds: run {other!r} differs from {run!r} in more than train.seed: {diff}")
        for folder, _ in _finetune_folders(store.run(run)):  # a fine-tuning both have must be the same but its seed
            mine, theirs = (_read_json(store, store.run(r).config(folder)) for r in (run, other))
            if mine is None or theirs is None:
                continue
            mine, theirs = ({**c.get("finetune", {}), "seed": None} for c in (mine, theirs))
            if diff := config_diff(mine, theirs):
                raise StoreError(f"--seeds: run {other!r} was fine-tuned ({folder}/) unlike {run!r}: {diff}")
        if _seed(cfg) in seed_of.values():
            same = next(name for name, s in seed_of.items() if s == _seed(cfg))
            raise StoreError(f"--seeds: run {other!r} has train.seed {_seed(cfg)}, as {same!r} has: not a replicate")
        runs[other], seed_of[other] = collect(store, other), _seed(cfg)

    def recognizer(d: dict) -> dict:
        return {k: m["quality"]["recognizer_real_test_accuracy"] for k, m in d["synthetic"].items() if m.get("quality")}

    per_key: dict[str, dict[str, dict]] = {}  # key -> run -> {fold: accuracy}
    titles = {RECOGNIZER: RECOGNIZER_TITLE}
    for name, d in runs.items():
        for r in d["rows"]:
            per_key.setdefault(r["key"], {})[name] = r["per_fold"]
            titles.setdefault(r["key"], r["name"])
        if scores := recognizer(d):
            per_key.setdefault(RECOGNIZER, {})[name] = scores
    rows = pool_rows(per_key, titles)
    wanted = (*PAIRS, *classifier_pairs(rows), ("fersnet", RECOGNIZER, "FERSNet against the small CNN on real faces"))
    pairs = pool_pairs(per_key, wanted)
    table_v = {}
    for d in runs.values():
        for k, acc in d["table_v"].items():
            table_v.setdefault(k, []).append(acc)
    return {
        "runs": seed_of,
        "rows": rows,
        "paired": pairs,
        "table_v": {k: float(np.mean(v)) for k, v in sorted(table_v.items())},
        "table_v_seeds": {k: len(v) for k, v in sorted(table_v.items())},
    }


def pool_rows(per_key: dict[str, dict[str, dict]], titles: dict[str, str] | None = None) -> list[dict]:
    """Each row's accuracy per fold averaged over the runs that have it (`across_seeds`, `jobs/ck48_seeds.py`).

    per_key: row key -> run -> {fold: accuracy}. titles: row key -> the report's name (default: the key).
    """
    rows = []
    for key, by_run in per_key.items():
        by_run = {name: by_fold(key, pf) for name, pf in by_run.items()}
        folds = sorted({k for per_fold in by_run.values() for k in per_fold})
        per_fold = {k: float(np.mean([pf[k] for pf in by_run.values() if k in pf])) for k in folds}
        accs = np.array(list(per_fold.values()))
        rows.append(
            {
                "key": key,
                "name": (titles or {}).get(key, key),
                "per_fold": per_fold,
                "seeds_per_fold": {k: sum(k in pf for pf in by_run.values()) for k in folds},
                "per_run": {name: float(np.mean(list(pf.values()))) for name, pf in by_run.items()},
                "mean": float(accs.mean()),
                "std": float(accs.std(ddof=1)) if len(accs) > 1 else 0.0,
            }
        )
    return rows


def pool_pairs(per_key: dict[str, dict[str, dict]], wanted: tuple[tuple[str, str, str], ...]) -> list[dict]:
    """`paired` on runs pooled per fold (per_key as `pool_rows`'): a pair's difference on a fold is the mean over
    the runs that have both rows there, so FES-DA of seed 0 is compared with the FERSNet of seed 0 it was
    fine-tuned from, never with another seed's. Each pair carries `seeds_per_fold`."""
    pairs = []
    for key, base, what in wanted:
        if key not in per_key or base not in per_key:
            continue
        rows, bases = ({r: by_fold(name, pf) for r, pf in per_key[name].items()} for name in (key, base))
        a, b, n = {}, {}, {}
        for k in sorted({k for pf in rows.values() for k in pf}):
            both = [r for r, pf in rows.items() if k in pf and k in bases.get(r, {})]
            if both:
                a[k] = float(np.mean([rows[r][k] for r in both]))
                b[k] = float(np.mean([bases[r][k] for r in both]))
                n[k] = len(both)
        for p in paired([{"key": key, "per_fold": a}, {"key": base, "per_fold": b}], ((key, base, what),)):
            pairs.append({**p, "seeds_per_fold": n})
    return pairs


def _synthetic_manifests(store: Store, run: str) -> dict[int, dict]:
    layout = store.run(run)
    paths = {k: layout.manifest(k) for k in layout.folds(under=layout.synthetic_root)}
    return {k: store.read_json(path) for k, path in paths.items() if store.exists(path)}


def _gate_figure(store: Store, run: str, fold: int, faces: int = 4) -> bytes | None:
    """ConvFLU gate maps (paper Fig. 3) of the fold's final model on a few of its test faces."""
    from fersnet_ray.model import create_model
    from fersnet_ray.train.config import Experiment
    from fersnet_ray.train.data import center_crop, load_test, to_unit
    from fersnet_ray.checkpoint import latest_checkpoint, read_checkpoint

    ckpt = latest_checkpoint(store, run, fold)
    if ckpt is None:
        return None
    state = read_checkpoint(store, ckpt)
    exp = Experiment.from_dict(state["experiment"])
    if exp.model.variant != "fersnet":
        return None
    model = create_model(exp.model).eval()
    model.load_state_dict(state["model"])
    dataset = store.read_json(store.run(run).config())["dataset"]
    test = load_test(store, dataset, fold, exp.train.load_size)
    # One face per class while there are classes left, so the rows show different expressions.
    labels = test.labels.numpy()
    pick = [int(np.flatnonzero(labels == c)[0]) for c in sorted(set(labels.tolist()))][:faces]
    x = to_unit(center_crop(test.images[pick], exp.train.crop_size))  # (n, C, crop, crop)
    with torch.no_grad():
        out = model(x, test.labels[pick], return_gates=True)
    return charts.gate_maps_chart(
        x.numpy(), charts.gate_arrays(out.gates, directions=("fer",)), f"ConvFLU gates, {run} fold {fold}"
    )


def _paired_table(pairs: list[dict]) -> list[str]:
    """Markdown rows of paired per-fold comparisons (`paired`; with `seeds_per_fold`, the seeds behind them)."""
    md = [
        "| comparison | folds | mean difference ± std (points) | 95% CI | improved / tied / worse | sign test p |",
        "|---|---|---|---|---|---|",
    ]
    for p in pairs:
        ci = "–" if p["ci95"] is None else f"{100 * p['ci95'][0]:+.2f} to {100 * p['ci95'][1]:+.2f}"
        sign_p = "–" if p["p_sign"] is None else f"{p['p_sign']:.3f}"
        folds = str(p["folds"])
        if "seeds_per_fold" in p:
            seeds = sorted(set(p["seeds_per_fold"].values()))
            span = "–".join(map(str, (seeds[0], seeds[-1]) if len(seeds) > 1 else seeds))
            folds += f" (×{span} seed{'s' if seeds[-1] > 1 else ''})"
        md.append(
            f"| {p['what']}: `{p['row']}` − `{p['baseline']}` | {folds} | "
            f"{100 * p['mean_diff']:+.2f} ± {100 * p['std_diff']:.2f} | {ci} | "
            f"{p['improved']} / {p['tied']} / {p['worse']} | {sign_p} |"
        )
    return md


def _seeds_section(seeds: dict) -> list[str]:
    """The report's "Across seeds" section (`across_seeds`)."""
    names = ", ".join(f"`{name}` (seed {s})" for name, s in seeds["runs"].items())
    folds = sorted({k for r in seeds["rows"] for k in r["per_fold"]}, key=int)
    md = [
        f"### Across {len(seeds['runs'])} seeds",
        "",
        (
            f"The same protocol trained with each seed: {names}. Each cell is a fold's accuracy averaged over "
            "the seeds (¹: one run has the fold); the per-seed columns are each run's mean over its folds."
        ),
        "",
        "| model | "
        + " | ".join(f"fold {k}" for k in folds)
        + " | mean ± std | "
        + " | ".join(f"seed {s}" for s in seeds["runs"].values())
        + " |",
        "|---|" + "---|" * (len(folds) + 1 + len(seeds["runs"])),
    ]
    for r in seeds["rows"]:
        cells = [
            _pct(r["per_fold"].get(k)) + ("¹" if r["seeds_per_fold"].get(k) == 1 < len(seeds["runs"]) else "")
            for k in folds
        ]
        per_run = [_pct(r["per_run"].get(name)) for name in seeds["runs"]]
        md.append(f"| {r['name']} | {' | '.join(cells)} | {mean_std(r)} | " + " | ".join(per_run) + " |")
    if seeds["table_v"]:
        vals = np.array(list(seeds["table_v"].values()))
        std = vals.std(ddof=1) if len(vals) > 1 else 0.0
        each = ", ".join(f"fold {k} {_pct(v)}" for k, v in seeds["table_v"].items())
        md += ["", f"Table V averaged over the seeds: {100 * vals.mean():.2f} ± {100 * std:.2f}% ({each})."]
    if seeds["paired"]:
        md += [
            "",
            (
                "Paired per-fold comparisons: a fold's difference is the mean over the seeds that have both "
                "rows there (a fine-tuning is compared with the network of its own seed); the fold is the unit."
            ),
            "",
        ]
        md += _paired_table(seeds["paired"])
    return md + [""]


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.2f}"


def mean_std(row: dict) -> str:
    """A row's "mean ± std" in % ("90.28 ± 3.73"); one fold has no spread, said as such rather than "± 0.00"."""
    if len(row["per_fold"]) < 2:
        return f"{100 * row['mean']:.2f} (one fold)"
    return f"{100 * row['mean']:.2f} ± {100 * row['std']:.2f}"


def _digest(data: dict) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


def report_is_current(store_uri: str, run: str, compare: tuple[str, ...] = ()) -> bool:
    """True when runs/<run>/report/ was drawn from exactly what the stages hold now.

    `collect` reads every evaluation, history, manifest (with its shard checksums) and config the
    report shows; report.json keeps their digest, so a pipeline re-run redraws only after a change.
    """
    store = Store.from_uri(store_uri)
    return _drawn_digest(store, run) == _digest(collect(store, run, compare))


def _drawn_digest(store: Store, run: str) -> str | None:
    """The inputs' digest in the finished report (report.md is written last), or None."""
    layout = store.run(run)
    if not (store.exists(layout.report_file(REPORT_MD)) and store.exists(layout.report_file(REPORT_JSON))):
        return None
    return store.read_json(layout.report_file(REPORT_JSON)).get("inputs_sha256")


def write_report(
    store_uri: str, run: str, compare: tuple[str, ...] = (), if_changed: bool = False, seeds: tuple[str, ...] = ()
) -> str | None:
    """Collects, draws and writes runs/<run>/report/; returns the report's URI. `seeds`: see `across_seeds`.

    if_changed: when the finished report was drawn from the same inputs (`report_is_current`), write
    nothing and return None.
    """
    store = Store.from_uri(store_uri)
    data = collect(store, run, compare, seeds)
    data["inputs_sha256"] = _digest(data)
    if if_changed and _drawn_digest(store, run) == data["inputs_sha256"]:
        return None
    layout = store.run(run)
    classes = data["classes"]
    files: dict[str, bytes] = {}
    md: list[str] = [
        f"# FERSNet results: run `{run}` on `{data['dataset']}`",
        "",
        f"Written {dt.datetime.now(dt.timezone.utc).isoformat(timespec='seconds')} by `fersnet report "
        f"--run {run}` from the files the stages wrote in `{store.run(run).uri}`. Every number here is "
        "also in `report.json`.",
        "",
        "## Recognition accuracy (the paper's Table VI)",
        "",
    ]
    if data["rows"]:
        folds = sorted({k for r in data["rows"] for k in r["per_fold"]})
        md += [
            "| model | run | epochs | "
            + " | ".join(f"fold {k}" for k in folds)
            + " | mean ± std | pooled | paper (CK+) |",
            "|---|---|---|" + "---|" * len(folds) + "---|---|---|",
        ]
        for r in data["rows"]:
            cells = [_pct(r["per_fold"].get(k)) for k in folds]
            paper = f"{r['paper_ckplus']:.2f}" if r["paper_ckplus"] is not None else "–"
            md.append(
                f"| {r['name']} | `{r['run']}` | {', '.join(map(str, r['epochs']))} | {' | '.join(cells)} | "
                f"{mean_std(r)} | {_pct(r['pooled'])} | {paper} |"
            )
        files["accuracy.png"] = charts.accuracy_chart(
            [{"name": r["name"], "per_fold": r["per_fold"]} for r in data["rows"]]
        )
        md += ["", "Accuracy in %, on each fold's held-out subjects (subject-disjoint folds).", ""]
        pairs = paired(data["rows"])
        data["paired"] = pairs
        if pairs:
            md += ["### Paired per-fold comparisons", "", *_paired_table(pairs)]
            md += [
                "",
                (
                    "A difference counts as an effect when its 95% confidence interval (Student's t over the "
                    "folds) excludes 0; the sign test asks the same of the count of folds improved against "
                    "worse, without assuming the differences are normal. On folds of ~100 faces a single "
                    "training run varies by several points a fold."
                ),
                "",
            ]
        if "seeds" in data:
            md += _seeds_section(data["seeds"])
        md += ["![accuracy per model](accuracy.png)", "", "### Confusion matrices (all folds pooled)", ""]
        for r in data["rows"]:
            name = f"confusion-{r['key'].replace('+', '-').replace(' ', '_').replace('(', '').replace(')', '')}.png"
            files[name] = charts.confusion_chart(r["confusion"], classes, r["name"])
            md += [f"![confusion: {r['name']}]({name})", ""]
    else:
        md += ["No fold has been evaluated yet.", ""]

    if data["final"] is not None:
        md += _final_section(store, data, files)

    md += ["## Balancing: faces per class before and after synthesis", ""]
    synth = data["synthetic"]
    if synth:
        real = {c: sum(m["real_per_class"][c] for m in synth.values()) for c in classes}
        fake = {c: sum(m["synthetic_per_class"][c] for m in synth.values()) for c in classes}
        files["class-counts.png"] = charts.class_counts_chart(
            real, fake, f"training faces summed over {len(synth)} fold(s)"
        )
        md += [
            "| fold | " + " | ".join(classes) + " | balanced |",
            "|---|" + "---|" * len(classes) + "---|",
        ]
        for k, m in synth.items():
            cells = [f"{m['real_per_class'][c]} → {m['total_per_class'][c]}" for c in classes]
            md.append(f"| {k} | " + " | ".join(cells) + f" | {'yes' if m['balanced'] else 'no'} |")
        md += ["", "Real training faces → real + synthetic, per fold.", "", "![class counts](class-counts.png)", ""]
    else:
        md += ["No synthetic shards yet (`fersnet synthesize`).", ""]

    md += ["## Quality of the synthetic faces (the paper's Table V protocol)", ""]
    if data["table_v"]:
        md += [
            "An expression recogniser trained on each fold's real training faces only classifies faces "
            "synthesised from the fold's held-out subjects; accuracy against the target expressions "
            "(paper, CK+: 97.04% FERSNet, 96.43% StarGAN).",
            "",
            "| fold | Table V accuracy | recogniser on real test faces | synthetic test faces |",
            "|---|---|---|---|",
        ]
        for k, m in synth.items():
            q = m.get("quality")
            if q:
                md.append(
                    f"| {k} | {_pct(q['synthetic_test_accuracy'])} | {_pct(q['recognizer_real_test_accuracy'])} "
                    f"| {q['synthetic_test_faces']} |"
                )
        vals = np.array(list(data["table_v"].values()))
        md += ["", f"Mean: {100 * vals.mean():.2f}% over {len(vals)} fold(s).", "", "### Contact sheets", ""]
        for k, m in synth.items():
            sheet = store.run(run).synthetic_file(k, (m.get("quality") or {}).get("contact_sheet", ""))
            if m.get("quality") and store.exists(sheet):
                files[f"contact-sheet-fold-{k}.png"] = store.read_bytes(sheet)
                md += [f"Fold {k} (rows: held-out faces; columns: every expression; the real one is marked):", ""]
                md += [f"![contact sheet fold {k}](contact-sheet-fold-{k}.png)", ""]
    else:
        md += ["No quality scores (synthesis ran with `--no-quality`, or has not run).", ""]

    md += ["## Training curves", ""]
    for stage, keys in (("train", TRAIN_KEYS), ("finetune", FINETUNE_KEYS)):
        hist = data["histories"][stage]
        if hist:
            name = f"curves-{stage}.png"
            files[name] = charts.loss_curves_chart({f"fold {k}": h for k, h in hist.items()}, keys, f"{stage}: {run}")
            md += [f"![{stage} curves]({name})", ""]

    layout = store.run(run)
    folds_trained = sorted(data["histories"]["train"]) or sorted(_fold_files(layout, None, layout.evaluation))
    if folds_trained:
        gates = _gate_figure(store, run, folds_trained[0])
        if gates is not None:
            files["gates.png"] = gates
            md += [
                "## ConvFLU gate maps (the paper's Fig. 3)",
                "",
                "Reset (r) and memory (z) gates of the FER←FES units after each block, mean over channels, "
                f"for held-out faces of fold {folds_trained[0]}: where FES features are let into recognition.",
                "",
                "![gate maps](gates.png)",
                "",
            ]

    md += ["## Configurations", ""]
    for name, cfg in data["configs"].items():
        md += [
            f"<details><summary><code>{name}</code></summary>",
            "",
            "```json",
            json.dumps(cfg, indent=2),
            "```",
            "",
            "</details>",
            "",
        ]

    for name, data_bytes in files.items():
        store.write_bytes(layout.report_file(name), data_bytes)
    store.write_json(layout.report_file(REPORT_JSON), data)
    store.write_bytes(layout.report_file(REPORT_MD), "\n".join(md).encode())  # written last
    return store.uri_of_path(layout.report_file(REPORT_MD))
