"""One fold's faces as tensors, the paper's augmentation, and the target-face sampling of L_rec.

FER data sets are small (CK+: 981 faces, 12 MB at 110×110), so a fold's faces live on the
training device as one uint8 tensor; augmentation runs batched on that device (one affine grid
per face: crop + mirror + rotation), so the GPU is never waiting on a Python data loader.

Targets (paper Sec. IV-A: "we randomly select a target label z^t with the corresponding facial
image I^t for each training sample"): every epoch each face gets a target expression its subject
actually shows, other than its own, and a random real face of that subject with it; L_rec compares
the synthesis with that face. A subject with a single expression gets its own expression and one
of its own faces (possibly itself) as target: L_rec then teaches reconstruction, never a made-up
translation.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from fersnet_ray.foldkey import Fold, is_final, training_mask
from fersnet_ray.table import decode_png


@dataclass
class FaceSet:
    """Faces of one split: images (N, C, L, L) uint8 at load_size, labels (N,), subject ids (N,)."""

    images: torch.Tensor
    labels: torch.Tensor
    subjects: np.ndarray
    face_ids: list[str]

    def __len__(self) -> int:
        return len(self.labels)

    def to(self, device: torch.device | str) -> "FaceSet":
        return FaceSet(self.images.to(device), self.labels.to(device), self.subjects, self.face_ids)

    def shard(self, rank: int, world: int) -> "FaceSet":
        """Every `world`-th face from `rank`: one DDP worker's part of the training faces."""
        idx = torch.arange(rank, len(self), world)
        return FaceSet(
            self.images[idx], self.labels[idx], self.subjects[idx.numpy()], [self.face_ids[i] for i in idx.tolist()]
        )


def decode_faces(pngs: list[bytes], load_size: int) -> torch.Tensor:
    """PNG bytes → (N, C, load_size, load_size) uint8 (C = 1 for greyscale, 3 for RGB)."""
    out = [resize_face(decode_png(data), load_size) for data in pngs]
    return torch.stack(out) if out else torch.zeros((0, 1, load_size, load_size), dtype=torch.uint8)


def resize_face(arr: np.ndarray, load_size: int) -> torch.Tensor:
    """One decoded face, uint8 (H, W) or (H, W, 3) → (C, load_size, load_size) uint8 (bilinear, antialiased)."""
    t = torch.from_numpy(np.array(arr))  # a writable copy (a decoded PNG buffer is read-only)
    t = t[None] if t.ndim == 2 else t.permute(2, 0, 1)  # (C, H, W)
    return resize_faces(t[None], load_size)[0]


def resize_faces(faces: torch.Tensor, load_size: int) -> torch.Tensor:
    """(N, C, H, W) uint8 → (N, C, load_size, load_size) uint8; each face resized alone, as `resize_face` does."""
    if faces.shape[-1] == load_size:
        return faces
    return (
        F.interpolate(faces.float(), size=(load_size, load_size), mode="bilinear", antialias=True, align_corners=False)
        .round()
        .clamp(0, 255)
        .to(torch.uint8)
    )


def face_set(rows: dict[str, list], load_size: int) -> FaceSet:
    """Columns of the face table (image, label, subject, face_id) → a FaceSet."""
    return FaceSet(
        decode_faces(rows["image"], load_size),
        torch.tensor(rows["label"], dtype=torch.long),
        np.asarray(rows["subject"]),
        list(rows["face_id"]),
    )


def to_unit(images: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] → float [-1, 1] (the generator's tanh range)."""
    return images.float().div_(127.5).sub_(1.0)


def center_crop(images: torch.Tensor, size: int) -> torch.Tensor:
    """(N, C, L, L) → (N, C, size, size), the paper's test-time crop."""
    off = (images.shape[-1] - size) // 2
    return images[..., off : off + size, off : off + size]


def augment(
    images: list[torch.Tensor], crop: int, rotations: tuple[float, ...], generator: torch.Generator
) -> list[torch.Tensor]:
    """Random crop, mirror and rotation, the same draw applied to every tensor in `images`.

    Args:
        images: tensors (B, C, L, L) float, e.g. [source faces, target faces]: a pair gets the same
            geometry so the synthesis and its target stay pixel-aligned for L_rec.
        crop: output side; the crop offset is uniform in [0, L - crop].
        rotations: angles in degrees, one drawn per face.
        generator: a CPU generator, for reproducible draws.

    Returns:
        tensors (B, C, crop, crop).
    """
    b, _, side, _ = images[0].shape
    device = images[0].device
    angle = torch.tensor(rotations)[torch.randint(len(rotations), (b,), generator=generator)] * (math.pi / 180)
    flip = torch.where(torch.rand(b, generator=generator) < 0.5, -1.0, 1.0)
    # Crop centre offset in normalised coordinates of the L×L input (align_corners=False).
    max_off = (side - crop) / side
    shift = (torch.rand(b, 2, generator=generator) * 2 - 1) * max_off
    scale = crop / side
    cos, sin = torch.cos(angle) * scale, torch.sin(angle) * scale
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0], theta[:, 0, 1] = cos * flip, -sin
    theta[:, 1, 0], theta[:, 1, 1] = sin * flip, cos
    theta[:, :, 2] = shift
    grid = F.affine_grid(theta.to(device), [b, images[0].shape[1], crop, crop], align_corners=False)
    return [
        F.grid_sample(x, grid.to(x.dtype), mode="bilinear", padding_mode="border", align_corners=False) for x in images
    ]


