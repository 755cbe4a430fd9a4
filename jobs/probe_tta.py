"""Test-time augmentation on finished checkpoints: centre crop against flip and ten-crop, per fold.

    python jobs/probe_tta.py --store .data/cpu-store --model ck48-cpu --model ck48-cpu-fer_only \
        --model ck48-cpu/finetune-real --recognizer ck48-cpu

Evaluation only (no training): every fold of each --model RUN[/STAGE] (STAGE: a fine-tuning folder such as
finetune, finetune-real, finetune-fes-da@0.5; none: the trained checkpoint) is loaded from its newest
complete checkpoint and scored on the fold's held-out faces three ways, with the classifier's softmax
averaged over the views:

- centre: the centre crop, as `train.loop.evaluate` scores every row of the report;
- flip: the centre crop and its mirror image, as the single-task anchor of 91.2% was scored;
- ten-crop: the four corner crops and the centre crop, each with its mirror.

--recognizer RUN also scores each fold's Table V recogniser (the project's small CNN on real faces).
--recalibrate-bn adds the view "centre, BN real": the centre crop after batch norm's running statistics
were re-estimated on the fold's real training faces (centre crops, one pass, an exact average), which
tells whether statistics moved by synthetic fine-tuning faces cost accuracy on real test faces.
Prints a per-fold table with the paired differences and appends one JSON line per model to --out.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import subprocess

import torch

from fersnet_ray.checkpoint import latest_checkpoint_in, read_checkpoint
from fersnet_ray.store import Store
from fersnet_ray.synth.quality import load_fold_recognizer
from fersnet_ray.train.config import Experiment
from fersnet_ray.train.data import load_fold, load_test, to_unit
from fersnet_ray.use.recognizer import recognizer_from_state

VIEWS = ("centre", "flip", "ten-crop")


def crops(faces: torch.Tensor, size: int, view: str) -> list[torch.Tensor]:
    """(N, C, L, L) uint8 -> the views of `view`, each (N, C, size, size) in [-1, 1]."""
    L = faces.shape[-1]
    c = (L - size) // 2
    corners = [(c, c)] if view != "ten-crop" else [(c, c), (0, 0), (0, L - size), (L - size, 0), (L - size, L - size)]
    out = []
    for i, j in corners:
        x = to_unit(faces[..., i : i + size, j : j + size])
        out.append(x)
        if view != "centre":
            out.append(torch.flip(x, dims=[-1]))  # mirror image: the expression is left-right symmetric
    return out


@torch.no_grad()
def accuracies(model: torch.nn.Module, faces, crop: int) -> dict[str, float]:
    """Accuracy of `model` (images -> (N, E) logits) on `faces` for every view in VIEWS."""
    model.eval()
    out = {}
    for view in VIEWS:
        probs = sum(torch.softmax(model(x).float(), dim=1) for x in crops(faces.images, crop, view))
        out[view] = float((probs.argmax(1) == faces.labels).float().mean())
    return out


@torch.no_grad()
def recalibrated(model: torch.nn.Module, faces, crop: int, batch: int = 256) -> torch.nn.Module:
    """A copy of `model` whose batch-norm running statistics are the exact mean and variance over `faces`
    (N, C, L, L) uint8, centre-cropped to `crop` (momentum None: a cumulative average over the batches)."""
    model = copy.deepcopy(model)
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    model.eval()
    for m in bns:
        m.train()
    x = crops(faces.images, crop, "centre")[0]  # (N, C, crop, crop) in [-1, 1]
    for i in range(0, len(x), batch):
        model(x[i : i + batch])
    return model.eval()


def model_of(store: Store, run: str, stage: str | None, fold: int) -> tuple[torch.nn.Module, Experiment] | None:
    """The newest complete checkpoint of `fold` in runs/<run>[/<stage>] as a Recognizer; None if none is there."""
    path = latest_checkpoint_in(store, store.run(run).fold(fold, stage))
    return recognizer_from_state(read_checkpoint(store, path)) if path is not None else None


def recognizer_of(store: Store, run: str, fold: int, exp: Experiment) -> tuple[torch.nn.Module, Experiment] | None:
    """Fold `fold`'s Table V recogniser (it takes the run's crops, as FERSNet does); None if none is there."""
    path = store.run(run).recognizer(fold)
    return (load_fold_recognizer(store, path), exp) if store.exists(path) else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--store", required=True)
    ap.add_argument("--model", action="append", default=[], help="RUN or RUN/STAGE (a fine-tuning folder)")
    ap.add_argument("--recognizer", action="append", default=[], help="RUN whose Table V recognisers to score")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument(
        "--recalibrate-bn", action="store_true", help="also score after re-estimating BN on real training faces"
    )
    ap.add_argument("--out", default="probe-tta.jsonl")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    store = Store.from_uri(args.store)
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    decoded: dict[tuple[str, int, int], tuple] = {}  # (data set, fold, load size) -> (train, test), decoded once

    def fold_faces(dataset: str, fold: int, exp: Experiment):
        """The fold's (real training faces, test faces); the training faces only for --recalibrate-bn, else None."""
        key = (dataset, fold, exp.train.load_size)
        if key not in decoded:
            if args.recalibrate_bn:
                decoded[key] = load_fold(store, dataset, fold, exp.train.load_size)[:2]
            else:
                decoded[key] = (None, load_test(store, dataset, fold, exp.train.load_size))
        return decoded[key]

    jobs = [(m, False) for m in args.model] + [(r, True) for r in args.recognizer]
    for name, is_recognizer in jobs:
        run, _, stage = name.partition("/")
        config = store.run(run).read_config()
        run_exp = Experiment.from_dict(config["experiment"]) if is_recognizer else None
        per_fold: dict[int, dict[str, float]] = {}
        for fold in store.run(run).folds():
            found = (
                recognizer_of(store, run, fold, run_exp) if is_recognizer else model_of(store, run, stage or None, fold)
            )
            if found is None:
                continue
            model, exp = found
            train, test = fold_faces(config["dataset"], fold, exp)
            per_fold[fold] = accuracies(model, test, exp.train.crop_size)
            if args.recalibrate_bn:
                real = recalibrated(model, train, exp.train.crop_size)
                per_fold[fold]["centre, BN real"] = accuracies(real, test, exp.train.crop_size)["centre"]
        if not per_fold:
            print(f"{name}: no finished fold")
            continue
        label = f"{name} (Table V recogniser)" if is_recognizer else name
        print(f"\n{label}: {len(per_fold)} folds, commit {commit}")
        print("view             " + " ".join(f"f{k:<5}" for k in per_fold) + "  mean ± std")
        views = [*VIEWS, "centre, BN real"] if args.recalibrate_bn else list(VIEWS)
        for view in views:
            accs = [100 * per_fold[k][view] for k in per_fold]
            sd = statistics.stdev(accs) if len(accs) > 1 else 0.0
            print(f"{view:<16} " + " ".join(f"{a:6.2f}" for a in accs) + f"  {statistics.mean(accs):.2f} ± {sd:.2f}")
        for view in views[1:]:
            d = [100 * (per_fold[k][view] - per_fold[k]["centre"]) for k in per_fold]
            better = sum(x > 1e-9 for x in d)
            worse = sum(x < -1e-9 for x in d)
            print(
                f"{view} − centre: {statistics.mean(d):+.2f} points, {better} / {len(d) - better - worse} / {worse} better / tied / worse"
            )
        with open(args.out, "a") as f:
            f.write(json.dumps({"model": label, "commit": commit, "folds": per_fold}) + "\n")


if __name__ == "__main__":
    main()
