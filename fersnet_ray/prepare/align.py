"""Decoding and aligning faces: raw file bytes → a square `aligned_size` face image.

Two methods:
- `none`: for pre-cropped sets (CK+48, demo): centre square crop and resize.
- `fan`: face-alignment's FAN (2-D, 68 landmarks, the paper's ref. [23]) after its S3FD detector;
  five points (eye centres, nose tip, mouth corners) are mapped by a least-squares similarity
  transform onto a fixed template and the face is warped to `aligned_size`.

face-alignment downloads its weights at start-up, which cluster nodes often cannot; `stage_weights`
copies them from a path or the store into the torch hub cache first.

Every failure is a `FaceError` whose message is the reject reason written to the card.
"""

from __future__ import annotations

import io
import os
import posixpath
import warnings

import numpy as np
from PIL import Image, ImageFile

from fersnet_ray.store import open_location, redact

# The files face-alignment's loaders look for in <torch hub dir>/checkpoints/.
FAN_WEIGHTS = "2DFAN4-11f355bf06.pth.tar"
S3FD_WEIGHTS = "s3fd-619a316812.pth"

# Five-point template in units of the output side: left eye, right eye, nose tip, left and right
# mouth corner. It is the common ArcFace 112×112 template shrunk by 0.8 about (0.5, 0.55), so the
# crop keeps brows, forehead and chin, which carry expression (the ArcFace crop is identity-tight).
_ARCFACE_112 = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]]
)
TEMPLATE = (_ARCFACE_112 / 112.0 - [0.5, 0.55]) * 0.8 + [0.5, 0.55]  # (5, 2)


class FaceError(ValueError):
    """This face cannot be used; the message is the reason recorded in the rejects list."""


def decode_image(data: bytes, channels: int = 1) -> Image.Image:
    """Raw file bytes → 8-bit 'L' (channels=1) or 'RGB' (channels=3) image.

    Handles 16-bit greyscale (scaled to 8 bit by its own range, as CK+'s 16-bit PNGs need), RGBA
    and LA (composited on black), palette and CMYK images. Raises FaceError for empty, truncated
    or non-image data.
    """
    return convert_image(open_image(data), channels)


def open_image(data: bytes) -> Image.Image:
    """Raw file bytes → the decoded image in its own mode; FaceError for empty, truncated or non-image data."""
    if not data:
        raise FaceError("empty file (0 bytes)")
    ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated face is a reject, not a grey smear
    try:
        img = Image.open(io.BytesIO(data))
        img.load()
    except Image.UnidentifiedImageError:
        raise FaceError("not an image (unrecognised format)") from None
    except Image.DecompressionBombError as e:  # a header claiming billions of pixels: never decoded
        raise FaceError(f"image too large ({str(e).split(',')[0]})") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise FaceError(
            f"truncated or corrupt image ({str(e).splitlines()[0] if str(e) else type(e).__name__})"
        ) from None
    if img.width < 8 or img.height < 8:
        raise FaceError(f"image too small ({img.width}×{img.height})")
    return img


