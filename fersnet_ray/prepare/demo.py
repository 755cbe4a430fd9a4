"""Built-in demo data set: synthetic greyscale faces drawn with Pillow.

Why this exists: the FER pipeline (prepare -> train -> synthesise) must run end
to end on a fresh machine with no downloads, in tests and in the demo.  This
module stands in for CK+: N_SUBJECTS (24) subjects x 7 expressions x 3 frames,
like the last three (peak) frames of a CK+ sequence.  Preview the drawing with
``python -m fersnet_ray.prepare.demo /tmp/demo_sheet.png``.

Design:
* Identity (face shape, skin tone, hair, eye spacing/size, nose, glasses,
  beard, ...) depends only on (seed, subject), drawn from
  ``numpy.random.default_rng([seed, subject])`` so it is stable across
  processes (never Python's salted ``hash()``).
* Expression is carried by brows, eyes and mouth (plus a few wrinkle cues);
  its geometry is an offset from neutral scaled by an intensity, so the three
  frames differ slightly as a CK+ sequence approaching its peak does.
* Frame jitter (shift +-2 px at 128, rotation <= 3 deg, brightness +-5 %)
  comes from a separate stream keyed by (seed, subject, label, frame).
* Everything is drawn at 4x in normalised [0, 1] canvas coordinates through
  one affine map (so rotation/shift apply to every primitive), then each 4x4
  block is averaged (Image.reduce) for antialiasing; ~1-3 ms per 128x128 face.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw

# CK+ label order (CK+ uses 1..7 for these; index here is 0-based).
CLASSES: tuple[str, ...] = ("anger", "contempt", "disgust", "fear", "happy", "sadness", "surprise")
N_SUBJECTS = 24  # default demo set: N_SUBJECTS x 7 expressions x N_FRAMES
N_FRAMES = 3  # like the last three (peak) frames of a CK+ sequence
HAIR_STYLES: tuple[str, ...] = ("none", "cap", "fringe", "long")
_SS = 4  # supersampling factor; drawn at 4x, box-averaged down for antialiasing
# The frame shows the face from brows to chin, as an aligned crop of a real face does (CK+48, the
# FAN template): zoomed ZOOM times about FOCUS (canvas units). At the demo's small training sides
# (36 px) the mouth is then ~10 px wide and the eyes ~5 px, large enough to learn in minutes on a CPU.
ZOOM = 1.7
FOCUS = (0.5, 0.56)


def subject_name(subject: int) -> str:
    """Stable CK+-like subject id, e.g. 1 -> 'D001' ('D' for demo)."""
    return f"D{subject:03d}"


@dataclass(frozen=True)
class _Identity:
    rx: float
    ry: float
    jaw: float  # face half-width / half-height (canvas units), chin shape
    skin: float
    bg: float
    bg_grad: float
    shirt: float
    hair_style: str
    hair: float
    hairline: float
    eye_dx: float
    eye_y: float
    eye_w: float
    iris: float
    brow_gap: float
    brow_w: float
    brow_len: float
    brow_arch: float
    nose_len: float
    nose_w: float
    mouth_w: float
    mouth_gap: float
    glasses: bool
    beard: bool
    expressive: float


@lru_cache(maxsize=4096)
def _identity(seed: int, subject: int) -> _Identity:
    r = np.random.default_rng([seed, subject])
    u = lambda lo, hi: float(r.uniform(lo, hi))  # noqa: E731
    skin = u(105, 215)
    hair = u(15, 200)
    if abs(hair - skin) < 45:  # keep hair visible against skin
        hair = skin - 70 if skin > 120 else skin + 70
    bg = u(45, 205)
    if abs(bg - skin) < 40:  # keep the face outline visible
        bg = bg - 60 if bg > 110 else bg + 60
    glasses, beard = bool(r.random() < 0.25), bool(r.random() < 0.22)
    return _Identity(
        rx=u(0.28, 0.345),
        ry=u(0.375, 0.425),
        jaw=u(2.0, 3.2),
        skin=skin,
        bg=bg,
        bg_grad=u(-25, 25),
        shirt=u(30, 220),
        hair_style=HAIR_STYLES[int(r.integers(len(HAIR_STYLES)))],
        hair=hair,
        hairline=u(0.0, 0.04),
        eye_dx=u(0.105, 0.145),
        eye_y=u(0.43, 0.47),
        eye_w=u(0.042, 0.058),
        iris=u(20, 110),
        brow_gap=u(0.065, 0.085),
        brow_w=u(0.012, 0.024),
        brow_len=u(0.9, 1.25),
        brow_arch=u(0.0, 0.015),
        nose_len=u(0.115, 0.15),
        nose_w=u(0.022, 0.034),
        mouth_w=u(0.15, 0.2),
        mouth_gap=u(0.075, 0.095),
        glasses=glasses,
        beard=beard and not glasses,
        expressive=u(0.85, 1.15),
    )


# Expression geometry as offsets from neutral, in canvas units.  Brows and mouth
# corners (cl/cr): + = up.  Lip midpoints relative to the resting mouth line:
# up = upper lip raised, lo = lower lip dropped (their sum is the opening).
# eye = lid opening as a fraction of eye width; the rest are cue strengths.
_NEUTRAL = dict(
    raise_=0.0,
    inner=0.0,
    outer=0.0,
    arch=0.0,
    squeeze=0.0,
    eye=0.55,
    lid=0.0,
    mw=1.0,
    cl=0.0,
    cr=0.0,
    up=0.0,
    lo=0.0,
    round_=1.0,
    teeth=0.0,
    frown=0.0,
    forehead=0.0,
    nose=0.0,
    cheek=0.0,
    dimple=0.0,
)
_EXPR: dict[str, dict[str, float]] = {
    "anger": dict(
        raise_=-0.02, inner=-0.05, outer=0.01, squeeze=0.012, eye=0.42, mw=0.8, cl=-0.015, cr=-0.015, frown=1.0
    ),
    "contempt": dict(eye=0.48, cl=-0.005, cr=0.045, mw=1.05, dimple=1.0),
    "disgust": dict(
        raise_=-0.02,
        inner=-0.015,
        eye=0.28,
        lid=0.5,
        mw=0.85,
        cl=-0.02,
        cr=-0.02,
        up=0.015,
        lo=0.035,
        teeth=0.5,
        nose=1.0,
        cheek=0.6,
    ),
    "fear": dict(
        raise_=0.035,
        inner=0.035,
        outer=-0.01,
        squeeze=0.015,
        eye=1.0,
        mw=1.3,
        cl=-0.015,
        cr=-0.015,
        up=0.0,
        lo=0.06,
        teeth=0.3,
        round_=0.6,
        forehead=1.0,
    ),
    "happy": dict(eye=0.38, lid=0.6, mw=1.45, cl=0.05, cr=0.05, up=0.03, lo=0.04, teeth=0.6, cheek=1.0),
    "sadness": dict(inner=0.045, outer=-0.015, eye=0.42, mw=0.85, cl=-0.045, cr=-0.045),
    "surprise": dict(raise_=0.055, arch=0.02, eye=1.05, mw=0.55, up=0.03, lo=0.08, round_=0.45, forehead=1.0),
}


def _arc(x0: float, y0: float, x1: float, y1: float, sag: float, n: int = 12, p: float = 1.0) -> np.ndarray:
    """Points from (x0,y0) to (x1,y1) bowed by `sag` (+down) with a sin**p profile:
    p=1 is a smooth arc, p<1 squarer/rounder ends (an 'O' mouth)."""
    t, prof = _profile(n, p)
    out = np.empty((n, 2))  # filling columns is cheaper than np.stack for tiny arrays
    out[:, 0] = x0 + (x1 - x0) * t
    out[:, 1] = y0 + (y1 - y0) * t + sag * prof
    return out


@lru_cache(maxsize=256)
def _profile(n: int, p: float) -> tuple[np.ndarray, np.ndarray]:
    t = np.linspace(0.0, 1.0, n)
    return t, np.sin(np.pi * t) ** p


def _ellipse(
    cx: float, cy: float, rx: float, ry: float, n: int = 40, a0: float = 0.0, a1: float = 2 * math.pi
) -> np.ndarray:
    cos, sin = _angles(n, a0, a1)
    out = np.empty((len(cos), 2))
    out[:, 0] = cx + rx * cos
    out[:, 1] = cy + ry * sin
    return out


def _face(
    cx: float, cy: float, rx: float, ry: float, jaw: float, n: int = 64, a0: float = 0.0, a1: float = 2 * math.pi
) -> np.ndarray:
    """Ellipse whose lower half is a superellipse of exponent `jaw` (2 = round
    chin, ~3 = square jaw): a cheap, strong face-shape identity cue."""
    cos, sin = _angles(n, a0, a1)
    low = sin > 0  # y grows downwards, so sin > 0 is the lower half
    e = 2.0 / jaw
    cos = np.where(low, np.sign(cos) * np.abs(cos) ** e, cos)
    sin = np.where(low, np.abs(sin) ** e, sin)
    return np.stack([cx + rx * cos, cy + ry * sin], 1)


@lru_cache(maxsize=256)
def _angles(n: int, a0: float, a1: float) -> tuple[np.ndarray, np.ndarray]:
    a = np.linspace(a0, a1, n, endpoint=a1 - a0 < 2 * math.pi)
    return np.cos(a), np.sin(a)


def _grey(tone: float) -> int:
    return int(min(255.0, max(0.0, tone)))


class _Pen:
    """ImageDraw wrapper mapping canvas units through one rotation+shift."""

    def __init__(
        self, img: Image.Image, angle_deg: float, shift: tuple[float, float], gain: float, zoom: float = 1.0
    ) -> None:
        self.d = ImageDraw.Draw(img)
        self.gain = gain  # frame brightness, applied per primitive (cheaper than a final pass)
        # Rotate and zoom about FOCUS, put it at the frame centre, shift, scale to pixels:
        # pixel = ((p - FOCUS) @ rot.T * zoom + 0.5 + shift) * px, one x @ m + b per shape.
        a, px = math.radians(angle_deg), float(img.width)
        rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
        self.m = rot.T * zoom * px
        self.b = (np.array([0.5 + shift[0], 0.5 + shift[1]]) - np.array(FOCUS) @ rot.T * zoom) * px

    def _xy(self, pts: np.ndarray) -> list[float]:
        return (pts @ self.m + self.b).ravel().tolist()

    def poly(self, pts: np.ndarray, tone: float) -> None:
        self.d.polygon(self._xy(pts), fill=_grey(tone * self.gain))

    def line(self, pts: np.ndarray, width: float, tone: float) -> None:
        """Thick polyline as one polygon offset along vertex normals: smooth joints at
        a fraction of the cost of ImageDraw.line(joint="curve")."""
        tan = np.empty_like(pts)  # central differences: tangent at each vertex
        tan[1:-1] = pts[2:] - pts[:-2]
        tan[0], tan[-1] = pts[1] - pts[0], pts[-1] - pts[-2]
        k = (width / 2) / np.maximum(np.hypot(tan[:, 0], tan[:, 1]), 1e-12)
        off = np.empty_like(tan)
        off[:, 0], off[:, 1] = -tan[:, 1] * k, tan[:, 0] * k
        self.poly(np.concatenate([pts + off, (pts - off)[::-1]]), tone)


def render_face(seed: int, subject: int, label: int, frame: int, size: int = 128) -> Image.Image:
    """Greyscale ('L') size x size face of `subject` showing CLASSES[label], frame 0..2.

    Same arguments give byte-identical pixels in any process.  seed and subject
    must be >= 0 (numpy seed material).  Jitter scales with `size` (+-2 px at 128).
    """
    if not 0 <= label < len(CLASSES) or not 0 <= frame < N_FRAMES:
        raise ValueError(f"label must be in 0..6 and frame in 0..2, got {label}, {frame}")
    idn = _identity(seed, subject)
    jit = np.random.default_rng([seed, subject, label, frame, 1])  # independent of identity stream
    shift = (float(jit.uniform(-2, 2)) / 128, float(jit.uniform(-2, 2)) / 128)
    angle, gain = float(jit.uniform(-3, 3)), float(jit.uniform(0.95, 1.05))
    # Frames 0..2 ramp towards the peak like the last frames of a CK+ sequence.
    k = idn.expressive * ((0.82, 0.91, 1.0)[frame] + float(jit.uniform(-0.03, 0.03)))
    e = {**_NEUTRAL}
    for key, v in _EXPR[CLASSES[label]].items():
        e[key] = _NEUTRAL[key] + k * (v - _NEUTRAL[key])

    px = size * _SS
    lo, hi = (idn.bg - idn.bg_grad) * gain, (idn.bg + idn.bg_grad) * gain  # gentle vertical ramp
    ramp = np.clip(np.linspace(lo, hi, px), 0, 255).astype(np.uint8)
    img = Image.frombytes("L", (px, px), np.repeat(ramp, px).tobytes())  # row y is ramp[y]; a resize costs 2x
    pen = _Pen(img, angle, shift, gain, ZOOM)
    cx, cy, rx, ry, s = 0.5, 0.5, idn.rx, idn.ry, idn.skin
    dark = s * 0.35

    # Body, back hair, ears, face.
    pen.poly(_ellipse(cx, 1.14, 0.46, 0.22), idn.shirt)
    pen.poly(
        np.array([[cx - rx * 0.42, cy], [cx + rx * 0.42, cy], [cx + rx * 0.42, 1.1], [cx - rx * 0.42, 1.1]]), s * 0.85
    )
    if idn.hair_style == "long":
        pen.poly(_ellipse(cx, cy - 0.02, rx * 1.18, ry * 1.08), idn.hair)
        pen.poly(
            np.array(
                [
                    [cx - rx * 1.18, cy],
                    [cx + rx * 1.18, cy],
                    [cx + rx * 1.1, cy + ry * 0.95],
                    [cx - rx * 1.1, cy + ry * 0.95],
                ]
            ),
            idn.hair,
        )
    else:
        for side in (-1, 1):
            pen.poly(_ellipse(cx + side * rx * 0.97, idn.eye_y + 0.04, 0.035, 0.06, 20), s * 0.9)
    pen.poly(_face(cx, cy, rx, ry, idn.jaw, 64), s)

    ey, ew = idn.eye_y, idn.eye_w
    mouth_y = ey + idn.nose_len + idn.mouth_gap
    if idn.beard:  # jaw from the sideburns down, with a bare patch around the mouth
        a = math.asin((ey + 0.08 - cy) / ry)
        jaw = _face(cx, cy, rx * 1.02, ry * 1.02, idn.jaw, 40, a, math.pi - a)
        inner = _arc(jaw[-1, 0] + 0.02, jaw[-1, 1], jaw[0, 0] - 0.02, jaw[0, 1], mouth_y + 0.03 - jaw[0, 1], 16)
        pen.poly(np.concatenate([jaw, inner]), min(idn.hair, s * 0.5))
        pen.poly(_ellipse(cx, mouth_y + 0.005, idn.mouth_w * 0.75, 0.045, 32), s)

    # Wrinkle cues: forehead lines (surprise/fear), frown lines (anger).
    brow_y = ey - idn.brow_gap
    if e["forehead"] > 0.3:
        for y in (brow_y - 0.07, brow_y - 0.105, brow_y - 0.14):
            pen.line(_arc(cx - 0.1, y, cx + 0.1, y, -0.015), 0.006, s * 0.7)
    if e["frown"] > 0.3:
        for side in (-1, 1):
            crease = np.array([[cx + side * 0.015, brow_y - 0.015], [cx + side * 0.01, brow_y + 0.03]])
            pen.line(crease, 0.008, s * 0.6)

    # Hair on top of the head (after forehead lines: a fringe hides them).
    if idn.hair_style != "none":
        hl = (brow_y - 0.07 if idn.hair_style == "fringe" else cy - ry * 0.68) + idn.hairline
        top = _ellipse(cx, cy - 0.012, rx * 1.06, ry * 1.04, 40, math.pi * 1.03, math.pi * 1.97)
        temple_y = ey - 0.08 if idn.hair_style != "cap" else hl + 0.06
        edge = _arc(cx + rx * 1.02, temple_y, cx - rx * 1.02, temple_y, (hl - temple_y) * 1.3, 14, 0.7)
        pen.poly(np.concatenate([top, edge]), idn.hair)

    # Brows: inner/outer ends and arch move with expression.
    brow_tone = max(5.0, min(idn.hair + 15, s - 75))
    for side in (-1, 1):  # -1 = subject's right (image left)
        ex = cx + side * idn.eye_dx
        inner_x = ex - side * (ew * 1.05 + 0.005 - e["squeeze"])
        outer_x = ex + side * ew * 1.15 * idn.brow_len
        base = brow_y - e["raise_"]
        pts = _arc(inner_x, base - e["inner"], outer_x, base - e["outer"], -(idn.brow_arch + e["arch"]), 8)
        pen.line(pts, idn.brow_w, brow_tone)

    # Eyes: almond white, iris clipped to the lids, thick upper lid line.
    up_h, lo_h = ew * e["eye"] * 0.9, ew * 0.45 * (1.0 - 0.6 * e["lid"]) * min(1.0, e["eye"] + 0.3)
    for side in (-1, 1):
        ex = cx + side * idn.eye_dx
        upper = _arc(ex - ew, ey, ex + ew, ey, -up_h, 12, 0.8)
        lower = _arc(ex + ew, ey, ex - ew, ey, lo_h, 12, 0.8)
        pen.poly(np.concatenate([upper, lower]), 235)
        iris = _ellipse(ex, ey - up_h * 0.1, ew * 0.5, ew * 0.5, 24)
        # Clip iris y between the two lid curves at each x (both are functions of x).
        t = np.clip((iris[:, 0] - (ex - ew)) / (2 * ew), 0, 1)
        prof = np.sin(np.pi * t) ** 0.8
        iris[:, 1] = np.clip(iris[:, 1], ey - up_h * prof, ey + lo_h * prof)
        pen.poly(iris, idn.iris)
        pen.line(upper, 0.009, dark)
        pen.line(lower, 0.004, s * 0.6)
        if e["lid"] > 0.3:  # raised cheek under the eye (happy / disgust squint)
            pen.line(_arc(ex - ew, ey + lo_h + 0.02, ex + ew, ey + lo_h + 0.02, 0.012), 0.005, s * 0.7)
        if idn.glasses:
            pen.line(_ellipse(ex, ey, ew * 1.6, ew * 1.35, 28, 0, 2 * math.pi + 0.3), 0.008, 25)
    if idn.glasses:
        pen.line(_arc(cx - idn.eye_dx + ew * 1.6, ey, cx + idn.eye_dx - ew * 1.6, ey, -0.012, 5), 0.008, 25)

    # Nose: bridge, nostrils; disgust wrinkles the bridge and lifts the nostrils.
    tip_y = ey + idn.nose_len - 0.015 * e["nose"]
    nw = idn.nose_w * (1 + 0.25 * e["nose"])
    pen.line(np.array([[cx + 0.006, ey + 0.02], [cx + 0.012, tip_y - 0.01]]), 0.005, s * 0.75)
    pen.line(_arc(cx - nw, tip_y - 0.005, cx + nw, tip_y - 0.005, 0.018), 0.007, s * 0.6)
    for side in (-1, 1):
        pen.poly(_ellipse(cx + side * nw * 0.55, tip_y, nw * 0.3, 0.008, 12), dark)
    if e["nose"] > 0.3:
        for i in range(3):
            y = ey + 0.015 + 0.018 * i
            pen.line(_arc(cx - 0.03, y, cx + 0.03, y, -0.008, 6), 0.005, s * 0.55)
    if e["cheek"] > 0.3:  # nasolabial folds pulled up by a smile / sneer
        for side in (-1, 1):
            pen.line(
                _arc(
                    cx + side * (nw + 0.015),
                    tip_y - 0.01,
                    cx + side * (idn.mouth_w * 0.5 * e["mw"] + 0.02),
                    mouth_y - 0.02,
                    0.0,
                    6,
                ),
                0.006,
                s * 0.65,
            )

    # Mouth: upper and lower lip curves between the corners; open area filled
    # dark with a light band of teeth under the upper lip.
    hw = idn.mouth_w * 0.5 * e["mw"]
    xl, xr = cx - hw, cx + hw + 0.02 * e["dimple"]
    yl, yr = mouth_y - e["cl"], mouth_y - e["cr"]
    chord_mid = (yl + yr) / 2  # lip midpoints are set relative to mouth_y, not the corners,
    upper = _arc(xl, yl, xr, yr, mouth_y - e["up"] - chord_mid, 16, e["round_"])  # so lowered
    lower = _arc(xl, yl, xr, yr, mouth_y + e["lo"] - chord_mid, 16, e["round_"])  # corners frown
    lip = min(s * 0.6, s - 50)
    if e["up"] + e["lo"] > 0.012:
        pen.poly(np.concatenate([upper, lower[::-1]]), 25)
        if e["teeth"] > 0:
            teeth_edge = upper.copy()
            teeth_edge[:, 1] += (lower[:, 1] - upper[:, 1]) * e["teeth"]
            pen.poly(np.concatenate([upper, teeth_edge[::-1]]), 225)
        pen.line(np.concatenate([upper, lower[::-1]]), 0.012, lip)
    else:
        pen.line((upper + lower) / 2, 0.017, lip)
    if e["dimple"] > 0.3:
        pen.line(np.array([[xr + 0.012, yr - 0.018], [xr + 0.005, yr + 0.014]]), 0.006, s * 0.6)

    # Box-average the 4x4 supersamples: proper antialiasing and ~20x cheaper than LANCZOS.
    return img.reduce(_SS)


def contact_sheet(seed: int = 0, subjects: range = range(6), size: int = 96) -> Image.Image:
    """Rows = subjects, columns = the 7 expressions (frame 2): for eyeballing the drawing."""
    sheet = Image.new("L", (size * len(CLASSES), size * len(subjects)), 255)
    for r, sub in enumerate(subjects):
        for c in range(len(CLASSES)):
            sheet.paste(render_face(seed, sub, c, 2, size), (c * size, r * size))
    return sheet


if __name__ == "__main__":  # python -m fersnet_ray.prepare.demo [out.png]
    import sys

    contact_sheet().save(sys.argv[1] if len(sys.argv) > 1 else "/tmp/demo_sheet.png")
