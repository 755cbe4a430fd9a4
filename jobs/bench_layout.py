"""NCHW against NHWC (channels_last) on this machine, side by side in one process: training steps and evaluation.

    python jobs/bench_layout.py --preset cpu48 --threads 1

For each variant, a training step (`train.loop._step`: discriminator, then generator and classifier)
on a random batch of the preset's size, alternating the two layouts `--rounds` times, then the
FERSNet forward in eval mode on 256 faces. Prints images/s per layout and the ratio NHWC / NCHW, the
figures behind `train.loop.channels_last` (which picks NHWC on every CPU).
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

import torch

from fersnet_ray.train.config import PRESETS, Experiment
from fersnet_ray.train.loop import FoldState, _step


def _layout(x, nhwc: bool):
    fmt = torch.channels_last if nhwc else torch.contiguous_format
    return x.to(memory_format=fmt) if isinstance(x, torch.nn.Module) else x.contiguous(memory_format=fmt)


def step_rate(state: FoldState, nhwc: bool, steps: int) -> float:
    """Images/s of `steps` training steps after one warm-up step, in the given layout."""
    b, s = state.exp.train.batch_size, state.exp.model.image_size
    c = state.exp.model.in_channels
    gen = torch.Generator().manual_seed(0)
    x, xt = (_layout(torch.rand(b, c, s, s, generator=gen) * 2 - 1, nhwc) for _ in range(2))
    y, yt = (torch.randint(0, state.exp.model.num_classes, (b,), generator=gen) for _ in range(2))
    state.model = _layout(state.model, nhwc)
    state.disc = _layout(state.disc, nhwc) if state.disc is not None else None
    _step(state, state.model, state.disc, x, y, xt, yt, 0.1)
    start = time.perf_counter()
    for _ in range(steps):
        _step(state, state.model, state.disc, x, y, xt, yt, 0.1)
    return steps * b / (time.perf_counter() - start)


@torch.no_grad()
def eval_rate(state: FoldState, nhwc: bool, n: int = 256, reps: int = 5) -> float:
    s, c = state.exp.model.image_size, state.exp.model.in_channels
    model = _layout(state.model.eval(), nhwc)
    x = _layout(torch.rand(n, c, s, s) * 2 - 1, nhwc)
    model(x)
    start = time.perf_counter()
    for _ in range(reps):
        model(x)
    return reps * n / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="cpu48")
    ap.add_argument("--variants", default="fersnet,fer_only,fersnet_hard")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    base = PRESETS[args.preset]
    print(f"preset {args.preset}, batch {base.train.batch_size}, {args.threads} thread(s), fp32")
    for variant in args.variants.split(","):
        model = replace(base.model, variant=variant, match_capacity=variant != "fersnet")
        state = FoldState.create(Experiment(model, base.train))
        for _ in range(args.rounds):
            nchw, nhwc = step_rate(state, False, args.steps), step_rate(state, True, args.steps)
            print(f"{variant:<13} train step  NCHW {nchw:6.1f}  NHWC {nhwc:6.1f} img/s  NHWC/NCHW {nhwc / nchw:.2f}")
        if variant == "fersnet":
            for _ in range(args.rounds):
                nchw, nhwc = eval_rate(state, False), eval_rate(state, True)
                print(
                    f"{variant:<13} evaluation  NCHW {nchw:6.1f}  NHWC {nhwc:6.1f} img/s  NHWC/NCHW {nhwc / nchw:.2f}"
                )


if __name__ == "__main__":
    main()