class TargetSampler:
    """Draws, for each face, a target expression its subject shows and a real face with it."""

    def __init__(self, labels: torch.Tensor, subjects: np.ndarray, seed: int):
        self.seed = seed
        self.labels = labels.cpu().numpy()
        self.faces_of: dict[tuple[str, int], np.ndarray] = {}
        groups: dict[tuple[str, int], list[int]] = defaultdict(list)
        for i, (s, y) in enumerate(zip(subjects, self.labels)):
            groups[(str(s), int(y))].append(i)
        self.faces_of = {k: np.asarray(v) for k, v in groups.items()}
        shown: dict[str, list[int]] = defaultdict(list)
        for s, y in self.faces_of:
            shown[s].append(y)
        self.subjects = [str(s) for s in subjects]
        self.shown = {s: sorted(v) for s, v in shown.items()}

    def single_expression_subjects(self) -> list[str]:
        return sorted(s for s, ys in self.shown.items() if len(ys) == 1)

    def sample(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """Epoch `epoch`'s draw: (target label, index of the target face) per face, each (N,).

        Seeded by (seed, epoch), so a run resumed from a checkpoint draws what it would have drawn.
        """
        rng = np.random.default_rng([self.seed, epoch])
        n = len(self.labels)
        target_label = np.empty(n, dtype=np.int64)
        target_face = np.empty(n, dtype=np.int64)
        for i in range(n):
            s, own = self.subjects[i], int(self.labels[i])
            others = [y for y in self.shown[s] if y != own]
            y = int(rng.choice(others)) if others else own
            target_label[i] = y
            target_face[i] = int(rng.choice(self.faces_of[(s, y)]))
        return target_label, target_face


def load_fold(store, dataset: str, fold: Fold, load_size: int) -> tuple[FaceSet, FaceSet, dict]:
    """The face table's training (fold ≠ k) and test (fold = k) faces, and the data set's card.

    For the final model (fold "final") every face trains and the test set is empty: it has no held-out faces.
    Raises ValueError naming the data set and fold when the fold or its training split is empty.
    """
    import pyarrow as pa

    from fersnet_ray.table import read_card, read_faces

    card = read_card(store, dataset)
    table = read_faces(store, dataset, columns=["face_id", "subject", "label", "image", "fold"])
    folds = table["fold"].to_numpy()
    if not is_final(fold) and fold not in set(folds.tolist()):
        raise ValueError(f"face table {dataset!r} has no fold {fold} (folds 0..{card['folds'] - 1})")
    in_training = training_mask(folds, fold)  # (N,) bool
    train = table.filter(pa.array(in_training)).to_pydict()
    test = table.filter(pa.array(~in_training)).to_pydict()
    if not train["label"]:
        raise ValueError(f"face table {dataset!r} has no training faces for fold {fold} (every face is in fold {fold})")
    train_set = face_set(train, load_size)
    if is_final(fold):  # no held-out faces: an empty set with the training faces' channels and size
        return train_set, FaceSet(train_set.images[:0], train_set.labels[:0], train_set.subjects[:0], []), card
    return train_set, face_set(test, load_size), card


def missing_classes(faces: FaceSet, num_classes: int) -> list[int]:
    """Classes with no face in `faces` (a fold's training split should hold every class)."""
    present = set(faces.labels.tolist())
    return [c for c in range(num_classes) if c not in present]


def load_test(store, dataset: str, fold: Fold, load_size: int) -> FaceSet | None:
    """Only the fold's test faces (fold = k): what fine-tuning evaluates on, without decoding (or holding) the rest.

    None for the final model: it has no held-out faces.
    """
    if is_final(fold):
        return None

    from fersnet_ray.table import read_faces

    test = read_faces(store, dataset, columns=["face_id", "subject", "label", "image", "fold"], fold=fold)
    if test.num_rows == 0:
        raise ValueError(f"face table {dataset!r} has no face in fold {fold}")
    return face_set(test.to_pydict(), load_size)
