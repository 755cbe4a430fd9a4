"""Report charts: every chart is a decodable PNG, edge cases draw instead of crashing, gates come from a real model."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from fersnet_ray.model import ModelConfig, create_model
from fersnet_ray.report.charts import (
    accuracy_chart,
    accuracy_figure,
    class_counts_chart,
    class_counts_figure,
    confusion_chart,
    confusion_figure,
    gate_arrays,
    gate_maps_chart,
    gate_maps_figure,
    loss_curves_chart,
    loss_curves_figure,
)

CLASSES = ["anger", "contempt", "disgust", "fear", "happy", "sadness", "surprise"]


def decode(png: bytes) -> Image.Image:
    """Checks `png` is a real, non-empty PNG and returns it decoded."""
    assert isinstance(png, bytes) and png.startswith(b"\x89PNG")
    image = Image.open(io.BytesIO(png))
    image.load()  # decodes the pixel data, not only the header
    assert image.format == "PNG" and image.mode in ("RGB", "RGBA")
    assert image.width > 0 and image.height > 0
    return image


# ---- accuracy -------------------------------------------------------------------------------------------------


def test_accuracy_chart_grows_with_rows():
    one = decode(accuracy_chart([{"name": "a", "per_fold": {0: 0.9, 1: 0.8}}]))
    rows = [{"name": n, "per_fold": {f: 0.7 + 0.02 * f for f in range(10)}} for n in "abcdef"]
    many = decode(accuracy_chart(rows))
    assert many.width > one.width


def test_accuracy_chart_single_fold_empty_rows_and_no_rows():
    rows = [
        {"name": "fersnet", "per_fold": {3: 0.95}},  # one fold: no std, must not warn or crash
        {"name": "fer_only", "per_fold": {}},  # not run yet
        {"name": "weak", "per_fold": {0: 0.05, 1: 0.1}},  # a bar too short for the label inside
    ]
    with np.errstate(all="raise"):
        decode(accuracy_chart(rows))
    decode(accuracy_chart([{"name": "x", "per_fold": {}}]))
    decode(accuracy_chart([]))


def rendered(fig):
    """Draws `fig` with Agg (constrained layout runs) and returns its renderer, for text extents in pixels."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return canvas.get_renderer()


# The report's own row names (the two that were printed on top of each other) and longer ones.
REPORT_NAMES = [
    "FERSNet (original)",
    "FERSNet w/ FES-DA (fine-tuned on synthetic faces)",
    "FERSNet w/o ConvFLU (hard parameter sharing, capacity matched)",
    "FERSNet w/o MTL (FER branch alone)",
    "a_run_name_without_any_spaces_at_all_0123456789",
    "WWWWWWWWWWWWWWWWWWWWWWWWWWWWWWWW",
]


@pytest.mark.parametrize("n", [1, 2, 3, 6, 12])
def test_accuracy_chart_labels_never_overlap_and_show_the_numbers(n):
    rows = [
        {
            "name": REPORT_NAMES[i % len(REPORT_NAMES)] + (f" #{i}" if i >= len(REPORT_NAMES) else ""),
            "per_fold": {0: 0.5 + 0.03 * i, 1: 0.6 + 0.03 * i},
        }
        for i in range(n)
    ]
    fig = accuracy_figure(rows)
    renderer = rendered(fig)
    (ax,) = fig.axes
    page = fig.bbox
    ticks = [t for t in ax.get_xticklabels() if t.get_text()]
    assert [t.get_text().replace("\n", "").replace(" ", "") for t in ticks] == [
        r["name"].replace(" ", "") for r in rows
    ]  # every row named, in order (wrapped onto lines, nothing dropped)
    boxes = [t.get_window_extent(renderer) for t in ticks]
    for i, a in enumerate(boxes):
        assert page.x0 <= a.x0 and a.x1 <= page.x1 and page.y0 <= a.y0, (rows[i]["name"], a, page)
        for j in range(i + 1, len(boxes)):
            assert not a.overlaps(boxes[j]), (rows[i]["name"], rows[j]["name"])
    # Content: the mean ± std of every row is written on the chart, the axis is accuracy in % from 0 to 100.
    texts = [t.get_text() for t in ax.texts]
    for row in rows:
        acc = 100 * np.array(list(row["per_fold"].values()))
        assert f"{acc.mean():.1f}\n±{acc.std(ddof=1):.1f}" in texts
    assert ax.get_ylim() == (0, 100) and ax.get_ylabel() == "accuracy (%)"
    assert len(ax.patches) == n  # one bar per row


# ---- confusion ------------------------------------------------------------------------------------------------


