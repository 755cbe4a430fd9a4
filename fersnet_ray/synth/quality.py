"""How good are the synthetic faces: the paper's Table V protocol, per-row scores, contact sheets.

Table V: an expression recogniser trained on the fold's *real training faces only* (independent of
FERSNet's own FER branch) classifies faces synthesised from the fold's held-out test subjects;
its accuracy against the target expressions measures how recognisable the synthesis is (paper, CK+:
97.04% for FERSNet, 96.43% for StarGAN). The same recogniser gives every synthetic training row
its probability of the target (`score`), which `--min-score` filters on.

Plain PyTorch; `synthesize` runs `fold_quality` as one Ray task per fold.
"""

from __future__ import annotations

import io

import numpy as np
import torch

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
from fersnet_ray.train.loop import autocast

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
    labels = faces.labels.cpu().numpy()
    src = np.repeat(np.arange(len(labels)), e - 1)
    tgt = np.array([y for lab in labels for y in range(e) if y != lab], dtype=np.int64)
    off = (t.load_size - t.crop_size) // 2
    out = faces.images.cpu()[src].clone()
    with torch.no_grad():
        for i in range(0, len(src), batch_size):
            j = slice(i, i + batch_size)
            x = to_unit(center_crop(faces.images[torch.as_tensor(src[j])], t.crop_size).to(device))
            with autocast(device, t.amp):
                fake = model.synthesize(x, torch.as_tensor(tgt[j], device=device))
            u8 = ((fake.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu()
            out[j, :, off : off + t.crop_size, off : off + t.crop_size] = u8
    return out, src, tgt


def fold_quality(store_uri: str, run: str, fold: int, checkpoint: str, recognizer_epochs: int) -> dict:
    """Trains (or loads) the fold's recogniser, scores synthesis of the test subjects, writes the sheet."""
    from fersnet_ray.model import create_model
    from fersnet_ray.checkpoint import read_checkpoint

    store = Store.from_uri(store_uri)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    state = read_checkpoint(store, checkpoint)
    exp = Experiment.from_dict(state["experiment"])
    dataset = store.run(run).read_config()["dataset"]
    train_set, test_set, card = load_fold(store, dataset, fold, exp.train.load_size)

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
            seed=exp.train.seed + fold,
        )
        buf = io.BytesIO()
        torch.save(save_recognizer(recognizer), buf)
        store.write_bytes(path, buf.getvalue())
    real_acc = accuracy_against(recognizer, test_set.images.to(device), test_set.labels.to(device), exp.train.crop_size)

    model = create_model(exp.model).to(device).eval()
    model.load_state_dict(state["model"])
    images, src, tgt = synthesize_all_targets(model, test_set, exp, device)
    targets = torch.as_tensor(tgt)
    synth_acc = accuracy_against(recognizer, images.to(device), targets.to(device), exp.train.crop_size)
    probs = target_probability(recognizer, images.to(device), targets.to(device), exp.train.crop_size).cpu()

    # Contact sheet: one held-out face per class (where the test split has one), every expression.
    classes = card["classes"]
    labels = test_set.labels.cpu().numpy()
    rows = []
    for c in range(len(classes)):
        idx = np.flatnonzero(labels == c)
        if len(idx) == 0:
            continue
        i = int(idx[0])
        cells = {c: test_set.images[i].cpu().numpy()}
        for k in np.flatnonzero(src == i):
            cells[int(tgt[k])] = images[k].numpy()
        rows.append({"source_label": c, "images": cells})
    buf = io.BytesIO()
    contact_sheet(rows, classes).save(buf, format="PNG")
    store.write_bytes(f"{store.run(run).synthetic(fold)}/{SHEET_FILE}", buf.getvalue())

    return {
        "fold": fold,
        "recognizer_real_test_accuracy": real_acc,  # how good the judge is on real held-out faces
        "synthetic_test_accuracy": synth_acc,  # Table V: synthesised test-subject faces vs their targets
        "synthetic_test_faces": len(tgt),
        "mean_target_probability": float(probs.mean()) if len(probs) else float("nan"),
        "contact_sheet": SHEET_FILE,
    }
