"""The synthesis stage's plain helpers: the contact sheet and the independent expression recogniser."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from fersnet_ray.prepare.demo import CLASSES, render_face
from fersnet_ray.synth.recognizer import (
    Recognizer,
    RecognizerConfig,
    accuracy_against,
    class_weights,
    load_recognizer,
    recognizer_logits,
    save_recognizer,
    target_probability,
    train_recognizer,
)
from fersnet_ray.synth.sheet import BLANK_COLOUR, HEADER, REAL_COLOUR, contact_sheet
from fersnet_ray.train.data import FaceSet

LOAD, CROP = 36, 32


def demo_faces(subjects: range) -> FaceSet:
    """Every expression and frame of the demo `subjects`, rendered at 64 and resized to LOAD like prepare does."""
    images, labels, ids = [], [], []
    for s in subjects:
        for label in range(len(CLASSES)):
            for frame in range(3):
                face = render_face(0, s, label, frame, 64).resize((LOAD, LOAD), Image.BILINEAR)
                images.append(np.asarray(face))
                labels.append(label)
                ids.append(f"S{s}-{label}-{frame}")
    subject_ids = np.array([i.split("-")[0] for i in ids])
    return FaceSet(torch.from_numpy(np.stack(images))[:, None], torch.tensor(labels), subject_ids, ids)


@pytest.fixture(scope="module")
def trained():
    """A recogniser trained on 12 demo subjects, and 8 other subjects' faces to test it on."""
    train, test = demo_faces(range(12)), demo_faces(range(100, 108))
    model = train_recognizer(train, len(CLASSES), CROP, epochs=10, seed=0, batch_size=16, widths=(16, 32, 64, 128))
    return model, test


# --- contact sheet ------------------------------------------------------------------------------