def test_confusion_chart_with_an_empty_class_row():
    rng = np.random.default_rng(0)
    confusion = rng.integers(0, 20, size=(7, 7)) + 30 * np.eye(7, dtype=int)
    confusion[1] = 0  # a class with no test faces: rate 0, no division warning
    with np.errstate(all="raise"):
        decode(confusion_chart(confusion.tolist(), CLASSES, "fold 0"))
    decode(confusion_chart([[0, 0], [0, 0]], ["a", "b"], "empty"))


def test_confusion_figure_draws_the_counts_rates_and_accuracy():
    confusion = [[8, 2, 0], [1, 5, 4], [0, 0, 0]]  # the third class has no test faces
    fig = confusion_figure(confusion, ["a", "b", "c"], "fold 3")
    ax = fig.axes[0]
    # Every cell's count, row by row, in the cell's place.
    cells = {(round(t.get_position()[1]), round(t.get_position()[0])): t.get_text() for t in ax.texts}
    assert cells == {(i, j): str(confusion[i][j]) for i in range(3) for j in range(3)}
    # Colour is the row-normalised rate (recall per class); an empty row is 0, not NaN.
    rate = np.asarray(ax.images[0].get_array())
    np.testing.assert_allclose(rate, [[0.8, 0.2, 0], [0.1, 0.5, 0.4], [0, 0, 0]])
    assert [t.get_text() for t in ax.get_yticklabels()] == ["a (10)", "b (10)", "c (0)"]  # row totals
    assert [t.get_text() for t in ax.get_xticklabels()] == ["a", "b", "c"]
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("predicted", "true")
    assert ax.get_title() == "fold 3 — accuracy 65.0%"  # (8 + 5) / 20


def test_confusion_chart_rejects_mismatched_classes():
    with pytest.raises(ValueError, match="confusion must be"):
        confusion_chart([[1, 2], [3, 4]], CLASSES, "bad")


# ---- class counts ---------------------------------------------------------------------------------------------


def test_class_counts_chart():
    real = {"anger": 45, "contempt": 18, "happy": 69}
    synthetic = {"anger": 24, "contempt": 51, "fear": 69}  # "fear" only synthesised
    decode(class_counts_chart(real, synthetic, "CK+ fold 0"))
    decode(class_counts_chart(real, {}, "real only"))
    decode(class_counts_chart({}, {}, "nothing"))


def test_class_counts_figure_draws_before_and_balanced_after():
    real = {"anger": 45, "contempt": 18, "happy": 69}
    synthetic = {"anger": 24, "contempt": 51, "fear": 69}
    fig = class_counts_figure(real, synthetic, "fold 0")
    ax = fig.axes[0]
    classes = ["anger", "contempt", "happy", "fear"]  # real's order, then classes only synthesised
    assert [t.get_text() for t in ax.get_xticklabels()] == classes
    before, after_real, after_syn = ax.containers  # the three bar series, in drawing order
    heights = lambda c: [round(b.get_height()) for b in c]  # noqa: E731
    assert heights(before) == [45, 18, 69, 0]
    assert heights(after_real) == [45, 18, 69, 0]
    assert heights(after_syn) == [24, 51, 0, 69]
    assert [b.get_y() for b in after_syn] == [45, 18, 69, 0]  # stacked on the real faces
    labels = [t.get_text() for t in ax.texts]
    assert labels == ["45", "18", "69", "0", "69", "69", "69", "69"]  # before, then the stacks' totals: balanced
    assert ax.get_ylabel() == "faces" and ax.get_title() == "fold 0"


# ---- loss curves ----------------------------------------------------------------------------------------------


def _history(epochs: int, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    history = []
    for e in range(epochs):
        m = {"epoch": e, "cls": 2.0 / (e + 1) + 0.05 * rng.random(), "gan": 0.7 + 0.1 * rng.random(), "rec": 0.3}
        if e % 2 == 1:
            m["accuracy"] = 0.5 + 0.04 * e  # measured every second epoch only
        history.append(m)
    return history


def test_loss_curves_chart_sparse_and_absent_keys():
    histories = {"fold 0": _history(8, 0), "fold 1": _history(6, 1)}
    keys = ["cls", "gan", "rec", "cyc", "idt", "accuracy"]  # cyc and idt appear nowhere: skipped
    png = loss_curves_chart(histories, keys, "training")
    both = decode(png)
    one_key = decode(loss_curves_chart(histories, ["cls", "cyc"], "training"))
    assert both.width > one_key.width  # four subplots laid out in columns, one subplot alone


def test_loss_curves_figure_draws_every_measured_point():
    histories = {"fold 0": _history(8, 0), "fold 1": _history(6, 1)}
    fig = loss_curves_figure(histories, ["cls", "cyc", "accuracy"], "training")
    visible = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in visible] == ["cls", "accuracy"]  # cyc was never recorded
    for ax, key in zip(visible, ["cls", "accuracy"]):
        assert ax.get_xlabel() == "epoch"
        lines = {line.get_label(): line for line in ax.get_lines()}
        assert set(lines) == {"fold 0", "fold 1"}
        for series, history in histories.items():
            measured = [(m["epoch"] + 1, m[key]) for m in history if key in m]  # 1-based epochs
            x, y = lines[series].get_data()
            assert list(x) == [e for e, _ in measured]
            np.testing.assert_allclose(y, [v for _, v in measured])
    assert fig.get_suptitle() == "training"
    assert sorted(t.get_text() for t in fig.legends[0].get_texts()) == ["fold 0", "fold 1"]


