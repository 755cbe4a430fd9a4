"""Table V of a trained fold with the generator's batch norm in eval mode against batch statistics.

    python jobs/probe_synth_bn.py --store .data/cpu-store --run ck48-cpu --fold 0

Synthesises every held-out face of the fold in every other expression twice, from the fold's newest
checkpoint: once as synthesis runs (eval mode: batch norm uses the running statistics gathered in
training) and once normalising each batch of 256 with its own statistics (training mode, running
statistics frozen, as pix2pix evaluates). The fold's stored Table V recogniser reads both. A large gap would say the
running statistics, not the generator, spoil the synthetic faces. Plain PyTorch, CPU.
"""

from __future__ import annotations

import argparse

import torch

from fersnet_ray.checkpoint import latest_checkpoint, read_checkpoint
from fersnet_ray.model import create_model
from fersnet_ray.store import Store
from fersnet_ray.synth.quality import load_fold_recognizer, synthesize_all_targets
from fersnet_ray.synth.recognizer import accuracy_against
from fersnet_ray.train.config import Experiment
from fersnet_ray.train.data import load_fold
from fersnet_ray.train.loop import frozen_bn_stats


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--store", required=True)
    p.add_argument("--run", required=True)
    p.add_argument("--fold", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    store = Store.from_uri(args.store)
    checkpoint = latest_checkpoint(store, args.run, args.fold)
    if checkpoint is None:
        raise SystemExit(f"error: run {args.run!r} fold {args.fold} has no complete checkpoint in {store.uri}")
    state = read_checkpoint(store, checkpoint)
    exp = Experiment.from_dict(state["experiment"])
    _, test_set, _ = load_fold(store, store.run(args.run).read_config()["dataset"], args.fold, exp.train.load_size)
    recognizer = load_fold_recognizer(store, store.run(args.run).recognizer(args.fold))
    model = create_model(exp.model)
    model.load_state_dict(state["model"])
    print(f"{checkpoint}: {len(test_set)} held-out faces")
    for mode in ("eval", "batch-statistics"):
        model.train(mode != "eval")
        with frozen_bn_stats(model):
            images, _, targets = synthesize_all_targets(model, test_set, exp, torch.device("cpu"), 256)
        acc = accuracy_against(recognizer, images, torch.as_tensor(targets), exp.train.crop_size)
        print(f"{mode:>16}: Table V {100 * acc:.2f}%")


if __name__ == "__main__":
    main()
