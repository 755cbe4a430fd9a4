"""How good are the synthetic faces: the paper's Table V protocol, per-row scores, contact sheets.

Table V: an expression recogniser trained on the fold's *real training faces only* (independent of
FERSNet's own FER branch) classifies faces synthesised from the fold's held-out test subjects;
its accuracy against the target expressions measures how recognisable the synthesis is (paper, CK+:
97.04% for FERSNet, 96.43% for StarGAN). The same recogniser gives every synthetic training row
its probability of the target (`score`), which `--min-score` filters on.

For the final model (every subject, no held-out ones) the recogniser trains on every real face and
only scores the rows; there is no Table V number for it.

Plain PyTorch; `synthesize` runs `fold_quality` as one Ray task per fold.
"""

from __future__ import annotations

import io

import numpy as np
import torch

from fersnet_ray.foldkey import Fold, is_final, seed_offset
from fersnet_ray.store import Store
from fersnet_ray.synth.recognizer import (
    Recognizer,
    accuracy_against,
    load_recognizer,
    save_recognizer,
    target_probability,
    train_recognizer,
)
from fersnet_ray.synth.sheet import contact_sheet
from fersnet_ray.train.config import Experiment
from fersnet_ray.train.data import FaceSet, center_crop, load_fold, to_unit
from fersnet_ray.train.loop import autocast, nhwc

SHEET_FILE = "_contact_sheet.png"


def load_fold_recognizer(store: Store, path: str) -> Recognizer:
    from fersnet_ray.checkpoint import load_weights
    from fersnet_ray.synth import SynthError

    where = f"s3://{path}" if store.protocol == "s3" else path
    return load_recognizer(load_weights(store.read_bytes(path), f"recogniser {where}", SynthError))