def png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def test_contact_sheet_layout_real_frame_and_mixed_inputs():
    classes, cell = list(CLASSES), 48
    grey_png = png(Image.new("L", (40, 40), 200))
    rgb_array = np.full((30, 30, 3), (10, 200, 30), dtype=np.uint8)
    grey_array = np.full((20, 20), 90, dtype=np.uint8)
    chw_array = np.full((3, 16, 16), 120, dtype=np.uint8)  # a row of a FaceSet tensor, RGB
    rows = [
        {"source_label": 2, "images": {2: grey_png, 0: rgb_array, 4: grey_array, 6: chw_array}},
        {"source_label": 5, "images": {5: rgb_array, 1: grey_png}},
    ]
    sheet = contact_sheet(rows, classes, cell=cell)
    assert sheet.mode == "RGB"
    assert sheet.size == (len(classes) * cell, HEADER + len(rows) * cell)

    def centre(row: int, col: int) -> tuple:
        return sheet.getpixel((col * cell + cell // 2, HEADER + row * cell + cell // 2))

    assert centre(0, 2) == (200, 200, 200)  # greyscale PNG → grey RGB
    assert centre(0, 0) == (10, 200, 30)  # RGB array kept
    assert centre(0, 4) == (90, 90, 90)
    assert centre(0, 6) == (120, 120, 120)
    assert centre(0, 1) == BLANK_COLOUR  # no synthesis → blank cell
    assert centre(1, 5) == (10, 200, 30) and centre(1, 1) == (200, 200, 200)

    # The real face's cell has a frame in REAL_COLOUR on all four sides; other cells have none.
    for row, real in ((0, 2), (1, 5)):
        left, top = real * cell, HEADER + row * cell
        for xy in (
            (left + 1, top + cell // 2),
            (left + cell - 2, top + cell // 2),
            (left + cell // 2, top + 1),
            (left + cell // 2, top + cell - 2),
        ):
            assert sheet.getpixel(xy) == REAL_COLOUR, (row, xy)
        other = (real + 1) % len(classes)
        assert sheet.getpixel((other * cell + 1, top + cell // 2)) != REAL_COLOUR

    # The header holds class names: some light text pixels in every column's band.
    header = np.asarray(sheet)[:HEADER]
    for j in range(len(classes)):
        assert header[:, j * cell : (j + 1) * cell].max() > 128, classes[j]


def test_contact_sheet_rejects_a_source_label_outside_the_classes():
    with pytest.raises(ValueError, match="source_label 7"):
        contact_sheet([{"source_label": 7, "images": {}}], list(CLASSES))


# --- recogniser ---------------------------------------------------------------------------------


def test_class_weights_are_inverse_to_frequency():
    w = class_weights(torch.tensor([0, 0, 0, 1, 2, 2]), num_classes=4)
    assert w[3] == 0  # absent class
    assert torch.allclose(w[:3], torch.tensor([6 / 9, 2.0, 1.0]))
    assert torch.isclose(w[:3].mean(), torch.tensor(11 / 9))  # ∑ n_c w_c = N: the loss scale stays put


def test_recognizer_shapes_for_odd_sides_and_colour():
    model = Recognizer(RecognizerConfig(in_channels=3, num_classes=6, widths=(4, 8, 8, 16))).eval()
    assert model(torch.zeros(2, 3, 48, 48)).shape == (2, 6)
    assert model(torch.zeros(2, 3, 45, 45)).shape == (2, 6)


def test_recognizer_learns_expressions_of_unseen_subjects(trained):
    model, test = trained
    assert not model.training
    acc = accuracy_against(model, test.images, test.labels, CROP)
    p_true = target_probability(model, test.images, test.labels, CROP)
    p_wrong = target_probability(model, test.images, (test.labels + 3) % len(CLASSES), CROP)
    # Measured with this setting, seeds 0-4: accuracy 0.46-0.63 on the held-out subjects (chance 1/7 = 0.14),
    # mean p(true label) 0.40-0.47 vs 0.11-0.14 for a wrong one.
    assert acc > 0.35, acc
    assert p_true.mean() > 2 * p_wrong.mean(), (p_true.mean(), p_wrong.mean())


def test_target_probability_shape_and_range(trained):
    model, test = trained
    faces = test.images[:10]
    probs = torch.stack(
        [target_probability(model, faces, torch.full((10,), c), CROP, batch_size=4) for c in range(len(CLASSES))], dim=1
    )  # (10, E), over batches of 4
    assert probs.shape == (10, len(CLASSES)) and probs.dtype == torch.float32
    assert ((probs >= 0) & (probs <= 1)).all()
    assert torch.allclose(probs.sum(1), torch.ones(10), atol=1e-5)
    assert target_probability(model, faces[:0], torch.zeros(0, dtype=torch.long), CROP).shape == (0,)


def test_save_load_round_trip_with_weights_only(trained):
    model, test = trained
    buf = io.BytesIO()
    torch.save(save_recognizer(model), buf)
    buf.seek(0)
    loaded = load_recognizer(torch.load(buf, weights_only=True))
    assert loaded.cfg == model.cfg and not loaded.training
    assert torch.equal(recognizer_logits(loaded, test.images, CROP), recognizer_logits(model, test.images, CROP))


def test_train_recognizer_on_fewer_faces_than_a_batch():
    faces = demo_faces(range(1))  # 21 faces < batch 64: batches of 8 (at most an eighth of the faces)
    model = train_recognizer(faces, len(CLASSES), CROP, epochs=1, widths=(4, 8, 8, 8))
    assert 0.0 <= accuracy_against(model, faces.images, faces.labels, CROP) <= 1.0


# --- paired fidelity ----------------------------------------------------------------------------


def test_paired_fidelity_compares_each_synthesis_with_its_subjects_real_face():
    from fersnet_ray.model import create_model
    from fersnet_ray.synth.quality import paired_fidelity
    from fersnet_ray.train.config import make_experiment
    from fersnet_ray.train.data import center_crop, to_unit

    exp = make_experiment("tiny", num_classes=len(CLASSES))
    faces, reference = demo_faces(range(2)), demo_faces(range(10, 12))
    # A third subject showing one expression only has no paired truth: it adds no pair.
    lone = demo_faces(range(20, 21))
    keep = torch.nonzero(lone.labels == 4).flatten()
    faces = FaceSet(
        torch.cat([faces.images, lone.images[keep]]),
        torch.cat([faces.labels, lone.labels[keep]]),
        np.concatenate([faces.subjects, lone.subjects[keep.numpy()]]),
        faces.face_ids + [lone.face_ids[i] for i in keep.tolist()],
    )
    model = create_model(exp.model).eval()
    f = paired_fidelity(model, faces, reference, exp, torch.device("cpu"))
    e = len(CLASSES)
    assert f["pairs"] == 2 * e * 3 * (e - 1)  # subjects x sources (expression x frame) x other expressions

    # The baselines by hand: the truth of (subject, b) is the mean of the subject's frames of b.
    x = to_unit(center_crop(faces.images, CROP))
    ref = to_unit(center_crop(reference.images, CROP))
    copy, class_mean = [], []
    for i in range(len(faces) - len(keep)):
        s, a = faces.subjects[i], int(faces.labels[i])
        for b in range(e):
            if b == a:
                continue
            truth = x[torch.as_tensor((faces.subjects == s) & (faces.labels.numpy() == b))].mean(0)
            copy.append(float(((x[i] - truth) ** 2).mean()))
            class_mean.append(float(((ref[reference.labels == b].mean(0) - truth) ** 2).mean()))
    assert f["mse_copy"] == pytest.approx(np.mean(copy), rel=1e-5)
    assert f["mse_class_mean"] == pytest.approx(np.mean(class_mean), rel=1e-5)
    # An untrained generator is nowhere near the truth: worse than copying the source.
    assert f["mse_fake"] > f["mse_copy"] and 0 <= f["beats_copy"] < 0.5

    none = paired_fidelity(model, FaceSet(lone.images[keep], lone.labels[keep], lone.subjects[keep.numpy()], []), reference, exp, torch.device("cpu"))
    assert none["pairs"] == 0 and np.isnan(none["mse_fake"])
