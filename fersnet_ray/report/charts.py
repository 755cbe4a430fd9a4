"""Charts for the results report: plain numbers in, PNG bytes out.

Each chart is a pair: `<name>_figure` builds the `Figure` (what tests inspect: the numbers drawn, the axes,
the label extents) and `<name>_chart` renders it to PNG bytes (what the report writes).

Every function builds a `matplotlib.figure.Figure` and renders it with the Agg canvas directly. No pyplot: its
global figure registry is not thread-safe and may pick an interactive backend, while these run inside Ray
workers and report jobs with no display. Inputs are plain Python data and numpy arrays, never the store or Ray,
so the report stage decides what to read and these stay testable on their own.

    png = accuracy_chart([{"name": "fersnet", "per_fold": {0: 0.97, 1: 0.95}}])
    store.write_bytes("reports/run/accuracy.png", png)

    out = model(images, labels, return_gates=True)  # ModelOutput(logits, fake, gates)
    png = gate_maps_chart(images.numpy(), gate_arrays(out.gates, directions=("fer",)), "gates, fold 0")
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterable, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

DPI = 100
GATE_CMAP = "viridis"  # perceptually uniform, so a gate at 0.6 looks as far from 0.4 as 0.4 from 0.2
CONFUSION_CMAP = "Blues"
REAL_COLOUR, SYNTH_COLOUR, BEFORE_COLOUR = "#4878a8", "#e08a3c", "#b8b8b8"

# Arrow names follow the ConvFLU's direction of flow: "FER←FES" receives FES features (the paper's Fig. 3).
DIRECTION_NAMES = {"fer": "FER←FES", "fes": "FES←FER"}


def _png(fig: Figure) -> bytes:
    """Renders `fig` to PNG bytes and frees it."""
    try:
        FigureCanvasAgg(fig)  # attaches itself to fig; savefig then renders with Agg whatever the default backend
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=DPI)
        return buf.getvalue()
    finally:
        fig.clear()  # Figures made without pyplot are not registered anywhere; clearing drops the artists now


def _note(fig: Figure, text: str) -> None:
    """A centred message on an otherwise empty figure (nothing to plot)."""
    fig.text(0.5, 0.5, text, ha="center", va="center", fontsize=11, color="0.35")


# ---- accuracy (Table VI) --------------------------------------------------------------------------------------


# x tick labels wrap at LABEL_CHARS characters. At 8 pt and 100 dpi the widest glyph ("W") is 11 px, so a
# line is at most ~154 px; ROW_INCHES of figure width per row keeps every bar's slot wider than that.
LABEL_CHARS, ROW_INCHES = 14, 1.7


def accuracy_chart(rows: list[dict]) -> bytes:
    """`accuracy_figure` as PNG bytes."""
    return _png(accuracy_figure(rows))


def accuracy_figure(rows: list[dict]) -> Figure:
    """The paper's Table VI as a bar chart: mean accuracy per row over the folds.

    Args:
        rows: one dict per method/variant, `{"name": str, "per_fold": {fold: accuracy in [0, 1]}}`, in the
            order to draw. A row with an empty `per_fold` is drawn as a "not run" label instead of a bar.

    Returns:
        The figure (not yet rendered). Bars show the mean in %, error bars the standard deviation over folds
        (ddof=1, only with two or more folds), dots the individual folds (jittered sideways so equal scores
        stay visible). Row names are wrapped onto lines of LABEL_CHARS characters under their bars, and the
        figure grows by a fixed width per row, so labels never overlap however many rows there are.
    """
    import textwrap

    labels = [textwrap.fill(str(r["name"]), LABEL_CHARS, break_long_words=True) for r in rows]
    lines = max((label.count("\n") + 1 for label in labels), default=1)
    fig = Figure(figsize=(max(4.5, 1.0 + ROW_INCHES * len(rows)), 3.4 + 0.15 * lines), layout="constrained")
    if not rows:
        _note(fig, "no results")
        return fig
    ax = fig.add_subplot()
    rng = np.random.default_rng(0)  # fixed jitter: the same numbers always give the same picture
    for x, row in enumerate(rows):
        acc = 100.0 * np.array([row["per_fold"][f] for f in sorted(row["per_fold"])], dtype=float)  # (folds,)
        if acc.size == 0:
            ax.text(x, 4, "not run", ha="center", va="bottom", rotation=90, color="0.45", fontsize=9)
            continue
        mean = float(acc.mean())
        std = float(acc.std(ddof=1)) if acc.size >= 2 else None
        ax.bar(x, mean, width=0.6, color=REAL_COLOUR, alpha=0.85, zorder=1)
        if std is not None:
            ax.errorbar(x, mean, yerr=std, color="0.15", capsize=4, linewidth=1.2, zorder=3)
        jitter = rng.uniform(-0.15, 0.15, size=acc.size)
        ax.scatter(x + jitter, acc, s=14, color="0.1", alpha=0.6, zorder=4, linewidths=0)
        label = f"{mean:.1f}" if std is None else f"{mean:.1f}\n±{std:.1f}"
        # Inside the bar near its base: above the bar it would collide with the error bar and the fold dots.
        # A bar too short to hold the label gets it above its error bar and dots, in dark text.
        y, colour = (3, "white") if mean >= 15 else (max(mean + (std or 0.0), acc.max()) + 1, "0.1")
        ax.text(x, y, label, ha="center", va="bottom", color=colour, fontsize=8, fontweight="bold", zorder=5)
    ax.set_xticks(range(len(rows)), labels, fontsize=8)
    ax.set_xlim(-0.6, len(rows) - 0.4)
    ax.set_ylim(0, 100)
    ax.set_ylabel("accuracy (%)")
    ax.set_title("accuracy over folds: mean ± std, dots = folds", fontsize=9)
    ax.grid(axis="y", alpha=0.3, zorder=0)
    return fig


# ---- confusion matrix ---------------------------------------------------------------------------------------


def confusion_chart(confusion: list[list[int]], classes: list[str], title: str) -> bytes:
    """`confusion_figure` as PNG bytes."""
    return _png(confusion_figure(confusion, classes, title))


def confusion_figure(confusion: list[list[int]], classes: list[str], title: str) -> Figure:
    """A confusion matrix with counts in the cells and colour by row-normalised rate (recall per class).

    Args:
        confusion: (E, E) counts; row = true class, column = predicted class.
        classes: the E class names, in label order.
        title: figure title.

    Returns:
        The figure (not yet rendered).
    """
    counts = np.asarray(confusion, dtype=np.int64)  # (E, E)
    if counts.shape != (len(classes), len(classes)):
        raise ValueError(
            f"confusion must be ({len(classes)}, {len(classes)}) for {len(classes)} classes, got {counts.shape}"
        )
    totals = counts.sum(axis=1, keepdims=True)  # (E, 1)
    # Colour by rate, not count: with unbalanced classes raw counts would only show which class is largest.
    rate = np.divide(counts, totals, out=np.zeros(counts.shape), where=totals > 0)  # (E, E)
    side = max(3.5, 1.6 + 0.55 * len(classes))
    fig = Figure(figsize=(side + 0.8, side), layout="constrained")
    ax = fig.add_subplot()
    im = ax.imshow(rate, cmap=CONFUSION_CMAP, vmin=0.0, vmax=1.0)
    for i, j in np.ndindex(counts.shape):
        colour = "white" if rate[i, j] > 0.5 else "0.1"  # readable on dark and light cells
        ax.text(j, i, str(counts[i, j]), ha="center", va="center", fontsize=8, color=colour)
    ticks = range(len(classes))
    ax.set_xticks(ticks, classes, rotation=45, ha="right", rotation_mode="anchor", fontsize=8)
    ax.set_yticks(ticks, [f"{c} ({n})" for c, n in zip(classes, totals[:, 0])], fontsize=8)  # row totals
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    total = counts.sum()
    acc = f" — accuracy {100 * np.trace(counts) / total:.1f}%" if total else ""
    ax.set_title(f"{title}{acc}", fontsize=10)
    fig.colorbar(im, ax=ax, shrink=0.8, label="share of true class")
    return fig


# ---- class balance ------------------------------------------------------------------------------------------


def class_counts_chart(real: dict[str, int], synthetic: dict[str, int], title: str) -> bytes:
    """`class_counts_figure` as PNG bytes."""
    return _png(class_counts_figure(real, synthetic, title))


def class_counts_figure(real: dict[str, int], synthetic: dict[str, int], title: str) -> Figure:
    """Faces per class before and after balancing.

    Args:
        real: faces per class in the real data.
        synthetic: synthesised faces per class (classes missing here count 0).
        title: figure title.

    Returns:
        The figure (not yet rendered): per class a grey "before" bar (real only) and an "after balancing" bar with real and
        synthetic stacked, so a balanced set shows "after" bars of equal height.
    """
    classes = list(dict.fromkeys([*real, *synthetic]))  # real's order first, then classes only synthesised
    fig = Figure(figsize=(max(4.0, 1.5 + 0.9 * len(classes)), 3.6), layout="constrained")
    if not classes:
        _note(fig, "no faces")
        return fig
    ax = fig.add_subplot()
    x = np.arange(len(classes))
    n_real = np.array([real.get(c, 0) for c in classes])  # (E,)
    n_syn = np.array([synthetic.get(c, 0) for c in classes])  # (E,)
    w = 0.38
    before = ax.bar(x - w / 2, n_real, w, color=BEFORE_COLOUR, label="before (real)")
    ax.bar(x + w / 2, n_real, w, color=REAL_COLOUR, label="after: real")
    after = ax.bar(x + w / 2, n_syn, w, bottom=n_real, color=SYNTH_COLOUR, label="after: synthetic")
    ax.bar_label(before, fontsize=7, padding=1)
    ax.bar_label(after, labels=[str(n) for n in n_real + n_syn], fontsize=7, padding=1)  # the stack's total
    ax.set_xticks(x, classes, rotation=30 if len(classes) > 5 else 0, ha="right" if len(classes) > 5 else "center")
    ax.set_ylabel("faces")
    ax.set_ylim(0, 1.12 * max(1, int((n_real + n_syn).max())))  # headroom for the count labels
    ax.set_title(title, fontsize=10)
    fig.legend(fontsize=8, loc="outside lower center", ncols=3, frameon=False)  # outside: never covers a bar
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    return fig


# ---- training curves ----------------------------------------------------------------------------------------


def loss_curves_chart(histories: dict[str, list[dict]], keys: list[str], title: str) -> bytes:
    """`loss_curves_figure` as PNG bytes."""
    return _png(loss_curves_figure(histories, keys, title))


def loss_curves_figure(histories: dict[str, list[dict]], keys: list[str], title: str) -> Figure:
    """Per-epoch training metrics, one subplot per metric and one line per series (e.g. per fold).

    Args:
        histories: series name -> one metrics dict per epoch, each with "epoch" (0-based) and some of `keys`.
        keys: metrics to plot, in order, e.g. ["cls", "gan", "rec", "cyc", "idt", "d_real", "d_fake", "accuracy"];
            keys no history has are skipped.
        title: figure title.

    Returns:
        The figure (not yet rendered). x is the 1-based epoch. A metric measured only in some epochs (test accuracy every few
        epochs) is drawn through the epochs that have it, with markers so the measured points show.
    """
    present = [k for k in keys if any(m.get(k) is not None for h in histories.values() for m in h)]
    ncols = min(3, max(1, len(present)))
    nrows = max(1, math.ceil(len(present) / ncols))
    fig = Figure(figsize=(3.4 * ncols, 2.5 * nrows + 0.5), layout="constrained")
    fig.suptitle(title, fontsize=11)
    if not present:
        _note(fig, "no metrics recorded")
        return fig
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, key in zip(axes, present):
        for i, (series, history) in enumerate(histories.items()):
            points = sorted((int(m["epoch"]) + 1, float(m[key])) for m in history if m.get(key) is not None)
            if not points:
                continue
            epochs, values = zip(*points)
            sparse = len(points) < len(history) or len(points) <= 20  # markers where single points matter
            ax.plot(epochs, values, color=f"C{i % 10}", label=series, marker="o" if sparse else None, markersize=3)
        ax.set_title(key, fontsize=9)
        ax.set_xlabel("epoch", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    for ax in axes[len(present) :]:
        ax.set_visible(False)
    if len(histories) > 1:
        # One legend for the figure: colours are per series and the same in every subplot.
        # Collected over all subplots: a series may lack the first metric.
        by_label = {label: h for ax in axes for h, label in zip(*ax.get_legend_handles_labels())}
        fig.legend(
            by_label.values(),
            by_label.keys(),
            loc="outside lower center",
            ncols=min(len(by_label), 6),
            fontsize=8,
            frameon=False,
        )
    return fig


# ---- ConvFLU gate maps (Fig. 3) -----------------------------------------------------------------------------


def gate_arrays(gates: Sequence, directions: Iterable[str] = ("fer", "fes")) -> dict[str, np.ndarray]:
    """The model's gate output as name -> (N, ch, h, w) float32 arrays, for `gate_maps_chart`.

    Args:
        gates: `ModelOutput.gates` of a "fersnet" model run with `return_gates=True`: one `BlockGates(fer, fes)`
            per encoder block, each an `FLUGates(r, z)` of tensors (N, C_i, H_i, W_i) in (0, 1).
        directions: which ConvFLUs to take: "fer" (FER←FES, the maps of the paper's Fig. 3) and/or "fes" (FES←FER).

    Returns:
        Arrays named "<direction> <gate><block>" with 1-based blocks, e.g. "FER←FES r1", "FER←FES z1",
        "FES←FER r4"; ordered direction, block, gate (r before z).
    """
    out: dict[str, np.ndarray] = {}
    for direction in directions:
        if direction not in DIRECTION_NAMES:
            raise ValueError(f"direction must be one of {sorted(DIRECTION_NAMES)}, got {direction!r}")
        for block, block_gates in enumerate(gates, start=1):
            flu = getattr(block_gates, direction)  # FLUGates(r, z)
            for gate in flu._fields:  # ("r", "z")
                t = getattr(flu, gate)  # (N, C_i, H_i, W_i); may be bf16, on a GPU, or need grad
                out[f"{DIRECTION_NAMES[direction]} {gate}{block}"] = t.detach().float().cpu().numpy()
    return out


def _face_rgb(image: np.ndarray) -> np.ndarray:
    """(C, H, W) in [-1, 1] with C = 1 or 3 -> (H, W) or (H, W, 3) in [0, 1] for imshow."""
    img = np.clip((np.asarray(image, dtype=np.float32) + 1.0) / 2.0, 0.0, 1.0)
    return img[0] if img.shape[0] == 1 else img.transpose(1, 2, 0)


def gate_maps_chart(images: np.ndarray, gates: dict[str, np.ndarray], title: str) -> bytes:
    """`gate_maps_figure` as PNG bytes."""
    return _png(gate_maps_figure(images, gates, title))


def gate_maps_figure(images: np.ndarray, gates: dict[str, np.ndarray], title: str) -> Figure:
    """The paper's Fig. 3: each face beside the channel-mean of every gate map.

    Args:
        images: faces (N, C, H, W) in [-1, 1], C = 1 (grey) or 3 (RGB).
        gates: gate name -> (N, ch, h, w) in (0, 1), e.g. from `gate_arrays`; one column per entry, in order.
        title: figure title.

    Returns:
        The figure (not yet rendered): one row per face; gate columns share a fixed 0..1 colour scale (one colorbar), so blocks and
        faces compare directly. Gate maps are stretched to the face's cell without smoothing, so a block's
        coarse resolution stays visible.
    """
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"images must be (N, 1 or 3, H, W), got shape {images.shape}")
    n = images.shape[0]
    maps = {name: np.asarray(g, dtype=np.float32).mean(axis=1) for name, g in gates.items()}  # (N, h, w) each
    for name, m in maps.items():
        if m.ndim != 3 or m.shape[0] != n:
            raise ValueError(f"gate {name!r}: expected (N={n}, ch, h, w), got shape {np.shape(gates[name])}")
    cols = 1 + len(maps)
    fig = Figure(figsize=(1.25 * cols + (0.8 if maps else 0.0), 1.25 * n + 0.6), layout="constrained")
    fig.suptitle(title, fontsize=10)
    axes = fig.subplots(n, cols, squeeze=False)  # (N, 1 + G)
    mappable = None
    for i in range(n):
        axes[i, 0].imshow(_face_rgb(images[i]), cmap="gray", vmin=0.0, vmax=1.0)
        for j, m in enumerate(maps.values(), start=1):
            mappable = axes[i, j].imshow(m[i], cmap=GATE_CMAP, vmin=0.0, vmax=1.0, interpolation="nearest")
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    for j, name in enumerate(["face", *maps], start=0):
        axes[0, j].set_title(name, fontsize=7)
    if mappable is not None:
        fig.colorbar(mappable, ax=axes[:, 1:].ravel().tolist(), shrink=0.9, label="gate (channel mean)")
    return fig
