"""One fold trained in plain PyTorch (no Ray), for side-by-side probes of training choices.

    python jobs/probe_fold.py --store /tmp/ck --dataset ckplus48 --preset cpu48 --folds 0,1 \
        --variant fersnet --set train.epochs=20 --set train.bn_stats_from_fakes=true --tag bn-old

Prints one line per evaluated epoch and appends one JSON line per fold (test accuracy per epoch,
img/s, wall time, the experiment) to --out, so several probes compare side by side. This is the
loop the Ray Train job runs (`FoldState` + `train_epoch` + `evaluate`), without checkpoints.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace

import torch

from fersnet_ray.store import Store
from fersnet_ray.synth.quality import sheet_image, synthesize_all_targets
from fersnet_ray.table import read_card
from fersnet_ray.train.config import Experiment, make_experiment, with_overrides
from fersnet_ray.train.data import TargetSampler, load_fold
from fersnet_ray.train.loop import FoldState, evaluate, train_epoch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--store", required=True)
    ap.add_argument("--dataset", default="ckplus48")
    ap.add_argument("--preset", default="cpu48")
    ap.add_argument("--variant", default="fersnet")
    ap.add_argument("--folds", default="0")
    ap.add_argument("--set", action="append", default=[], help="train.KEY=VALUE or model.KEY=VALUE")
    ap.add_argument("--tag", default="")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="probe-results.jsonl")
    ap.add_argument(
        "--table-v",
        action="store_true",
        help="also score the synthesis of the test subjects (Table V) with a recogniser trained on the fold's "
        "real faces",
    )
    ap.add_argument(
        "--fidelity",
        action="store_true",
        help="also compare the test subjects' synthesis with their real faces of the target expression "
        "(`synth.quality.paired_fidelity`), on the training faces too (fit)",
    )
    ap.add_argument(
        "--table-v-at",
        default="",
        help="also score Table V at these epochs of the run (e.g. 30,60,90), one recogniser per fold, so one "
        "long run shows whether the synthesis still improves; implies --table-v at the last epoch",
    )
    ap.add_argument("--sheet", default="", help="write each fold's contact sheet (test subjects) to SHEET-fold<k>.png")
    args = ap.parse_args()
    table_v_at = {int(e) for e in args.table_v_at.split(",") if e}
    args.table_v = args.table_v or bool(table_v_at)
    torch.set_num_threads(args.threads)
    store = Store.from_uri(args.store)
    card = read_card(store, args.dataset)
    exp = make_experiment(args.preset, args.variant, len(card["classes"]), card["alignment"]["channels"])
    exp = with_overrides(exp, args.set)  # what `fersnet train --set` does
    for fold in (int(f) for f in args.folds.split(",")):
        train_set, test_set, _ = load_fold(store, args.dataset, fold, exp.train.load_size)
        fold_exp = Experiment(exp.model, replace(exp.train, seed=exp.train.seed + fold))
        state = FoldState.create(fold_exp, "cpu")
        sampler = TargetSampler(train_set.labels, train_set.subjects, fold_exp.train.seed)
        curve, start, ips = {}, time.perf_counter(), []
        recognizer, table_v_curve = None, {}
        while state.epoch < fold_exp.train.epochs:
            m = train_epoch(state, train_set, sampler)
            ips.append(m["images_per_s"])
            if state.epoch in table_v_at and state.epoch < fold_exp.train.epochs:  # the last epoch: below
                synth = synthesize_all_targets(state.model.eval(), test_set, fold_exp, torch.device("cpu"))
                state.model.train()
                tv, recognizer = _table_v(synth, train_set, test_set, fold_exp, recognizer)
                table_v_curve[state.epoch] = tv["accuracy"]
                print(f"[{args.tag}] fold {fold} epoch {state.epoch} Table V {tv['accuracy']:.3f}", flush=True)
            if state.epoch % 5 == 0 or state.epoch == fold_exp.train.epochs:
                curve[state.epoch] = evaluate(state.model, test_set, fold_exp.train.crop_size)["accuracy"]
                print(
                    f"[{args.tag}] fold {fold} epoch {state.epoch} acc {curve[state.epoch]:.3f} "
                    f"({m['images_per_s']:.0f} img/s)",
                    flush=True,
                )
        table_v = None
        if args.table_v or args.sheet:  # every test face × every other expression, synthesised once
            synth = synthesize_all_targets(state.model.eval(), test_set, fold_exp, torch.device("cpu"))
            if args.table_v:
                table_v, recognizer = _table_v(synth, train_set, test_set, fold_exp, recognizer)
                table_v_curve[state.epoch] = table_v["accuracy"]
            if args.sheet:
                sheet_image(test_set, *synth, card["classes"]).save(f"{args.sheet}-fold{fold}.png")
        if table_v is not None:
            print(
                f"[{args.tag}] fold {fold} Table V {table_v['accuracy']:.3f} per target {table_v['per_target']} "
                f"read as source {table_v['read_as_source']:.3f}",
                flush=True,
            )
        fidelity = None
        if args.fidelity:
            from fersnet_ray.synth.quality import paired_fidelity

            cpu = torch.device("cpu")
            fidelity = {
                "test": paired_fidelity(state.model.eval(), test_set, train_set, fold_exp, cpu),
                "train": paired_fidelity(state.model.eval(), train_set, train_set, fold_exp, cpu),
            }
            for split, f in fidelity.items():
                print(
                    f"[{args.tag}] fold {fold} fidelity {split}: mse fake {f['mse_fake']:.4f} copy {f['mse_copy']:.4f} "
                    f"class-mean {f['mse_class_mean']:.4f} delta {f['mse_delta']:.4f} "
                    f"beats copy {f['beats_copy']:.2f} ({f['pairs']} pairs)",
                    flush=True,
                )
        row = {
            "tag": args.tag,
            "variant": args.variant,
            "fold": fold,
            "final": curve[fold_exp.train.epochs],
            "curve": curve,
            "table_v": table_v,
            "table_v_curve": table_v_curve,
            "fidelity": fidelity,
            "img_per_s": sum(ips) / len(ips),
            "seconds": time.perf_counter() - start,
            "experiment": fold_exp.to_dict(),
            "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        with open(args.out, "a") as f:
            f.write(json.dumps(row) + "\n")


def _table_v(synth, train_set, test_set, exp: Experiment, recognizer=None) -> tuple[dict, torch.nn.Module]:
    """Table V of the fold: the Table V recogniser (real training faces only) on the test subjects' synthesis.

    synth: `synthesize_all_targets`' (images, source index, target) of the test faces. Also per target
    expression, and how often a synthesis is read as its *source* expression (a generator that copies
    its input scores 0 on Table V and 1 there). Returns the scores and the recogniser, which depends on
    the fold's real faces only, so later epochs of the same fold reuse it.
    """
    from fersnet_ray.synth.recognizer import recognizer_logits, train_recognizer

    t = exp.train
    images, src, tgt = synth
    if recognizer is None:
        recognizer = train_recognizer(train_set, exp.model.num_classes, t.crop_size, seed=t.seed)
    pred = recognizer_logits(recognizer, images, t.crop_size).argmax(1).numpy()
    source = test_set.labels.numpy()[src]
    per_target = {int(c): round(float((pred[tgt == c] == c).mean()), 3) for c in sorted(set(tgt.tolist()))}
    scores = {
        "accuracy": float((pred == tgt).mean()),
        "per_target": per_target,
        "read_as_source": float((pred == source).mean()),
    }
    return scores, recognizer


if __name__ == "__main__":
    main()
