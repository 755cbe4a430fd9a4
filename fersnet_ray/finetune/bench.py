"""Fine-tuning throughput, measured side by side in one run on one device.

    python jobs/bench_finetune.py --store ./fersnet-store --run demo --fold 0

    bare       images/s of `finetune_epoch` on the fold's real + synthetic faces already decoded in
               memory (the same model, batch size, augmentation and precision; no Ray)
    streamed   images/s of one epoch iterating the Ray Dataset that fine-tuning feeds its workers, with
               re-reading and re-decoding every epoch (`--stream`), the model step included
    cached     the same with the decoded faces kept in Ray's object store (`--cache`, the default for
               data sets that fit in a tenth of it)
    ratios     streamed / bare and cached / bare: what the Ray Data path costs against a plain loop

Needs a synthesised run (fersnet run, or train + synthesize). Reads the store; writes nothing.
"""

from __future__ import annotations

import time

import torch

from fersnet_ray.store import Store


def _epoch_rate(state, batches) -> float:
    from fersnet_ray.finetune.loop import finetune_epoch

    start = time.perf_counter()
    m = finetune_epoch(state, batches)
    return m["images"] / (time.perf_counter() - start)


def bench_finetune(store_uri: str, run: str, fold: int, batch_size: int = 64, epochs: int = 2) -> dict:
    """Images/s of the three paths above; the best of `epochs` epochs each (the first one warms up)."""
    import ray

    from fersnet_ray.finetune.job import fold_dataset
    from fersnet_ray.finetune.loop import FinetuneConfig, FinetuneState
    from fersnet_ray.train.config import Experiment
    from fersnet_ray.checkpoint import latest_checkpoint, read_checkpoint

    store = Store.from_uri(store_uri)
    state_dict = read_checkpoint(store, latest_checkpoint(store, run, fold))
    exp = Experiment.from_dict(state_dict["experiment"])
    dataset = store.run(run).read_config()["dataset"]
    manifest = store.read_json(store.run(run).manifest(fold))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cfg = FinetuneConfig(epochs=100, batch_size=batch_size)
    args = (store, dataset, run, fold, exp.train.load_size, exp.model.in_channels, manifest)

    def fresh():
        return FinetuneState.create(exp, cfg, state_dict["model"], device)

    # Bare: every face decoded once into memory, batches sliced from tensors on the device.
    rows = list(fold_dataset(*args, cache=False).iter_torch_batches(batch_size=batch_size, device=device))
    state = fresh()
    bare = max(_epoch_rate(state, rows) for _ in range(epochs))
    n = sum(len(b["label"]) for b in rows)

    out = {"device": str(device), "rows": n, "batch_size": batch_size, "bare": bare}
    for name, cache in (("streamed", False), ("cached", True)):
        ds = fold_dataset(*args, cache=cache)
        state = fresh()
        out[name] = max(
            _epoch_rate(
                state, ds.iter_torch_batches(batch_size=batch_size, local_shuffle_buffer_size=cfg.shuffle_buffer)
            )
            for _ in range(epochs)
        )
        out[f"{name}_over_bare"] = out[name] / bare
    out["ray_cpus"] = ray.cluster_resources().get("CPU", 0)
    return out


def bench_classifier(
    store_uri: str, run: str, classifier: str = "small-cnn", folds: tuple[int, ...] | None = None, **config
) -> dict:
    """One classifier trained on real faces only, then on real + synthetic, for the same steps, per fold.

        python jobs/bench_classifiers.py --store .data/cpu-store --run ck48-cpu --classifier small-cnn

    Runs `finetune` twice on the current Ray (the control first, then the shards; each skips folds it
    finished earlier, so an interrupted benchmark is resumed by the same command), then reads both rows
    back as the report does: per-fold accuracy, mean ± std, the paired per-fold difference and the
    folds improved / tied / worse, with each mode's wall time. `config` overrides FinetuneConfig fields
    (epochs, batch_size, ...); lr and lr_min default to the classifier's.
    """
    from dataclasses import asdict

    from fersnet_ray.finetune.job import FinetuneJob, finetune
    from fersnet_ray.finetune.loop import FinetuneConfig
    from fersnet_ray.report.job import collect, paired

    store = Store.from_uri(store_uri)
    walls, keys = {}, {}
    for data in ("real", "real+synthetic"):
        cfg = FinetuneConfig.for_classifier(classifier, data=data, **config)
        start = time.perf_counter()
        finetune(FinetuneJob(store=store_uri, run=run, folds=folds, config=asdict(cfg)))
        walls[data] = time.perf_counter() - start
        variant = store.run(run).read_config()["experiment"]["model"]["variant"]
        keys[data] = cfg.report_key(variant)
    rows = {r["key"]: r for r in collect(store, run)["rows"] if r["key"] in keys.values()}
    pair = next(p for p in paired(list(rows.values())) if p["row"] == keys["real+synthetic"])

    def summary(row: dict) -> dict:
        return {k: row[k] for k in ("per_fold", "mean", "std", "pooled", "epochs")}

    return {
        "classifier": classifier,
        "run": run,
        "real": summary(rows[keys["real"]]),
        "real+synthetic": summary(rows[keys["real+synthetic"]]),
        "paired": pair,
        "wall_s": walls,
    }


def bench_table(result: dict) -> str:
    """The benchmark as a Markdown table: per fold, mean ± std, and the paired difference."""
    real, both = result["real"]["per_fold"], result["real+synthetic"]["per_fold"]
    folds = sorted(set(real) | set(both), key=int)

    def pct(x: float | None) -> str:
        return "–" if x is None else f"{100 * x:.2f}"

    lines = [
        f"| {result['classifier']} | " + " | ".join(f"fold {k}" for k in folds) + " | mean ± std | wall |",
        "|---|" + "---|" * len(folds) + "---|---|",
    ]
    for data, label in (("real", "real only"), ("real+synthetic", "real + synthetic")):
        r = result[data]
        cells = " | ".join(pct(r["per_fold"].get(k)) for k in folds)
        spread = f"{100 * r['mean']:.2f} ± {100 * r['std']:.2f}"
        lines.append(f"| {label} | {cells} | {spread} | {result['wall_s'][data]:.0f} s |")
    diff = " | ".join(pct(both[k] - real[k]) if k in both and k in real else "–" for k in folds)
    p = result["paired"]
    ci = "" if p["ci95"] is None else f" (95% CI {100 * p['ci95'][0]:+.2f} to {100 * p['ci95'][1]:+.2f})"
    sign_p = "" if p["p_sign"] is None else f", sign test p {p['p_sign']:.3f}"
    lines.append(
        f"| difference | {diff} | {100 * p['mean_diff']:+.2f} ± {100 * p['std_diff']:.2f}{ci} | "
        f"improved {p['improved']} / tied {p['tied']} / worse {p['worse']}{sign_p} |"
    )
    return "\n".join(lines)
