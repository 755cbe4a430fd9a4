"""A contact sheet of synthesized faces, for people to look at.

One row per sampled source face, one column per expression (in `classes` order). The real face sits
in the column of its own label inside a coloured frame with a "real" tag; the other columns hold the
faces FERSNet synthesized from it. A glance down a column shows whether an expression is rendered
consistently across identities; a glance along a row shows whether identity survives the translation.

    sheet = contact_sheet(rows, classes=["anger", "happy", ...], cell=64)
    sheet.save("sheet.png")
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageDraw, ImageFont

HEADER = 16  # px: the band of class names above the first row
REAL_COLOUR = (255, 64, 32)  # frame and tag of the real face's cell
BLANK_COLOUR = (24, 24, 24)  # a cell with no image (the synthesis is missing)
BACKGROUND = (0, 0, 0)
TEXT_COLOUR = (235, 235, 235)
FRAME = 3  # px: width of the real face's frame


def to_rgb_image(image: bytes | np.ndarray) -> Image.Image:
    """PNG (or any Pillow-readable) bytes, or a uint8 array (H, W), (H, W, C) or (C, H, W) → RGB image."""
    if isinstance(image, (bytes, bytearray, memoryview)):
        return Image.open(io.BytesIO(bytes(image))).convert("RGB")
    arr = np.asarray(image)
    if arr.dtype != np.uint8:
        raise TypeError(f"image arrays must be uint8, got {arr.dtype}")
    if arr.ndim == 3 and arr.shape[0] in (1, 3) and arr.shape[-1] not in (1, 3):
        arr = arr.transpose(1, 2, 0)  # (C, H, W) → (H, W, C), e.g. a row of a FaceSet tensor
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[-1] != 3):
        raise ValueError(f"expected a (H, W), (H, W, 1) or (H, W, 3) uint8 array, got shape {arr.shape}")
    return Image.fromarray(np.ascontiguousarray(arr)).convert("RGB")


def _fit(draw: ImageDraw.ImageDraw, text: str, font, width: int) -> str:
    """`text`, cut short so it fits `width` pixels (narrow cells get abbreviated class names)."""
    while text and draw.textlength(text, font=font) > width:
        text = text[:-1]
    return text


def contact_sheet(rows: list[dict], classes: list[str], cell: int = 64) -> Image.Image:
    """Draws the contact sheet.

    Args:
        rows: one dict per source face: {"source_label": int, "images": {label index: PNG bytes or
            uint8 array}}; `images[source_label]` is the real face, the other entries are its
            syntheses. A label with no entry gives a blank cell. Greyscale and RGB may be mixed.
        classes: expression names; column j shows label j.
        cell: side of one face's cell in pixels (faces are resized to it).

    Returns:
        An RGB image of width len(classes) * cell and height HEADER + len(rows) * cell.
    """
    width, height = len(classes) * cell, HEADER + len(rows) * cell
    sheet = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default()

    # Header: class names centred over their columns.
    for j, name in enumerate(classes):
        text = _fit(draw, name, font, cell - 2)
        x = j * cell + (cell - draw.textlength(text, font=font)) / 2
        draw.text((x, 2), text, fill=TEXT_COLOUR, font=font)

    for i, row in enumerate(rows):
        top, real = HEADER + i * cell, int(row["source_label"])
        if not 0 <= real < len(classes):
            raise ValueError(f"row {i}: source_label {real} is outside 0..{len(classes) - 1}")
        images = row.get("images", {})
        for j in range(len(classes)):
            box = (j * cell, top, (j + 1) * cell - 1, top + cell - 1)  # inclusive corners
            if j in images and images[j] is not None:
                face = to_rgb_image(images[j]).resize((cell, cell), Image.BILINEAR)
                sheet.paste(face, box[:2])
            else:
                draw.rectangle(box, fill=BLANK_COLOUR)
            if j == real:
                draw.rectangle(box, outline=REAL_COLOUR, width=FRAME)
                # The tag sits in the bottom-left corner, over the chin rather than the eyes.
                tag_w = int(draw.textlength("real", font=font)) + 4
                draw.rectangle((box[0], box[3] - 12, box[0] + tag_w, box[3]), fill=REAL_COLOUR)
                draw.text((box[0] + 2, box[3] - 13), "real", fill=(255, 255, 255), font=font)
    return sheet