def convert_image(img: Image.Image, channels: int = 1) -> Image.Image:
    """Any mode → 8-bit 'L' (channels=1) or 'RGB' (channels=3), as `decode_image` describes."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        arr = (arr - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(arr)
        img = Image.fromarray(arr.round().astype(np.uint8), mode="L")
    elif img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        img = Image.new("RGB", rgba.size, (0, 0, 0))
        img.paste(rgba, mask=rgba.getchannel("A"))
    return img.convert("L" if channels == 1 else "RGB")


def center_resize(img: Image.Image, size: int) -> Image.Image:
    """Centre square crop, then resize to size×size (for pre-cropped faces)."""
    side = min(img.size)
    left, top = (img.width - side) // 2, (img.height - side) // 2
    img = img.crop((left, top, left + side, top + side))
    return img if img.size == (size, size) else img.resize((size, size), Image.BICUBIC)


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (rotation, uniform scale, translation) taking src points to dst.

    Umeyama (1991) without reflection. src, dst: (N, 2). Returns the 2×3 matrix M with
    dst ≈ src @ M[:, :2].T + M[:, 2]; exact when dst is a similarity image of src.
    """
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s, d = src - mu_s, dst - mu_d
    cov = d.T @ s / len(src)  # (2, 2)
    u, sig, vt = np.linalg.svd(cov)
    sign = np.diag([1.0, np.sign(np.linalg.det(u @ vt)) or 1.0])
    rot = u @ sign @ vt
    var_s = (s**2).sum() / len(src)
    if var_s == 0:
        raise FaceError("degenerate landmarks (all points coincide)")
    scale = (sig * np.diag(sign)).sum() / var_s
    m = np.zeros((2, 3))
    m[:, :2] = scale * rot
    m[:, 2] = mu_d - m[:, :2] @ mu_s
    return m


def five_points(landmarks: np.ndarray) -> np.ndarray:
    """68 iBUG landmarks (68, 2) → (5, 2): eye centres, nose tip, mouth corners."""
    lm = np.asarray(landmarks, dtype=np.float64)[:, :2]
    return np.stack([lm[36:42].mean(0), lm[42:48].mean(0), lm[30], lm[48], lm[54]])


def warp(img: Image.Image, points: np.ndarray, size: int) -> Image.Image:
    """Warps `img` so that its five `points` land on the template, output size×size."""
    import cv2

    m = similarity_transform(points, TEMPLATE * size)
    arr = np.asarray(img)
    out = cv2.warpAffine(arr, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return Image.fromarray(out, mode=img.mode)


def stage_weights(uri: str) -> str:
    """Copies FAN and S3FD weights from a folder (path or s3://) into the torch hub cache.

    Returns the checkpoint folder. Files already there with the same size are kept.
    """
    import torch.hub

    fs, root = open_location(uri)
    dest = os.path.join(torch.hub.get_dir(), "checkpoints")
    os.makedirs(dest, exist_ok=True)
    for name in (FAN_WEIGHTS, S3FD_WEIGHTS):
        src = posixpath.join(root, name)
        if not fs.exists(src):
            raise FileNotFoundError(f"face-alignment weights {redact(uri)}/{name} not found")
        target = os.path.join(dest, name)
        if os.path.exists(target) and os.path.getsize(target) == fs.size(src):
            continue
        tmp = f"{target}.part-{os.getpid()}"
        fs.get(src, tmp)
        os.replace(tmp, target)  # atomic: concurrent actors on one node never read half a file
    return dest


class FanAligner:
    """face-alignment's detector + FAN, built once; `align(img)` returns the aligned face."""

    def __init__(self, size: int, device: str = "cpu", weights: str | None = None):
        import face_alignment

        if weights:
            stage_weights(weights)
        self.size = size
        # compile=False: torch.compile's warm-up costs minutes per actor and gains little at
        # one face per call; flip_input=False halves FAN's cost for landmarks we only need roughly.
        self.fa = face_alignment.FaceAlignment(
            face_alignment.LandmarksType.TWO_D, device=device, flip_input=False, compile=False
        )

    def landmarks(self, img: Image.Image) -> np.ndarray:
        """(68, 2) landmarks of the largest detected face, or FaceError."""
        rgb = np.asarray(img.convert("RGB"))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "No faces were detected." is reported as a reject instead
            found, _, boxes = self.fa.get_landmarks_from_image(rgb, return_bboxes=True)
        if not found:
            raise FaceError("no face found")
        areas = [(b[2] - b[0]) * (b[3] - b[1]) for b in boxes]
        return np.asarray(found[int(np.argmax(areas))])

    def align(self, img: Image.Image) -> Image.Image:
        return warp(img, five_points(self.landmarks(img)), self.size)
