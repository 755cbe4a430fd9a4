"""Builds small source trees in each adapter's on-disk layout, with demo faces as the pixels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from fersnet_ray.prepare.demo import render_face


def face(subject: int = 0, label: int = 0, frame: int = 0, size: int = 64) -> Image.Image:
    return render_face(0, subject, label, frame, size)


def save(path: Path, img: Image.Image | None = None, data: bytes | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if data is not None:
        path.write_bytes(data)
    else:
        img.save(path)
    return path


def png_bytes(img: Image.Image) -> bytes:
    import io

    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def ckplus48_tree(root: Path, subjects: int = 4, classes=("anger", "happy", "surprise")) -> Path:
    """<expr>/S0NN_001_0000000F.png: every subject shows every class in 3 frames."""
    for s in range(subjects):
        for label, name in enumerate(classes):
            for frame in range(3):
                save(root / name / f"S{s + 10:03d}_{label + 1:03d}_{frame + 1:08d}.png", face(s, label, frame, 48))
    return root


def ckplus_tree(root: Path) -> Path:
    """CK+ release layout: S005/001 happy (5 frames), S005/002 unlabelled, S010/001 code 9, S010/002 anger."""
    img = root / "cohn-kanade-images"
    emo = root / "Emotion"
    for seq, frames in (("001", 5), ("002", 4)):
        for f in range(1, frames + 1):
            save(img / "S005" / seq / f"S005_{seq}_{f:08d}.png", face(0, 4, f % 3, 64))
    (emo / "S005" / "001").mkdir(parents=True)
    (emo / "S005" / "001" / "S005_001_00000005_emotion.txt").write_text("   5.0000000e+00\n")
    for seq in ("001", "002"):
        for f in range(1, 4):
            save(img / "S010" / seq / f"S010_{seq}_{f:08d}.png", face(1, 0, f % 3, 64))
        (emo / "S010" / seq).mkdir(parents=True)
    (emo / "S010" / "001" / "S010_001_00000003_emotion.txt").write_text("   9.0000000e+00\n")
    (emo / "S010" / "002" / "S010_002_00000003_emotion.txt").write_text("   1.0000000e+00\n")
    return root


def oulu_tree(root: Path) -> Path:
    """<root>/P001/Anger/000.jpeg …: 2 subjects × 2 expressions × 5 frames, plus an unknown folder."""
    for s, subject in enumerate(("P001", "P002")):
        for label, folder in ((0, "Anger"), (3, "Happiness")):
            for f in range(5):
                save(root / subject / folder / f"{f:03d}.jpeg", face(s, label, f % 3, 64).convert("RGB"))
    save(root / "P002" / "Neutral" / "000.jpeg", face(1, 0, 0, 64).convert("RGB"))
    return root


def write_16bit(path: Path, size: int = 40) -> Path:
    arr = (np.linspace(0, 65535, size * size).reshape(size, size)).astype(np.uint16)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)  # uint16 → mode "I;16"
    return path


def write_face_alignment_weights(folder, detect: bool) -> str:
    """Randomly initialised FAN and S3FD weights, under the file names face-alignment loads.

    The detector's heads are set so its output does not depend on the image: with `detect`, the one
    coarsest anchor (conv7_2, a single location) is a face with score ~1, so every image yields
    exactly one box and one FAN pass; without it, nothing is ever a face. FAN stays random:
    these weights test plumbing and shapes, not accuracy.
    """
    import torch
    from face_alignment.detection.sfd.net_s3fd import s3fd
    from face_alignment.models import FAN

    from fersnet_ray.prepare.align import FAN_WEIGHTS, S3FD_WEIGHTS

    torch.manual_seed(0)
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(FAN(4).state_dict(), folder / FAN_WEIGHTS)
    sd = s3fd().state_dict()
    for k in sd:
        if "mbox" in k:
            sd[k].zero_()
        if "mbox_conf" in k and k.endswith("bias") and sd[k].numel() == 2:
            face = detect and k.startswith("conv7_2")
            sd[k].copy_(torch.tensor([-10.0, 10.0] if face else [10.0, -10.0]))
    torch.save(sd, folder / S3FD_WEIGHTS)
    return str(folder)