def test_loss_curves_chart_nothing_to_plot():
    decode(loss_curves_chart({}, ["cls"], "empty"))
    decode(loss_curves_chart({"fold 0": [{"epoch": 0}]}, ["cls"], "no keys"))
    decode(loss_curves_chart({"fold 0": [{"epoch": 0, "accuracy": 0.5}]}, ["accuracy"], "one point"))
    only_acc = {"fold 0": [{"epoch": 0, "cls": 1.0}], "fold 1": [{"epoch": 1, "accuracy": 0.5}]}
    decode(loss_curves_chart(only_acc, ["cls", "accuracy"], "series with disjoint keys"))


# ---- gate maps ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model_gates():
    torch.manual_seed(0)
    model = create_model(ModelConfig.tiny()).eval()
    images = torch.rand(2, 1, 32, 32) * 2 - 1  # (2, 1, 32, 32) in [-1, 1]
    with torch.no_grad():
        out = model(images, torch.tensor([0, 3]), return_gates=True)
    return images, out.gates


def test_gate_arrays_from_a_real_model(model_gates):
    _, gates = model_gates
    arrays = gate_arrays(gates)
    widths, sides = (8, 16, 32, 64), (16, 8, 4, 2)  # tiny config: 32x32 halved by every block
    expected = [
        (f"{d} {g}{b + 1}", (2, widths[b], sides[b], sides[b]))
        for d in ("FER←FES", "FES←FER")
        for b in range(4)
        for g in ("r", "z")
    ]
    assert [(name, a.shape) for name, a in arrays.items()] == expected
    for a in arrays.values():
        assert a.dtype == np.float32 and (a > 0).all() and (a < 1).all()
    assert list(gate_arrays(gates, directions=("fer",))) == [name for name, _ in expected[:8]]
    with pytest.raises(ValueError, match="direction"):
        gate_arrays(gates, directions=("both",))


def test_gate_maps_chart_grey_and_rgb(model_gates):
    images, gates = model_gates
    fer = gate_arrays(gates, directions=("fer",))
    grey = decode(gate_maps_chart(images.numpy(), fer, "FER←FES gates"))
    rng = np.random.default_rng(0)
    rgb_images = rng.uniform(-1, 1, size=(3, 3, 24, 24)).astype(np.float32)
    rgb_gates = {"r1": rng.uniform(0, 1, size=(3, 4, 12, 12)), "z1": rng.uniform(0, 1, size=(3, 4, 12, 12))}
    rgb = decode(gate_maps_chart(rgb_images, rgb_gates, "RGB"))
    assert grey.width > rgb.width  # 1 + 8 columns against 1 + 2
    assert rgb.height > grey.height  # 3 rows against 2
    decode(gate_maps_chart(rgb_images, {}, "faces only"))


def test_gate_maps_figure_draws_faces_and_channel_means(model_gates):
    images, gates = model_gates
    fer = gate_arrays(gates, directions=("fer",))
    fig = gate_maps_figure(images.numpy(), fer, "gates")
    grid = [ax for ax in fig.axes if ax.images]  # the colorbar's axes draw no image
    assert len(grid) == 2 * (1 + len(fer))  # one row per face: the face, then every gate
    titles = [ax.get_title() for ax in grid if ax.get_title()]
    assert titles == ["face", *fer]
    for i in range(2):
        row = grid[i * (1 + len(fer)) : (i + 1) * (1 + len(fer))]
        face = np.asarray(row[0].images[0].get_array())
        np.testing.assert_allclose(face, (images[i, 0].numpy() + 1) / 2, atol=1e-6)  # [-1, 1] -> [0, 1]
        for ax, (name, g) in zip(row[1:], fer.items()):
            np.testing.assert_allclose(np.asarray(ax.images[0].get_array()), g[i].mean(axis=0), rtol=1e-6)
            assert ax.images[0].get_clim() == (0.0, 1.0)  # one shared scale


def test_gate_maps_chart_rejects_bad_shapes():
    faces = np.zeros((2, 1, 8, 8), np.float32)
    with pytest.raises(ValueError, match="images must be"):
        gate_maps_chart(np.zeros((2, 2, 8, 8)), {}, "two channels")
    with pytest.raises(ValueError, match="gate 'r1'"):
        gate_maps_chart(faces, {"r1": np.full((3, 4, 4, 4), 0.5)}, "N mismatch")
