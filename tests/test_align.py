"""Decoding, the similarity transform, and the real face-alignment code path (random weights)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image

from builders import face, png_bytes, write_16bit, write_face_alignment_weights
from fersnet_ray.prepare.align import (
    TEMPLATE,
    FaceError,
    FanAligner,
    center_resize,
    decode_image,
    similarity_transform,
    stage_weights,
    warp,
)


def test_similarity_transform_is_exact_on_synthetic_landmarks():
    rng = np.random.default_rng(0)
    src = rng.uniform(0, 200, size=(5, 2))
    for angle, scale, shift in ((0.3, 0.7, (5.0, -3.0)), (-1.2, 2.5, (100.0, 40.0)), (0.0, 1.0, (0.0, 0.0))):
        rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
        dst = scale * src @ rot.T + shift
        m = similarity_transform(src, dst)
        np.testing.assert_allclose(m[:, :2], scale * rot, atol=1e-9)
        np.testing.assert_allclose(src @ m[:, :2].T + m[:, 2], dst, atol=1e-9)
    with pytest.raises(FaceError, match="degenerate"):
        similarity_transform(np.zeros((5, 2)), TEMPLATE)


def test_warp_puts_landmarks_on_the_template():
    # Bright dots at five points of a rotated, shifted "face"; after warping they sit on the template.
    size, out = 200, 110
    angle, scale = 0.25, 1.6
    rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    points = (TEMPLATE * 60) @ rot.T * scale + [30, 20]
    canvas = np.zeros((size, size), np.uint8)
    for x, y in points:
        canvas[int(round(y)) - 1 : int(round(y)) + 2, int(round(x)) - 1 : int(round(x)) + 2] = 255
    aligned = np.asarray(warp(Image.fromarray(canvas), points, out), dtype=float)
    assert aligned.shape == (out, out)
    for tx, ty in TEMPLATE * out:
        patch = aligned[int(ty) - 2 : int(ty) + 3, int(tx) - 2 : int(tx) + 3]
        assert patch.max() > 100, (tx, ty)


def test_decode_image_modes_and_rejects(tmp_path):
    grey = face(size=64)
    assert decode_image(png_bytes(grey)).mode == "L"
    assert decode_image(png_bytes(grey), channels=3).mode == "RGB"
    rgba = grey.convert("RGBA")
    rgba.putalpha(128)
    assert decode_image(png_bytes(rgba)).mode == "L"
    sixteen = decode_image(write_16bit(tmp_path / "d.png").read_bytes())
    assert sixteen.mode == "L" and np.asarray(sixteen).max() == 255 and np.asarray(sixteen).min() == 0
    with pytest.raises(FaceError, match=r"empty file \(0 bytes\)"):
        decode_image(b"")
    with pytest.raises(FaceError, match="not an image"):
        decode_image(b"this is a text file, not a face")
    with pytest.raises(FaceError, match="truncated or corrupt"):
        decode_image(png_bytes(grey)[:200])
    with pytest.raises(FaceError, match="too small"):
        decode_image(png_bytes(Image.new("L", (4, 4))))


def test_center_resize_crops_square():
    img = Image.new("L", (120, 80))
    assert center_resize(img, 110).size == (110, 110)


def test_fan_aligner_real_code_path_detects_and_aligns(tmp_path, monkeypatch, fan_weights):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    aligner = FanAligner(96, device="cpu", weights=fan_weights)  # stages the weights, builds S3FD + FAN
    lm = aligner.landmarks(face(size=128))
    assert lm.shape == (68, 2) and np.isfinite(lm).all()
    out = aligner.align(face(size=128).convert("RGB"))
    assert out.size == (96, 96) and out.mode == "RGB"


def test_fan_aligner_rejects_when_no_face(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    weights = write_face_alignment_weights(tmp_path / "w", detect=False)
    assert stage_weights(weights).startswith(str(tmp_path / "th"))
    with pytest.raises(FaceError, match="no face found"):
        FanAligner(96, device="cpu").landmarks(face(size=128))


def test_stage_weights_missing_file_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="2DFAN4-11f355bf06.pth.tar not found"):
        stage_weights(str(tmp_path))