def synthesize_all_targets(model, faces: FaceSet, exp: Experiment, device: torch.device, batch_size: int = 256):
    """Every face × every other expression: (images (P, C, L, L) uint8, source index (P,), target (P,)).

    The synthesis replaces the centre crop the generator sees; the border keeps the real face, so the
    output has the face table's framing.
    """
    t, e = exp.train, exp.model.num_classes
    model = nhwc(model, device, t.amp)
    labels = faces.labels.cpu().numpy()
    src = np.repeat(np.arange(len(labels)), e - 1)
    tgt = np.array([y for lab in labels for y in range(e) if y != lab], dtype=np.int64)
    off = (t.load_size - t.crop_size) // 2
    out = faces.images.cpu()[src].clone()
    with torch.no_grad():
        for i in range(0, len(src), batch_size):
            j = slice(i, i + batch_size)
            x = to_unit(center_crop(faces.images[torch.as_tensor(src[j])], t.crop_size).to(device))
            x = nhwc(x, device, t.amp)  # (B, C, crop, crop), NHWC on CPUs (oneDNN's faster layout)
            with autocast(device, t.amp):
                fake = model.synthesize(x, torch.as_tensor(tgt[j], device=device))
            u8 = ((fake.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu()
            out[j, :, off : off + t.crop_size, off : off + t.crop_size] = u8
    return out, src, tgt


@torch.no_grad()
def paired_fidelity(model, faces: FaceSet, reference: FaceSet, exp: Experiment, device: torch.device) -> dict:
    """How close the synthesis comes to the real face it should have produced, against simple baselines.

    For every face (subject u, expression a) and every other expression b that u shows in `faces`, the
    synthesis G(face, b) is compared with u's own real faces of b (their mean, centre crops in [-1, 1]):
    the paired ground truth L_rec trains towards. A generator worth its cost beats three baselines that
    need no network: "copy" (the source face unchanged), "class mean" (the mean face of b in
    `reference`, e.g. the training faces) and "delta" (the source plus mean(b) - mean(a) of `reference`).

    Args:
        model: a FERSNet variant with synthesis, in eval mode.
        faces: faces with subjects showing several expressions (CK+, the demo set).
        reference: faces the class means come from (the fold's training faces, never `faces`' subjects).
        exp: the experiment (crop size, amp).
        device: where to run the generator.

    Returns:
        {"pairs": P, "mse_fake", "mse_copy", "mse_class_mean", "mse_delta": mean squared error per pixel,
        "beats_copy": fraction of pairs where the synthesis is closer than the copy}; NaNs and 0 pairs when
        no subject in `faces` shows two expressions.
    """
    t, e = exp.train, exp.model.num_classes
    crop = lambda f: to_unit(center_crop(f.images.cpu(), t.crop_size))  # (N, C, crop, crop)
    x, ref = crop(faces), crop(reference)
    labels, ref_labels = faces.labels.cpu().numpy(), reference.labels.cpu().numpy()
    subjects = faces.subjects.astype(str)  # (N,)
    means = torch.stack([ref[torch.as_tensor(ref_labels == c)].mean(0) for c in range(e)])  # (E, C, crop, crop)
    truth: dict[tuple[str, int], torch.Tensor] = {}
    for s, y in {(s, int(y)) for s, y in zip(subjects, labels)}:
        truth[(s, y)] = x[torch.as_tensor((subjects == s) & (labels == y))].mean(0)  # (C, crop, crop)
    src, tgt = [], []
    for i, (s, a) in enumerate(zip(subjects, labels)):
        for b in range(e):
            if b != a and (s, b) in truth:
                src.append(i)
                tgt.append(b)
    if not src:
        nan = float("nan")
        return {"pairs": 0, "mse_fake": nan, "mse_copy": nan, "mse_class_mean": nan, "mse_delta": nan, "beats_copy": nan}
    src_t, tgt_t = torch.as_tensor(src), torch.as_tensor(tgt)
    fakes = []
    for i in range(0, len(src), 256):
        xb = x[src_t[i : i + 256]].to(device)
        with autocast(device, t.amp):
            fakes.append(model.synthesize(xb, tgt_t[i : i + 256].to(device)).float().clamp(-1, 1).cpu())
    fake = torch.cat(fakes)  # (P, C, crop, crop)
    gt = torch.stack([truth[(subjects[i], b)] for i, b in zip(src, tgt)])
    source = x[src_t]
    delta = (source + means[tgt_t] - means[torch.as_tensor(labels[src])]).clamp(-1, 1)
    per_pair = lambda a: ((a - gt) ** 2).flatten(1).mean(1)  # (P,)
    err_fake, err_copy = per_pair(fake), per_pair(source)
    return {
        "pairs": len(src),
        "mse_fake": float(err_fake.mean()),
        "mse_copy": float(err_copy.mean()),
        "mse_class_mean": float(per_pair(means[tgt_t]).mean()),
        "mse_delta": float(per_pair(delta).mean()),
        "beats_copy": float((err_fake < err_copy).float().mean()),
    }


def fold_quality(store_uri: str, run: str, fold: Fold, checkpoint: str, recognizer_epochs: int) -> dict:
    """Trains (or loads) the fold's recogniser, scores synthesis of the test subjects, writes the sheet.

    For the final model (fold "final") the recogniser trains on every real face, only to score the
    synthetic rows: there are no held-out subjects, so there is no Table V number (None, and said so),
    and the contact sheet shows training faces.
    """
    from fersnet_ray.checkpoint import read_checkpoint
    from fersnet_ray.model import create_model

    store = Store.from_uri(store_uri)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    state = read_checkpoint(store, checkpoint)
    exp = Experiment.from_dict(state["experiment"])
    dataset = store.run(run).read_config()["dataset"]
    train_set, test_set, card = load_fold(store, dataset, fold, exp.train.load_size)  # final: test_set empty

    path = store.run(run).recognizer(fold)
    if store.exists(path):
        recognizer = load_fold_recognizer(store, path).to(device)
    else:
        recognizer = train_recognizer(
            train_set.to(device),
            exp.model.num_classes,
            exp.train.crop_size,
            epochs=recognizer_epochs,
            device=device,
            seed=exp.train.seed + seed_offset(fold),
        )
        buf = io.BytesIO()
        torch.save(save_recognizer(recognizer), buf)
        store.write_bytes(path, buf.getvalue())

    model = create_model(exp.model).to(device).eval()
    model.load_state_dict(state["model"])
    classes = card["classes"]
    if is_final(fold):
        # One training face per class, every expression: the sheet, and nothing to measure.
        sheet_faces = _one_per_class(train_set, len(classes))
        images, src, tgt = synthesize_all_targets(model, sheet_faces, exp, device)
        _write_sheet(store, run, fold, sheet_faces, images, src, tgt, classes)
        return {
            "fold": fold,
            "held_out": False,
            "recognizer_real_test_accuracy": None,
            "synthetic_test_accuracy": None,  # no Table V: no held-out subjects to synthesise from
            "synthetic_test_faces": 0,
            "recognizer_training_faces": len(train_set),
            "note": "recogniser trained on every real face, used only to score the synthetic rows; "
            "no held-out subjects, so no Table V number (the cross-validation folds measure it)",
            "contact_sheet": SHEET_FILE,
        }

    real_acc = accuracy_against(recognizer, test_set.images.to(device), test_set.labels.to(device), exp.train.crop_size)
    images, src, tgt = synthesize_all_targets(model, test_set, exp, device)
    targets = torch.as_tensor(tgt)
    synth_acc = accuracy_against(recognizer, images.to(device), targets.to(device), exp.train.crop_size)
    probs = target_probability(recognizer, images.to(device), targets.to(device), exp.train.crop_size).cpu()
    _write_sheet(store, run, fold, test_set, images, src, tgt, classes)
    return {
        "fold": fold,
        "recognizer_real_test_accuracy": real_acc,  # how good the judge is on real held-out faces
        "synthetic_test_accuracy": synth_acc,  # Table V: synthesised test-subject faces vs their targets
        "synthetic_test_faces": len(tgt),
        "mean_target_probability": float(probs.mean()) if len(probs) else float("nan"),
        "contact_sheet": SHEET_FILE,
    }


def _one_per_class(faces: FaceSet, num_classes: int) -> FaceSet:
    """The first face of each class that `faces` holds (at most num_classes faces)."""
    labels = faces.labels.cpu().numpy()
    pick = [int(np.flatnonzero(labels == c)[0]) for c in range(num_classes) if (labels == c).any()]
    idx = torch.as_tensor(pick, dtype=torch.long)
    return FaceSet(faces.images[idx], faces.labels[idx], faces.subjects[pick], [faces.face_ids[i] for i in pick])


def _write_sheet(store: Store, run: str, fold: Fold, faces: FaceSet, images, src, tgt, classes: list[str]) -> None:
    """Contact sheet: one face per class (where `faces` has one) as rows, every expression as columns."""
    buf = io.BytesIO()
    sheet_image(faces, images, src, tgt, classes).save(buf, format="PNG")
    store.write_bytes(store.run(run).synthetic_file(fold, SHEET_FILE), buf.getvalue())


def sheet_image(faces: FaceSet, images, src, tgt, classes: list[str]):
    """The contact sheet of `synthesize_all_targets(faces)`' output: the first face of each class as a row."""
    labels = faces.labels.cpu().numpy()
    rows = []
    for c in range(len(classes)):
        idx = np.flatnonzero(labels == c)
        if len(idx) == 0:
            continue
        i = int(idx[0])
        cells = {c: faces.images[i].cpu().numpy()}
        for k in np.flatnonzero(src == i):
            cells[int(tgt[k])] = images[k].numpy()
        rows.append({"source_label": c, "images": cells})
    return contact_sheet(rows, classes)
